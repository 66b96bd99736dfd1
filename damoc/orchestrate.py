"""Ray at the edge: candidate trials as Ray Tune trials, each driving a Ray Train TorchTrainer.

    Tuner(grid over candidates, ASHA / HyperBand on the halving rungs; synchronous halving: one
          Tuner per rung over the candidates still in, each resumed from its rung record)
      -> trial: TorchTrainer(num_workers from `cluster`; 0 = local mode, in the trial's process)
           -> every worker: damoc.trials.trial.run_trial (plain code, no Ray inside)

The pattern follows Ray 2.60's Train V2 (a Tune function trainable that builds and fits a
TorchTrainer, TuneReportCallback forwarding worker reports), see REFERENCE §3. Finished trials are
written to the stage cache by a driver-side Tune callback as soon as they complete, so a crashed
selection resumes without retraining them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from damoc import fingerprint as fp
from damoc.config.schema import RunConfig
from damoc.io import atomic_dir
from damoc.log import quiet

log = logging.getLogger("damoc")
TRIAL_STAGE = "trial"


@dataclass
class TrialJob:
    name: str
    settings: dict          # what run_trial needs (JSON-able)
    entry: Path             # cache entry for the finished result


@dataclass
class TrialOutcome:
    name: str
    status: str                                   # completed | stopped_early | failed
    result: dict = field(default_factory=dict)    # run_trial's result (completed trials)
    history: list[dict] = field(default_factory=list)
    error: Optional[str] = None
    cached: bool = False
    restarts: int = 0                             # times Tune restarted it after its process or node was lost


def run_name(config: RunConfig) -> str:
    """The run's name as it appears in storage paths (Tune experiments, the stored report)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", config.name or "damoc")


# ------------------------------------------------------------------------------------ Ray
def init_ray(config: RunConfig) -> bool:
    """Connect to `cluster.address`, or start Ray locally. Returns True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    # Train V2 (the default in 2.60) is what this module is written against.
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # The dashboard stays on: Ray Train's PlacementGroupCleaner asks the state API (served by the
    # dashboard) whether a trial's controller is alive; without it the placement group of a trial
    # stopped by ASHA is never released and the next trial waits for workers forever.
    kwargs = dict(configure_logging=False, log_to_driver=config.cluster.address is not None,
                  logging_level=logging.WARNING)
    if config.cluster.address:
        ray.init(address=config.cluster.address, **kwargs)
    else:
        ray.init(**kwargs)
    return True


def _worker(settings: dict) -> None:
    """What each Ray Train worker runs."""
    import ray.train

    from damoc.trials.trial import run_trial_safely

    if settings["local_mode"]:
        # Local mode runs inside the Tune trial's process: report straight to Tune.
        from ray import tune

        run_trial_safely(settings, tune.report)
    else:
        run_trial_safely(settings, ray.train.report)


def _trial(params: dict, jobs: dict, cluster: dict, storage: str) -> None:
    """A Tune function trainable: one candidate, one TorchTrainer."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from damoc.trials.trial import failure_metrics

    settings = dict(jobs[params["candidate"]], local_mode=cluster["workers_per_candidate"] == 0)
    workers = cluster["workers_per_candidate"]
    use_gpu = cluster["gpus_per_worker"] > 0
    resources = {"CPU": cluster["cpus_per_worker"], **({"GPU": cluster["gpus_per_worker"]} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker,
        train_loop_config=settings,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=resources if workers else None,
                                               placement_strategy=cluster["placement_strategy"]),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"train-{tune.get_context().get_trial_id()}", storage_path=storage,
            callbacks=[TuneReportCallback()] if workers else [],
            # A finite controller limit: workers that never start (no resources) fail the trial
            # after a few start-up timeouts instead of retrying forever.
            failure_config=ray.train.FailureConfig(max_failures=cluster["max_failures"],
                                                   controller_failure_limit=max(3, cluster["max_failures"]))),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as e:
        # Train has used its own restarts of the worker group (or its controller gave up): the
        # trial is failed. Reported as a result, so that Tune restarts only trials whose own
        # process died (the controller is placed on that process's node and dies with it).
        first = next((line for line in str(e).splitlines() if line.strip() and not line.startswith("Training failed")), "")
        message = f"{type(e).__name__}: {first.strip()}".strip()
        log.error("trial %s: Ray Train gave up: %s", params["candidate"], message)
        tune.report(failure_metrics(message))


def _scheduler(config: RunConfig, use_scheduler: bool, prior: Optional[dict[str, dict[int, float]]] = None):
    # (`sha`, synchronous successive halving, is not a Tune scheduler: synchronous_halving below.)
    """The trials' scheduler. `prior`: rung results of this selection's trials read from the cache
    ({candidate: {budget: halving loss}}), which the halving of the trials run now must see."""
    from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler

    es = config.ranking.early_stopping
    if not use_scheduler or es.scheduler == "none" or es.rungs < 2:
        return FIFOScheduler()
    max_t = es.reduction_factor ** (es.rungs - 1)
    if es.scheduler == "hyperband":
        return HyperBandScheduler(time_attr="budget", max_t=max_t, reduction_factor=es.reduction_factor,
                                  stop_last_trials=False)
    milestones = [es.reduction_factor ** k for k in range(min(es.grace, es.rungs) - 1, es.rungs)]
    return async_halving(milestones, es.reduction_factor, prior or {})


def async_halving(milestones: list[int], reduction_factor: int, prior: dict[str, dict[int, float]]):
    """Asynchronous successive halving (ASHA, Li et al. 2020) on the trials' `budget` and
    `halving_loss` (lower is better), decided as Ray's ASHAScheduler decides (brackets=1,
    stop_last_trials=False; tests/test_halving.py checks the two agree), with one addition Ray's
    lacks: rung results recorded before the run (`prior`, by candidate). A selection resumed after a
    crash, or re-run with a candidate added, runs only its unfinished trials; without their cached
    siblings' results Ray's scheduler would judge them against each other alone, and the first to
    reach a rung would always go on (it is compared with nothing)."""
    import numpy as np
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class AsyncHalving(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.milestones = sorted(milestones, reverse=True)
            self.recorded: dict[int, dict[str, float]] = {m: {} for m in self.milestones}
            # Each decision, by candidate: the rung, how many results it was compared with (0: it
            # arrived first and went on unjudged) and whether it was stopped. The report shows it.
            self.judged: dict[str, list[dict]] = {}
            for name, losses in prior.items():
                for budget, loss in losses.items():
                    if budget in self.recorded:
                        self.recorded[budget][name] = loss

        def judge(self, trial, result: dict) -> str:
            budget, loss = result.get("budget"), result.get("halving_loss")
            if budget is None or loss is None:
                return TrialScheduler.CONTINUE
            name = trial.config["candidate"]
            # Judged once per rung, at the deepest rung its budget has reached.
            milestone = next((m for m in self.milestones if budget >= m), None)
            if milestone is None or name in self.recorded[milestone]:
                return TrialScheduler.CONTINUE
            others = list(self.recorded[milestone].values())
            self.recorded[milestone][name] = loss
            # Stop unless it is in the best 1/rf of the losses recorded at this rung so far.
            stop = bool(others) and loss > np.nanpercentile(others, 100 / reduction_factor)
            self.judged.setdefault(name, []).append({"budget": milestone, "against": len(others), "stopped": stop})
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

        def on_trial_result(self, tune_controller, trial, result):
            return self.judge(trial, result)

        def on_trial_complete(self, tune_controller, trial, result):
            if result:
                self.judge(trial, result)

        def debug_string(self) -> str:
            return "damoc async successive halving: " + " | ".join(
                f"budget {m}: {len(r)} recorded" for m, r in self.recorded.items())

    return AsyncHalving()


def prior_rungs(outcomes: dict[str, TrialOutcome], halving: str) -> dict[str, dict[int, float]]:
    """{candidate: {budget: halving loss}} of cached trials, from their stored rung history (the
    validation `halving` metric, negated when higher is better, as with_halving_loss reports it)."""
    from damoc.trials import METRICS

    out: dict[str, dict[int, float]] = {}
    for name, outcome in outcomes.items():
        if outcome.status not in ("completed", "stopped_early"):
            continue
        rungs = {}
        for row in outcome.history:
            value = row.get(f"val_{halving}")
            if isinstance(row.get("budget"), (int, float)) and row["budget"] > 0 and isinstance(value, (int, float)):
                rungs[int(row["budget"])] = -value if METRICS[halving] else value
        if rungs:
            out[name] = rungs
    return out


def halving_survivors(losses: dict[str, float], reduction_factor: int) -> list[str]:
    """Who synchronous successive halving keeps at a rung: the best max(1, n // rf) of the n
    candidates there, by halving loss (lower is better; NaN last; ties by name, so that the order
    candidates are listed in never decides)."""
    order = halving_order(losses)
    return order[:max(1, len(order) // reduction_factor)]


def halving_order(losses: dict[str, float]) -> list[str]:
    """The candidates at a rung, best first, as halving_survivors ranks them."""
    return sorted(losses, key=lambda n: (math.isnan(losses[n]), 0.0 if math.isnan(losses[n]) else losses[n], n))


def cut_margin(kept: list, stopped: list) -> dict | None:
    """How sure a halving cut is: the stopped candidate's halving loss minus the kept one's, on
    the same validation rows, with its standard error and their ratio `z`. `kept` and `stopped` are
    each row's [value, weight] (the loss is sum(value) / sum(weight), as evaluate_records gives).

    The rows are shared, so the difference is taken row by row (a paired comparison: a row hard for
    every model does not count as noise), and each ratio loss is linearised around its value (the
    delta method), which makes the token-weighted loss a mean of per-row terms. Written here
    because scipy's paired tests take plain means, not ratios. None when the rows do not match;
    `z` is None when the per-row terms do not vary at all and the losses differ."""
    if not kept or not stopped or len(kept) != len(stopped) or len(kept) < 2:
        return None
    a, b = np.asarray(kept, dtype=float), np.asarray(stopped, dtype=float)
    if a.shape[1:] != (2,) or b.shape[1:] != (2,) or a[:, 1].sum() <= 0 or b[:, 1].sum() <= 0:
        return None
    loss_a, loss_b = a[:, 0].sum() / a[:, 1].sum(), b[:, 0].sum() / b[:, 1].sum()
    terms_a = (a[:, 0] - loss_a * a[:, 1]) / a[:, 1].mean()
    terms_b = (b[:, 0] - loss_b * b[:, 1]) / b[:, 1].mean()
    se = float(np.std(terms_b - terms_a, ddof=1) / math.sqrt(len(a)))
    difference = float(loss_b - loss_a)
    # No spread (the same per-row terms, up to rounding): a tie when the losses are equal, else no doubt.
    z = difference / se if se > 1e-12 else (0.0 if abs(difference) <= 1e-12 else None)
    return {"difference": difference, "se": se, "z": z, "rows": len(a)}


# A cut whose margin is under this many standard errors of the rung's validation rows could go the
# other way on other rows (about 5% two-sided under a normal approximation).
CLOSE_CUT_Z = 2.0


def rung_root(job: TrialJob) -> Path:
    """Where a trial's rung records go: beside the trial entries, under the trial's own key."""
    return job.entry.parent.parent / f"{TRIAL_STAGE}-rungs" / job.entry.name


def synchronous_halving(config: RunConfig, jobs: list[TrialJob], *, name: str) -> dict[str, TrialOutcome]:
    """Synchronous successive halving (Jamieson and Talwalkar 2016; `early_stopping.scheduler: sha`).

    Every candidate trains to the first rung and pauses there (a rung record: damoc.trials.rungs);
    all of them are compared, the best max(1, n // rf) resume from their records to the next rung,
    and so on. The candidates that reach the last rung finish and are ranked by their test scores.
    ASHA instead judges a trial when it arrives, against those that arrived before it, so the first
    to arrive goes on unjudged and the ranking depends on the listing order, the number of trials
    run at once and each model's speed (benchmarks/README.md, halving order); here none of these
    changes a decision. The price: each rung waits for its slowest candidate, and a resumed trial
    loads its model again. Ray Tune's schedulers pause trials only through Tune checkpoints held
    by Tune's own storage, hence rounds of plain Tune runs, one per rung, over the stage cache.

    The rung records are the cache: a crashed run, a re-run, or one with a candidate added trains
    only the slices it lacks, and every decision is taken again over all the candidates."""
    from ray.tune.schedulers import FIFOScheduler

    from damoc.trials.rungs import drop_weights, record_dir
    from damoc.trials.trial import halving_value

    es = config.ranking.early_stopping
    rf = es.reduction_factor
    budgets = [rf ** i for i in range(es.rungs)]
    # Decisions at the rungs from `grace` on, all but the last: there every trial left has trained
    # the whole budget, and its test score (what the ranking reads) costs only its evaluation.
    judged = [i for i in range(es.rungs - 1) if i >= es.grace - 1]
    metric = jobs[0].settings.get("halving_metric", "eval_loss") if jobs else "eval_loss"
    roots = {job.name: rung_root(job) for job in jobs}
    finished = {job.name: fp.read_summary(job.entry) for job in jobs if fp.is_done(job.entry)}
    outcomes: dict[str, TrialOutcome] = {}
    decisions: dict[str, list[dict]] = {job.name: [] for job in jobs}
    ran: set[str] = set()
    restarts: dict[str, int] = {}

    def record(job: TrialJob, i: int) -> Path:
        return record_dir(roots[job.name], budgets[i])

    def latest(job: TrialJob, below: int) -> Optional[Path]:
        return next((record(job, k) for k in reversed(range(below)) if fp.is_done(record(job, k))), None)

    def loss_at(job: TrialJob, i: int) -> float:
        if fp.is_done(record(job, i)):
            return float(fp.read_summary(record(job, i))["halving_loss"])
        row = next(h for h in finished[job.name]["history"] if h.get("budget") == budgets[i])
        return float(halving_value(row, metric))

    def rows_at(job: TrialJob, i: int) -> Optional[list]:
        # Records written before the rows were kept, and trials that finished in an earlier run, lack them.
        return fp.read_summary(record(job, i)).get("halving_rows") if fp.is_done(record(job, i)) else None

    alive = list(jobs)
    for i in [*judged, None]:
        need = largest_first([job for job in alive
                              if job.name not in finished and (i is None or not fp.is_done(record(job, i)))])
        if need:
            below = len(budgets) if i is None else i
            extra = {job.name: {"pause_at_rung": i, "rung_records": str(roots[job.name]),
                                "resume_from": str(latest(job, below)) if latest(job, below) else None} for job in need}
            log.info("%s: synchronous halving: %s %d trial(s): %s", name,
                     "finishing" if i is None else f"training to budget {budgets[i]}", len(need),
                     ", ".join(job.name for job in need))
            by_name = {job.name: job for job in need}
            stage = "final" if i is None else f"budget{budgets[i]}"
            for result in _fit(config, need, extra, f"{run_name(config)}-{name}-{stage}", FIFOScheduler(), restarts):
                candidate = result.config["candidate"]
                ran.add(candidate)
                job = by_name[candidate]
                outcome = _outcome(candidate, result, job)
                if outcome.status == "completed":
                    finished[candidate] = outcome.result
                elif outcome.status == "failed" or i is None or not fp.is_done(record(job, i)):
                    outcome.status = "failed"
                    outcome.error = outcome.error or "the trial ended without reaching its rung"
                    outcome.restarts = restarts.get(candidate, 0)
                    outcomes[candidate] = outcome
        alive = [job for job in alive if job.name not in outcomes]
        if i is None:
            break
        losses = {job.name: loss_at(job, i) for job in alive}
        order = halving_order(losses)
        keep = set(halving_survivors(losses, rf))
        cut = None
        if len(keep) < len(order):
            # The closest call of the cut: the last candidate kept against the first one stopped.
            last, first_out = order[len(keep) - 1], order[len(keep)]
            by_name = {job.name: job for job in alive}
            margin = cut_margin(rows_at(by_name[last], i), rows_at(by_name[first_out], i))
            cut = {"kept": last, "stopped": first_out, **(margin or {})}
            if margin and margin["z"] is not None and margin["z"] < CLOSE_CUT_Z:
                log.warning("%s: synchronous halving at budget %d: a close cut: %s kept, %s stopped, %.3g apart "
                            "in halving loss (standard error %.3g over %d validation rows); "
                            "ranking.early_stopping.validation_rows sets how many rows decide it",
                            name, budgets[i], last, first_out, margin["difference"], margin["se"], margin["rows"])
        for job in alive:
            decisions[job.name].append({"budget": budgets[i], "against": len(alive) - 1, "stopped": job.name not in keep,
                                        **({"cut": cut} if cut else {})})
            for k in range(i):   # superseded: the record at this rung resumes it, or reports it
                drop_weights(record(job, k))
        log.info("%s: synchronous halving at budget %d: going on: %s; stopped: %s", name, budgets[i],
                 ", ".join(sorted(keep)), ", ".join(sorted(set(losses) - keep)) or "none")
        for job in alive:
            if job.name not in keep:
                outcomes[job.name] = _stopped_at(job, i, record(job, i), finished.get(job.name), budgets[i])
        alive = [job for job in alive if job.name in keep]
    for job in alive:
        result = dict(finished[job.name])
        outcomes[job.name] = TrialOutcome(job.name, "completed", result, result.get("history", []))
        for k in range(len(budgets)):
            drop_weights(record(job, k))
    for candidate, outcome in outcomes.items():
        outcome.cached = candidate not in ran
        outcome.restarts = restarts.get(candidate, 0)
        if outcome.status != "failed":
            outcome.result["halving"] = decisions[candidate]
    if not ran:
        log.info("%s: %d trial(s) cached", name, len(outcomes))
    return {job.name: outcomes[job.name] for job in jobs}


STOPPED_INFO = ("baselines", "params", "architecture", "node_id", "worker_nodes", "layers", "layers_kept",
                "proxy_params", "compression")


def _stopped_at(job: TrialJob, i: int, record: Path, finished: Optional[dict], budget: int) -> TrialOutcome:
    """A candidate synchronous halving stopped at rung i: what its rung record holds (or, for a
    trial that finished in a run with fewer candidates, its result up to that rung)."""
    if fp.is_done(record):
        state = fp.read_summary(record)
        info = dict(state["info"], elapsed_s=state["elapsed_s"], wall_s={**state["wall"], "total": state["elapsed_s"]})
        return TrialOutcome(job.name, "stopped_early", info, state["history"])
    history = [h for h in finished.get("history", []) if h.get("budget", 0) <= budget]
    info = {k: finished[k] for k in STOPPED_INFO if k in finished}
    spent = history[-1].get("fine_tune_s") if history else None
    info["wall_s"] = {**{k: v for k, v in finished.get("wall_s", {}).items() if k not in ("fine_tune", "evaluate", "total")},
                      **({"fine_tune": round(spent, 2)} if isinstance(spent, (int, float)) else {})}
    return TrialOutcome(job.name, "stopped_early", info, history)


def largest_first(jobs: list[TrialJob]) -> list[TrialJob]:
    """`jobs` in the order to start them where the order changes no result (no halving, the
    ground truth, each round of synchronous halving): the largest model first, by the bytes of its
    weights times the share of layers pruning keeps, which is roughly proportional to the compute
    per token. With fewer trial slots than candidates, a large model listed last would otherwise start
    when the others are done and run alone while the other slots idle; starting the longest jobs
    first (LPT, Graham 1969) bounds that tail by the shortest. Ties keep the listed order. ASHA and
    HyperBand keep the listed order: they judge each trial against those that arrived before it."""
    def weight(job: TrialJob) -> float:
        path = Path(job.settings["candidate"]["path"])
        size = sum(f.stat().st_size for f in path.glob("*.safetensors")) if path.is_dir() else 0
        return size * (1.0 - float(job.settings.get("model_compression", {}).get("prune_ratio", 0.0)))

    return sorted(jobs, key=lambda job: -weight(job))


def _max_concurrent(config: RunConfig, per_trial_cpus: float, n: int) -> int:
    import ray

    if config.cluster.max_concurrent_trials:
        return config.cluster.max_concurrent_trials
    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 1) // per_trial_cpus)
    if config.cluster.gpus_per_worker > 0:
        gpus_per_trial = config.cluster.gpus_per_worker * max(1, config.cluster.workers_per_candidate)
        fits = min(fits, int(resources.get("GPU", 0) // gpus_per_trial))
    return max(1, min(n, fits))


def _driver_callback(jobs: dict[str, TrialJob], restarts: dict[str, int], max_restarts: int):
    """A driver-side Tune callback that stores each completed trial's result as it arrives, and
    counts (and logs) the restarts of trials whose process or node was lost."""
    from ray.tune import Callback

    class OnDriver(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            job = jobs[trial.config["candidate"]]
            if result.get("status") == "completed" and "result_json" in result and not fp.is_done(job.entry):
                write_trial_result(job.entry, json.loads(result["result_json"]))

        def on_trial_recover(self, iteration, trials, trial, **info):
            name = trial.config["candidate"]
            restarts[name] = restarts.get(name, 0) + 1
            log.warning("trial %s lost its process or node; restarting it from the start (restart %d of %d)",
                        name, restarts[name], max_restarts)

    return OnDriver()


def write_trial_result(entry: Path, result: dict) -> None:
    with atomic_dir(entry) as tmp:
        fp.write_summary(tmp, result)


def run_trials(config: RunConfig, jobs: list[TrialJob], *, name: str, use_scheduler: bool) -> dict[str, TrialOutcome]:
    """Run (or read from cache) one trial per job. Returns outcomes by candidate name."""
    es = config.ranking.early_stopping
    if use_scheduler and es.scheduler == "sha" and es.rungs >= 2:
        return synchronous_halving(config, jobs, name=name)
    outcomes: dict[str, TrialOutcome] = {}
    pending = []
    for job in jobs:
        if fp.is_done(job.entry):
            result = fp.read_summary(job.entry)
            status = result.get("trial_status", "completed")
            outcomes[job.name] = TrialOutcome(job.name, status, result, result.get("history", []), cached=True)
        else:
            pending.append(job)
    if outcomes:
        log.info("%s: %d trial(s) cached: %s", name, len(outcomes), ", ".join(outcomes))
    if not pending:
        return outcomes
    prior = {}
    if use_scheduler and es.scheduler != "none" and es.rungs >= 2 and outcomes:
        if es.scheduler == "hyperband":
            log.warning("%s: HyperBand halves the %d trial(s) run now among themselves only; the %d cached "
                        "trial(s) do not enter its brackets (early_stopping.scheduler: asha does)",
                        name, len(pending), len(outcomes))
        else:
            prior = prior_rungs(outcomes, pending[0].settings.get("halving_metric", "eval_loss"))

    scheduler = _scheduler(config, use_scheduler, prior)
    from ray.tune.schedulers import FIFOScheduler

    # Exactly FIFO, where no order changes a result (ASHA and HyperBand subclass it).
    if type(scheduler) is FIFOScheduler:
        pending = largest_first(pending)
    judged = getattr(scheduler, "judged", None)     # damoc's ASHA only
    by_name = {job.name: job for job in pending}
    restarts: dict[str, int] = {}
    grid = _fit(config, pending, {}, f"{run_name(config)}-{name}", scheduler, restarts)
    for result in grid:
        candidate = result.config["candidate"]
        outcome = _outcome(candidate, result, by_name[candidate])
        outcome.restarts = restarts.get(candidate, 0)
        if judged is not None and outcome.status in ("completed", "stopped_early"):
            outcome.result["halving"] = judged.get(candidate, [])
            if outcome.status == "completed":   # stored as it completed; again, with its decisions
                write_trial_result(by_name[candidate].entry, outcome.result)
        if outcome.status == "stopped_early":
            # A stopped trial is finished too: a re-run of the same selection reuses it.
            write_trial_result(by_name[candidate].entry, {**outcome.result, "trial_status": "stopped_early",
                                                         "history": outcome.history})
        outcomes[candidate] = outcome
    return {job.name: outcomes[job.name] for job in jobs if job.name in outcomes}   # the listed order


def _fit(config: RunConfig, jobs: list[TrialJob], extra: dict[str, dict], experiment: str, scheduler,
         restarts: dict[str, int]):
    """One Tune run of `jobs` (each job's settings updated with `extra[job.name]`). Returns Tune's
    result grid; `restarts` counts the trials Tune restarted."""
    from ray import tune

    cluster = config.cluster.model_dump()
    per_trial_cpus = float(cluster["cpus_per_worker"])
    trial_resources = {"cpu": per_trial_cpus} if cluster["workers_per_candidate"] == 0 else {"cpu": 0.25}
    if cluster["workers_per_candidate"] == 0 and cluster["gpus_per_worker"] > 0:
        trial_resources["gpu"] = cluster["gpus_per_worker"]
    if cluster["workers_per_candidate"]:
        per_trial_cpus = 0.25 + cluster["cpus_per_worker"] * cluster["workers_per_candidate"]
    storage = str(Path(config.cluster.storage_path or Path(config.output.dir) / "ray_results").expanduser().resolve()
                  if "://" not in (config.cluster.storage_path or "") else config.cluster.storage_path)
    by_name = {job.name: job for job in jobs}
    settings = {job.name: dict(job.settings, threads=max(1, int(cluster["cpus_per_worker"])), **extra.get(job.name, {}))
                for job in jobs}
    # Every Python error of a trial is caught inside it (run_trial_safely; a Ray Train failure in
    # _trial), so Tune sees a trial error only when the trial's process died: its node was lost,
    # or the OS killed it. Tune then runs it again from the start, on any node with room. For a
    # Ray Train trial that process holds the Train controller; the loss of a worker alone is
    # Train's to handle (ray.train.FailureConfig above), so the two never restart the same loss.
    max_restarts = cluster["max_failures"]
    trainable = tune.with_resources(tune.with_parameters(_trial, jobs=settings, cluster=cluster, storage=storage),
                                    trial_resources)
    tuner = tune.Tuner(
        trainable,
        param_space={"candidate": tune.grid_search([job.name for job in jobs])},
        # `halving_loss`: the validation metric the halving compares, lower is better (with_halving_loss).
        tune_config=tune.TuneConfig(metric="halving_loss", mode="min", scheduler=scheduler,
                                    # In-process trials only: a reused actor stays alive, and Ray Train's
                                    # placement-group cleaner frees a stopped trial's workers only when
                                    # the actor that owns its controller is gone (the next trial would
                                    # wait for workers forever).
                                    reuse_actors=config.cluster.reuse_actors and cluster["workers_per_candidate"] == 0,
                                    max_concurrent_trials=_max_concurrent(config, per_trial_cpus, len(jobs))),
        run_config=tune.RunConfig(name=experiment, storage_path=storage, verbose=0,
                                  callbacks=[_driver_callback(by_name, restarts, max_restarts)],
                                  failure_config=tune.FailureConfig(max_failures=max_restarts)),
    )
    # Tune prints its experiment banner on stdout; stdout is for damoc's ranking table.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull if quiet() else sys.stderr):
        return tuner.fit()


def _outcome(name: str, result, job: TrialJob) -> TrialOutcome:
    """Completed, stopped early by the scheduler, or failed, from a Tune result."""
    frame = result.metrics_dataframe
    rows = [] if frame is None else frame.to_dict("records")
    # Every attempt of a trial starts by reporting its baselines: keep the last attempt's rows
    # (a restarted trial reports its steps again from the first).
    rows = rows[max((i for i, row in enumerate(rows) if row.get("status") == "baselines"), default=0):]
    history = [{k: _plain(v) for k, v in row.items() if k in HISTORY_KEYS and not _nan(v)} for row in rows
               if row.get("status") == "running"]
    last = result.metrics or (rows[-1] if rows else {})
    info: dict = {}
    for row in rows:  # baselines and size first, then the model compression, as the trial went
        if isinstance(row.get("info_json"), str):
            info.update(json.loads(row["info_json"]))
    if rows and isinstance(rows[-1].get("elapsed_s"), float):
        info["elapsed_s"] = rows[-1]["elapsed_s"]
    if fp.is_done(job.entry):
        full = fp.read_summary(job.entry)
        return TrialOutcome(name, "completed", full, full.get("history", history))
    if last.get("status") == "completed" and last.get("result_json"):
        full = json.loads(last["result_json"])
        write_trial_result(job.entry, full)
        return TrialOutcome(name, "completed", full, full.get("history", history))
    if last.get("status") == "failed" or result.error is not None:
        error = last.get("error") if last.get("status") == "failed" else f"{type(result.error).__name__}: {result.error}"
        return TrialOutcome(name, "failed", result=info, history=history,
                            error=str(error).splitlines()[0] if error else "unknown error")
    before = info.pop("wall_s_before_fine_tune", None)
    if before is not None and history and isinstance(history[-1].get("fine_tune_s"), (int, float)):
        # The stages it finished, and its training up to the rung where the scheduler stopped it.
        info["wall_s"] = {**before, "fine_tune": round(history[-1]["fine_tune_s"], 2),
                          **({"total": round(info["elapsed_s"], 2)} if "elapsed_s" in info else {})}
    return TrialOutcome(name, "stopped_early", result=info, history=history)


HISTORY_KEYS = ("step", "budget", "train_loss", "train_tokens", "val_eval_loss", "val_perplexity", "val_accuracy",
                "val_gold_logprob", "val_gold_pmi", "fine_tune_s")


def _plain(value):
    """Tune's dataframe turns ints into floats (and numpy types): back to plain JSON numbers."""
    if hasattr(value, "item"):
        value = value.item()
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**53 else value


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
