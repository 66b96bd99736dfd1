"""benchmarks/halving_order.py: replaying successive halving on recorded rung results. The replay
of a real selection's own order gives that selection's ranking; other orders and synchronous
halving follow the rules they claim."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MILESTONES = [1, 2, 4]


def _module():
    from conftest import load_benchmark

    return load_benchmark("halving_order")


def candidate(losses, seconds=(1.0, 2.0, 3.0), test=0.5):
    return {"losses": list(losses), "rung_seconds": list(seconds), "total_seconds": seconds[-1] + 0.5,
            "test": {"accuracy": test, "eval_loss": losses[-1]}}


def test_the_first_trial_to_arrive_is_never_stopped_and_synchronous_halving_ignores_order():
    """ASHA's privilege of the first arrival, seen in the replay: whichever candidate starts first
    (one slot) reaches every rung. Synchronous halving keeps the best half at each rung whatever
    the order, and its winner is the best at the last rung among those it kept."""
    ho = _module()
    candidates = {"a": candidate([1.0, 0.9, 0.8]), "b": candidate([1.2, 0.7, 0.6]),
                  "c": candidate([1.1, 1.0, 0.95]), "d": candidate([3.0, 2.0, 1.0])}
    for order in itertools.permutations(candidates):
        outcomes = ho.replay(candidates, list(order), 1, MILESTONES, 2)
        assert outcomes[order[0]] == (3, True), order
        assert set(outcomes) == set(candidates)
    # d, the worst everywhere, goes on only when it starts first.
    assert ho.replay(candidates, ["d", "a", "b", "c"], 1, MILESTONES, 2)["d"] == (3, True)
    assert ho.replay(candidates, ["a", "d", "b", "c"], 1, MILESTONES, 2)["d"] == (1, False)
    sync = ho.synchronous(candidates, MILESTONES, 2)
    # Rung 1 keeps a and c (1.0, 1.1 against 1.2, 3.0); rung 2 keeps a (0.9 against 1.0).
    assert sync == {"b": (1, False), "d": (1, False), "c": (2, False), "a": (3, True)}


def test_replay_starts_the_next_trial_when_a_slot_frees():
    """With two slots, the third trial starts when one of the first two finishes, so who reaches a
    rung first follows the recorded seconds."""
    ho = _module()
    candidates = {"slow": candidate([1.0, 0.9, 0.8], seconds=(10.0, 20.0, 30.0)),
                  "fast_bad": candidate([5.0, 5.0, 5.0], seconds=(0.1, 0.2, 0.3)),
                  "late": candidate([4.0, 3.5, 3.0], seconds=(1.0, 2.0, 3.0))}
    outcomes = ho.replay(candidates, ["slow", "fast_bad", "late"], 2, MILESTONES, 2)
    # fast_bad is first at every rung and finishes at 0.8 s; late starts then and reaches each rung
    # before slow does, judged against fast_bad alone: it goes on. Had it waited for slow's slot
    # (30.5 s), its 4.0 would have met the cutoff of 1.0 and 5.0 (3.0) at rung 1 and stopped.
    assert outcomes == {"fast_bad": (3, True), "late": (3, True), "slow": (3, True)}
    assert ho.replay(candidates, ["slow", "fast_bad", "late"], 1, MILESTONES, 2)["late"] == (1, False)


def test_ranking_of_finished_first_by_test_then_stopped_by_rung_and_loss():
    ho = _module()
    candidates = {"a": candidate([1.0, 0.9, 0.8], test=0.4), "b": candidate([1.2, 0.7, 0.6], test=0.6),
                  "c": candidate([1.1, 1.0, 0.95]), "d": candidate([3.0, 2.0, 1.0]), "e": candidate([2.5, 2, 1])}
    outcomes = {"a": (3, True), "b": (3, True), "c": (2, False), "d": (1, False), "e": (1, False)}
    assert ho.ranking_of(candidates, outcomes, MILESTONES, "accuracy") == ["b", "a", "c", "e", "d"]


def test_settings_flag_is_checked(capsys):
    ho = _module()
    assert ho.parse_settings("0.1:0.25,1:0") == [(0.1, 0.25), (1.0, 0.0)]
    for bad in ("0.1", "x:0.25", "0:0.25", "0.5:1"):
        assert ho.main(["--settings", bad, "--out", "/nonexistent/out.json"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--settings" in err, err


def test_replaying_a_selections_own_order_gives_its_ranking(micro_zoo, local_ray, tmp_path):
    """A real selection with ASHA (one trial at a time, so the order is the listed one), and the
    same selection without halving, whose recorded rungs the replay halves: same outcomes, same
    ranking."""
    from damoc.config import load_config
    from damoc.pipeline import run_select

    ho = _module()
    data = yaml.safe_load((ROOT / "jobs" / "micro.yaml").read_text())
    data["candidates"] = [str(micro_zoo / n) for n in ("micro-qwen2-tiny-domain", "micro-llama-deep-domain",
                                                        "micro-phi3-mixed", "micro-gpt2-jargon", "micro-mistral-wide-code")]
    data["ranking"]["baselines"] = []
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(data))

    def select(name, *overrides):
        return run_select(load_config(tmp_path / "micro.yaml", [f"output.dir={tmp_path / name}",
                                                                f"output.cache_dir={tmp_path / 'cache'}",
                                                                "cluster.max_concurrent_trials=1", *overrides]))

    halved = select("asha")
    full = select("none", "ranking.early_stopping.scheduler=none")
    candidates = ho.recorded(full, MILESTONES)
    outcomes = ho.replay(candidates, [c["name"] for c in full["candidates"]], 1, MILESTONES, 2)
    status = {c["name"]: c["status"] for c in halved["candidates"]}
    assert {n: ("ok" if done else "stopped_early") for n, (_, done) in outcomes.items()} == status
    assert any(s == "stopped_early" for s in status.values())      # the halving stopped someone
    assert {n: len(c["history"]) for n, c in ((c["name"], c) for c in halved["candidates"])} == \
        {n: rungs for n, (rungs, _) in outcomes.items()}
    assert ho.ranking_of(candidates, outcomes, MILESTONES, halved["metric"]) == halved["ranking"]


@pytest.fixture(scope="module")
def local_ray(micro_zoo):
    """A local Ray for the module's selections (the micro zoo builds with its own first)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()
