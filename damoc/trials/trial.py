"""One candidate's trial, as every Ray Train worker runs it (and as tests run it without Ray):

    load -> baselines (zero-shot, few-shot) -> model compression -> LoRA -> fine-tune, evaluating at
    the halving rungs -> final test evaluation -> result (cached)

`run_trial(settings, report)` takes plain JSON-able settings (built by damoc.orchestrate) and a
`report(metrics)` callable: Ray's report when run under Ray, a list's append in tests. Rank 0
evaluates; every rank reports (Ray Train expects all workers to), so the other ranks report the
same step with no scores.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Callable

from damoc.trials import EVAL_BATCH_SIZE, METRICS

log = logging.getLogger("damoc.trials")

Report = Callable[[dict], None]
# The scheduler needs its metric in every result; a failed trial reports this (worse than any loss).
FAILED_LOSS = 1e9


def failure_metrics(message: str) -> dict:
    return {"step": 0, "budget": 0, "status": "failed", "error": message, "val_eval_loss": FAILED_LOSS,
            "halving_loss": FAILED_LOSS}


def with_halving_loss(report: Report, metric: str) -> Report:
    """`report`, adding `halving_loss` (lower is better) to every result: the validation `metric`
    (one of RUNG_METRICS), negated when higher is better. The scheduler compares it (one name and
    one mode whatever the metric); a result without the metric (another rank, a failure, the
    baselines) carries FAILED_LOSS."""
    def send(metrics: dict) -> None:
        report({**metrics, "halving_loss": halving_value(metrics, metric)})

    return send


def halving_value(metrics: dict, metric: str) -> float:
    """The validation `metric` of a result as the halving compares it: lower is better."""
    value = metrics.get(f"val_{metric}")
    return FAILED_LOSS if value is None else -value if METRICS[metric] else value


def halving_row_values(rows: dict, metric: str) -> list | None:
    """Each validation row's [value, weight] of the halving loss (lower is better; the loss is
    sum(value) / sum(weight)), from evaluate_records' per-row scores; None without them."""
    values = rows.get(metric)
    if values is None:
        return None
    return [[-v, w] for v, w in values] if METRICS[metric] else [[v, w] for v, w in values]


def node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray), recorded in each trial's result so the
    report shows where every candidate ran."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - where a trial ran is information, never a reason to fail it
        return None


def worker_nodes(world: int, own: str | None) -> list[str | None]:
    """The Ray node of every worker of a multi-worker trial, in rank order (every rank must call
    this: it is a collective); [own] for a single worker."""
    if world <= 1:
        return [own]
    import torch.distributed as dist

    nodes: list = [None] * world
    dist.all_gather_object(nodes, own)
    return nodes


def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _read_split(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _single_process_group() -> bool:
    """DeepSpeed needs a process group even for one in-process worker (local mode). Returns True
    when it made one (the trial then destroys it)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    return True


def resolve_deepspeed(spec: str | None, *, method: str, workers: int, gpus_per_worker: float) -> str | None:
    """`training.deepspeed` as a trial uses it: `auto` is ZeRO-2 for full fine-tuning data-parallel
    over more than one GPU worker (optimizer state and gradients sharded: what lets a 7B model's
    full fine-tune fit 80 GB cards), and off otherwise (one worker gains nothing from sharding;
    LoRA's optimizer state is small)."""
    if spec != "auto":
        return spec
    return "zero2" if method == "full" and workers > 1 and gpus_per_worker > 0 else None


def deepspeed_config(spec: str, *, batch_size: int, accumulation: int, bf16: bool) -> dict:
    """A DeepSpeed config from a preset name (`zero2`) or a JSON file; batch sizes always come from
    the training section so the two cannot disagree."""
    if spec in ("zero2", "zero-2", "zero_2"):
        config = {"zero_optimization": {"stage": 2, "overlap_comm": False, "contiguous_gradients": True}}
    else:
        with open(spec, encoding="utf-8") as f:
            config = json.load(f)
    config.update(train_micro_batch_size_per_gpu=batch_size, gradient_accumulation_steps=accumulation,
                  gradient_clipping=config.get("gradient_clipping", 1.0))
    config["bf16"] = {"enabled": bf16}
    config.setdefault("steps_per_print", 10**9)
    return config


def _engine(model, training: dict, bf16: bool, world: int):
    from damoc.trials.finetune import DeepSpeedEngine, Engine

    accumulation = training["gradient_accumulation_steps"]
    if training.get("deepspeed"):
        import deepspeed
        import torch

        params = [p for p in model.parameters() if p.requires_grad]
        # A plain torch optimizer: DeepSpeed's fused/CPU Adam would JIT-build C++ ops first.
        optimizer = torch.optim.AdamW(params, lr=training["learning_rate"], weight_decay=training["weight_decay"])
        config = deepspeed_config(training["deepspeed"], batch_size=training["batch_size"], accumulation=accumulation, bf16=bf16)
        ds_engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        return DeepSpeedEngine(ds_engine)
    engine = Engine(model, training["learning_rate"], training["weight_decay"], accumulation)
    if world > 1:
        import torch

        engine.model = torch.nn.parallel.DistributedDataParallel(model)
    return engine


def _apply_lora(model, lora: dict):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def rung_steps(total_steps: int, rungs: int, reduction_factor: int = 2) -> list[int]:
    """Evaluation points total/rf^(rungs-1), ..., total/rf, total: the budgets at which successive
    halving compares candidates (the same fractions for every trial)."""
    return [max(1, round(total_steps / reduction_factor ** (rungs - 1 - i))) for i in range(rungs)]


def _compressed_model(model, tokenizer, settings: dict, train: list, fmt, training: dict, rank: int, device):
    """The candidate's pruned (and merged) proxy, computed on this trial's resources from its own
    (compressed) training rows, or loaded from the cache entry a finished trial left. Rank 0
    writes the entry; other ranks compute the same deterministic result themselves."""
    from damoc import fingerprint as fp
    from damoc.config.schema import ModelCompressionConfig
    from damoc.models.compress import (COMPRESSION_FILE, IMPORTANCE_FILE, calibration_rows, compress_model,
                                       save_compressed)
    from damoc.models.load import load_candidate

    cfg = ModelCompressionConfig.model_validate(settings["model_compression"])
    entry = settings.get("compressed_model_dir")
    name = settings["candidate"]["name"]
    if entry and fp.is_done(entry):
        cached, _ = load_candidate(entry, trust_remote_code=settings["candidate"].get("trust_remote_code", False))
        info = json.loads((Path(entry) / COMPRESSION_FILE).read_text(encoding="utf-8"))
        info["importance"] = json.loads((Path(entry) / IMPORTANCE_FILE).read_text(encoding="utf-8"))
        info["cached"] = True
        log.info("trial %s: pruned checkpoint from the cache (%s)", name, entry)
        return cached.to(device), info
    rows = calibration_rows(train, cfg.calibration_samples, seed=training["seed"])
    model, info = compress_model(model, cfg, rows, tokenizer=tokenizer, fmt=fmt, max_length=training["max_seq_length"],
                                 name=name)
    if entry and rank == 0 and info["removed"]:
        save_compressed(model, tokenizer, info, entry, title=f"{name}: Block Influence (red: removed)")
        fp.write_summary(entry, {"stage": "model-compressed", "candidate": name, "removed": info["removed"]})
    return model, info


def run_trial(settings: dict, report: Report) -> dict:
    """Run one candidate's trial. Returns the result (rank 0), or {} on other ranks.

    Under synchronous successive halving the orchestrator runs it in slices: `pause_at_rung` (a
    rung index) ends this run at that rung with a rung record under `rung_records`, and
    `resume_from` (a record) starts it where that record left off; see damoc.trials.rungs."""
    import torch

    from damoc import fingerprint as fp
    from damoc.models.load import CandidateError, load_candidate
    from damoc.trials.evaluate import evaluate_records
    from damoc.trials.finetune import finetune, optimizer_steps
    from damoc.trials.prompts import PromptFormat
    from damoc.trials.rungs import RungStateError, load_record

    started = time.perf_counter()
    rank, world = _dist()
    pause_at, resume_from = settings.get("pause_at_rung"), settings.get("resume_from")
    # A resumed slice: the baselines, the rung history and the costs of the slices before it.
    before = fp.read_summary(resume_from) if resume_from else None
    report = with_halving_loss(report, settings.get("halving_metric", "eval_loss"))
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])
    candidate, training, task_type = settings["candidate"], settings["training"], settings["task_type"]
    # `auto` is resolved by the selection from the cluster settings; a direct caller gets the same
    # rule from what this trial has (its workers, a GPU or not).
    training = dict(training, deepspeed=resolve_deepspeed(training.get("deepspeed"), method=training["method"],
                                                          workers=world, gpus_per_worker=int(torch.cuda.is_available())))
    wall: dict[str, float] = {}
    result = {"name": candidate["name"], "mode": settings["mode"], "status": "ok", "error": None,
              "node_id": node_id()}
    # Where each Ray Train worker runs (placement_strategy decides): gathered before anything can
    # fail, so every rank takes part in the collective.
    result["worker_nodes"] = worker_nodes(world, result["node_id"])

    def fail(message: str) -> dict:
        result.update(status="failed", error=message, wall_s=wall)
        report({**failure_metrics(message), "info_json": json.dumps({"node_id": result["node_id"],
                                                                     "worker_nodes": result["worker_nodes"]})})
        return result

    t = time.perf_counter()
    try:
        model, tokenizer = load_candidate(candidate["path"], revision=candidate.get("revision"),
                                          trust_remote_code=candidate.get("trust_remote_code", False))
    except CandidateError as e:
        return fail(str(e))
    wall["load"] = time.perf_counter() - t
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    bf16 = training["bf16"] is True or (training["bf16"] == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    data_dir = Path(settings["data_dir"])
    train = _read_split(data_dir / "train.jsonl")
    validation = _read_split(data_dir / "validation.jsonl")[:settings["validation_rows"]]
    test = _read_split(data_dir / "test.jsonl")[:settings["test_rows"]]
    use_template = training["chat_template"] == "auto"
    fmt = PromptFormat(tokenizer, use_chat_template=use_template)
    positions = getattr(model.config, "max_position_embeddings", None) or 10**9
    if training["max_seq_length"] > positions:
        training = dict(training, max_seq_length=positions)
    # Few-shot prompts are longer than training rows; the model's positions are the hard limit.
    max_length = min(positions, (settings.get("few_shot_k", 0) + 2) * training["max_seq_length"])
    evaluate = dict(bertscore_model=settings.get("bertscore_model"), max_length=max_length,
                    batch_size=settings.get("eval_batch_size", EVAL_BATCH_SIZE))

    params = sum(p.numel() for p in model.parameters())
    result.update(params=params, architecture=type(model).__name__)
    if before is not None:
        result["baselines"] = before["info"].get("baselines", {})
    elif rank == 0 and settings.get("baselines"):
        t = time.perf_counter()
        baselines = {}
        if "zero_shot" in settings["baselines"]:
            baselines["zero_shot"] = evaluate_records(model, tokenizer, test, task_type, fmt=fmt, **evaluate)
        if "few_shot" in settings["baselines"]:
            shots = PromptFormat(tokenizer, use_chat_template=use_template, few_shot=train[:settings["few_shot_k"]])
            baselines["few_shot"] = evaluate_records(model, tokenizer, test, task_type, fmt=shots, **evaluate)
        result["baselines"] = baselines
        wall["baselines"] = time.perf_counter() - t
    # Reported before training, so a trial the scheduler stops still has its baselines and size.
    report({"step": 0, "budget": 0, "status": "baselines", "val_eval_loss": FAILED_LOSS,
            "info_json": json.dumps({"baselines": result.get("baselines", {}), "params": params,
                                     "architecture": result["architecture"], "node_id": result["node_id"],
                                     "worker_nodes": result["worker_nodes"]}),
            "elapsed_s": time.perf_counter() - started})

    t = time.perf_counter()
    try:
        model, compression = _compressed_model(model, tokenizer, settings, train, fmt, training, rank, device)
    except CandidateError as e:
        return fail(f"model compression failed: {e}")
    except Exception as e:  # noqa: BLE001 - a candidate the compressor cannot handle fails alone
        return fail(f"model compression failed: {type(e).__name__}: {e}")
    wall["model_compression"] = time.perf_counter() - t
    result.update(layers=compression["layers"], layers_kept=compression["layers_kept"], compression=compression,
                  proxy_params=sum(p.numel() for p in model.parameters()))
    if training["method"] == "lora":
        # The adapters' random init from the trial's seed, not from whatever this process (a reused
        # actor, a test) drew before: the same trial gives the same proxy wherever it runs.
        torch.manual_seed(training["seed"])
        try:
            model = _apply_lora(model, training["lora"])
        except ValueError as e:  # e.g. target modules not found in this architecture
            return fail(f"LoRA cannot wrap {candidate['name']}: {e}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    steps = optimizer_steps(len(train), epochs=training["epochs"], batch_size=training["batch_size"],
                            accumulation=training["gradient_accumulation_steps"], world_size=world,
                            max_steps=training["max_steps"])
    rf = settings["reduction_factor"]
    rungs = rung_steps(steps, settings["rungs"], rf)
    history: list[dict] = list(before["history"]) if before else []
    fine_tune_before = before["wall"].get("fine_tune", 0.0) if before else 0.0
    elapsed_before = before["elapsed_s"] if before else 0.0

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - started

    # The halving metric's per-row values at the latest evaluation, kept in a paused trial's rung
    # record so that synchronous halving can say how sure each cut is (orchestrate.cut_margin).
    halving_rows: dict = {}

    def on_eval(step: int, progress: dict) -> None:
        # `budget` is the scheduler's clock: rf^i at the i-th rung, whatever the candidate's steps.
        budget = rf ** next(i for i, s in enumerate(rungs) if s >= step)
        metrics: dict = {"step": step, "budget": budget, "status": "running", "train_loss": progress["train_loss"],
                         "train_tokens": progress["train_tokens"] * world, "val_eval_loss": FAILED_LOSS,
                         "elapsed_s": elapsed()}
        if rank == 0:
            scores = evaluate_records(model, tokenizer, validation, task_type, fmt=fmt, generate=False,
                                      per_row=pause_at is not None, **evaluate)
            rows = {k[len("row_"):]: scores.pop(k) for k in list(scores) if k.startswith("row_")}
            halving_rows["values"] = halving_row_values(rows, settings.get("halving_metric", "eval_loss"))
            metrics.update({f"val_{k}": v for k, v in scores.items() if k != "rows"})
            # Fine-tuning seconds so far (rung evaluations included, as in a finished trial's
            # `fine_tune`), so that a trial the scheduler stops still accounts for its training time.
            metrics["fine_tune_s"] = fine_tune_before + time.perf_counter() - t_fine_tune
            if not history:  # so that a trial the scheduler stops still shows its compression and timings
                info = {k: result[k] for k in ("layers", "layers_kept", "proxy_params", "compression")}
                info["wall_s_before_fine_tune"] = {k: round(v, 2) for k, v in wall.items()}
                metrics["info_json"] = json.dumps(info, default=_json_default)
            history.append({k: v for k, v in metrics.items() if k != "info_json"})
            log.info("trial %s: step %d/%d val loss %.4f", candidate["name"], step, steps, metrics["val_eval_loss"])
        report(metrics)

    t = t_fine_tune = time.perf_counter()
    try:
        engine = _engine(model, training, bf16, world)
        resume = None
        if (pause_at is not None or resume_from) and hasattr(engine, "ds"):
            return fail("synchronous successive halving cannot pause a DeepSpeed trial (training.deepspeed); "
                        "use ranking.early_stopping.scheduler asha")
        if resume_from:
            _, rng = load_record(resume_from, model, engine.optimizer, device, rank)
            resume = {**rng, "step": before["step"], "tokens": before["tokens"], "losses": before["recent_losses"]}
        progress = finetune(model, tokenizer, train, learning_rate=training["learning_rate"], epochs=training["epochs"],
                            batch_size=training["batch_size"],
                            gradient_accumulation_steps=training["gradient_accumulation_steps"],
                            max_steps=training["max_steps"], max_seq_length=training["max_seq_length"],
                            loss_on=training["loss_on"], packing=training["packing"],
                            warmup_ratio=training["warmup_ratio"], weight_decay=training["weight_decay"],
                            lr_scheduler_type=training.get("lr_scheduler_type", "cosine"),
                            seed=training["seed"], fmt=fmt, engine=engine, rank=rank, world_size=world, bf16=bf16,
                            eval_steps=rungs, on_eval=on_eval,
                            stop_step=rungs[pause_at] if pause_at is not None else None, resume=resume)
    except RungStateError as e:
        return fail(f"cannot resume from its rung record: {e}")
    except FloatingPointError as e:
        return fail(f"training diverged: {e}")
    except torch.OutOfMemoryError as e:
        return fail(f"out of memory while fine-tuning: {str(e).splitlines()[0]}")
    wall["fine_tune"] = time.perf_counter() - t
    if progress["steps"] < 1 or progress["train_tokens"] == 0:
        return fail("fine-tuning ran no optimizer step")
    # This slice's stages, added to the slices' before it: a resumed trial pays its loading again.
    wall = {k: (before["wall"].get(k, 0.0) if before else 0.0) + wall.get(k, 0.0)
            for k in dict.fromkeys([*(before["wall"] if before else {}), *wall]) if k != "total"}
    if "resume" in progress:
        return _pause(settings, progress, history, result, wall, elapsed(), model, engine, rank, world, rf, report,
                      halving_rows.get("values"))

    train_tokens = progress["train_tokens"] * world
    result.update(engine=type(engine).__name__, workers=world,
                  deepspeed=engine.ds.zero_optimization_stage() if hasattr(engine, "ds") else None)
    result.update(steps=progress["steps"], train_tokens=train_tokens, trainable_params=trainable,
                  train_flops=6 * result["proxy_params"] * train_tokens, train_loss=progress["train_loss"],
                  history=history, rungs=rungs)
    if rank == 0:
        t = time.perf_counter()
        scores = evaluate_records(model, tokenizer, test, task_type, fmt=fmt,
                                  per_row=bool(settings.get("test_per_row")), **evaluate)
        # Each test row's [value, weight] apart from the scores: what tells a close pair of ground
        # truths apart from one the test rows cannot order (damoc.ranking.agreement.truth_stability).
        rows = {k[len("row_"):]: scores.pop(k) for k in list(scores) if k.startswith("row_")}
        result["test"] = scores
        if rows:
            result["test_rows"] = rows
        wall["evaluate"] = time.perf_counter() - t
    wall["total"] = elapsed()
    result["wall_s"] = {k: round(v, 2) for k, v in wall.items()}
    final = {"step": progress["steps"], "budget": rf ** (len(rungs) - 1), "status": "completed",
             "train_loss": progress["train_loss"], "train_tokens": train_tokens,
             "val_eval_loss": FAILED_LOSS, **({k: v for k, v in history[-1].items() if k.startswith("val_")}
                                              if history else {})}
    if rank == 0:
        final.update({f"test_{k}": v for k, v in result["test"].items() if isinstance(v, float)})
        final["result_json"] = json.dumps(result, default=_json_default)
    report(final)
    return result if rank == 0 else {}


def _pause(settings: dict, progress: dict, history: list[dict], result: dict, wall: dict, elapsed: float, model,
           engine, rank: int, world: int, rf: int, report: Report, halving_rows: list | None = None) -> dict:
    """End a slice at its rung: write the rung record (rank 0, with every worker's random state)
    and report the pause. The rung's scores were reported by its evaluation."""
    from damoc.trials.rungs import record_dir, save_record

    state = progress["resume"]
    rng = {"torch_rng": state["torch_rng"], "cuda_rng": state["cuda_rng"]}
    rngs = [rng] * world
    if world > 1:
        import torch.distributed as dist

        dist.all_gather_object(rngs, rng)
    budget = rf ** settings["pause_at_rung"]
    if rank == 0:
        metric = settings.get("halving_metric", "eval_loss")
        info = {k: result[k] for k in ("baselines", "params", "architecture", "node_id", "worker_nodes", "layers",
                                       "layers_kept", "proxy_params", "compression") if k in result}
        save_record(record_dir(settings["rung_records"], budget), model, engine.optimizer, {
            "candidate": settings["candidate"]["name"], "step": state["step"], "budget": budget,
            "halving_loss": halving_value(history[-1], metric), "halving_rows": halving_rows,
            "history": history, "tokens": state["tokens"],
            "recent_losses": state["losses"], "info": json.loads(json.dumps(info, default=_json_default)),
            "wall": {k: round(v, 2) for k, v in wall.items()}, "elapsed_s": round(elapsed, 2)}, rngs)
    report({"step": state["step"], "budget": budget, "status": "paused", "train_loss": progress["train_loss"],
            **({k: v for k, v in history[-1].items() if k.startswith("val_")} if history else {})})
    return {"name": settings["candidate"]["name"], "mode": settings["mode"], "status": "paused", "budget": budget} \
        if rank == 0 else {}


def _json_default(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return str(obj)


def run_trial_in_group(settings: dict, report: Report) -> dict:
    """run_trial inside a one-process group when DeepSpeed needs one and none exists (local mode)."""
    import torch.distributed as dist

    made = _single_process_group() if settings["training"].get("deepspeed") not in (None, "auto") else False
    try:
        return run_trial(settings, report)
    finally:
        if made:
            dist.destroy_process_group()


def run_trial_safely(settings: dict, report: Report) -> dict:
    """run_trial, with any unexpected error recorded as this candidate's failure (the others go on)."""
    try:
        return run_trial_in_group(settings, report)
    except Exception as e:  # noqa: BLE001 - one candidate's bug must not sink the selection
        message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
        log.error("trial %s failed: %s\n%s", settings["candidate"]["name"], message, traceback.format_exc())
        report(failure_metrics(message))
        return {"name": settings["candidate"]["name"], "mode": settings["mode"], "status": "failed", "error": message}
