"""damoc's asynchronous successive halving (damoc.orchestrate.async_halving): it decides as Ray's
ASHAScheduler does, and it also judges the trials run now against rung results recorded before
(cached trials of the same selection). No Ray cluster: the schedulers are called directly."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from damoc.orchestrate import TrialOutcome, _scheduler, async_halving, cut_margin, halving_survivors, prior_rungs

CONTINUE, STOP = "CONTINUE", "STOP"


def trial(name: str):
    return SimpleNamespace(trial_id=f"id-{name}", config={"candidate": name})


def result(budget, loss):
    return {"budget": budget, "halving_loss": loss}


def random_run(rng: random.Random, n: int, milestones: list[int]) -> list[tuple[str, int, float]]:
    """Each trial's results at the milestones, interleaved in a random order that keeps each
    trial's own order (as concurrent trials report); now and then a trial skips a rung's report, or
    reports a rung again (as a restarted trial does)."""
    queues = {}
    for i in range(n):
        rows = [(m, rng.uniform(1.0, 3.0)) for m in sorted(milestones) if m == max(milestones) or rng.random() > 0.15]
        queues[f"c{i}"] = [row for row in rows for _ in range(2 if rng.random() < 0.15 else 1)]
    events = []
    while queues:
        name = rng.choice(sorted(queues))
        budget, loss = queues[name].pop(0)
        events.append((name, budget, loss))
        if not queues[name]:
            del queues[name]
    return events


@pytest.mark.parametrize("rf,rungs,grace", [(2, 3, 1), (3, 3, 1), (2, 4, 2)])
def test_decides_as_rays_asha_does(rf, rungs, grace):
    """Without prior results, the same results in the same order get the same decisions as Ray's
    ASHAScheduler (one bracket, trials not stopped at the last rung), over many random runs."""
    from ray.tune.schedulers import ASHAScheduler

    milestones = [rf ** k for k in range(grace - 1, rungs)]
    rng = random.Random(rf * 100 + rungs * 10 + grace)
    stops = 0
    for _ in range(40):
        ray_asha = ASHAScheduler(time_attr="budget", metric="halving_loss", mode="min", max_t=rf ** (rungs - 1),
                                 grace_period=rf ** (grace - 1), reduction_factor=rf, stop_last_trials=False)
        ours = async_halving(milestones, rf, {})
        events = random_run(rng, rng.randint(2, 9), milestones)
        trials = {name: trial(name) for name, _, _ in events}
        for t in trials.values():
            ray_asha.on_trial_add(None, t)
        stopped = set()
        for name, budget, loss in events:
            if name in stopped:
                continue
            theirs = ray_asha.on_trial_result(None, trials[name], result(budget, loss))
            mine = ours.on_trial_result(None, trials[name], result(budget, loss))
            assert mine == theirs, (name, budget, loss, events)
            if mine == STOP:
                stopped.add(name)
        stops += len(stopped)
    assert stops > 0   # the runs exercised stopping, not only promotion


def test_trials_run_now_are_judged_against_the_cached_ones():
    """Ray's ASHA lets the first trial to reach a rung go on, whatever its loss, since it is compared
    with nothing: a resumed selection's unfinished trials would all pass their first rung. Seeded
    with the cached trials' rung results, a late trial is stopped unless it is in the best half."""
    prior = {"a": {1: 1.0, 2: 0.9, 4: 0.8}, "b": {1: 2.0, 2: 1.8}, "c": {1: 3.0}}
    halving = async_halving([1, 2, 4], 2, prior)
    weak, good = trial("weak"), trial("good")
    assert halving.on_trial_result(None, weak, result(1, 2.5)) == STOP      # median of 1, 2, 3 is 2
    assert halving.on_trial_result(None, good, result(1, 1.5)) == CONTINUE
    assert halving.on_trial_result(None, good, result(1, 1.4)) == CONTINUE   # judged once per rung
    assert halving.on_trial_result(None, good, result(2, 1.0)) == CONTINUE   # best half of 0.9, 1.8
    assert halving.on_trial_result(None, good, result(4, 0.85)) == STOP      # 0.8 is better
    # Unseeded, the same weak trial is the first at its rung and goes on.
    assert async_halving([1, 2, 4], 2, {}).on_trial_result(None, weak, result(1, 2.5)) == CONTINUE
    # Results without the scheduler's fields (the baselines report) never stop a trial.
    assert halving.on_trial_result(None, trial("x"), {"status": "baselines"}) == CONTINUE


def test_prior_rungs_read_the_halving_metric_from_cached_histories():
    history = [{"step": 3, "budget": 1, "val_eval_loss": 2.5, "val_gold_logprob": -2.1},
               {"step": 6, "budget": 2, "val_eval_loss": 2.25, "val_gold_logprob": -1.9}]
    outcomes = {
        "done": TrialOutcome("done", "completed", {}, history, cached=True),
        "stopped": TrialOutcome("stopped", "stopped_early", {}, history[:1], cached=True),
        "failed": TrialOutcome("failed", "failed", {}, history, cached=True),
        "no_rungs": TrialOutcome("no_rungs", "completed", {}, [], cached=True),
    }
    assert prior_rungs(outcomes, "eval_loss") == {"done": {1: 2.5, 2: 2.25}, "stopped": {1: 2.5}}
    # Higher is better for gold_logprob: the scheduler compares it negated, as trials report it.
    assert prior_rungs(outcomes, "gold_logprob") == {"done": {1: 2.1, 2: 1.9}, "stopped": {1: 2.1}}


def test_scheduler_choice_follows_the_config(tmp_path):
    from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler

    from damoc.config.load import validate_config

    def config(**es):
        return validate_config({"candidates": ["a"], "data": {"source": "bundled:wordnet-lexcat"},
                                "ranking": {"early_stopping": es}, "output": {"dir": str(tmp_path)}}, "test")

    asha = _scheduler(config(rungs=3, reduction_factor=3, grace=2), True, {"a": {3: 1.0, 1: 2.0}})
    assert sorted(asha.recorded) == [3, 9] and asha.recorded[3] == {"a": 1.0}   # grace 2: from budget 3
    assert type(_scheduler(config(rungs=3), False)) is FIFOScheduler            # the ground truth
    assert type(_scheduler(config(scheduler="none"), True)) is FIFOScheduler
    assert type(_scheduler(config(rungs=1), True)) is FIFOScheduler
    assert isinstance(_scheduler(config(scheduler="hyperband"), True), HyperBandScheduler)


def test_synchronous_halving_keeps_the_best_share_whatever_the_listing_order():
    """scheduler: sha decides at a rung over all the candidates there: the best max(1, n // rf) by
    halving loss, ties broken by name and a NaN (a rung that measured nothing) last, so neither the
    listing order nor the arrival order can change who goes on."""
    import itertools

    losses = {"a": 0.5, "b": 0.2, "c": float("nan"), "d": 0.9, "e": 0.2}
    for order in itertools.permutations(losses):
        assert halving_survivors({n: losses[n] for n in order}, 2) == ["b", "e"]
    assert halving_survivors({n: losses[n] for n in "abcd"}, 2) == ["b", "a"]
    assert halving_survivors(losses, 3) == ["b"] and halving_survivors({"c": float("nan"), "d": 9.0}, 2) == ["d"]
    assert halving_survivors({"only": 1.0}, 2) == ["only"]   # one candidate left always goes on
    eight = {f"m{i}": float(i) for i in range(8)}
    assert halving_survivors(eight, 2) == ["m0", "m1", "m2", "m3"] and halving_survivors(eight, 3) == ["m0", "m1"]


def test_a_candidate_stopped_at_a_rung_reports_only_what_it_had_there(tmp_path):
    """sha's outcome for a candidate stopped at a rung: what its rung record holds; or, when the
    candidate finished in an earlier run with fewer candidates and its rung records are gone (a
    cleaned cache), its finished result cut at that rung: the history up to the rung and the
    fine-tuning seconds spent by then, never its test score or its later rungs."""
    from damoc import fingerprint as fp
    from damoc.orchestrate import TrialJob, _stopped_at

    job = TrialJob("c", {}, tmp_path / "trial" / "key")
    history = [{"budget": b, "step": 2 * b, "val_eval_loss": 3.0 - b / 4, "fine_tune_s": 1.5 * b} for b in (1, 2, 4)]
    finished = {"params": 10, "layers": 4, "layers_kept": 3, "score": 0.7, "test": {"accuracy": 0.7},
                "history": history, "wall_s": {"load": 0.5, "model_compression": 0.1, "fine_tune": 6.0,
                                               "evaluate": 1.0, "total": 7.6}}
    cut = _stopped_at(job, 1, tmp_path / "no-record", finished, 2)
    assert cut.status == "stopped_early" and cut.history == history[:2]
    assert cut.result == {"params": 10, "layers": 4, "layers_kept": 3,
                          "wall_s": {"load": 0.5, "model_compression": 0.1, "fine_tune": 3.0}}
    record = tmp_path / "rungs" / "budget-2"
    record.mkdir(parents=True)
    fp.write_summary(record, {"info": {"params": 10, "layers": 4}, "elapsed_s": 2.5, "history": history[:2],
                              "wall": {"load": 0.5, "fine_tune": 2.0}})
    held = _stopped_at(job, 1, record, finished, 2)   # the record wins over the finished result
    assert held.status == "stopped_early" and held.history == history[:2]
    assert held.result == {"params": 10, "layers": 4, "elapsed_s": 2.5,
                           "wall_s": {"load": 0.5, "fine_tune": 2.0, "total": 2.5}}


@pytest.mark.parametrize("scheduler, use_scheduler, largest_first", [
    ("none", True, True), ("asha", False, True),   # no halving; the ground truth
    ("asha", True, False), ("hyperband", True, False)])
def test_trials_whose_order_changes_nothing_start_largest_first(tmp_path, monkeypatch, scheduler, use_scheduler,
                                                                largest_first):
    """Where no result depends on the order (FIFO), the largest models start first, by weight bytes
    times the layers pruning keeps (so that a large model listed last does not run alone at the end
    while the other slots idle); cached trials are not started. ASHA and HyperBand judge trials in
    the order they arrive, so there the listed order stays. Outcomes come back in the listed order."""
    from damoc import orchestrate
    from damoc.config.load import validate_config
    from damoc.orchestrate import TrialJob, run_trials

    sizes = {"small": (100, 0.0), "big-pruned": (250, 0.5), "big": (300, 0.0), "cached": (900, 0.0), "mid": (150, 0.0)}
    jobs = []
    for name, (size, prune) in sizes.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"\0" * size)
        (tmp_path / name / "notes.txt").write_bytes(b"\0" * 10_000)   # only weights count
        jobs.append(TrialJob(name, {"candidate": {"path": str(tmp_path / name)},
                                    "model_compression": {"prune_ratio": prune}}, tmp_path / "trial" / name))
    cached_entry = jobs[list(sizes).index("cached")].entry
    cached_entry.mkdir(parents=True)
    (cached_entry / "stage.json").write_text('{"history": []}')
    started = []

    def fake_fit(config, pending, extra, experiment, tune_scheduler, restarts):
        started.extend(job.name for job in pending)
        return [SimpleNamespace(config={"candidate": job.name}, metrics={}, error=None) for job in pending]

    monkeypatch.setattr(orchestrate, "_fit", fake_fit)
    monkeypatch.setattr(orchestrate, "_outcome", lambda name, result, job: TrialOutcome(name, "failed", error="x"))
    config = validate_config({"candidates": ["a"], "data": {"source": "bundled:wordnet-lexcat"},
                              "ranking": {"early_stopping": {"scheduler": scheduler, "rungs": 3}},
                              "output": {"dir": str(tmp_path)}}, "test")
    outcomes = run_trials(config, jobs, name="proxy", use_scheduler=use_scheduler)
    assert started == (["big", "mid", "big-pruned", "small"] if largest_first else ["small", "big-pruned", "big", "mid"])
    assert list(outcomes) == list(sizes)


def test_a_cut_margin_is_paired_over_the_shared_validation_rows():
    """cut_margin: the stopped candidate's loss minus the kept one's, with the standard error of a
    paired, row-by-row comparison. Rows that are hard for both models move both losses alike and
    are not noise in the difference; with equal weights the standard error is the textbook one."""
    import numpy as np

    rng = np.random.default_rng(0)
    difficulty = rng.gamma(2.0, 1.5, size=200)            # some rows far harder than others
    kept = [[d, 1] for d in difficulty]
    stopped = [[d + 0.05 + e, 1] for d, e in zip(difficulty, rng.normal(0, 0.1, size=200))]
    m = cut_margin(kept, stopped)
    diffs = np.array([b[0] - a[0] for a, b in zip(kept, stopped)])
    assert m["rows"] == 200 and m["difference"] == pytest.approx(diffs.mean())
    assert m["se"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(200))
    unpaired = np.sqrt(difficulty.var(ddof=1) / 200 * 2)
    assert m["z"] > 5 > m["difference"] / unpaired           # sure when paired, not when unpaired
    # Token-weighted losses: the difference is of the ratio losses, and scaling every row's tokens
    # (and loss) alike changes neither the losses nor the margin.
    weighted = cut_margin([[v * 3, 3] for v, _ in kept], [[v * 3, 3] for v, _ in stopped])
    assert weighted["difference"] == pytest.approx(m["difference"]) and weighted["se"] == pytest.approx(m["se"])
    tokens = rng.integers(1, 9, size=200)
    a = [[v * t, t] for (v, _), t in zip(kept, tokens)]
    b = [[v * t, t] for (v, _), t in zip(stopped, tokens)]
    want = sum(x for x, _ in b) / sum(tokens) - sum(x for x, _ in a) / sum(tokens)
    assert cut_margin(a, b)["difference"] == pytest.approx(want)
    # Swapping the two negates the difference and z, with the same standard error.
    back = cut_margin(stopped, kept)
    assert back["difference"] == pytest.approx(-m["difference"]) and back["se"] == pytest.approx(m["se"])
    # Nothing to compare: missing rows, other rows, one row; no spread: a tie, or no doubt.
    assert cut_margin(None, stopped) is None and cut_margin(kept[:10], stopped) is None
    assert cut_margin(kept[:1], stopped[:1]) is None
    assert cut_margin(kept, kept)["z"] == 0.0
    assert cut_margin(kept, [[v + 1, w] for v, w in kept])["z"] is None


def test_a_close_halving_cut_gets_one_note_naming_the_rung_and_both_candidates():
    from damoc.report import _halving_cuts, close_cut_note

    def candidate(name, *decisions):
        return {"name": name, "halving": list(decisions)}

    close = {"kept": "b", "stopped": "c", "difference": 0.004, "se": 0.01, "z": 0.4, "rows": 200}
    sure = {"kept": "a", "stopped": "b", "difference": 0.3, "se": 0.01, "z": 30.0, "rows": 200}
    candidates = [candidate("a", {"budget": 1, "against": 3, "stopped": False, "cut": close},
                            {"budget": 2, "against": 1, "stopped": False, "cut": sure}),
                  candidate("b", {"budget": 1, "against": 3, "stopped": False, "cut": close},
                            {"budget": 2, "against": 1, "stopped": True, "cut": sure}),
                  candidate("c", {"budget": 1, "against": 3, "stopped": True, "cut": close}),
                  candidate("d", {"budget": 1, "against": 3, "stopped": True, "cut": close})]
    cuts = _halving_cuts(candidates)
    assert cuts == [{"budget": 1, **close}, {"budget": 2, **sure}]
    note = close_cut_note({"halving_cuts": cuts})
    assert "at budget 1, b kept and c stopped 0.00400 apart (standard error 0.0100 over 200 rows)" in note
    assert "budget 2" not in note and "validation_rows" in note
    assert close_cut_note({"halving_cuts": [{"budget": 2, **sure}]}) is None
    assert close_cut_note({"halving_cuts": [{"budget": 1, "kept": "a", "stopped": "b"}]}) is None   # no rows kept
    assert _halving_cuts([candidate("a", {"budget": 1, "against": 0, "stopped": False})]) == []   # ASHA: no cuts
