"""The selection engine end to end on the micro zoo with a real local Ray instance, and the trial
function on its own (no Ray). The module's selections share one local Ray, as the rank-fidelity
benchmark's runs do: a selection uses the Ray it finds and leaves it up."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from damoc.config import load_config
from damoc.trials.trial import rung_steps, run_trial

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_local_ray(micro_zoo, micro_zoo_cache, tmp_path_factory):
    """The local Ray a selection starts (damoc.orchestrate.init_ray), started once and up for this
    module: a start and stop per selection costs about 6 s. The micro zoo comes first (it builds
    with a Ray of its own). Workers inherit the environment from the start, hence the Train start
    timeout here."""
    import os

    import ray

    from damoc.orchestrate import init_ray

    before = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S")
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "60"
    started = init_ray(micro_config(tmp_path_factory.mktemp("ray"), micro_zoo_cache))
    try:
        yield
    finally:
        if started:
            ray.shutdown()
        if before is None:
            os.environ.pop("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", None)
        else:
            os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = before


def micro_config(tmp_path: Path, cache: Path, *overrides: str, candidates: list | None = None):
    """jobs/micro.yaml, pointed at the session's micro zoo and a fresh output directory."""
    data = yaml.safe_load((ROOT / "jobs" / "micro.yaml").read_text())
    if candidates is not None:
        data["candidates"] = candidates
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, [f"output.dir={tmp_path / 'out'}", f"output.cache_dir={cache}", *overrides])


@pytest.fixture(scope="module")
def selection(micro_zoo, micro_zoo_cache, tmp_path_factory):
    """One real selection: the micro zoo plus a missing candidate; trials one at a time so that
    successive halving meets a deliberately weak candidate (learning rate ~0) after a good one."""
    from damoc.pipeline import run_select

    tmp = tmp_path_factory.mktemp("select")
    candidates = [
        "zoo:micro/micro-qwen2-tiny-domain",
        {"model": "zoo:micro/micro-llama-deep-domain", "training": {"learning_rate": 1.0e-9}},
        "zoo:micro/micro-phi3-mixed",
        "zoo:micro/micro-gpt2-jargon",
        {"model": str(tmp / "no-such-checkpoint"), "name": "broken"},
    ]
    config = micro_config(tmp, micro_zoo_cache, "cluster.max_concurrent_trials=1", candidates=candidates)
    report = run_select(config)
    return tmp, config, report


def test_report_schema_and_contents(selection):
    tmp, config, report = selection
    out = tmp / "out"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["ranking"] == report["ranking"]
    for key in ("task", "metric", "candidates", "ranking", "baselines", "cost", "winner"):
        assert key in on_disk
    assert on_disk["metric"] == "accuracy" and on_disk["task"]["type"] == "classification"
    by_name = {c["name"]: c for c in on_disk["candidates"]}
    assert set(by_name) == {c.display_name for c in config.candidates}
    for c in on_disk["candidates"]:
        for key in ("name", "architecture", "params", "layers", "layers_kept", "status", "error", "score", "rank",
                    "train_tokens", "train_flops", "wall_s"):
            assert key in c, key
        assert c["status"] in ("ok", "stopped_early", "failed")
    ok = [c for c in on_disk["candidates"] if c["status"] == "ok"]
    assert ok, "at least one candidate completes"
    for c in ok:
        assert c["train_tokens"] > 0 and c["steps"] >= 1
        assert c["train_flops"] == 6 * c["params"] * c["train_tokens"]
        assert 0 <= c["test"]["accuracy"] <= 1 and c["test"]["eval_loss"] > 0
        assert c["layers_kept"] == c["layers"]
        assert set(c["baselines"]) == {"zero_shot", "few_shot"}
    # The ranking lists every candidate that was not a failure, completed ones first by score.
    ranked = [by_name[n] for n in on_disk["ranking"]]
    assert [c["rank"] for c in ranked] == list(range(1, len(ranked) + 1))
    scores = [c["score"] for c in ranked if c["status"] == "ok"]
    assert scores == sorted(scores, reverse=True)
    assert on_disk["winner"] == on_disk["ranking"][0]
    assert set(on_disk["baselines"]) == {"zero_shot", "few_shot", "size"}
    assert on_disk["baselines"]["size"]["ranking"][0] == max((c for c in on_disk["candidates"] if c["params"]),
                                                             key=lambda c: c["params"])["name"]
    assert on_disk["cost"]["proxy_train_tokens"] == sum(c["train_tokens"] or 0 for c in on_disk["candidates"])
    assert (out / "report.md").read_text().startswith("# damoc selection")
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_broken_candidate_fails_alone(selection):
    _, _, report = selection
    broken = next(c for c in report["candidates"] if c["name"] == "broken")
    assert broken["status"] == "failed" and broken["rank"] is None
    assert "model path not found" in broken["error"]
    assert "broken" not in report["ranking"] and len(report["ranking"]) == 4


def test_successive_halving_stops_the_weak_candidate(selection):
    _, _, report = selection
    weak = next(c for c in report["candidates"] if c["name"] == "micro-llama-deep-domain")
    assert weak["status"] == "stopped_early"
    assert weak["score"] is not None and weak["score_on"].startswith("validation")  # its partial score
    assert len(weak["history"]) < len(next(c for c in report["candidates"] if c["status"] == "ok")["history"])
    assert report["ranking"].index("micro-llama-deep-domain") > 0
    # Its cost counts: the stages it finished and its training up to the rung it was stopped at.
    wall = weak["wall_s"]
    assert wall["load"] > 0 and wall["model_compression"] >= 0 and 0 < wall["fine_tune"] < wall["total"]
    assert report["cost"]["trial_stage_s"]["fine_tune"] >= wall["fine_tune"]


def test_the_report_shows_each_halving_decision_and_a_winner_that_went_on_unjudged(selection):
    """Trials run one at a time here, so the first listed reaches every rung first: ASHA lets it go
    on, compared with nothing, and the report says so of whichever candidate wins that way."""
    tmp, _, report = selection
    by_name = {c["name"]: c for c in report["candidates"]}
    first = by_name["micro-qwen2-tiny-domain"]
    assert [(d["budget"], d["against"], d["stopped"]) for d in first["halving"]] == [(1, 0, False), (2, 0, False), (4, 0, False)]
    for c in report["candidates"]:
        if c["status"] == "failed":
            assert c["halving"] is None
            continue
        decisions = c["halving"]
        assert [d["budget"] for d in decisions] == [h["budget"] for h in c["history"]]
        assert [d["stopped"] for d in decisions] == [False] * (len(decisions) - 1) + [c["status"] == "stopped_early"]
    winner = by_name[report["winner"]]
    assert report["winner_unjudged_rungs"] == [d["budget"] for d in winner["halving"] if d["against"] == 0]
    note = "went on without comparison"
    markdown = (tmp / "out" / "report.md").read_text()
    assert (note in markdown) == bool(report["winner_unjudged_rungs"])


def test_winner_configs_for_llamafactory_and_axolotl(selection):
    tmp, config, report = selection
    winner_dir = tmp / "out" / "winner"
    lf = yaml.safe_load((winner_dir / "llamafactory.yaml").read_text())
    ax = yaml.safe_load((winner_dir / "axolotl.yaml").read_text())
    winner = next(c for c in report["candidates"] if c["name"] == report["winner"])
    assert lf["model_name_or_path"] == str(Path(winner["path"]).resolve()) == ax["base_model"]
    assert lf["stage"] == "sft" and lf["finetuning_type"] == "full" and "adapter" not in ax  # micro.yaml: full
    assert lf["trust_remote_code"] is False and ax["trust_remote_code"] is False
    # training.deepspeed: auto is ZeRO-2 only for full fine-tuning over several GPU workers; not here.
    assert "deepspeed" not in lf and "deepspeed" not in ax
    info = json.loads((Path(lf["dataset_dir"]) / "dataset_info.json").read_text())
    rows = json.loads((Path(lf["dataset_dir"]) / info[lf["dataset"]]["file_name"]).read_text())
    assert len(rows) == report["task"]["splits"]["train"] and {"instruction", "output"} <= set(rows[0])
    assert Path(ax["datasets"][0]["path"]).is_file() and ax["datasets"][0]["type"] == "alpaca"
    assert lf["lr_scheduler_type"] == ax["lr_scheduler"] == config.training.lr_scheduler_type


def test_rerun_resumes_from_cache(selection, micro_zoo_cache, tmp_path, monkeypatch):
    """A second run with the same config retrains nothing that finished."""
    from damoc import orchestrate
    from damoc.pipeline import run_select

    _, config, first = selection
    completed = {c["name"] for c in first["candidates"] if c["status"] in ("ok", "stopped_early")}
    ran = []
    real = orchestrate._fit

    def spy(config, jobs, *args):   # on the driver: the trials a Tune run is given
        ran.extend(job.name for job in jobs)
        return real(config, jobs, *args)

    monkeypatch.setattr(orchestrate, "_fit", spy)
    second = run_select(config.model_copy(update={"output": config.output.model_copy(update={"dir": str(tmp_path / "again")})}))
    again = {c["name"]: c for c in second["candidates"]}
    for name in completed:
        before = next(c for c in first["candidates"] if c["name"] == name)
        assert again[name]["cached"] is True and again[name]["status"] == before["status"]
        assert again[name]["score"] == before["score"]
    assert not completed & set(ran)
    assert second["ranking"] == first["ranking"]
    assert second["winner_unjudged_rungs"] == first["winner_unjudged_rungs"]   # decisions kept in the cache


def test_a_candidate_added_later_is_halved_against_the_cached_ones(micro_zoo, tmp_path):
    """Adding a candidate to a selection runs only its trial; successive halving judges it against
    the cached trials' rung results. (Ray's ASHA alone would compare it with nothing, and it would
    complete whatever its loss.) micro-llama-deep-domain has the worst first-rung loss of the four."""
    from damoc.pipeline import run_select

    cache = tmp_path / "cache"       # its own stage cache: no trial from another test's cohort
    for run in ("three", "four"):
        (tmp_path / run).mkdir()
    first = [str(micro_zoo / n) for n in ("micro-qwen2-tiny-domain", "micro-phi3-mixed", "micro-gpt2-jargon")]
    before = run_select(micro_config(tmp_path / "three", cache, "ranking.baselines=[]", candidates=first))
    after = run_select(micro_config(tmp_path / "four", cache, "ranking.baselines=[]",
                                    candidates=first + [str(micro_zoo / "micro-llama-deep-domain")]))
    by_name = {c["name"]: c for c in after["candidates"]}
    for c in before["candidates"]:
        assert by_name[c["name"]]["cached"] is True and by_name[c["name"]]["status"] == c["status"]
    added = by_name.pop("micro-llama-deep-domain")
    assert added["cached"] is False
    first_rung = {name: c["history"][0]["val_eval_loss"] for name, c in by_name.items()}
    loss = added["history"][0]["val_eval_loss"]
    assert loss > max(first_rung.values()), (loss, first_rung)   # the premise: it is the weakest
    assert added["status"] == "stopped_early" and len(added["history"]) == 1
    assert added["halving"] == [{"budget": 1, "against": 3, "stopped": True}]   # judged against the cached three
    assert after["ranking"][-1] == "micro-llama-deep-domain"


def test_cli_prints_the_ranking(micro_zoo, micro_zoo_cache, tmp_path, cli):
    data = yaml.safe_load((ROOT / "jobs" / "micro.yaml").read_text())
    data["candidates"] = data["candidates"][:2]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(data))
    code, out, err = cli("select", str(path), f"output.dir={tmp_path / 'out'}", f"output.cache_dir={micro_zoo_cache}",
                         "ranking.ground_truth=full_ft", "ranking.early_stopping.scheduler=none")
    assert code == 0, err
    assert out.splitlines()[0].split()[:3] == ["rank", "candidate", "status"]
    assert "winner:" in out and "agreement with full fine-tuning" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["ground_truth"]["ranking"] and set(report["agreement"]) >= {"damoc", "zero_shot", "size"}
    # Two candidates: no single one to blame for a disagreement (agreement's own tests cover more).
    assert report["agreement"]["damoc"]["misplaced"] is None and "most misplaced" not in out
    assert "| most misplaced (its rank / truth's; Spearman without it) |" in (tmp_path / "out" / "report.md").read_text()
    assert report["cost"]["ground_truth_train_tokens"] > report["cost"]["proxy_train_tokens"]  # full data vs half
    assert (tmp_path / "out" / "proxy_vs_truth.png").is_file()
    # The ground truth keeps each test row's scores (for the rank-fidelity benchmark's resampling):
    # one [value, weight] per row, adding up to its test score.
    for c in report["candidates"]:
        gt = c["ground_truth"]
        for metric in ("accuracy", "gold_logprob", "eval_loss"):
            rows = gt["test_rows"][metric]
            assert len(rows) == gt["test"]["rows"]
            assert sum(v for v, _ in rows) / sum(w for _, w in rows) == pytest.approx(gt["test"][metric], abs=1e-3)
    # ... from which the report says how far those rows settle its order, and each ranking's
    # Spearman over resamples of them (two candidates: +1 or -1 in every resample).
    noise = report["ground_truth"]["test_noise"]
    assert noise["rows"] == report["candidates"][0]["ground_truth"]["test"]["rows"] and noise["resamples"] == 1000
    assert [f["pair"] for f in noise["neighbour_flips"]] == [report["ground_truth"]["ranking"]]
    resampled = report["agreement"]["damoc"]["test_noise"]
    if report["agreement"]["damoc"]["spearman"] is None:
        # The two tie on every test row (both still at the label prior): no order to correlate
        # with in any resample, and a tie is never settled.
        assert resampled["spearman"]["median"] is None and noise["neighbour_flips"][0]["share"] == 1.0
        assert "do not settle the order of" in out
    else:
        assert {resampled["spearman"]["low"], resampled["spearman"]["high"]} <= {-1.0, 1.0}
        assert "(test rows resampled: " in out
    assert "note: the ground truth's" in out
    assert "| Spearman, test rows resampled: median (95%) |" in (tmp_path / "out" / "report.md").read_text()


def test_a_failed_ground_truth_is_reported_not_silently_dropped(micro_zoo, micro_zoo_cache, tmp_path, cli):
    """Full fine-tuning that fails (here: LoRA on a module the models lack) leaves the selection
    standing, and the CLI and report.md say the agreement could not be computed, and why."""
    data = yaml.safe_load((ROOT / "jobs" / "micro.yaml").read_text())
    data["candidates"] = data["candidates"][:2]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(data))
    code, out, err = cli("select", str(path), f"output.dir={tmp_path / 'out'}", f"output.cache_dir={micro_zoo_cache}",
                         "ranking.ground_truth=full_ft", "ranking.early_stopping.scheduler=none", "ranking.baselines=[]",
                         "ranking.ground_truth_training.method=lora",
                         "ranking.ground_truth_training.lora.target_modules=[no_such_module]")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["winner"] and not report["agreement"]["damoc"]
    assert {c["ground_truth"]["status"] for c in report["candidates"]} == {"failed"}
    note = [line for line in out.splitlines() if line.startswith("note: every ground-truth fine-tuning failed")]
    assert len(note) == 1 and "no_such_module" in note[0], out
    assert "agreement with full fine-tuning" not in out
    assert "Note: every ground-truth fine-tuning failed" in (tmp_path / "out" / "report.md").read_text()


def test_the_table_marks_scores_of_stopped_candidates_as_validation_scores():
    """A stopped proxy's validation score after a few steps (mistral-wide-code's -2.14 in the demo)
    can look better than the finished winner's test score ranked above it; the table marks it and
    says why it still ranks below."""
    from damoc.report import format_markdown, format_table

    def row(name, rank, status, score, score_on):
        return {"name": name, "rank": rank, "status": status, "score": score, "score_on": score_on, "params": 10**6,
                "layers": 4, "layers_kept": 3, "train_tokens": 100, "wall_s": {"total": 1.0}, "error": None,
                "train_flops": 6e8}

    report = {"metric": "gold_logprob", "early_stopping": {"metric": "eval_loss"},
              "candidates": [row("winner", 1, "ok", -2.17, "test"), row("fast-starter", 2, "stopped_early", -2.14, "validation")]}
    lines = format_table(report).splitlines()
    assert lines[1].split()[3] == "-2.1700" and lines[2].split()[3] == "-2.1400*"
    assert lines[3].startswith("* taken on the validation split") and "then\n  by the validation loss." in format_table(report)
    report["early_stopping"]["metric"] = "ranking"
    assert format_table(report).endswith("by the validation gold_logprob.")

    finished = dict(report, candidates=[row("winner", 1, "ok", -2.17, "test"), row("other", 2, "ok", -2.3, "test")])
    assert "*" not in format_table(finished) and len(format_table(finished).splitlines()) == 3
    md = format_markdown(dict(report, run="r", task={"source": "s", "type": "classification", "splits": {"test": 2}},
                              higher_is_better=True, winner="winner", ranking=["winner", "fast-starter"], baselines={},
                              cost={"wall_s": {}, "proxy_train_tokens": 0, "proxy_train_flops": 0}))
    assert "Scores marked (validation) are taken on the validation split" in md


def test_scores_near_zero_keep_their_order_in_the_stored_report_and_the_table():
    """gold_pmi of proxies near the label prior is ~1e-3: four decimals would tie 0.00031 and
    0.00026 in report.json and print both as 0.0003; scores of 1 or more keep four decimals."""
    from damoc.report import _round, format_table, score_text

    stored = _round({"a": 0.00031234, "b": [0.00026, -0.0123456, 0.5, 2.718281828, 0.0], "n": float("nan"), "k": 3})
    assert stored == {"a": 0.0003123, "b": [0.00026, -0.01235, 0.5, 2.7183, 0.0], "n": None, "k": 3}
    assert [score_text(v) for v in (0.00031234, -0.0123456, -2.17, 0.125, 0.0)] == \
        ["0.000312", "-0.0123", "-2.1700", "0.1250", "0.0000"]
    assert score_text(-0.0058) == "-0.00580" and score_text(0.01) == "0.0100"
    row = {"rank": 1, "status": "ok", "score_on": "test", "params": 10, "layers": 2, "layers_kept": 2,
           "train_tokens": 1, "wall_s": {"total": 1.0}, "error": None}
    table = format_table({"metric": "gold_pmi", "early_stopping": {"metric": "ranking"},
                          "candidates": [dict(row, name="a", score=0.00031), dict(row, name="b", rank=2, score=0.00026)]})
    assert [line.split()[3] for line in table.splitlines()[1:3]] == ["0.000310", "0.000260"]


def test_a_candidate_that_failed_before_pruning_shows_no_kept_layers_or_time():
    """A candidate whose pruning failed (prune 0.75 of a 4-layer model with 2 protected) has
    its layer count but no kept layers and no total time: the tables say so rather than print
    4/4 (read as kept whole), /4 or None."""
    from damoc.report import format_markdown, format_table

    ok = {"name": "winner", "rank": 1, "status": "ok", "score": -2.2, "score_on": "test", "params": 10**6,
          "layers": 6, "layers_kept": 2, "train_tokens": 100, "wall_s": {"total": 6.4}, "error": None,
          "train_flops": 6e8}
    failed = {"name": "shallow", "rank": None, "status": "failed", "score": None, "score_on": None, "params": 7 * 10**6,
              "layers": 4, "layers_kept": None, "train_tokens": None, "wall_s": {"total": None}, "train_flops": None,
              "error": "model compression failed: cannot remove 3 of 4 layers with 2 protected (at most 2 removable)"}
    report = {"metric": "gold_logprob", "early_stopping": {"metric": "eval_loss"}, "candidates": [ok, failed]}
    table = format_table(report).splitlines()
    assert table[1].split()[5] == "2/6" and table[2].split()[:6] == ["-", "shallow", "failed", "-", "7.00M", "-/4"]
    assert table[2].split()[-1] == "-"
    md = format_markdown(dict(report, run="r", task={"source": "s", "type": "classification", "splits": {"test": 2}},
                              higher_is_better=True, winner="winner", ranking=["winner"], baselines={},
                              cost={"wall_s": {}, "proxy_train_tokens": 0, "proxy_train_flops": 0}))
    row = next(line for line in md.splitlines() if line.startswith("|  | shallow |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "-/4" and cells[-1] == "" and "None" not in row, row
    assert "cannot remove 3 of 4 layers" in cells[2]


def test_the_note_names_the_ground_truth_pairs_its_test_rows_leave_open():
    """Neighbours swapped or tied in at least 5% of the resamples are named with their shares, in
    order; below that for every pair, the note says the rows settle the order; none without rows."""
    from damoc.report import truth_rows_note

    def report(*shares):
        flips = [{"pair": [a, b], "share": s} for (a, b), s in zip([("a", "b"), ("b", "c"), ("c", "d")], shares)]
        return {"ground_truth": {"test_noise": {"rows": 800, "resamples": 1000, "neighbour_flips": flips}}}

    assert truth_rows_note(report(0.0, 0.28, 0.05)) == (
        "the ground truth's 800 test rows do not settle the order of b / c, c / d: 28%, 5% of 1000 resamples of "
        "them swap or tie them, in that order; a ranking that swaps such a pair is not shown wrong by these rows")
    assert "do not settle the order of a / b: 49% of 1000 resamples of them swap or tie it;" in \
        truth_rows_note(report(0.49, 0.0, 0.0))
    assert truth_rows_note(report(0.04, 0.0, 0.01)).startswith("the ground truth's 800 test rows settle its order")
    assert truth_rows_note({"ground_truth": {"ranking": ["a"]}}) is None and truth_rows_note({}) is None


def test_the_note_names_the_candidates_whose_ground_truth_failed():
    from damoc.report import truth_failure_note

    def report(*statuses):
        return {"candidates": [{"name": f"c{i}", "ground_truth": {"status": s, "error": "boom" if s != "ok" else None}}
                               for i, s in enumerate(statuses)]}

    assert truth_failure_note(report("ok", "ok")) is None
    assert truth_failure_note({"candidates": [{"name": "c0", "ground_truth": None}]}) is None   # none was asked for
    assert truth_failure_note(report("ok", "failed", "ok")) == (
        "ground-truth fine-tuning failed for c1 (c1: failed, boom); the agreement covers the other 2 candidates, "
        "and the ground truth's cost counts only them")
    assert truth_failure_note(report("failed", "failed")).startswith("every ground-truth fine-tuning failed (c0: failed, boom)")


@pytest.mark.parametrize("override, fragment", [
    ("data_compression.tokens.keep_ratio=0", "data_compression.tokens.keep_ratio"),
    ("data_compression.filter.keep_ratio=1.5", "data_compression.filter.keep_ratio"),
    ("data_compression.filter.params.bins=3", "data_compression.filter.params.bins: not a parameter of 'random'"),
    ("model_compression.prune_ratio=1.0", "model_compression.prune_ratio"),
    ("model_compression.merge.method=average", "model_compression.merge.method"),
    ("data_compression.filter.method=nope", "unknown filter 'nope'"),
    ("candidates.0.model=zoo:micro/nope", "no candidate 'nope' in the micro zoo"),
])
def test_unsupported_or_bad_settings_exit_2_before_any_work(micro_zoo_cache, tmp_path, cli, override, fragment):
    code, out, err = cli("select", str(ROOT / "jobs" / "micro.yaml"), f"output.dir={tmp_path / 'out'}",
                         f"output.cache_dir={micro_zoo_cache}", override)
    assert code == 2 and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_gold_pmi_on_options_of_one_row_each_exits_2_before_any_work(micro_zoo_cache, tmp_path, cli):
    """gold_pmi compares each option with its mean probability over the rows, so it needs options
    that rows share (a label set); per-question options are refused, as is a generation task."""
    rows = [{"id": f"r{i}", "prompt": f"Which is right, x{i} or y{i}?", "response": f"x{i}",
             "choices": [f"x{i}", f"y{i}"], "label": 0} for i in range(40)]
    source = tmp_path / "own_options.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for data, fragment in ((str(source), "gold_pmi needs options shared across rows (a label set), and some "
                                         "option in the validation rows of"),
                           ("bundled:wordnet-defgen", "ranking.metric gold_pmi needs a classification task")):
        code, out, err = cli("select", str(ROOT / "jobs" / "micro.yaml"), f"output.dir={tmp_path / 'out'}",
                             f"output.cache_dir={micro_zoo_cache}", f"data.source={data}", "ranking.metric=gold_pmi")
        # After the data's one line of what it loaded (the check needs the rows), one line of error.
        errors = [line for line in err.splitlines() if line.startswith("damoc: error")]
        assert code == 2 and len(errors) == 1 and fragment in errors[0] and err.splitlines()[-1] == errors[0], err
        assert not (tmp_path / "out").exists()


def test_synchronous_halving_of_deepspeed_trials_exits_2_before_any_work(micro_zoo_cache, tmp_path, cli):
    code, out, err = cli("select", str(ROOT / "jobs" / "micro.yaml"), f"output.dir={tmp_path / 'out'}",
                         f"output.cache_dir={micro_zoo_cache}", "ranking.early_stopping.scheduler=sha",
                         "training.deepspeed=zero2")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "out").exists()
    assert "scheduler 'sha'" in err and "DeepSpeed" in err and "micro-qwen2-tiny-domain" in err
def test_pruned_proxies_inside_the_selection(micro_zoo, micro_zoo_cache, tmp_path):
    """Pruning and merging run inside each candidate's trial, on its compressed training rows; the
    pruned checkpoint is cached and reused when the trial itself must re-run."""
    from damoc.pipeline import run_select

    candidates = ["zoo:micro/micro-llama-deep-domain", "zoo:micro/micro-phi3-mixed", "zoo:micro/micro-qwen2-tiny-domain"]
    config = micro_config(tmp_path, micro_zoo_cache, "model_compression.prune_ratio=0.25",
                          "model_compression.merge.method=ties", "model_compression.calibration_samples=16",
                          "ranking.early_stopping.scheduler=none", "ranking.baselines=[zero_shot]", candidates=candidates)
    report = run_select(config)
    by_name = {c["name"]: c for c in report["candidates"]}
    assert all(c["status"] == "ok" for c in by_name.values())
    llama, phi3, qwen2 = (by_name[n] for n in ("micro-llama-deep-domain", "micro-phi3-mixed", "micro-qwen2-tiny-domain"))
    assert (llama["layers"], llama["layers_kept"]) == (8, 6) and len(llama["model_compression"]["removed"]) == 2
    assert (phi3["layers"], phi3["layers_kept"]) == (4, 3)
    assert qwen2["layers_kept"] == 2 and qwen2["model_compression"] is None  # round(0.25 x 2) = 0
    assert llama["model_compression"]["params_kept"] < llama["params"]
    assert len(llama["model_compression"]["block_influence"]) == 8
    # Proxy compute is counted on the pruned model.
    assert llama["train_flops"] == 6 * llama["model_compression"]["params_kept"] * llama["train_tokens"]
    assert "## Model compression" in (tmp_path / "out" / "report.md").read_text()
    entries = sorted((micro_zoo_cache / "model-compressed").iterdir())
    assert len(entries) == 2 and all((e / "importance.json").is_file() and (e / "stage.json").is_file() for e in entries)

    # Another learning rate re-runs the trials but not the pruning.
    again = run_select(config.model_copy(update={
        "training": config.training.model_copy(update={"learning_rate": 2e-3}),
        "output": config.output.model_copy(update={"dir": str(tmp_path / "again")})}))
    llama2 = next(c for c in again["candidates"] if c["name"] == "micro-llama-deep-domain")
    assert llama2["cached"] is False and llama2["model_compression"]["cached"] is True
    assert llama2["model_compression"]["removed"] == llama["model_compression"]["removed"]
    assert sorted((micro_zoo_cache / "model-compressed").iterdir()) == entries


def test_proxy_only_settings_do_not_key_the_ground_truth(micro_zoo_cache, tmp_path):
    """A trial that removes no layers (the ground truth, an unpruned proxy) runs the same whatever
    merge or layer selection is configured, and the ground truth's rungs are its own: neither may
    change its cache entry (a --try of a merge method, or of another halving schedule, once
    re-trained every candidate's ground truth). The proxies that use them still get one entry per
    setting."""
    from damoc.pipeline import _jobs

    def entries(mode, *overrides):
        config = micro_config(tmp_path, micro_zoo_cache, *overrides)
        paths = {c.display_name: str(tmp_path / "no-such-checkpoint") for c in config.candidates}
        return [job.entry for job in _jobs(config, paths, tmp_path / "data", "data-key", "classification", mode,
                                           micro_zoo_cache)]

    other = ("model_compression.merge.method=dare_ties", "model_compression.mode=block",
             "model_compression.calibration_samples=16")
    assert entries("full_ft", "model_compression.prune_ratio=0.25") == \
        entries("full_ft", "model_compression.prune_ratio=0.25", *other)
    assert entries("proxy") == entries("proxy", *other)                     # the micro job prunes nothing
    pruned = entries("proxy", "model_compression.prune_ratio=0.25")
    assert all(a != b for a, b in zip(pruned, entries("proxy", "model_compression.prune_ratio=0.25", *other)))
    assert all(a != b for a, b in zip(pruned, entries("proxy")))

    halving = ("ranking.early_stopping.rungs=2", "ranking.early_stopping.reduction_factor=3")
    assert entries("full_ft") == entries("full_ft", *halving)
    assert all(a != b for a, b in zip(entries("proxy"), entries("proxy", *halving)))


def test_data_compression_on_ray_data_inside_the_selection(micro_zoo, micro_zoo_cache, tmp_path):
    """A DaMoC filter and key-token compression run as Ray Data actors in the selection's Ray
    session; the trials train on what they produced and the report accounts for it."""
    from damoc.pipeline import run_select

    candidates = ["zoo:micro/micro-qwen2-tiny-domain", "zoo:micro/micro-gpt2-jargon"]
    config = micro_config(tmp_path, micro_zoo_cache, "data_compression.filter.method=kcenter",
                          "data_compression.filter.keep_ratio=0.25", "data_compression.tokens.enabled=true",
                          "data_compression.tokens.keep_ratio=0.6", "data_compression.engine=ray_data",
                          f"data_compression.scorer_model={micro_zoo / 'micro-phi3-mixed'}",
                          "ranking.early_stopping.scheduler=none", "ranking.baselines=[zero_shot]", candidates=candidates)
    report = run_select(config)
    dc = report["data_compression"]
    assert dc["engine"] == "ray_data" and dc["filter"]["method"] == "kcenter"
    assert (dc["rows_in"], dc["rows_out"]) == (256, 64) and dc["tokenizer"] == "scorer"
    assert dc["tokens"]["fields"]["prompt"]["tokens_out"] < dc["tokens"]["fields"]["prompt"]["tokens_in"]
    assert set(dc["per_candidate"]) == set(c.split("/")[-1] for c in candidates)
    for counts in dc["per_candidate"].values():
        assert counts["tokens_out"] < counts["tokens_in"] / 4       # a quarter of the rows, shorter prompts
    assert dc["seconds"]["score:embedding"] > 0 and dc["seconds"]["tokens"] > 0
    entry = next(p for p in (micro_zoo_cache / "data-compressed").iterdir() if (p / "stats.json").is_file()
                 and json.loads((p / "stats.json").read_text())["filter"]["method"] == "kcenter")
    trained_on = [json.loads(line) for line in (entry / "train.jsonl").read_text().splitlines()]
    assert len(trained_on) == 64 and all("compressed_from" in r["meta"] for r in trained_on)
    assert "## Data compression" in (tmp_path / "out" / "report.md").read_text()
    assert all(c["status"] == "ok" for c in report["candidates"])


def test_curve_ranking_inside_the_selection(micro_zoo, micro_zoo_cache, tmp_path, cli):
    """ranking.method curve: validation loss at every rung, extrapolated to the full budget; the
    curve table round-trips through `damoc curves rank` to the same ranking."""
    from damoc.pipeline import run_select

    candidates = ["zoo:micro/micro-qwen2-tiny-domain", "zoo:micro/micro-phi3-mixed", "zoo:micro/micro-mistral-wide-code"]
    config = micro_config(tmp_path, micro_zoo_cache, "ranking.method=curve", "ranking.early_stopping.scheduler=none",
                          "ranking.early_stopping.rungs=4", "ranking.baselines=[size]", candidates=candidates)
    report = run_select(config)
    curves = report["curves"]
    assert report["ranking_method"] == "curve" and curves["method"] == "ats"
    # 8 proxy steps x batch 8, evaluated at steps 1, 2, 4, 8; the target is the ground truth's
    # 16 steps x batch 8 (jobs/micro.yaml).
    assert all(c["budgets"] == [8, 16, 32, 64] for c in curves["curves"].values())
    assert set(curves["targets"].values()) == {128}
    assert report["ranking"] == sorted(curves["predicted"], key=curves["predicted"].get)
    assert report["baselines"]["final_score"]["ranking"] and "size" in report["baselines"]
    out = tmp_path / "out"
    assert (out / "fitted_curves.png").stat().st_size > 0 and "## Learning curves (ats)" in (out / "report.md").read_text()
    code, stdout, err = cli("curves", "rank", "--table", str(out / "curve_table.csv"), "--max-budget", "64",
                            "--target", "128", "--method", "ats", "--json")
    assert code == 0, err
    assert json.loads(stdout)["ranking"] == report["ranking"]


def test_curve_ranking_needs_three_rungs(micro_zoo_cache, tmp_path, cli):
    code, out, err = cli("select", str(ROOT / "jobs" / "micro.yaml"), f"output.dir={tmp_path / 'out'}",
                         f"output.cache_dir={micro_zoo_cache}", "ranking.method=curve", "ranking.early_stopping.rungs=2")
    assert code == 2 and "needs at least 3 rungs" in err and not (tmp_path / "out").exists()



def test_synchronous_halving_decides_the_same_in_any_order_and_after_a_candidate_is_added(micro_zoo, tmp_path, monkeypatch):
    """scheduler: sha. One run of four candidates, listed backwards with two trials at a time;
    another of three, listed forwards one at a time, then the fourth added to it, in its stage
    cache. The decisions, statuses, scores and ranking are the same, and the added run trains only
    the slices it lacks: the new candidate's, and those of a candidate that four make room for at
    the first rung (keep 4 // 2 = 2, against 3 // 2 = 1) which resumes from its rung record."""
    from damoc import orchestrate
    from damoc.pipeline import run_select

    names = ["micro-qwen2-tiny-domain", "micro-phi3-mixed", "micro-gpt2-jargon", "micro-mistral-wide-code"]
    paths = [str(micro_zoo / n) for n in names]
    sha = ("ranking.early_stopping.scheduler=sha", "ranking.baselines=[zero_shot]", "model_compression.prune_ratio=0.25")
    for run in ("backwards", "three", "four"):
        (tmp_path / run).mkdir()
    backwards = run_select(micro_config(tmp_path / "backwards", tmp_path / "cache-b", *sha,
                                        "cluster.max_concurrent_trials=2", candidates=paths[::-1]))
    three = run_select(micro_config(tmp_path / "three", tmp_path / "cache-a", *sha,
                                    "cluster.max_concurrent_trials=1", candidates=paths[:3]))
    ran, given = [], []
    real = orchestrate._fit

    def spy(config, jobs, extra, *args):   # on the driver: the trials each Tune run is given
        ran.extend((job.name, extra[job.name]["pause_at_rung"], extra[job.name]["resume_from"]) for job in jobs)
        given.append([job.name for job in jobs])
        return real(config, jobs, extra, *args)

    monkeypatch.setattr(orchestrate, "_fit", spy)
    four = run_select(micro_config(tmp_path / "four", tmp_path / "cache-a", *sha,
                                   "cluster.max_concurrent_trials=1", candidates=paths))

    def decided(report):
        return {c["name"]: (c["status"], c["score"], c["score_on"], json.dumps(c["halving"]),
                            [h["val_eval_loss"] for h in c["history"]]) for c in report["candidates"]}

    assert four["ranking"] == backwards["ranking"] and decided(four) == decided(backwards)
    statuses = [c["status"] for c in four["candidates"]]
    assert statuses.count("ok") == 1 and statuses.count("stopped_early") == 3
    for c in four["candidates"]:   # judged against all the others at every rung it reached
        assert [(d["budget"], d["against"]) for d in c["halving"]] == [(1, 3), (2, 1)][:len(c["halving"])]
    assert four["winner_unjudged_rungs"] == []
    # Each rung's cut: the last kept against the first stopped, from the rows their rung records
    # kept; the difference is their validation losses' (the metric the halving compared).
    loss = {(c["name"], h["budget"]): h["val_eval_loss"] for c in four["candidates"] for h in c["history"]}
    assert [cut["budget"] for cut in four["halving_cuts"]] == [1, 2]
    for cut in four["halving_cuts"]:
        there = {n: v for (n, b), v in loss.items() if b == cut["budget"]}
        order = sorted(there, key=there.get)
        assert (cut["kept"], cut["stopped"]) == tuple(order[len(order) // 2 - 1:len(order) // 2 + 1])
        # Each value is stored rounded (four decimals for losses of 1 or more): their difference
        # and the stored difference may part by up to 1e-4.
        assert cut["difference"] == pytest.approx(there[cut["stopped"]] - there[cut["kept"]], abs=1.01e-4)
        assert cut["rows"] == four["task"]["splits"]["validation"] and cut["se"] > 0 and cut["z"] >= 0
    # Three candidates: only the best goes on at the first rung; four: two do.
    assert [len(c["halving"]) for c in three["candidates"]].count(1) == 2
    assert [len(c["halving"]) for c in four["candidates"]].count(1) == 2
    revived = {c["name"] for c in four["candidates"] if len(c["halving"]) == 2} - \
        {c["name"] for c in three["candidates"] if len(c["halving"]) == 2}
    trained = {name for name, _, _ in ran}
    assert trained == {"micro-mistral-wide-code"} | revived
    for name, rung, resume in ran:
        if name in revived - {"micro-mistral-wide-code"}:
            assert rung == 1 and resume.endswith("budget-1")   # from its record, not from the start
    by_name = {c["name"]: c for c in four["candidates"]}
    assert all(by_name[n]["cached"] for n in names if n not in trained)
    weights = {n: sum(f.stat().st_size for f in (micro_zoo / n).glob("*.safetensors")) for n in names}
    assert given and all(run == sorted(run, key=lambda n: -weights[n]) for run in given)   # largest first


# ------------------------------------------------------------------------- the trial alone
def trial_settings(path: str, data_dir: Path, **training) -> dict:
    from damoc.config.schema import ModelCompressionConfig, TrainingConfig

    return {"mode": "proxy", "candidate": {"name": "c", "path": path},
            "training": TrainingConfig.model_validate({"method": "full", "max_steps": 4, "batch_size": 4,
                                                      "max_seq_length": 64, **training}).model_dump(mode="json"),
            "model_compression": ModelCompressionConfig().model_dump(mode="json", by_alias=True),
            "data_dir": str(data_dir), "task_type": "classification", "validation_rows": 8, "test_rows": 8,
            "baselines": ["zero_shot"], "few_shot_k": 1, "rungs": 2, "reduction_factor": 2}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from damoc.config.schema import DataConfig
    from damoc.data import load_data
    from damoc.io import write_jsonl

    data = load_data(DataConfig.model_validate({"source": "bundled:wordnet-lexcat",
                                                "max_rows": {"train": 32, "validation": 8, "test": 8}}))
    out = tmp_path_factory.mktemp("data")
    for split, rows in data.splits.items():
        write_jsonl(out / f"{split}.jsonl", rows)
    return out


def test_trial_reports_baselines_rungs_and_final(micro_zoo, small_data):
    reports = []
    result = run_trial(trial_settings(str(micro_zoo / "micro-qwen2-tiny-domain"), small_data), reports.append)
    assert [r["status"] for r in reports] == ["baselines", "running", "running", "completed"]
    assert [r["budget"] for r in reports] == [0, 1, 2, 2] and [r["step"] for r in reports] == [0, 2, 4, 4]
    assert result["status"] == "ok" and result["steps"] == 4 and result["train_tokens"] > 0
    assert json.loads(reports[-1]["result_json"])["test"] == result["test"]
    assert "zero_shot" in result["baselines"] and all(math.isfinite(r["val_eval_loss"]) for r in reports)


def test_trial_reports_the_halving_metric_lower_is_better(micro_zoo, small_data):
    from damoc.trials.trial import FAILED_LOSS

    path = str(micro_zoo / "micro-qwen2-tiny-domain")
    by_loss, by_logprob = [], []
    run_trial(trial_settings(path, small_data), by_loss.append)
    run_trial({**trial_settings(path, small_data), "halving_metric": "gold_logprob"}, by_logprob.append)
    # The scheduler's one metric: the loss as it is, the gold option's log-probability negated, and
    # the worst value before any rung (the baselines report) so nothing is halved on it.
    assert [r["halving_loss"] for r in by_loss] == [FAILED_LOSS] + [r["val_eval_loss"] for r in by_loss[1:]]
    assert by_logprob[0]["halving_loss"] == FAILED_LOSS
    assert [r["halving_loss"] for r in by_logprob[1:]] == [-r["val_gold_logprob"] for r in by_logprob[1:]]
    assert by_logprob[-1]["status"] == "completed" and by_logprob[-1]["val_gold_logprob"] == by_logprob[-2]["val_gold_logprob"]
    assert all(r["halving_loss"] > 0 for r in by_logprob[1:])  # a log-probability, negated


def test_halving_on_a_metric_the_rungs_do_not_measure_exits_2(micro_zoo_cache, tmp_path, cli):
    code, out, err = cli("select", str(ROOT / "jobs" / "micro.yaml"), f"output.dir={tmp_path / 'out'}",
                         f"output.cache_dir={micro_zoo_cache}", "data.source=bundled:wordnet-defgen",
                         "ranking.metric=rouge_l", "ranking.early_stopping.metric=ranking")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "out").exists()
    assert "ranking.early_stopping.metric 'ranking' needs a ranking.metric the rungs measure" in err and "rouge_l" in err


def test_trial_lora_trains_only_adapters(micro_zoo, small_data):
    result = run_trial(trial_settings(str(micro_zoo / "micro-phi3-mixed"), small_data, method="lora"), lambda m: None)
    assert result["status"] == "ok" and 0 < result["trainable_params"] < result["params"] / 2


def test_trial_divergence_and_missing_model_fail_cleanly(micro_zoo, small_data, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # A checkpoint with a NaN weight: its loss is NaN from the first step.
    source = micro_zoo / "micro-qwen2-tiny-domain"
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path / "nan")
    reports = []
    diverged = run_trial(trial_settings(str(tmp_path / "nan"), small_data), reports.append)
    assert diverged["status"] == "failed" and "training diverged" in diverged["error"]
    assert reports[-1]["status"] == "failed"
    missing = run_trial(trial_settings(str(tmp_path / "nothing"), small_data), lambda m: None)
    assert missing["status"] == "failed" and "model path not found" in missing["error"]


def test_trial_refuses_pickled_checkpoints(micro_zoo, small_data, tmp_path):
    import shutil

    ckpt = tmp_path / "pickled"
    shutil.copytree(micro_zoo / "micro-qwen2-tiny-domain", ckpt)
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    result = run_trial(trial_settings(str(ckpt), small_data), lambda m: None)
    assert result["status"] == "failed" and "no .safetensors weights" in result["error"]


def test_rung_steps_are_geometric_and_end_at_the_budget():
    assert rung_steps(40, 3, 2) == [10, 20, 40]
    assert rung_steps(27, 3, 3) == [3, 9, 27]
    assert rung_steps(5, 1, 2) == [5]


def test_deepspeed_zero2_trial_on_cpu(micro_zoo, small_data):
    """DeepSpeed ZeRO-2 on CPU/gloo in one in-process worker (local mode makes its own group)."""
    import torch.distributed as dist

    from damoc.trials.trial import run_trial_safely

    reports = []
    result = run_trial_safely(trial_settings(str(micro_zoo / "micro-qwen2-tiny-domain"), small_data,
                                             deepspeed="zero2", gradient_accumulation_steps=2), reports.append)
    assert result["status"] == "ok", result.get("error")
    assert result["engine"] == "DeepSpeedEngine" and result["deepspeed"] == 2
    assert result["steps"] == 4 and result["train_tokens"] > 0
    assert not dist.is_initialized()  # the group it made for DeepSpeed is gone again


def test_distributed_workers_with_asha(micro_zoo, micro_zoo_cache, tmp_path):
    """Two Ray Train workers per candidate (DDP on gloo) under ASHA: trials the scheduler stops
    must release their workers, or the next trial would wait for resources forever."""
    from damoc.pipeline import run_select

    data = yaml.safe_load((ROOT / "jobs" / "micro.yaml").read_text())
    config = micro_config(tmp_path, micro_zoo_cache, "cluster.workers_per_candidate=2", "cluster.cpus_per_worker=0.5",
                          candidates=data["candidates"][:3])
    report = run_select(config)
    statuses = {c["name"]: c["status"] for c in report["candidates"]}
    assert "failed" not in statuses.values(), report["candidates"]
    completed = [c for c in report["candidates"] if c["status"] == "ok"]
    assert completed and all(c["workers"] == 2 for c in completed)


def test_generation_trial_scores_rouge_and_bertscore(micro_zoo, tmp_path):
    from damoc.config.schema import DataConfig
    from damoc.data import load_data
    from damoc.io import write_jsonl

    data = load_data(DataConfig.model_validate({"source": "bundled:wordnet-defgen",
                                                "max_rows": {"train": 32, "validation": 8, "test": 8}}))
    for split, rows in data.splits.items():
        write_jsonl(tmp_path / f"{split}.jsonl", rows)
    settings = dict(trial_settings(str(micro_zoo / "micro-gemma-wide-general"), tmp_path, packing=True),
                    task_type="generation", test_per_row=True)
    result = run_trial(settings, lambda m: None)
    assert result["status"] == "ok", result.get("error")
    test = result["test"]
    assert 0 <= test["rouge_l"] <= 1 and 0 <= test["bertscore"] <= 1 and test["eval_loss"] > 0
    assert "accuracy" not in test
    # A ground truth (test_per_row) keeps each test row's score for every metric it may be ranked
    # by, generation's included, so its test rows can be resampled (damoc.ranking.agreement).
    rows = result["test_rows"]
    assert set(rows) == {"eval_loss", "rouge_l", "bertscore"}
    for key in ("rouge_l", "bertscore"):
        assert len(rows[key]) == 8 and all(w == 1 and 0 <= v <= 1 for v, w in rows[key]), key
        assert sum(v for v, _ in rows[key]) / 8 == pytest.approx(test[key], abs=1e-9), key
    assert not any(k.startswith("row_") for k in test)


def test_rouge_l_is_scored_row_by_row():
    from damoc.trials.evaluate import rouge_l, rouge_l_scores

    predictions = ["the cat sat on the mat", "a dog", "cats sitting"]
    references = ["the cat sat on the mat", "the cat", "a cat sat"]
    scores = rouge_l_scores(predictions, references)
    assert scores[0] == 1.0 and scores[1] == 0.0
    assert 0 < scores[2] < 1   # "cats" stems to "cat"; "sitting" is not "sat"
    assert rouge_l(predictions, references) == pytest.approx(sum(scores) / 3)
    assert rouge_l([], []) == 0.0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_trial_paused_at_each_rung_and_resumed_trains_as_one_that_never_stopped(micro_zoo, small_data, tmp_path, method):
    """Synchronous successive halving runs a trial in slices, one per rung, each resumed from the
    last one's rung record (weights, optimizer, random state, data position). Dropout is on, so a
    lost random state would show."""
    from damoc.trials.rungs import OPTIMIZER, WEIGHTS, record_dir

    settings = dict(trial_settings(str(micro_zoo / "micro-phi3-mixed"), small_data, method=method, max_steps=8),
                    rungs=3, rung_records=str(tmp_path / "rungs"))
    if method == "lora":
        settings["training"]["lora"]["dropout"] = 0.1
    whole = []
    expected = run_trial(settings, whole.append)
    sliced, previous = [], None
    for rung in (0, 1, None):
        reports = []
        result = run_trial(dict(settings, pause_at_rung=rung, resume_from=previous), reports.append)
        sliced.append((reports, result))
        if rung is not None:
            assert result["status"] == "paused" and reports[-1]["status"] == "paused"
            previous = str(record_dir(tmp_path / "rungs", 2 ** rung))
            assert (Path(previous) / WEIGHTS).is_file() and (Path(previous) / OPTIMIZER).is_file()
    final = sliced[-1][1]
    assert final["status"] == "ok" and final["steps"] == expected["steps"] == 8
    assert [h["step"] for h in final["history"]] == [h["step"] for h in expected["history"]] == [2, 4, 8]
    for got, want in zip(final["history"], expected["history"]):
        assert got["val_eval_loss"] == pytest.approx(want["val_eval_loss"], rel=1e-5, abs=1e-6)
        assert got["train_tokens"] == want["train_tokens"]
    assert final["train_tokens"] == expected["train_tokens"] and final["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
    assert final["test"]["accuracy"] == expected["test"]["accuracy"]
    assert final["test"]["eval_loss"] == pytest.approx(expected["test"]["eval_loss"], rel=1e-5)
    # The baselines ran once, in the first slice; the costs add up over the slices.
    assert [r["status"] for r in sliced[0][0]] == ["baselines", "running", "paused"]
    from damoc import fingerprint as fp

    first = fp.read_summary(record_dir(tmp_path / "rungs", 1))
    assert final["baselines"] == expected["baselines"]
    assert final["wall_s"]["baselines"] == first["wall"]["baselines"] > 0   # evaluated once, in the first slice
    assert final["wall_s"]["fine_tune"] > max(h["fine_tune_s"] for h in final["history"][:2]) > 0


def test_the_evaluation_batch_size_reaches_every_evaluation_but_not_the_trials_cache_key(micro_zoo, micro_zoo_cache,
                                                                                         small_data, tmp_path,
                                                                                         monkeypatch):
    """`ranking.eval_batch_size` is speed and memory: a trial cached at one size is reused at another."""
    import damoc.trials.evaluate as evaluate
    from damoc.pipeline import _jobs

    def jobs(*overrides):
        config = micro_config(tmp_path, micro_zoo_cache, *overrides)
        paths = {c.display_name: str(tmp_path / "no-such-checkpoint") for c in config.candidates}
        return _jobs(config, paths, tmp_path / "data", "data-key", "classification", "proxy", micro_zoo_cache)

    default, small = jobs(), jobs("ranking.eval_batch_size=2")
    assert [j.entry for j in default] == [j.entry for j in small]
    assert {j.settings["eval_batch_size"] for j in default} == {32} and {j.settings["eval_batch_size"] for j in small} == {2}

    sizes = []
    real = evaluate.in_batches
    monkeypatch.setattr(evaluate, "in_batches", lambda n, size, run, desc: sizes.append(size) or real(n, size, run, desc=desc))
    settings = dict(trial_settings(str(micro_zoo / "micro-qwen2-tiny-domain"), small_data), eval_batch_size=2)
    result = run_trial(settings, lambda metrics: None)
    assert result["status"] == "ok", result.get("error")
    # Zero-shot, every rung's validation and the test evaluation all ran at 2 rows a batch.
    assert len(sizes) >= 4 and set(sizes) == {2}


def test_a_training_setting_added_later_keys_a_trial_only_away_from_its_default(micro_zoo_cache, tmp_path):
    """`training.lr_scheduler_type` came after trials were cached: at its default (cosine, what
    every trial ran before) it leaves their keys as they were; another schedule is another trial."""
    from damoc.pipeline import _jobs

    def entries(*overrides):
        config = micro_config(tmp_path, micro_zoo_cache, *overrides)
        paths = {c.display_name: str(tmp_path / "no-such-checkpoint") for c in config.candidates}
        return [job.entry for job in _jobs(config, paths, tmp_path / "data", "data-key", "classification", "proxy",
                                           micro_zoo_cache)]

    default = entries()
    assert entries("training.lr_scheduler_type=cosine") == default
    constant = entries("training.lr_scheduler_type=constant")
    assert all(a != b for a, b in zip(constant, default)) and constant != entries("training.lr_scheduler_type=linear")
    # gold_pmi, likewise added later: trials cached before it lack it, so a run ranked by it has
    # trials of its own, and runs ranked by the scores every trial had keep sharing theirs.
    assert entries("ranking.metric=gold_logprob") == entries("ranking.metric=accuracy") == default
    pmi = entries("ranking.metric=gold_pmi")
    assert all(a != b for a, b in zip(pmi, default))
