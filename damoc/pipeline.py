"""The main job, `damoc select`: config -> data -> data compression -> one trial per candidate
(model compression, fine-tuning, evaluation) -> ranking and baselines -> report.

Every stage's output is cached by fingerprint, so a re-run after a crash or with an unchanged
config reuses finished work; every stage's wall time is recorded for the report's cost accounting.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from damoc import fingerprint as fp
from damoc.config import RunConfig, config_to_yaml
from damoc.config.schema import EarlyStoppingConfig, ModelCompressionConfig
from damoc.data import LoadedData, prepare_data, read_canonical
from damoc.data.compress import write_parquet
from damoc.data.inspect import inspect_data
from damoc.errors import ConfigError
from damoc.fingerprint import default_cache_root
from damoc.io import atomic_dir, write_json, write_jsonl, write_text
from damoc.models.load import checkpoint_digest, parse_zoo_reference, resolve_model_path
from damoc.orchestrate import TRIAL_STAGE, TrialJob, init_ray, run_name, run_trials
from damoc.trials.trial import FAILED_LOSS, resolve_deepspeed
from damoc.ranking.scores import halving_metric, resolve_metric

log = logging.getLogger("damoc")
# 3: the loss and scores are computed from logits at the positions read only (damoc.trials.logits):
# the same values up to float rounding, in less time; older cached trials would mix both timings.
TRIAL_VERSION = 3


def cache_root(config: RunConfig) -> Path:
    """The stage cache: output.cache_dir, else $DAMOC_CACHE_DIR, else the user cache dir."""
    if config.output.cache_dir:
        return Path(config.output.cache_dir).expanduser()
    return default_cache_root()


def check_supported(config: RunConfig) -> None:
    """Refuse settings that cannot run, before any work starts."""
    from damoc.data.compress import check_scorer_models

    check_scorer_models(config.data_compression, cache_root(config))
    for candidate in config.candidates:
        parse_zoo_reference(candidate.model)
    if config.ranking.method == "curve" and config.ranking.early_stopping.rungs < 3:
        raise ConfigError(f"ranking.method 'curve' needs at least 3 rungs (ranking.early_stopping.rungs is "
                          f"{config.ranking.early_stopping.rungs}): a curve is fitted through the rung evaluations")
    if config.ranking.metric != "auto":  # `auto` needs the task's type: checked once the data is loaded
        halving_metric(config)
    if config.ranking.early_stopping.scheduler == "sha":
        for candidate in config.candidates:
            training = config.training_for(candidate)
            if resolve_deepspeed(training.deepspeed, method=training.method, workers=config.cluster.workers_per_candidate,
                                 gpus_per_worker=config.cluster.gpus_per_worker):
                raise ConfigError(f"ranking.early_stopping.scheduler 'sha' pauses every trial at each rung, which "
                                  f"damoc cannot do for DeepSpeed trials yet (candidate {candidate.display_name}: "
                                  f"training.deepspeed resolves to {training.deepspeed!r}); use scheduler asha, or "
                                  f"training.deepspeed: null")


# ------------------------------------------------------------------------------ data
def compressed_entry(config: RunConfig, data: LoadedData, cache: Path,
                     candidate_tokenizers: dict[str, str] | None = None) -> tuple[Path, dict]:
    """The compressed data as a cache entry: canonical JSONL per split (what trials read),
    train.parquet and stats.json. Per-candidate token counts are measured on every call (cheap),
    so a cached entry still reports the tokenizers of this run's candidates."""
    from damoc.data.compress import compress_data, stage_fingerprint, token_counts

    dc = config.data_compression
    key = stage_fingerprint(dc, data.fingerprint, config.training.seed, cache)
    entry = fp.stage_dir(cache, "data-compressed", key)
    if not fp.is_done(entry):
        started_ray = _ray_for_data(config)
        try:
            compressed, stats = compress_data(data, dc, seed=config.training.seed, cache_root=cache,
                                              start_ray=lambda: init_ray(config),
                                              on_cluster=bool(config.cluster.address))
        finally:
            if started_ray:
                import ray

                ray.shutdown()
        with atomic_dir(entry) as tmp:
            for split, records in compressed.splits.items():
                write_jsonl(tmp / f"{split}.jsonl", records)
            write_parquet(tmp / "train.parquet", compressed.splits["train"])
            write_json(tmp / "stats.json", stats)
            fp.write_summary(tmp, {"fingerprint": key, "rows_in": stats["rows_in"], "rows_out": stats["rows_out"]})
    stats = json.loads((entry / "stats.json").read_text(encoding="utf-8"))
    stats["fingerprint"] = key
    if candidate_tokenizers:
        per = token_counts(data.splits["train"], read_canonical(entry / "train.jsonl"), candidate_tokenizers)
        stats["per_candidate"] = per
        usable = [name for name, counts in per.items() if "error" not in counts]
        if stats.get("tokenizer") == "whitespace" and usable:
            # No scorer LM in this run: the headline counts are the first candidate's tokens.
            first = per[usable[0]]
            stats.update(tokenizer=f"candidate:{usable[0]}", tokens_in=first["tokens_in"],
                         tokens_out=first["tokens_out"], token_fields=first["fields"])
    return entry, stats


def _ray_for_data(config: RunConfig) -> bool:
    """Start (or connect to) Ray when the data stage will run scorers on Ray Data. The `auto`
    engine starts it on its first Ray Data map instead, unless the config names a cluster (which
    every map then runs on), asks for an actor pool (`actors`, `gpus_per_actor`: Ray Data) or
    rewrites on vLLM's Ray Data processor."""
    from damoc.data.filters import NEEDS

    dc = config.data_compression
    if dc.engine == "local" or not (NEEDS[dc.filter.method] or dc.tokens.enabled):
        return False
    if dc.engine == "auto" and not (config.cluster.address or dc.actors or dc.gpus_per_actor
                                    or (dc.rewrite.enabled and dc.rewrite.backend == "vllm")):
        return False
    return init_ray(config)


def _full_entry(data: LoadedData, cache: Path) -> Path:
    return fp.stage_dir(cache, "data", data.fingerprint)


# ------------------------------------------------------------------------------ trials
def _jobs(config: RunConfig, paths: dict[str, str], data_dir: Path, data_key: str, task_type: str, mode: str,
          cache: Path) -> list[TrialJob]:
    jobs = []
    for candidate in config.candidates:
        name = candidate.display_name
        training = config.training_for(candidate) if mode == "proxy" else config.ground_truth_training_for(candidate)
        compression = config.model_compression_for(candidate) if mode == "proxy" else None
        if compression is None or compression.prune_ratio <= 0:
            # Nothing is removed, so how layers would be chosen and merged changes nothing: the
            # defaults stand in for them, and a ground truth (or an unpruned proxy) cached under one
            # merge or selection setting is reused under another instead of being trained again.
            compression = ModelCompressionConfig()
        ranking = config.ranking
        settings = {
            "mode": mode,
            "candidate": {"name": name, "path": paths[name], "revision": candidate.revision,
                          "trust_remote_code": candidate.trust_remote_code},
            "training": {**training.model_dump(mode="json"), "deepspeed": resolve_deepspeed(
                training.deepspeed, method=training.method, workers=config.cluster.workers_per_candidate,
                gpus_per_worker=config.cluster.gpus_per_worker)},
            "model_compression": compression.model_dump(mode="json", by_alias=True),
            "data_dir": str(data_dir),
            "task_type": task_type,
            # The ground truth's rungs only feed the report's diagnostics: they keep the default.
            "validation_rows": validation_rows(ranking, mode),
            "test_rows": ranking.eval_max_rows or 10**9,
            # The ground truth keeps each test row's scores, so that the report can say which of its
            # pairs the test rows settle. They change no score, so they are not part of its key.
            "test_per_row": mode != "proxy",
            # How many rows are evaluated at once: speed and memory, not the scores (not in the key).
            "eval_batch_size": ranking.eval_batch_size,
            "baselines": [b for b in ranking.baselines if b != "size"] if mode == "proxy" else [],
            # Keys the ground truth too: it sets every trial's evaluation length (trial.py).
            "few_shot_k": ranking.few_shot_k,
            "bertscore_model": ranking.bertscore_model,
            # The ground truth's rungs are fixed (the defaults: validation at 1/4, 1/2 and all of its
            # steps, how early its own order settles): they change no result of it, so another
            # halving schedule for the proxies does not train every candidate in full again.
            **({"rungs": ranking.early_stopping.rungs, "reduction_factor": ranking.early_stopping.reduction_factor}
               if mode == "proxy" else TRUTH_RUNGS),
            # Part of the key so that a trial stopped under one schedule is not reused under another.
            "scheduler": [ranking.early_stopping.scheduler, ranking.early_stopping.grace] if mode == "proxy" else None,
            **_halving_setting(config, task_type, mode),
            **_scores_setting(config, task_type),
            # Data-parallel workers change the effective batch, so they are part of the trial's key.
            "workers": max(1, config.cluster.workers_per_candidate),
        }
        if compression.prune_ratio > 0:
            # The pruned checkpoint is its own cache entry: a trial re-run with other training
            # settings (or after a crash) reuses it instead of measuring importance again.
            settings["compressed_model_dir"] = str(fp.stage_dir(cache, "model-compressed", fp.fingerprint(
                "model-compressed", _weights_digest(paths[name]), settings["model_compression"], data_key,
                training.seed, training.max_seq_length, training.chat_template)))
        stable = {k: v for k, v in settings.items() if k not in UNKEYED_SETTINGS}
        # Settings added after trials were cached are left out of the key at their defaults, so
        # those trials keep their keys.
        stable["training"] = {k: v for k, v in stable["training"].items()
                              if k not in TRAINING_DEFAULTS_UNKEYED or TRAINING_DEFAULTS_UNKEYED[k] != v}
        stable["candidate"] = {**settings["candidate"], "path": None}
        key = fp.fingerprint(TRIAL_STAGE, stable, _weights_digest(paths[name]), data_key, stage_version=TRIAL_VERSION)
        jobs.append(TrialJob(name, settings, fp.stage_dir(cache, TRIAL_STAGE, key)))
    return jobs


# Trial settings that change no score (paths, what is kept beside the scores, batch sizes of
# evaluation), left out of the trial's cache key.
UNKEYED_SETTINGS = ("data_dir", "compressed_model_dir", "test_per_row", "eval_batch_size")

TRAINING_DEFAULTS_UNKEYED = {"lr_scheduler_type": "cosine"}

TRUTH_RUNGS = {"rungs": EarlyStoppingConfig.model_fields["rungs"].default,
               "reduction_factor": EarlyStoppingConfig.model_fields["reduction_factor"].default}


def _halving_setting(config: RunConfig, task_type: str, mode: str) -> dict:
    # Only set when it is not the loss, so that trials cached before the option keep their keys.
    metric = halving_metric(config, task_type) if mode == "proxy" else "eval_loss"
    return {} if metric == "eval_loss" else {"halving_metric": metric}


def _check_shared_options(config: RunConfig, data: LoadedData) -> None:
    """gold_pmi needs options shared across the rows each evaluation scores (a label set)."""
    from damoc.trials.evaluate import shared_options

    ranking = config.ranking
    for split, rows in (("validation", validation_rows(ranking, "proxy")), ("test", ranking.eval_max_rows or 10**9)):
        if not shared_options(data.splits[split][:rows]):
            raise ConfigError(f"ranking: gold_pmi needs options shared across rows (a label set), and some option in "
                              f"the {split} rows of {config.data.source} belongs to one row only; rank by "
                              f"gold_logprob or accuracy instead")


def _scores_setting(config: RunConfig, task_type: str) -> dict:
    # gold_pmi came after trials were cached, and those trials lack it: a run ranked by it keys its
    # trials (ground truth included) apart, so that none of them is read; runs ranked by any other
    # score keep their keys. (Halving on it is keyed apart already, by `halving_metric`.)
    return {"scores": "gold_pmi"} if resolve_metric(config.ranking.metric, task_type) == "gold_pmi" else {}


def validation_rows(ranking, mode: str) -> int:
    """Validation rows a trial scores at each rung: `early_stopping.validation_rows` for proxies when
    set, else eval_max_rows capped at 128 (a rung costs an evaluation, and there are several)."""
    chosen = ranking.early_stopping.validation_rows if mode == "proxy" else None
    return chosen or min(ranking.eval_max_rows or 10**9, 128)


def _weights_digest(path: str) -> str:
    try:
        return checkpoint_digest(path)
    except OSError:
        return f"missing:{path}"


def _resolve_candidates(config: RunConfig, cache: Path) -> dict[str, str]:
    return {c.display_name: resolve_model_path(c.model, cache_root=cache) for c in config.candidates}


def warn_unprunable(config: RunConfig, paths: dict[str, str]) -> list[str]:
    """Say before any trial runs which candidates the configured pruning cannot apply to (a
    4-layer model with its first and last layers protected cannot lose 3): their proxy trials
    fail and are left out of the ranking, which a user should hear before the run, not read in
    the report after it. The rest still run, so a mixed zoo is not refused for one shallow model.
    Returns the messages."""
    from damoc.models.compress import unprunable

    messages = []
    for candidate in config.candidates:
        compression = config.model_compression_for(candidate)   # a candidate may set its own ratio
        if not compression.prune_ratio or not Path(paths[candidate.display_name]).is_dir():
            continue  # nothing to prune; or a hub id, whose config the trial fetches, not a second request here
        why = unprunable(paths[candidate.display_name], compression, candidate.display_name,
                         trust_remote_code=candidate.trust_remote_code)
        if why:
            messages.append(why)
            log.warning("%s: its proxy trial will fail and it will not be ranked (lower model_compression.prune_ratio, "
                        "or set model_compression.protect_first or protect_last to false)", why)
    return messages


# ------------------------------------------------------------------------------ curves
def _curve_ranking(config: RunConfig, proxies: dict, full_train_rows: int) -> dict | None:
    """With ranking.method 'curve': each proxy's validation loss at its rungs, as a curve over
    training examples seen (steps x batch x accumulation x workers), extrapolated to the examples
    the ground-truth fine-tuning on the full data would see. One run evaluated at several budgets
    stands in for AtS's separate fine-tunes per budget: far cheaper, the same shape of data."""
    if config.ranking.method != "curve":
        return None
    from damoc.ranking.curves import rank_curves
    from damoc.trials.finetune import optimizer_steps

    workers = max(1, config.cluster.workers_per_candidate)
    curves, targets = {}, {}
    for candidate in config.candidates:
        name = candidate.display_name
        outcome = proxies[name]
        if outcome.status == "failed":
            continue
        proxy = config.training_for(candidate)
        per_step = proxy.batch_size * proxy.gradient_accumulation_steps * workers
        curves[name] = [(h["step"] * per_step, h["val_eval_loss"]) for h in outcome.history
                        if h.get("step") and isinstance(h.get("val_eval_loss"), (int, float))
                        and h["val_eval_loss"] < FAILED_LOSS]
        full = config.ground_truth_training_for(candidate)
        full_steps = optimizer_steps(full_train_rows, epochs=full.epochs, batch_size=full.batch_size,
                                     accumulation=full.gradient_accumulation_steps, world_size=workers,
                                     max_steps=full.max_steps)
        targets[name] = full_steps * full.batch_size * full.gradient_accumulation_steps * workers
    return rank_curves(curves, config.ranking.curve_method, targets)


# ------------------------------------------------------------------------------ data compression alone
def run_data_compression(config: RunConfig) -> tuple[Path, dict]:
    """`damoc data compress`: the data stage of `config` alone (same cache entry as select), written
    to OUTPUT/data/ as Parquet per split plus stats.json, atomically."""
    from damoc.data.compress import write_parquet as parquet

    check_supported(config)
    cache = cache_root(config)
    data = prepare_data(config.data, cache)
    # Candidates' tokenizers are measured when they are at hand; a zoo is not built just for that.
    paths = {}
    for c in config.candidates:
        path = resolve_model_path(c.model, cache_root=cache, build_missing_zoo=False)
        if not c.model.startswith("zoo:") or Path(path).is_dir():
            paths[c.display_name] = path
    entry, stats = compressed_entry(config, data, cache, paths)
    out = Path(config.output.dir) / "data"
    with atomic_dir(out) as tmp:
        for split in data.splits:
            parquet(tmp / f"{split}.parquet", read_canonical(entry / f"{split}.jsonl"))
        write_json(tmp / "stats.json", stats)
    return out, stats


# ------------------------------------------------------------------------------ the job
def run_select(config: RunConfig) -> dict:
    """Run the selection; write OUTPUT/report.json (and report.md, plots, winner configs)."""
    from damoc.report import build_report, write_report
    from damoc.report.storage import publish_report, report_uri

    check_supported(config)
    out_dir = Path(config.output.dir)
    cache = cache_root(config)
    wall: dict[str, float] = {}
    started = time.perf_counter()

    t = time.perf_counter()
    data = prepare_data(config.data, cache)
    wall["data"] = time.perf_counter() - t
    metric = resolve_metric(config.ranking.metric, data.task_type)
    if metric in ("accuracy", "gold_logprob", "gold_pmi") and data.task_type != "classification":
        raise ConfigError(f"ranking.metric {metric} needs a classification task; {config.data.source} is {data.task_type}")
    if metric in ("rouge_l", "bertscore") and data.task_type != "generation":
        raise ConfigError(f"ranking.metric {metric} needs a generation task; {config.data.source} is {data.task_type}")
    halving = halving_metric(config, data.task_type)  # refused here, before any training, when the rungs cannot measure it
    if "gold_pmi" in (metric, halving):
        _check_shared_options(config, data)
    t = time.perf_counter()
    paths = _resolve_candidates(config, cache)
    warn_unprunable(config, paths)
    wall["candidates"] = time.perf_counter() - t

    # One Ray session for the data stage (Ray Data scorers) and the trials.
    started_ray = init_ray(config)
    try:
        t = time.perf_counter()
        data_dir, compression_info = compressed_entry(config, data, cache, paths)
        wall["data_compression"] = time.perf_counter() - t
        t = time.perf_counter()
        proxies = run_trials(config, _jobs(config, paths, data_dir, compression_info["fingerprint"], data.task_type,
                                           "proxy", cache), name="proxy", use_scheduler=True)
        wall["proxy_trials"] = time.perf_counter() - t
        truth = None
        if config.ranking.ground_truth == "full_ft":
            t = time.perf_counter()
            truth = run_trials(config, _jobs(config, paths, _full_entry(data, cache), data.fingerprint, data.task_type,
                                             "full_ft", cache), name="ground-truth", use_scheduler=False)
            wall["ground_truth_trials"] = time.perf_counter() - t
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    curves = _curve_ranking(config, proxies, len(data.splits["train"]))
    wall["total"] = time.perf_counter() - started
    report = build_report(config, data=data, data_stats=inspect_data(data), compression=compression_info,
                          metric=metric, proxies=proxies, truth=truth, paths=paths, wall=wall, curves=curves)
    if config.cluster.storage_path:
        report["stored_at"] = report_uri(config.cluster.storage_path, run_name(config))
    write_text(out_dir / "config.yaml", config_to_yaml(config))
    write_report(out_dir, report, config=config, data=data, proxies=proxies, truth=truth, paths=paths)
    if config.cluster.storage_path:
        publish_report(out_dir, config.cluster.storage_path, run_name(config))
        log.info("report copied to %s", report["stored_at"])
    return report

