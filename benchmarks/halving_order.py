"""Does the proxy's ranking depend on which trial reaches a halving rung first?

    python benchmarks/halving_order.py            # both bundled tasks: seconds once `make bench` has run
    python benchmarks/halving_order.py --orders 500 --slots 2,4,8
    python benchmarks/halving_order.py --table    # the README table, from the results file

Asynchronous successive halving (ASHA, damoc's default) judges each trial when it reaches a rung,
against the trials that reached it before: the first to arrive always goes on, a later one must be
in the best 1/rf so far. Which trial arrives first depends on the order the candidates are listed
in, on how many trials run at once (the cluster's size) and on each model's speed. For the ranking
a user gets, the halving's decisions matter twice: they pick the trials that finish (the winner
is the best of those) and they order the rest (later rungs first).

This replays the demo proxy's halving without training anything new. The proxy is run once
without halving (`early_stopping.scheduler: none`, otherwise the demo's settings, as the rank-
fidelity benchmark's curve run does, so `make bench` has cached it): every candidate's validation
loss at every rung, its test score and the seconds it took to reach each rung. Halving does not
change a trial's training (the same seed, data and schedule up to where it is stopped), so a
halved run is that run cut short. The replay then runs damoc's own halving scheduler
(`damoc.orchestrate.async_halving`, the one `damoc select` uses) on those results as they would
arrive: `slots` trials at a time, started in a given candidate order, each reporting each rung
after the seconds it took in the real run, a stopped trial freeing its slot for the next. Each
replayed run is ranked as `damoc select` ranks (`damoc.ranking.scores.proxy_ranking`) and scored
against full fine-tuning (the rank-fidelity ground truth, seed 0, from the same cache). Replayed:
the order of jobs/demo.yaml and `--orders` random orders, at each slot count; and synchronous
successive halving (at each rung, every candidate compared with all the others there), which no
order changes: damoc's `sha` scheduler, which `damoc select` runs for real (its trials pause at
each rung and resume from a checkpoint), replayed here on the same recorded results.

Writes benchmarks/results/halving_order.json ({"commit", "machine", "config", "results"}).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, git_commit, machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def no_halving_run(task: str, keep: float, prune: float, work: Path, cache: Path | None) -> tuple[dict, dict, dict]:
    """The demo proxy at data keep ratio `keep` and layer prune ratio `prune`, without halving, and
    its ground truth. At the demo's own ratios these are the rank-fidelity curve run's trials."""
    import rank_fidelity as bench

    base = bench.base_config(bench.PROFILES["full"], task, work, cache)
    cfg = bench.variant(base, f"no_halving_keep{keep}_prune{prune}", keep=keep, prune=prune,
                        early_stopping={"scheduler": "none"})
    report = bench.run(cfg)
    truth = bench.truth_of(report, bench.TASKS[task]["truth_metric"])
    return cfg, report, truth


def recorded(report: dict, milestones: list[int]) -> dict[str, dict]:
    """What the replay needs of a selection run without halving, by candidate: its validation loss
    and the seconds since its trial started at each rung, its trial's total seconds, its test scores."""
    candidates = {}
    for c in report["candidates"]:
        history = [h for h in c["history"] if h.get("budget")]
        if [h["budget"] for h in history] != milestones or c["status"] != "ok":
            raise RuntimeError(f"{c['name']} ({c['status']}) reported rungs {[h['budget'] for h in history]}, "
                               f"expected {milestones}: not a finished run without halving")
        candidates[c["name"]] = {"losses": [h["val_eval_loss"] for h in history],
                                 "rung_seconds": [h["elapsed_s"] for h in history],
                                 "total_seconds": c["wall_s"]["total"], "test": c["test"]}
    return candidates


def trial_of(name: str):
    """What the scheduler reads of a Tune trial."""
    return SimpleNamespace(trial_id=name, config={"candidate": name})


# An outcome: (rungs the trial reported, whether it finished: went on after its last rung).
Outcome = tuple[int, bool]


def replay(candidates: dict[str, dict], order: list[str], slots: int, milestones: list[int], rf: int) -> dict[str, Outcome]:
    """Asynchronous halving replayed on recorded rung results: `slots` trials at a time, started
    in `order`, each reporting its rungs after the seconds they took in the real run."""
    from damoc.orchestrate import async_halving

    scheduler = async_halving(milestones, rf, {})
    queue = list(order)
    events: list[tuple[float, int, str, int]] = []   # (time, tie-break, candidate, rung index)
    started: dict[str, float] = {}
    tie = itertools.count()                          # equal times: first pushed, first out

    def start(name: str, at: float) -> None:
        started[name] = at
        heapq.heappush(events, (at + candidates[name]["rung_seconds"][0], next(tie), name, 0))

    for _ in range(min(slots, len(queue))):
        start(queue.pop(0), 0.0)
    outcomes: dict[str, Outcome] = {}
    while events:
        at, _, name, i = heapq.heappop(events)
        c = candidates[name]
        action = scheduler.on_trial_result(None, trial_of(name), {"budget": milestones[i], "halving_loss": c["losses"][i]})
        if action == "STOP" or i == len(milestones) - 1:
            outcomes[name] = (i + 1, action != "STOP")
            # A finished trial holds its slot through its test evaluation; a stopped one frees it now.
            free_at = at if action == "STOP" else started[name] + c["total_seconds"]
            if queue:
                start(queue.pop(0), free_at)
        else:
            heapq.heappush(events, (started[name] + c["rung_seconds"][i + 1], next(tie), name, i + 1))
    return outcomes


def synchronous(candidates: dict[str, dict], milestones: list[int], rf: int) -> dict[str, Outcome]:
    """Synchronous successive halving (`early_stopping.scheduler: sha`) on the recorded results:
    at each rung but the last, the best max(1, n // rf) of the candidates there go on, chosen by
    the function `damoc select` uses (damoc.orchestrate.halving_survivors); all that reach the
    last rung finish."""
    from damoc.orchestrate import halving_survivors

    alive = list(candidates)
    outcomes: dict[str, Outcome] = {}
    for i in range(len(milestones) - 1):
        keep = set(halving_survivors({n: candidates[n]["losses"][i] for n in alive}, rf))
        outcomes.update({n: (i + 1, False) for n in alive if n not in keep})
        alive = [n for n in alive if n in keep]
    outcomes.update({n: (len(milestones), True) for n in alive})
    return outcomes


def ranking_of(candidates: dict[str, dict], outcomes: dict[str, Outcome], milestones: list[int], metric: str) -> list[str]:
    """The ranking `damoc select` gives those outcomes: finished trials by test score, then the
    stopped ones, later rungs first, each by its halving loss there."""
    from damoc.ranking.scores import proxy_ranking

    trials = {}
    for name, (n, finished) in outcomes.items():
        c = candidates[name]
        trials[name] = SimpleNamespace(
            status="completed" if finished else "stopped_early", result={"test": c["test"]},
            history=[{"budget": b, "val_eval_loss": v} for b, v in zip(milestones[:n], c["losses"][:n])])
    return [row["name"] for row in proxy_ranking(trials, metric) if row["rank"] is not None]


def measure(task: str, report: dict, truth: dict, cfg: dict, orders: int, slot_counts: list[int], seed: int) -> dict:
    import rank_fidelity as bench
    from damoc.config.load import validate_config

    es = cfg["ranking"]["early_stopping"]
    rf, rungs = es.get("reduction_factor", 2), es.get("rungs", 3)
    milestones = [rf ** k for k in range(rungs)]
    candidates = recorded(report, milestones)
    metric = bench.TASKS[task]["metric"]
    listed = [c["name"] for c in report["candidates"]]

    def scored(outcomes: dict[str, Outcome]) -> dict:
        ranking = ranking_of(candidates, outcomes, milestones, metric)
        return {"ranking": ranking, **bench.score_ranking(ranking, truth),
                "finished": sorted(n for n, (_, done) in outcomes.items() if done)}

    rng = random.Random(seed)
    shuffled = [rng.sample(listed, len(listed)) for _ in range(orders)]
    settings = bench.proxy_settings(cfg)
    out = {"task": task, "keep_ratio": settings["keep_ratio"], "prune_ratio": settings["prune_ratio"],
           "demo_setting": _is_demo(validate_config(cfg, "halving_order")),
           "metric": metric, "truth_metric": truth["metric"], "truth_ranking": truth["ranking"],
           "listed_order": listed,
           "rungs": {n: {"val_eval_loss": c["losses"], "seconds": c["rung_seconds"]} for n, c in candidates.items()},
           "test": {n: c["test"].get(metric) for n, c in candidates.items()},
           "by_slots": {}}
    for slots in slot_counts:
        runs = [scored(replay(candidates, order, slots, milestones, rf)) for order in [listed] + shuffled]
        rest = runs[1:]
        spearman = [r["spearman"] for r in rest]
        out["by_slots"][str(slots)] = {
            "listed": runs[0],
            "orders": len(rest),
            "top1_hit_share": round(sum(r["top1_hit"] for r in rest) / len(rest), 4),
            "spearman": {"min": min(spearman), "median": statistics.median(spearman), "max": max(spearman),
                         "mean": round(statistics.fmean(spearman), 4)},
            "winners": dict(Counter(r["ranking"][0] for r in rest).most_common()),
            "distinct_rankings": len({tuple(r["ranking"]) for r in rest}),
        }
    out["synchronous"] = scored(synchronous(candidates, milestones, rf))
    return out


def _is_demo(config) -> bool:
    demo = _demo_config()
    return (config.data_compression.filter.keep_ratio, config.model_compression.prune_ratio) == \
        (demo.data_compression.filter.keep_ratio, demo.model_compression.prune_ratio)


def _demo_config():
    from damoc.config import load_config

    return load_config(ROOT / "jobs" / "demo.yaml", [])


def parse_settings(text: str) -> list[tuple[float, float]]:
    """`--settings`: "0.1:0.25,1:0.25" -> [(0.1, 0.25), (1.0, 0.25)] (keep ratio in (0, 1], prune in [0, 1))."""
    out = []
    for part in text.split(","):
        keep, _, prune = part.partition(":")
        try:
            pair = (float(keep), float(prune))
        except ValueError:
            raise ValueError(f"--settings {text!r}: expected keep:prune pairs, e.g. 0.1:0.25") from None
        if not (0 < pair[0] <= 1 and 0 <= pair[1] < 1):
            raise ValueError(f"--settings {text!r}: keep must be in (0, 1] and prune in [0, 1)")
        out.append(pair)
    return out


def table(payload: dict) -> str:
    """The results as the README's markdown table."""
    slots = [str(s) for s in payload["config"]["slots"]]
    head = ["task", "keep / prune", f"listed order, {slots[0]} slots: Spearman, top-1"]
    for n in slots:
        head.append(f"{payload['config']['orders']} random orders, {n} slots: top-1 share, Spearman median (min-max)")
    head.append("synchronous: Spearman, top-1 (winner)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in payload["results"]:
        listed = r["by_slots"][slots[0]]["listed"]
        setting = f"{r['keep_ratio']:g} / {r['prune_ratio']:g}" + (" (demo)" if r["demo_setting"] else "")
        row = [r["task"], setting, f"{listed['spearman']:.2f}, {'yes' if listed['top1_hit'] else 'no'}"]
        for n in slots:
            by = r["by_slots"][n]
            sp = by["spearman"]
            row.append(f"{by['top1_hit_share']:.0%}, {sp['median']:.2f} ({sp['min']:.2f}-{sp['max']:.2f})")
        sync = r["synchronous"]
        row.append(f"{sync['spearman']:.2f}, {'yes' if sync['top1_hit'] else 'no'} ({sync['ranking'][0]})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import rank_fidelity as bench

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(bench.TASKS), help="comma-separated bundled tasks")
    parser.add_argument("--orders", type=int, default=200, help="random candidate orders replayed at each slot count")
    parser.add_argument("--slots", default="2,8", help="comma-separated trials run at once (2: the demo on 2 cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random orders")
    parser.add_argument("--settings", default="0.05:0.25,0.1:0.25,0.5:0.25,1:0.25",
                        help="comma-separated keep:prune proxy settings (default: the demo's, then keep 0.1, "
                             "0.5 and all rows, each with prune 0.25)")
    parser.add_argument("--cache", help="stage cache (default: $DAMOC_CACHE_DIR or the user cache dir)")
    parser.add_argument("--work", help="where the run's report goes (default: runs/halving_order)")
    parser.add_argument("--out", help="results file (default: benchmarks/results/halving_order.json)")
    parser.add_argument("--table", action="store_true", help="only print the README table from the results file")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS / "halving_order.json"
    if args.table:
        print(table(json.loads(out.read_text())))
        return 0
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        slots = [int(s) for s in args.slots.split(",")]
        if any(s < 1 for s in slots) or args.orders < 1:
            raise ValueError
    except ValueError:
        print(f"halving_order: --slots {args.slots!r} / --orders {args.orders}: expected positive integers",
              file=sys.stderr)
        return 2
    try:
        settings = parse_settings(args.settings)
    except ValueError as e:
        print(f"halving_order: {e}", file=sys.stderr)
        return 2
    unknown = [t for t in tasks if t not in bench.TASKS]
    if unknown:
        print(f"halving_order: unknown task {unknown[0]!r} (bundled: {', '.join(bench.TASKS)})", file=sys.stderr)
        return 2
    import os

    import ray

    from damoc.io import write_json
    from damoc.log import configure

    configure(-1)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             logging_level="WARNING")
    work = Path(args.work or ROOT / "runs" / "halving_order").resolve()
    cache = Path(args.cache).resolve() if args.cache else None
    started = time.perf_counter()
    results, configs = [], {}
    try:
        for task, (keep, prune) in [(t, s) for t in tasks for s in settings]:
            cfg, report, truth = no_halving_run(task, keep, prune, work, cache)
            configs.setdefault(task, {})[f"{keep}:{prune}"] = cfg
            results.append(measure(task, report, truth, cfg, args.orders, slots, args.seed))
            r = results[-1]
            for n, by in r["by_slots"].items():
                print(f"{task} keep={keep} prune={prune} slots={n}: listed order spearman {by['listed']['spearman']:.2f} top1 "
                      f"{by['listed']['top1_hit']}; {by['orders']} random orders: top1 {by['top1_hit_share']:.0%}, "
                      f"spearman {by['spearman']['min']:.2f}..{by['spearman']['max']:.2f} "
                      f"(median {by['spearman']['median']:.2f}), winners {by['winners']}", flush=True)
            print(f"{task} keep={keep} prune={prune} synchronous: spearman {r['synchronous']['spearman']:.2f} top1 {r['synchronous']['top1_hit']} "
                  f"winner {r['synchronous']['ranking'][0]}", flush=True)
    finally:
        ray.shutdown()
    payload = {"commit": git_commit(), "machine": machine(), "seconds": round(time.perf_counter() - started, 1),
               "config": {"tasks": tasks, "settings": settings, "orders": args.orders, "slots": slots, "seed": args.seed,
                          "runs": configs},
               "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, payload)
    print(f"halving_order: {len(results)} tasks in {payload['seconds']:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
