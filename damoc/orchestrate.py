"""Ray at the edge: candidate trials as Ray Tune trials, each driving a Ray Train TorchTrainer.

    Tuner(grid over candidates, ASHA / HyperBand on the halving rungs)
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
    from ray import tune

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
    es = config.ranking.early_stopping
    prior = {}
    if use_scheduler and es.scheduler != "none" and es.rungs >= 2 and outcomes:
        if es.scheduler == "hyperband":
            log.warning("%s: HyperBand halves the %d trial(s) run now among themselves only; the %d cached "
                        "trial(s) do not enter its brackets (early_stopping.scheduler: asha does)",
                        name, len(pending), len(outcomes))
        else:
            prior = prior_rungs(outcomes, pending[0].settings.get("halving_metric", "eval_loss"))

    cluster = config.cluster.model_dump()
    per_trial_cpus = float(cluster["cpus_per_worker"])
    trial_resources = {"cpu": per_trial_cpus} if cluster["workers_per_candidate"] == 0 else {"cpu": 0.25}
    if cluster["workers_per_candidate"] == 0 and cluster["gpus_per_worker"] > 0:
        trial_resources["gpu"] = cluster["gpus_per_worker"]
    if cluster["workers_per_candidate"]:
        per_trial_cpus = 0.25 + cluster["cpus_per_worker"] * cluster["workers_per_candidate"]
    storage = str(Path(config.cluster.storage_path or Path(config.output.dir) / "ray_results").expanduser().resolve()
                  if "://" not in (config.cluster.storage_path or "") else config.cluster.storage_path)
    by_name = {job.name: job for job in pending}
    settings = {job.name: dict(job.settings, threads=max(1, int(cluster["cpus_per_worker"]))) for job in pending}
    # Every Python error of a trial is caught inside it (run_trial_safely; a Ray Train failure in
    # _trial), so Tune sees a trial error only when the trial's process died: its node was lost,
    # or the OS killed it. Tune then runs it again from the start, on any node with room. For a
    # Ray Train trial that process holds the Train controller; the loss of a worker alone is
    # Train's to handle (ray.train.FailureConfig above), so the two never restart the same loss.
    max_restarts = cluster["max_failures"]
    restarts: dict[str, int] = {}
    scheduler = _scheduler(config, use_scheduler, prior)
    judged = getattr(scheduler, "judged", None)     # damoc's ASHA only
    trainable = tune.with_resources(tune.with_parameters(_trial, jobs=settings, cluster=cluster, storage=storage),
                                    trial_resources)
    tuner = tune.Tuner(
        trainable,
        param_space={"candidate": tune.grid_search([job.name for job in pending])},
        # `halving_loss`: the validation metric the halving compares, lower is better (with_halving_loss).
        tune_config=tune.TuneConfig(metric="halving_loss", mode="min", scheduler=scheduler,
                                    # In-process trials only: a reused actor stays alive, and Ray Train's
                                    # placement-group cleaner frees a stopped trial's workers only when
                                    # the actor that owns its controller is gone (the next trial would
                                    # wait for workers forever).
                                    reuse_actors=config.cluster.reuse_actors and cluster["workers_per_candidate"] == 0,
                                    max_concurrent_trials=_max_concurrent(config, per_trial_cpus, len(pending))),
        run_config=tune.RunConfig(name=f"{run_name(config)}-{name}", storage_path=storage, verbose=0,
                                  callbacks=[_driver_callback(by_name, restarts, max_restarts)],
                                  failure_config=tune.FailureConfig(max_failures=max_restarts)),
    )
    # Tune prints its experiment banner on stdout; stdout is for damoc's ranking table.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull if quiet() else sys.stderr):
        grid = tuner.fit()
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
    return outcomes


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
                "val_gold_logprob", "fine_tune_s")


def _plain(value):
    """Tune's dataframe turns ints into floats (and numpy types): back to plain JSON numbers."""
    if hasattr(value, "item"):
        value = value.item()
    return int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**53 else value


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
