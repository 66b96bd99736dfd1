"""The rank-fidelity benchmark's --quick mode end to end (micro zoo): the results file has the
published schema. Thresholds are the full benchmark's business, not this test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ("task", "method", "ranking", "spearman", "kendall", "top1_hit", "regret", "compute_ratio",
          "wall_ratio_train", "wall_ratio_end_to_end")
CANDIDATES = ["micro-qwen2-tiny-domain", "micro-llama-deep-domain", "micro-phi3-mixed", "micro-gpt2-jargon"]


def test_quick_benchmark_writes_the_results_schema(micro_zoo, micro_zoo_cache, tmp_path):
    out = tmp_path / "rank_fidelity_quick.json"
    readme_before = (ROOT / "benchmarks" / "README.md").read_text()
    env = {**os.environ, "DAMOC_CACHE_DIR": str(micro_zoo_cache)}
    proc = subprocess.run([sys.executable, "benchmarks/rank_fidelity.py", "--quick", "--cache", str(micro_zoo_cache),
                           "--work", str(tmp_path / "work"), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert {"commit", "machine", "config", "results", "ground_truth"} <= set(payload)
    assert payload["commit"] and payload["machine"]["cpus"] >= 1 and "memory_gib" in payload["machine"]
    # The processor and kernel instruction set, which decide the zoo's weights and so the figures.
    assert payload["machine"]["cpu"] and payload["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # Resolving the (prebuilt) candidates is timed apart from the benchmark's own seconds.
    assert 0 <= payload["zoo_seconds"] < payload["seconds"]
    assert set(payload["config"]["tasks"]) == {"wordnet-lexcat", "wordnet-defgen"}
    # Each task's own time, at this run's commit; together no more than the run took.
    runs = payload["task_runs"]
    assert set(runs) == {"wordnet-lexcat", "wordnet-defgen"}
    assert {r["commit"] for r in runs.values()} == {payload["commit"]}
    assert all(r["seconds"] > 0 for r in runs.values())
    # ... and the weights it compared, by candidate: the micro zoo's own digests.
    zoo = {f"zoo:micro/{c['name']}": c["weights_sha256"]
           for c in json.loads((micro_zoo / "zoo.json").read_text())["candidates"]}
    for run in runs.values():
        assert run["candidate_weights_sha256"] and all(zoo[m] == d for m, d in run["candidate_weights_sha256"].items())
    assert sum(r["seconds"] for r in runs.values()) <= payload["seconds"] + 1

    for task in ("wordnet-lexcat", "wordnet-defgen"):
        rows = [r for r in payload["results"] if r["task"] == task]
        methods = {r["method"] for r in rows}
        assert {"damoc", "data_only", "model_only", "curve", "zero_shot", "few_shot", "size", "sweep"} <= methods
        assert len([r for r in rows if r["method"] == "sweep"]) == 2  # keep 0.5 and 1.0, no pruning
        for r in rows:
            assert set(FIELDS) <= set(r), (task, r["method"])
            assert sorted(r["ranking"]) == sorted(CANDIDATES), r
            assert r["spearman"] is None or -1.0 <= r["spearman"] <= 1.0
            assert r["kendall"] is None or -1.0 <= r["kendall"] <= 1.0
            assert isinstance(r["top1_hit"], bool) and r["regret"] >= 0
            assert r["top1_hit"] == (r["chosen"] == payload["ground_truth"][task]["ranking"][0] == r["ranking"][0])
            assert r["regret"] == 0 if r["top1_hit"] else r["regret"] >= 0
            if r["method"] in ("zero_shot", "few_shot", "size"):
                assert r["compute_ratio"] is None and r["wall_ratio_train"] is None
            else:  # a proxy trains less than full fine-tuning does, and that is what the ratios say
                assert r["compute_ratio"] > 1 and r["wall_ratio_train"] > 0 and r["wall_ratio_end_to_end"] > 0
            if r["method"] in ("zero_shot", "few_shot"):
                # Ranked by every score it measured; by the metric the proxies rank by, as its row is.
                measured = set.intersection(*(set(s) for s in r["baseline_scores"].values()))
                assert r["ranked_by"] in r["by_metric"] and set(r["by_metric"]) <= measured
                assert "eval_loss" in r["by_metric"]
                if task == "wordnet-lexcat":   # a label set: the row-dependent score is measured too
                    assert {"accuracy", "gold_logprob", "gold_pmi"} <= set(r["by_metric"])
                assert r["by_metric"][r["ranked_by"]]["spearman"] == r["spearman"]
        truth = payload["ground_truth"][task]
        assert sorted(truth["ranking"]) == sorted(CANDIDATES) and truth["train_flops"] > 0
        # The ground truth's own rungs scored against its final test scores, one entry per rung.
        assert truth["seeds"] == payload["config"]["profile"]["truth_seeds"] == list(map(int, truth["by_seed"]))
        steps = [point["step"] for point in truth["rung_agreement"]]
        assert steps and steps == sorted(steps)
        assert all(-1.0 <= point["spearman"] <= 1.0 for point in truth["rung_agreement"])
        damoc = next(r for r in rows if r["method"] == "damoc")
        data_only = next(r for r in rows if r["method"] == "data_only")
        model_only = next(r for r in rows if r["method"] == "model_only")
        # Each ablation drops one of the two compressions and keeps the other as the proxy has it.
        assert (model_only["keep_ratio"], model_only["prune_ratio"]) == (1.0, damoc["prune_ratio"])
        assert (data_only["keep_ratio"], data_only["prune_ratio"]) == (damoc["keep_ratio"], 0.0)
        # The demo proxy run again with training seed 1, scored against the same ground truth.
        assert set(damoc["by_proxy_seed"]) == {"0", "1"} and damoc["training_seed"] == 0
        assert damoc["by_proxy_seed"]["0"]["reused"] and damoc["by_proxy_seed"]["0"]["spearman"] == damoc["spearman"]
        again = damoc["by_proxy_seed"]["1"]
        assert not again["reused"] and sorted(again["ranking"]) == sorted(CANDIDATES) and again["compute_ratio"] > 1
        assert again["top1_hit"] == (again["chosen"] == payload["ground_truth"][task]["ranking"][0])
        spread = damoc["proxy_seeds"]
        assert spread["seeds"] == [0, 1] and spread["runs"] == 2
        assert spread["spearman_min"] <= damoc["spearman"] <= spread["spearman_max"]
    assert out.with_name("rank_fidelity_quick_scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert out.with_name("rank_fidelity_quick_frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert (ROOT / "benchmarks" / "README.md").read_text() == readme_before  # --quick never rewrites the README


def _benchmark_module():
    from conftest import load_benchmark

    return load_benchmark("rank_fidelity")


def test_each_ablation_drops_one_compression_of_the_demo_proxy(tmp_path):
    """model_only trains on every row, whole (no filter and no key-token compression); data_only
    compresses the data as the demo does and prunes nothing; the sweep keeps the demo's token
    compression. Built from jobs/demo.yaml itself, so a change there is checked here."""
    from damoc.config.load import validate_config

    bench = _benchmark_module()
    profile = bench.PROFILES["full"]
    base = bench.base_config(profile, "wordnet-defgen", tmp_path, None)
    demo_tokens = bench.token_keep(base)
    assert demo_tokens is not None and demo_tokens["prompt"] < 1.0      # the demo compresses prompts
    runs = bench.method_configs(profile, "wordnet-defgen", base)
    settings = {name: bench.proxy_settings(cfg) for name, cfg in runs.items()}
    demo = bench.proxy_settings(base)
    assert settings["model_only"] == {"filter": "none", "keep_ratio": 1.0, "prune_ratio": demo["prune_ratio"],
                                      "token_keep": None}
    assert settings["data_only"] == {**demo, "prune_ratio": 0.0}
    sweeps = [v for k, v in settings.items() if k.startswith("sweep")]
    assert len(sweeps) == len(profile["sweep"]["wordnet-defgen"])
    assert all(v["token_keep"] == demo_tokens for v in sweeps) and settings["curve"]["token_keep"] == demo_tokens
    assert len({cfg["output"]["dir"] for cfg in runs.values()}) == len(runs)      # one output dir each
    for name, cfg in runs.items():
        validate_config(cfg, name)


def test_try_file_is_checked_before_anything_runs(tmp_path, capsys):
    """`--try FILE`: a malformed settings file is refused with one line naming the file and the
    entry, exit 2, before Ray starts and without writing the results file."""
    bench = _benchmark_module()
    out = tmp_path / "tried.json"
    cases = {
        "not json": "not a JSON list",
        json.dumps({"name": "a"}): "expected a non-empty JSON list",
        json.dumps([{"keep": 0.1}]): "entry 0: needs a \"name\"",
        json.dumps([{"name": "a"}, {"name": "a"}]): "entry 1: name 'a' is used twice",
        json.dumps([{"name": "a", "lr": 1}]): "entry 0 (a): unknown key 'lr'",
        json.dumps([{"name": "a", "keep": 1.5}]): "entry 0 (a): keep must be a number in [0, 1]",
        json.dumps([{"name": "a", "training": 3}]): "entry 0 (a): training must be a mapping",
        json.dumps([{"name": "a", "training": {"learning_rat": 1e-3}}]): "--try entry 'a': ",
    }
    for text, expected in cases.items():
        settings = tmp_path / "settings.json"
        settings.write_text(text)
        assert bench.main(["--try", str(settings), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and (str(settings) in err or "--try entry" in err), err
        if text != "not json":
            assert expected in err, (expected, err)
        assert not out.exists()


def test_try_settings_merge_over_the_job_config():
    from damoc.config.schema import _deep_merge   # what tried_configs merges each section with

    into = {"training": {"learning_rate": 1e-3, "batch_size": 16}, "ranking": {"early_stopping": {"scheduler": "asha", "rungs": 3}}}
    into = _deep_merge(into, {"training": {"batch_size": 4}, "ranking": {"early_stopping": {"scheduler": "none"}}})
    assert into == {"training": {"learning_rate": 1e-3, "batch_size": 4},
                    "ranking": {"early_stopping": {"scheduler": "none", "rungs": 3}}}


def test_merge_keeps_the_other_tasks_with_their_commits():
    bench = _benchmark_module()
    before = {"commit": "aaa", "seconds": 300.0, "results": [{"task": "t1", "method": "damoc"}, {"task": "t2", "method": "damoc"}],
              "ground_truth": {"t1": {"ranking": ["x"]}, "t2": {"ranking": ["y"]}},
              "config": {"tasks": {"t1": 1, "t2": 2}, "damoc": {"t1": "c1", "t2": "c2"}}}
    now = {"commit": "bbb", "seconds": 60.0, "results": [{"task": "t2", "method": "sweep"}],
           "ground_truth": {"t2": {"ranking": ["z"]}}, "config": {"tasks": {"t2": 3}, "damoc": {"t2": "c3"}},
           "task_runs": {"t2": {"commit": "bbb", "seconds": 60.0}}}
    merged = bench.merge_tasks(before, now)
    assert merged["results"] == [{"task": "t1", "method": "damoc"}, {"task": "t2", "method": "sweep"}]
    assert merged["ground_truth"] == {"t1": {"ranking": ["x"]}, "t2": {"ranking": ["z"]}}
    assert merged["config"]["tasks"] == {"t1": 1, "t2": 3} and merged["config"]["damoc"] == {"t1": "c1", "t2": "c3"}
    assert merged["task_runs"] == {"t1": {"commit": "aaa", "seconds": 300.0}, "t2": {"commit": "bbb", "seconds": 60.0}}
    assert merged["commit"] == "bbb"
    assert "`t1` at commit aaa, 5 min" in bench._task_runs_note(merged)
    # One run: each task's share of it; an older file (every task given the whole run's time) gets no note.
    one_run = {"seconds": 600.0, "task_runs": {"t1": {"commit": "c", "seconds": 240.0}, "t2": {"commit": "c", "seconds": 359.0}}}
    assert bench._task_runs_note(one_run) == " Per task: `t1` 4 min; `t2` 6 min."
    old_format = {"seconds": 600.0, "task_runs": {"t1": {"commit": "c", "seconds": 600.0}, "t2": {"commit": "c", "seconds": 600.0}}}
    assert bench._task_runs_note(old_format) == ""


def test_a_ground_truth_read_from_the_cache_is_named_in_the_run_note():
    bench = _benchmark_module()
    payload = {"ground_truth": {
        "trained": {"ground_truth_run_seconds": 1368.0, "end_to_end_s": 2426.0},
        "cached": {"ground_truth_run_seconds": 0.9, "end_to_end_s": 1808.0},
        "older_file": {"end_to_end_s": 1808.0}}}
    note = bench._truth_cache_note(payload)
    assert "`cached` (30 min" in note and "`trained`" not in note and "`older_file`" not in note
    payload["ground_truth"]["two_seeds"] = {"ground_truth_run_seconds": 2.0, "end_to_end_s": 1800.0, "seeds": [0, 1]}
    assert "`two_seeds` (60 min of trials summed over candidates and its 2 seeds" in bench._truth_cache_note(payload)
    payload["ground_truth"].pop("cached")
    payload["ground_truth"].pop("two_seeds")
    assert bench._truth_cache_note(payload) == ""


def test_rows_read_back_from_the_cache_are_named_in_the_run_note():
    bench = _benchmark_module()
    payload = {"task_runs": {"computed": {"commit": "c", "seconds": 1140.0}, "read_back": {"commit": "c", "seconds": 84.0}},
               "results": [{"task": "computed", "end_to_end_s": 1500.0}, {"task": "computed", "end_to_end_s": 663.0},
                           {"task": "read_back", "end_to_end_s": 3000.0}, {"task": "read_back", "end_to_end_s": 1273.0},
                           {"task": "read_back", "method": "zero_shot"}]}
    note = bench._rows_cache_note(payload)
    assert "`read_back` (1 min here; 71 min" in note and "`computed`" not in note
    payload["task_runs"]["read_back"]["seconds"] = 900.0
    assert bench._rows_cache_note(payload) == ""


def test_targets_summary_names_each_missed_target_with_its_figure():
    bench = _benchmark_module()
    met = {"top1_hit": True, "spearman": 0.95, "compute_ratio": 25.0, "wall_ratio_end_to_end": 12.0, "chosen": "a"}
    payload = {"ground_truth": {"t1": {}, "t2": {}}, "results": [
        {"task": "t1", "method": "damoc", **met},
        {"task": "t1", "method": "zero_shot", "spearman": 0.4, "top1_hit": False, "compute_ratio": None,
         "wall_ratio_end_to_end": 3.0, "chosen": "b"},
        {"task": "t2", "method": "damoc", "top1_hit": False, "spearman": 0.31, "compute_ratio": 7.04,
         "wall_ratio_end_to_end": 11.0, "chosen": "c"},
        {"task": "t2", "method": "sweep", **met, "spearman": 0.89},
    ]}
    assert bench.target_misses(payload["results"][0]) == []
    assert bench.target_misses(payload["results"][2]) == ["top-1 (chose c)", "Spearman 0.31 < 0.9", "compute ratio 7.0x < 20x"]
    lines = bench.targets_summary(payload).splitlines()
    assert lines[2] == ("- `t1`: damoc all met. Zero-shot Spearman 0.40 (damoc 0.95); "
                        "1 of 1 measured proxy settings meet all four.")
    assert lines[3].startswith("- `t2`: damoc missed: top-1 (chose c); Spearman 0.31 < 0.9; compute ratio 7.0x < 20x.")
    assert lines[3].endswith("Zero-shot Spearman - (damoc 0.31); none of the 2 measured proxy settings meets all four.")

    # With the ranking and the truth's scores, a missed task names the candidate the proxy gets
    # most wrong (here e, last in truth, ranked second).
    # Its rungs say how well full fine-tuning itself ranks when stopped early.
    payload["ground_truth"]["t2"] = {"scores": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.1},
                                     "higher_is_better": True,
                                     "rung_agreement": [{"step": 62, "spearman": 0.857, "top1_hit": False},
                                                        {"step": 250, "spearman": 1.0, "top1_hit": True}]}
    payload["results"][2]["ranking"] = ["c", "e", "a", "b", "d"]
    line = bench.targets_summary(payload).splitlines()[3]
    assert line.endswith("meets all four. Full fine-tuning's own validation order at step 62 of 250 (1/4 of its "
                         "compute) ranks at 0.86, missing the winner. The demo proxy's largest misplacement: e, ranked 2nd "
                         "where full fine-tuning ranks it 5th (Spearman 0.40 over the other candidates)."), line


def test_a_candidate_the_method_failed_ranks_last_instead_of_leaving_the_comparison():
    bench = _benchmark_module()
    truth = {"scores": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}, "higher_is_better": True,
             "by_seed": {"0": {"scores": {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}},
                         "1": {"scores": {"b": 0.9, "a": 0.8, "c": 0.7, "d": 0.6}}}}
    # The method's trial for b failed (e.g. too few layers to prune that far): its ranking omits
    # b. Scored on a, c, d alone it would look perfect (1.0); with b last it is not.
    row = bench.score_ranking(["a", "c", "d"], truth)
    assert row["failed"] == ["b"]
    assert row["spearman"] == pytest.approx(0.4)
    assert row["top1_hit"] and row["chosen"] == "a"
    assert row["by_truth_seed"]["1"]["top1_hit"] is False
    # Only d ran: the pick is d.
    assert bench.score_ranking(["d"], truth)["chosen"] == "d"
    assert "failed" not in bench.score_ranking(["a", "b", "c", "d"], truth)
    # Nothing ran: no pick, rather than the first name of an all-way tie (here the truth's winner).
    none = bench.score_ranking([], truth)
    assert none["chosen"] is None and none["top1_hit"] is False and none["spearman"] is None
    assert none["failed"] == ["a", "b", "c", "d"]
    # The table names what failed beside the pick.
    assert bench._chosen(row) == "a (b failed: ranked last)"
    assert bench._chosen({"chosen": "a"}) == "a"


def test_the_summary_says_where_top1_breaks_along_each_axis_of_the_sweep():
    bench = _benchmark_module()

    def point(method, keep, prune, hit, rho, **extra):
        return {"task": "t", "method": method, "keep_ratio": keep, "prune_ratio": prune, "top1_hit": hit,
                "spearman": rho, "compute_ratio": 100 / keep / (1 - prune), **extra}

    demo = point("damoc", 0.05, 0.25, True, 0.9)
    rows = [demo, point("sweep", 0.005, 0.25, False, 0.5), point("sweep", 0.02, 0.25, True, 0.8),
            point("sweep", 0.1, 0.25, False, 0.3), point("model_only", 1.0, 0.25, True, 0.7),
            point("data_only", 0.05, 0.0, True, 0.85), point("sweep", 0.05, 0.5, True, 0.86),
            point("sweep", 0.05, 0.75, True, 0.9, failed=["shallow"]),
            # Not points of the grid: another ranking of the demo's proxies, and a tried setting.
            point("curve", 0.05, 0.25, False, -0.3), point("tried", 0.2, 0.25, False, 0.1)]
    note = bench._sweep_note(rows, demo)
    keep_part, prune_part = note.split("; prune ratio")
    assert "0.005 miss (0.50), 0.02 hit (0.80), 0.05 hit (0.90), 0.1 miss (0.30), 1 hit (0.70)" in keep_part
    # Towards more compression the first miss is 0.005 (0.02 still hits); 0.1 misses on the other side.
    assert keep_part.endswith("top-1 first breaks at keep 0.005, and misses with less compression, at keep 0.1")
    assert "0 hit (0.85), 0.25 hit (0.90), 0.5 hit (0.86), 0.75 hit (0.90; shallow failed)" in prune_part
    assert prune_part.endswith("top-1 holds at every point more compressed than the demo's, to prune 0.75 (8000x compute).")
    assert "(0.10)" not in note and "(-0.30)" not in note
    # Only the demo's own point on an axis: nothing to say about it.
    assert bench._sweep_note([demo], demo) == ""


def test_zero_shot_is_scored_by_each_metric_it_measured():
    bench = _benchmark_module()
    truth = {"scores": {"a": 0.9, "b": 0.6, "c": 0.3}, "higher_is_better": True}
    # Lower loss is better: by its loss zero-shot orders a, b, c as the truth does; by accuracy it
    # orders them backwards; bertscore is missing for one candidate, so it is not a ranking.
    scores = {"a": {"eval_loss": 1.0, "accuracy": 0.2, "gold_logprob": -2.0, "bertscore": 0.5},
              "b": {"eval_loss": 2.0, "accuracy": 0.4, "gold_logprob": -1.0},
              "c": {"eval_loss": 3.0, "accuracy": 0.6, "gold_logprob": -3.0}}
    by_metric = bench.baseline_by_metric(scores, truth)
    assert set(by_metric) == {"eval_loss", "accuracy", "gold_logprob"}
    assert by_metric["eval_loss"]["spearman"] == 1.0 and by_metric["eval_loss"]["top1_hit"]
    assert by_metric["accuracy"]["spearman"] == -1.0 and by_metric["accuracy"]["chosen"] == "c"
    assert by_metric["gold_logprob"]["spearman"] == 0.5 and not by_metric["gold_logprob"]["top1_hit"]

    # The targets summary names the others beside the metric the row is ranked by.
    payload = {"ground_truth": {"t": truth}, "results": [
        {"task": "t", "method": "damoc", "top1_hit": True, "spearman": 1.0, "compute_ratio": 30.0,
         "wall_ratio_end_to_end": 12.0, "chosen": "a", "ranking": ["a", "b", "c"]},
        {"task": "t", "method": "zero_shot", "spearman": 0.5, "top1_hit": False, "compute_ratio": None,
         "chosen": "b", "ranked_by": "gold_logprob", "baseline_scores": scores}]}
    assert bench.targets_summary(payload).splitlines()[2].endswith(
        "Zero-shot ranked by its other scores instead of gold_logprob: Spearman by accuracy -1.00 (misses the "
        "winner), by eval_loss 1.00.")


def _fake_report(truth: dict, ranking: list[str], *, fine_tune_s: float = 10.0, history: dict | None = None,
                 rows: dict | None = None) -> dict:
    """The parts of a `damoc select` report the benchmark reads, for a run whose ground truth
    scored the candidates `truth` (test accuracy) and whose proxies ranked them `ranking`;
    `history` gives each candidate's ground-truth validation gold_logprob by step, `rows` its
    per-row test accuracy ([value, weight] pairs), as a trial records them."""
    candidates = [{"name": n, "params": 1000, "score": -float(ranking.index(n)), "score_on": "test", "status": "ok",
                   "rank": ranking.index(n) + 1, "wall_s": {"fine_tune": 1.0, "total": 2.0},
                   "ground_truth": {"status": "ok", "test": {"accuracy": acc, "gold_logprob": acc - 2}, "train_tokens": 100,
                                    "train_flops": 6e5, "wall_s": {"fine_tune": fine_tune_s, "total": fine_tune_s + 2},
                                    "history": [{"step": step, "val_gold_logprob": v}
                                                for step, v in ((history or {}).get(n) or {}).items()],
                                    **({"test_rows": {"accuracy": rows[n]}} if rows and n in rows else {})}}
                  for n, acc in truth.items()]
    return {"candidates": candidates, "ranking": ranking, "metric": "gold_logprob", "higher_is_better": True,
            "cost": {"wall_s": {"data": 1.0}, "proxy_train_flops": 6e4}, "data_compression": {}, "_bench_seconds": 5.0}


def test_a_tried_ground_truth_seed_is_scored_against_its_own_truth_and_compared(monkeypatch):
    """`--try` entries that change the ground truth (its seed) are scored against the ground truth
    their run trained, and record how well it agrees with the first entry's."""
    bench = _benchmark_module()
    truth0 = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}
    truth1 = {"a": 0.9, "b": 0.6, "c": 0.7, "d": 0.8}      # b and d swapped by another seed
    proxy = ["a", "b", "c", "d"]
    reports = iter([_fake_report(truth0, proxy), _fake_report(truth0, proxy), _fake_report(truth1, proxy)])
    monkeypatch.setattr(bench, "run", lambda cfg: next(reports))
    pairs = [({"name": n}, {"data_compression": {}, "model_compression": {}}) for n in ("seed0", "again", "truth_seed1")]
    rows, truth = bench.run_tried("wordnet-lexcat", pairs, log=lambda task, row: None)
    assert truth["ranking"] == ["a", "b", "c", "d"]                   # the file's ground truth is the first entry's
    assert [r["spearman"] for r in rows[:2]] == [1.0, 1.0]
    assert "truth_vs_first" not in rows[0] and "truth_vs_first" not in rows[1]
    other = rows[2]
    assert other["ground_truth"]["ranking"] == ["a", "d", "c", "b"]
    assert abs(other["spearman"] - 0.2) < 1e-9                                  # proxy vs its own truth
    assert abs(other["truth_vs_first"]["spearman"] - 0.2) < 1e-9 and other["truth_vs_first"]["top1_hit"]
    assert other["vs_first_truth"]["spearman"] == 1.0 and other["vs_first_truth"]["top1_hit"]


def test_a_ground_truth_over_two_seeds_is_their_mean_and_reports_how_far_they_agree(tmp_path):
    """With two seeds of full fine-tuning, each candidate's ground-truth score is its mean test
    score; costs are one fine-tune's (the median run's: with two, their mean); each seed's own ranking and the seeds'
    agreement are kept, and every ranking is also scored against each seed alone."""
    bench = _benchmark_module()
    truth0 = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}
    truth1 = {"a": 0.5, "b": 0.6, "c": 0.9, "d": 0.8}
    # Validation gold_logprob at two rungs: at step 5 the seeds' mean ranks a, b, d, c; at step 10 c, a, b, d.
    hist0 = {"a": {5: -1.0, 10: -1.1}, "b": {5: -1.2, 10: -1.3}, "c": {5: -1.9, 10: -1.0}, "d": {5: -1.5, 10: -1.6}}
    hist1 = {"a": {5: -1.0, 10: -1.1}, "b": {5: -1.2, 10: -1.3}, "c": {5: -1.9, 10: -1.0}, "d": {5: -1.3, 10: -1.6}}
    reports = [_fake_report(truth0, ["a", "b", "c", "d"], fine_tune_s=10.0, history=hist0),
               _fake_report(truth1, ["a", "b", "c", "d"], fine_tune_s=30.0, history=hist1)]
    truth = bench.truth_over_seeds(reports, [0, 1], "accuracy")
    assert truth["scores"] == pytest.approx({"a": 0.7, "b": 0.7, "c": 0.8, "d": 0.7})
    assert truth["ranking"][0] == "c"
    assert abs(truth["candidates"]["a"]["test"]["gold_logprob"] - (0.7 - 2)) < 1e-12
    assert truth["train_flops"] == 4 * 6e5 and truth["train_s"] == 4 * 20.0    # one fine-tune each, mean of the two
    assert truth["seeds"] == [0, 1]
    assert truth["by_seed"]["0"]["ranking"] == ["a", "b", "c", "d"] and truth["by_seed"]["1"]["ranking"] == ["c", "d", "b", "a"]
    (pair,) = truth["seed_agreement"]
    assert pair["seeds"] == [0, 1] and abs(pair["spearman"] + 0.8) < 1e-9 and pair["top1_same"] is False
    assert [p["step"] for p in truth["rung_agreement"]] == [5, 10]
    assert truth["rung_agreement"][1]["top1_hit"] and not truth["rung_agreement"][0]["top1_hit"]

    row = bench.score_ranking(["a", "b", "c", "d"], truth)
    assert row["chosen"] == "a" and not row["top1_hit"]
    assert row["by_truth_seed"]["0"]["spearman"] == 1.0 and row["by_truth_seed"]["0"]["top1_hit"]
    assert abs(row["by_truth_seed"]["1"]["spearman"] + 0.8) < 1e-9
    # One seed: the ground truth is that run's, with no per-seed scoring of the rows.
    single = bench.truth_over_seeds(reports[:1], [0], "accuracy")
    assert single["scores"] == truth0 and single["seed_agreement"] == [] and "by_truth_seed" not in bench.score_ranking(["a", "b"], single)

    # Three seeds, one of them run on a slower day: costs are the median run's, not dragged up by it.
    slow = _fake_report(truth0, ["a", "b", "c", "d"], fine_tune_s=100.0, history=hist0)
    three = bench.truth_over_seeds(reports + [slow], [0, 1, 2], "accuracy")
    assert three["train_s"] == 4 * 30.0 and three["candidates"]["a"]["wall_s"]["fine_tune"] == 30.0
    assert three["scores"]["a"] == pytest.approx((0.9 + 0.5 + 0.9) / 3)           # scores stay the mean

    payload = {"ground_truth": {"t": truth}, "results": [{"task": "t", "method": "damoc", "keep_ratio": 0.1, "prune_ratio": 0.25,
                                                           "compute_ratio": 30.0, "wall_ratio_train": 9.0,
                                                           "wall_ratio_end_to_end": 12.0, **row}]}
    text = bench.truth_table(payload)
    assert "the mean of full fine-tuning with seeds 0, 1" in text and "seed 1: c 0.900, d 0.800" in text
    assert "Seeds 0 and 1 agree at Spearman -0.80" in text and "different winner" in text
    table = bench.results_table(payload).splitlines()
    assert table[0].endswith("| Spearman vs seed 0 / 1 alone |") and table[2].endswith("| 1.00 / -0.80 |")
    assert "full fine-tuning agrees with itself across seeds at Spearman -0.80" in bench.targets_summary(payload)
    bench.plot_scatter(payload, tmp_path / "scatter.png")
    bench.plot_frontier(payload, tmp_path / "frontier.png")
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in ("scatter.png", "frontier.png"))


def test_a_second_ground_truth_seed_changes_only_that_seed(monkeypatch):
    """The second seed's run is the first run's config with only the ground truth's seed changed
    (so its proxies come from the stage cache); `--try` entries use the profile's seeds unless
    they set the ground truth's seed themselves."""
    bench = _benchmark_module()
    truth = {"a": 0.9, "b": 0.8, "c": 0.7}
    ran = []

    def fake_run(cfg):
        ran.append(cfg)
        return _fake_report(truth, ["a", "b", "c"])

    monkeypatch.setattr(bench, "run", fake_run)
    base = bench.base_config(bench.PROFILES["full"], "wordnet-lexcat", Path("/nonexistent/work"), None)
    assert base["ranking"]["ground_truth_training"]["seed"] == 0
    got = bench.truth_with_seeds(base, fake_run(base), [0, 1], "accuracy")
    assert len(ran) == 2 and got["seeds"] == [0, 1]
    first, second = ran
    assert second["ranking"]["ground_truth_training"] == {**first["ranking"]["ground_truth_training"], "seed": 1}
    strip = lambda c: {**c, "output": None, "ranking": {**c["ranking"], "ground_truth_training": None}}  # noqa: E731
    assert strip(second) == strip(first) and second["output"]["dir"] != first["output"]["dir"]

    ran.clear()
    pairs = [({"name": "plain"}, base),
             ({"name": "own_seed", "ranking": {"ground_truth_training": {"seed": 3}}},
              bench.variant(base, "own", ground_truth_training={"seed": 3}))]
    rows, first_truth = bench.run_tried("wordnet-lexcat", pairs, log=lambda task, row: None, seeds=[0, 1])
    assert [c["ranking"]["ground_truth_training"]["seed"] for c in ran] == [0, 1, 3]
    assert first_truth["seeds"] == [0, 1] and "by_truth_seed" in rows[0] and "by_truth_seed" not in rows[1]


def test_truth_seeds_flag_sets_the_seeds_the_ground_truth_is_trained_with(monkeypatch, tmp_path, capsys):
    """`--truth-seeds`: refused with one line and exit 2 when malformed (before Ray starts, nothing
    written); otherwise every task's ground truth is trained with exactly those seeds and the
    results file's profile records them."""
    bench = _benchmark_module()
    out = tmp_path / "rf.json"
    for bad, expected in {"0,x": "expected comma-separated non-negative integers",
                          "": "expected comma-separated", "-1": "expected comma-separated",
                          "1,1": "a seed is given twice"}.items():
        assert bench.main(["--truth-seeds", bad, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--truth-seeds" in err and expected in err, err
        assert not out.exists()
    assert bench.parse_seeds(" 3, 0") == [3, 0]

    import ray

    seen = {}

    def fake_run_task(profile, task, work, cache, log):
        seen[task] = profile["truth_seeds"]
        cfg = bench.base_config(profile, task, work, cache)
        return [], {"seeds": profile["truth_seeds"]}, {"damoc": cfg}

    monkeypatch.setattr(bench, "run_task", fake_run_task)
    monkeypatch.setattr(bench, "prepare_candidates", lambda *a: (0.0, {}))
    readme_written = []

    def fake_write_outputs(payload, path, readme):
        readme_written.append(readme)
        path.write_text(json.dumps(payload))

    monkeypatch.setattr(bench, "write_outputs", fake_write_outputs)
    monkeypatch.setattr(ray, "init", lambda *a, **k: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    assert bench.main(["--truth-seeds", "2,5", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    assert seen == {task: [2, 5] for task in bench.TASKS}
    assert json.loads(out.read_text())["config"]["profile"]["truth_seeds"] == [2, 5]
    assert bench.PROFILES["full"]["truth_seeds"] == [0]   # the profile itself is left as it was
    assert readme_written == [False]   # a results file other than the published one leaves the README alone


def test_truth_seeds_flag_gives_one_task_its_own_seeds(monkeypatch, tmp_path, capsys):
    """`--truth-seeds TASK=SEEDS` (repeatable) trains that task's ground truth with its own seeds and
    the others with the plain value's (or the default); a task not run, a task or the plain value
    given twice, or malformed seeds are refused with one line naming the value, exit 2, nothing
    written; the results file records both and the README names the flags that reproduce it."""
    bench = _benchmark_module()
    out = tmp_path / "rf.json"
    lexcat, defgen = "wordnet-lexcat", "wordnet-defgen"
    for argv, expected in (
            (["--truth-seeds", "wordnet-nope=0,1"], "task 'wordnet-nope' is not run"),
            (["--tasks", defgen, "--truth-seeds", f"{lexcat}=0,1"], f"task '{lexcat}' is not run"),
            (["--truth-seeds", f"{lexcat}=0,1", "--truth-seeds", f"{lexcat}=2"], f"the seeds of {lexcat} are given twice"),
            (["--truth-seeds", "0", "--truth-seeds", "1"], "the seeds of every task are given twice"),
            (["--truth-seeds", f"{lexcat}=0,x"], f"--truth-seeds '{lexcat}=0,x': expected comma-separated"),
            (["--truth-seeds", f"{lexcat}=1,1"], "a seed is given twice")):
        assert bench.main([*argv, "--out", str(out)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert not out.exists()

    import ray

    seen, truth_cfg_seed = {}, {}

    def fake_run_task(profile, task, work, cache, log):
        seen[task] = profile["truth_seeds"]
        cfg = bench.base_config(profile, task, work, cache)
        truth_cfg_seed[task] = cfg["ranking"]["ground_truth_training"]["seed"]
        return [], {"seeds": profile["truth_seeds"]}, {"damoc": cfg}

    monkeypatch.setattr(bench, "run_task", fake_run_task)
    monkeypatch.setattr(bench, "prepare_candidates", lambda *a: (0.0, {}))
    monkeypatch.setattr(bench, "write_outputs", lambda payload, path, readme: path.write_text(json.dumps(payload)))
    monkeypatch.setattr(ray, "init", lambda *a, **k: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    work = str(tmp_path / "work")
    assert bench.main(["--truth-seeds", f"{lexcat}=3,1,4", "--out", str(out), "--work", work]) == 0
    assert seen == {lexcat: [3, 1, 4], defgen: [0]} and truth_cfg_seed == {lexcat: 3, defgen: 0}
    assert bench.main(["--truth-seeds", "0,2", "--truth-seeds", f"{lexcat}=0,1,2,3,4",
                       "--out", str(out), "--work", work]) == 0
    assert seen == {lexcat: [0, 1, 2, 3, 4], defgen: [0, 2]}
    profile = json.loads(out.read_text())["config"]["profile"]
    assert profile["truth_seeds"] == [0, 2] and profile["truth_seeds_by_task"] == {lexcat: [0, 1, 2, 3, 4]}
    assert bench._command({"config": {"profile": profile}}) == \
        f"`python benchmarks/rank_fidelity.py --truth-seeds 0,2 --truth-seeds {lexcat}=0,1,2,3,4`"
    assert "truth_seeds_by_task" not in bench.PROFILES["full"]


def test_the_readme_names_the_command_that_wrote_the_results():
    """`make bench` trains the ground truth with one seed and repeats the demo proxy with training
    seeds 0 and 1; a results file written with other seeds is labelled with the flags that
    reproduce it, not with `make bench`."""
    bench = _benchmark_module()
    assert bench._command({"config": {"profile": {"truth_seeds": [0], "proxy_seeds": [0, 1]}}}) == \
        "`python benchmarks/rank_fidelity.py` (`make bench`)"
    assert bench._command({"config": {"profile": {"truth_seeds": [0, 1], "proxy_seeds": [0, 1]}}}) == \
        "`python benchmarks/rank_fidelity.py --truth-seeds 0,1`"
    assert bench._command({"config": {"profile": {"truth_seeds": [0], "proxy_seeds": [0, 1, 2]}}}) == \
        "`python benchmarks/rank_fidelity.py --proxy-seeds 0,1,2`"
    assert bench._command({"config": {"profile": {"truth_seeds": [0, 1], "proxy_seeds": [0, 1, 2, 3, 4]}}}) == \
        "`python benchmarks/rank_fidelity.py --truth-seeds 0,1 --proxy-seeds 0,1,2,3,4`"
    # A file written before the proxy was repeated ran it with the job's seed alone.
    assert bench._command({"config": {"profile": {"truth_seeds": [0]}}}) == \
        "`python benchmarks/rank_fidelity.py --proxy-seeds 0`"


def test_the_readme_names_sweep_points_a_file_has_and_the_default_no_longer_runs():
    """A results file written when the default sweep had other points: `make bench` at HEAD would
    not give those rows, so the command is followed by the points that differ."""
    bench = _benchmark_module()
    default = bench.PROFILES["full"]["sweep"]
    # As a results file stores it: JSON lists, not tuples; one point more, one fewer.
    older = {task: [[0.1, 0.25]] + [list(p) for p in grid[1:]] for task, grid in default.items()}
    first = default["wordnet-lexcat"][0]
    text = bench._command({"config": {"profile": {"truth_seeds": [0], "proxy_seeds": [0, 1], "sweep": older}}})
    assert text == ("`python benchmarks/rank_fidelity.py` (`make bench`) (its sweep also had keep / prune "
                    f"0.1 / 0.25, dropped from the default since; its sweep lacked {first[0]:g} / {first[1]:g}, "
                    "added to the default since)")
    same = {task: [list(p) for p in grid] for task, grid in default.items()}
    assert bench._command({"config": {"profile": {"truth_seeds": [0], "proxy_seeds": [0, 1], "sweep": same}}}) == \
        "`python benchmarks/rank_fidelity.py` (`make bench`)"


def test_the_default_proxy_is_repeated_with_each_training_seed_against_the_same_truth(monkeypatch, tmp_path):
    """`--proxy-seeds`: the demo proxy runs again with each other training seed (the job's own seed
    is the damoc run itself), only that seed changed, and each run is scored against the one
    ground truth; the damoc row carries every seed's figures and their spread, and the README
    section states them beside the job seed's verdict."""
    bench = _benchmark_module()
    task = "wordnet-lexcat"
    scores = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}
    truth = bench.truth_over_seeds([_fake_report(scores, ["a", "b", "c", "d"], fine_tune_s=100.0)], [0], "accuracy")
    proxy_order = {1: ["a", "c", "b", "d"], 2: ["b", "a", "c", "d"]}
    ran = []

    def fake_run(cfg):
        ran.append(cfg)
        return _fake_report(scores, proxy_order[cfg["training"]["seed"]])

    monkeypatch.setattr(bench, "run", fake_run)
    base = bench.base_config(bench.PROFILES["full"], task, tmp_path / "work", None)
    damoc_cfg = bench.variant(base, "damoc", baselines=["zero_shot"])
    damoc_row = bench.method_result(task, "damoc", _fake_report(scores, ["a", "b", "c", "d"]), truth, damoc_cfg)
    logged = []
    extra = bench.repeat_over_proxy_seeds(task, base, damoc_row, damoc_cfg, truth, [0, 1, 2],
                                          lambda t, row: logged.append(row["method"]))

    assert [c["training"]["seed"] for c in ran] == [1, 2]          # seed 0 is the job's: not run again
    assert logged == ["damoc (training seed 1)", "damoc (training seed 2)"]
    for cfg in ran:
        assert cfg["ranking"]["ground_truth_training"]["seed"] == 0
        assert {**cfg, "output": None, "training": {**cfg["training"], "seed": None}} == \
            {**base, "output": None, "training": {**base.get("training", {}), "seed": None}}
    assert len({c["output"]["dir"] for c in ran} | {damoc_cfg["output"]["dir"]}) == 3

    by_seed = extra["by_proxy_seed"]
    assert extra["training_seed"] == 0 and list(by_seed) == ["0", "1", "2"]
    assert by_seed["0"]["reused"] and not by_seed["1"]["reused"]
    assert by_seed["0"]["spearman"] == 1.0 and by_seed["0"]["targets_missed"] == []
    assert abs(by_seed["1"]["spearman"] - 0.8) < 1e-9 and by_seed["1"]["top1_hit"]
    assert by_seed["2"]["chosen"] == "b" and not by_seed["2"]["top1_hit"]
    assert any(m.startswith("top-1 (chose b)") for m in by_seed["2"]["targets_missed"])
    assert any(m.startswith("Spearman 0.80 < 0.9") for m in by_seed["1"]["targets_missed"])
    spread = extra["proxy_seeds"]
    assert spread["seeds"] == [0, 1, 2] and spread["runs"] == 3
    assert abs(spread["spearman_median"] - 0.8) < 1e-9 and spread["spearman_max"] == 1.0
    assert spread["top1_hits"] == 2 and spread["all_targets_met"] == 1

    payload = {"ground_truth": {task: truth}, "results": [{**damoc_row, **extra}]}
    summary = bench.targets_summary(payload)
    assert "damoc all met" in summary
    assert ("Over training seeds 0, 1 and 2 of the demo proxy: Spearman median 0.80 (0.80 to 1.00), "
            "top-1 in 2 of 3, all four targets in 1 of 3.") in summary
    table = bench.proxy_seeds_table(payload).splitlines()
    assert table[4].startswith(f"| {task} | 0 (the job's) | 1.00 |") and table[4].endswith("| none |")
    assert table[6].startswith(f"| {task} | 2 | 0.80 |") and "top-1 (chose b)" in table[6]
    # Without repeated seeds: no table and no note.
    plain = {"ground_truth": {task: truth}, "results": [damoc_row]}
    assert bench.proxy_seeds_table(plain) == "" and "training seeds" not in bench.targets_summary(plain)


def test_proxy_seeds_flag_is_checked_and_reaches_every_task(monkeypatch, tmp_path, capsys):
    """`--proxy-seeds`: malformed, or combined with `--try` (whose entries set their own seed),
    it is refused with one line and exit 2 before anything runs; otherwise every task's run gets
    the seeds and the results file's profile records them."""
    bench = _benchmark_module()
    out = tmp_path / "rf.json"
    tried = tmp_path / "try.json"
    tried.write_text(json.dumps([{"name": "x", "keep": 0.1}]))
    for argv, expected in ((["--proxy-seeds", "0,a"], "--proxy-seeds '0,a': expected comma-separated"),
                           (["--proxy-seeds", "2,2"], "--proxy-seeds '2,2': a seed is given twice"),
                           (["--proxy-seeds", "0,1", "--try", str(tried)], "give each entry its own training.seed")):
        assert bench.main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert not out.exists()

    import ray

    seen = {}

    def fake_run_task(profile, task, work, cache, log):
        seen[task] = profile.get("proxy_seeds")
        return [], {"seeds": profile["truth_seeds"]}, {"damoc": bench.base_config(profile, task, work, cache)}

    monkeypatch.setattr(bench, "run_task", fake_run_task)
    monkeypatch.setattr(bench, "prepare_candidates", lambda *a: (0.0, {}))
    monkeypatch.setattr(bench, "write_outputs", lambda payload, path, readme: path.write_text(json.dumps(payload)))
    monkeypatch.setattr(ray, "init", lambda *a, **k: None)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    assert bench.main(["--proxy-seeds", "0,3", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    assert seen == {task: [0, 3] for task in bench.TASKS}
    assert json.loads(out.read_text())["config"]["profile"]["proxy_seeds"] == [0, 3]
    assert bench.PROFILES["full"]["proxy_seeds"] == [0, 1]   # the profile itself is left as it was


def test_a_zoo_other_than_the_published_runs_is_named_before_the_run():
    """The benchmark compares each candidate's weights digest with those the published results
    file recorded per task, and names the candidates that differ (a zoo rebuilt on another CPU);
    candidates the published run did not compare are left out, and a matching zoo gets no note."""
    bench = _benchmark_module()
    published = {"commit": "97ac1ee8101f", "task_runs": {
        "wordnet-lexcat": {"candidate_weights_sha256": {"a": "1", "b": "2"}},
        "wordnet-defgen": {"candidate_weights_sha256": {"a": "1", "c": "3"}}}}
    assert bench.other_zoo_note(published, {"a": "1", "b": "2", "c": "3", "new": "9"}) is None
    note = bench.other_zoo_note(published, {"a": "1", "b": "x", "c": "y", "new": "9"})
    assert note == ("2 of 3 candidates' weights differ from those the published run at 97ac1ee compared (b, c): "
                    "this zoo is another build, so expect other figures (benchmarks/README, portable zoo)")
    assert bench.other_zoo_note({"commit": "abc"}, {"a": "1"}) is None   # files from before task_runs


def _right_on(correct: range, rows: int = 100) -> list[list[float]]:
    return [[float(i in correct), 1.0] for i in range(rows)]


def test_the_ground_truths_test_rows_are_resampled_to_show_what_they_settle(tmp_path):
    """With per-row test scores, the ground truth reports how far its own test rows settle its
    order (test_noise), every ranking is scored against the same resamples, and the README says
    so; the rows themselves stay out of the results file. A ground truth read from trials cached
    before they kept rows has no such figures, and the tables have no such column."""
    bench = _benchmark_module()
    # b and c differ on three of 100 rows, so the rows do not settle them; a and d are far apart.
    rows0 = {"a": _right_on(range(0, 90)), "b": _right_on(range(0, 51)), "c": _right_on(range(2, 52)),
             "d": _right_on(range(2, 30))}
    rows1 = {**rows0, "d": _right_on(range(2, 32))}
    accuracy = [{n: sum(v for v, _ in r) / 100 for n, r in one.items()} for one in (rows0, rows1)]
    reports = [_fake_report(accuracy[0], ["a", "c", "b", "d"], rows=rows0),
               _fake_report(accuracy[1], ["a", "c", "b", "d"], rows=rows1)]
    truth = bench.truth_over_seeds(reports, [0, 1], "accuracy")
    assert truth["ranking"] == ["a", "b", "c", "d"]
    noise = truth["test_noise"]
    assert noise["rows"] == 100 and noise["resamples"] == 1000 and noise["top1_share"] == 1.0
    flips = {tuple(f["pair"]): f["share"] for f in noise["neighbour_flips"]}
    assert flips[("a", "b")] == 0.0 and flips[("c", "d")] == 0.0 and 0.05 < flips[("b", "c")] < 0.5
    assert all("test_rows" not in c for c in truth["candidates"].values())

    # The proxy swaps exactly the pair the rows leave open: 0.8 against this sample, but as often
    # 1.0 against a resample as the resamples swap b and c.
    row = bench.score_ranking(["a", "c", "b", "d"], truth)
    assert row["spearman"] == pytest.approx(0.8)
    assert row["test_noise"]["spearman"]["low"] == pytest.approx(0.8)
    assert row["test_noise"]["spearman"]["high"] == pytest.approx(1.0) and row["test_noise"]["top1_share"] == 1.0

    public = bench.public_truth(truth)
    assert bench.TEST_ROWS in truth and bench.TEST_ROWS not in public
    json.dumps(public)
    payload = {"ground_truth": {"t": public}, "results": [
        {"task": "t", "method": "damoc", "keep_ratio": 0.1, "prune_ratio": 0.25, "compute_ratio": 30.0,
         "wall_ratio_train": 9.0, "wall_ratio_end_to_end": 12.0, **row}]}
    text = bench.truth_table(payload)
    assert "Its 100 test rows, resampled (1000 paired bootstrap resamples)" in text
    assert f"neighbours the rows do not settle (resamples that swap or tie them): b / c {flips[('b', 'c')]:.0%}." in text
    table = bench.results_table(payload).splitlines()
    assert table[0].endswith("| Spearman, test rows resampled: median (95%) | top-1 share |")
    assert table[2].endswith(f"({_two(0.8)} to {_two(1.0)}) | 100% |")
    assert "Against resamples of the ground truth's test rows, damoc's Spearman is" in bench.targets_summary(payload)

    # Trials cached before the rows were kept: no resampling, no column, no note.
    old = bench.truth_over_seeds([_fake_report(accuracy[0], ["a", "b", "c", "d"], rows={"a": rows0["a"]})],
                                 [0], "accuracy")
    assert old["test_noise"] is None and bench.TEST_ROWS not in old
    assert "test_noise" not in bench.score_ranking(["a", "b", "c", "d"], old)
    payload = {"ground_truth": {"t": old}, "results": [{**payload["results"][0], "test_noise": None}]}
    assert "resampled" not in bench.results_table(payload) + bench.truth_table(payload) + bench.targets_summary(payload)


def _two(value: float) -> str:
    return f"{value:.2f}"
