"""Supervised fine-tuning of a causal LM on canonical records: a loop you read top to bottom.

examples (prompt ids + response ids, loss on the response only by default, optionally packed) ->
this worker's shard -> micro-batches with gradient accumulation -> AdamW with warm-up and cosine
decay -> evaluation callbacks at chosen steps. Ray Train runs the same function in each worker; the
only distributed parts are the shard and the `Engine` (plain, DDP or DeepSpeed) that applies a step.
Nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from typing import Callable, Optional, Sequence

import torch

from damoc.data.records import Record
from damoc.log import progress
from damoc.trials.logits import causal_lm_loss, keeps_logits_by_mask
from damoc.trials.prompts import PromptFormat

IGNORE = -100
Example = tuple[list[int], list[int]]


def build_examples(tokenizer, records: Sequence[Record], *, max_seq_length: int, loss_on: str = "completion",
                   fmt: Optional[PromptFormat] = None) -> list[Example]:
    """(input_ids, labels) per record. The prompt is cut from the left when too long, so the
    response (the part the loss is on) is always kept whole up to `max_seq_length`."""
    fmt = fmt if fmt is not None else PromptFormat(tokenizer)
    examples = []
    for record in records:
        prompt = fmt.context_ids(record)
        response = fmt.continuation_ids(record, record["response"], final=True)[:max_seq_length - 1]
        prompt = prompt[-(max_seq_length - len(response)):]
        ids = prompt + response
        labels = ([IGNORE] * len(prompt) if loss_on == "completion" else list(prompt)) + response
        examples.append((ids, labels))
    return examples


def pack_examples(examples: Sequence[Example], max_seq_length: int) -> list[Example]:
    """Concatenate whole examples, in order, into sequences of at most `max_seq_length` tokens.
    Examples attend to earlier ones in the same sequence (no block-diagonal mask), the common
    trade-off of simple packing; labels keep each example's own mask."""
    packed: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    for e_ids, e_labels in examples:
        if ids and len(ids) + len(e_ids) > max_seq_length:
            packed.append((ids, labels))
            ids, labels = [], []
        ids = ids + e_ids
        labels = labels + e_labels
    if ids:
        packed.append((ids, labels))
    return packed


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(lab)] = torch.tensor(lab)
        attention[row, :len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


class Engine:
    """Applies micro-batch losses to the model: plain PyTorch (one process, or DDP-wrapped)."""

    def __init__(self, model, learning_rate: float, weight_decay: float, accumulation: int, clip: float = 1.0):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=weight_decay)
        self.accumulation = accumulation
        self.clip = clip

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def micro_step(self) -> None:
        """Called after every micro-batch (DeepSpeed counts accumulation itself)."""


class DeepSpeedEngine(Engine):
    """A DeepSpeed engine (ZeRO): it scales, accumulates and clips itself."""

    def __init__(self, ds_engine):
        self.model = ds_engine
        self.ds = ds_engine

    def set_lr(self, lr: float) -> None:
        for group in self.ds.optimizer.param_groups:
            group["lr"] = lr

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def micro_step(self) -> None:
        self.ds.step()  # steps the optimizer only at accumulation boundaries

    def step(self) -> None:
        pass


def optimizer_steps(n_examples: int, *, epochs: float, batch_size: int, accumulation: int, world_size: int,
                    max_steps: Optional[int]) -> int:
    if max_steps:
        return max_steps
    return max(1, math.ceil(n_examples * epochs / (batch_size * accumulation * world_size)))


def finetune(model, tokenizer, records: Sequence[Record], *, learning_rate: float, epochs: float = 1.0,
             batch_size: int = 16, gradient_accumulation_steps: int = 1, max_steps: Optional[int] = None,
             max_seq_length: int = 256, loss_on: str = "completion", packing: bool = False,
             warmup_ratio: float = 0.05, lr_scheduler_type: str = "cosine", weight_decay: float = 0.0, seed: int = 0,
             fmt: Optional[PromptFormat] = None, engine: Optional[Engine] = None, rank: int = 0, world_size: int = 1,
             bf16: bool = False, eval_steps: Sequence[int] = (),
             on_eval: Optional[Callable[[int, dict], None]] = None,
             on_step: Optional[Callable[[int, float], None]] = None,
             stop_step: Optional[int] = None, resume: Optional[dict] = None) -> dict:
    """Fine-tune `model` in place on `records` (this worker trains on its shard rank::world_size).

    `on_eval(step, progress)` runs after each optimizer step listed in `eval_steps`, with the
    progress so far (steps, tokens, recent loss). Returns the final progress and seconds.

    A run can pause and resume (synchronous successive halving pauses every trial at a rung):
    `stop_step` ends it after that optimizer step, and the returned progress then carries `resume`
    (the step, tokens, recent losses and random state). Passed back as `resume`, with the model's
    and optimizer's state restored by the caller, the run continues with the same data order,
    learning-rate schedule and dropout as one that never stopped."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    examples = build_examples(tokenizer, records, max_seq_length=max_seq_length, loss_on=loss_on, fmt=fmt)
    if packing:
        rng.shuffle(examples)
        examples = pack_examples(examples, max_seq_length)
    steps = optimizer_steps(len(examples), epochs=epochs, batch_size=batch_size,
                            accumulation=gradient_accumulation_steps, world_size=world_size, max_steps=max_steps)
    per_step = batch_size * gradient_accumulation_steps
    order: list[int] = []
    while len(order) < steps * per_step * world_size:
        epoch = list(range(len(examples)))
        rng.shuffle(epoch)
        order += epoch
    shard = order[rank::world_size]          # the same seeded order everywhere, one slice per worker
    engine = engine or Engine(model, learning_rate, weight_decay, gradient_accumulation_steps)
    warmup = max(1, int(steps * warmup_ratio))
    decay = lr_decay(lr_scheduler_type, steps)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else contextlib.nullcontext()
    evals = set(eval_steps)
    by_mask = keeps_logits_by_mask(engine.model)
    engine.model.train()
    tokens, losses, first = 0, [], 0
    if resume:
        first, tokens, losses = resume["step"], resume["tokens"], list(resume["losses"])
        torch.set_rng_state(resume["torch_rng"])
        if resume.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(resume["cuda_rng"])
    last = min(steps, stop_step) if stop_step else steps
    for step in progress(range(first, last), desc="fine-tuning", unit="step"):
        engine.set_lr(learning_rate * min(1.0, (step + 1) / warmup) * decay(step))
        for micro in range(gradient_accumulation_steps):
            start = (step * gradient_accumulation_steps + micro) * batch_size
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in shard[start:start + batch_size]], pad).items()}
            with autocast:
                # The loss `model(**batch).loss` gives, with the vocabulary projection only where a
                # label is (the response's few tokens under `loss_on: completion`).
                loss = causal_lm_loss(engine.model, batch, IGNORE, by_mask=by_mask)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss is {loss.item()} at step {step}")
            engine.backward(loss)
            engine.micro_step()
            tokens += int(batch["attention_mask"].sum())
            losses.append(loss.item())
        engine.step()
        if on_step:
            on_step(step + 1, losses[-1])
        if on_eval and (step + 1) in evals:
            on_eval(step + 1, _progress(step + 1, tokens, losses, started))
            engine.model.train()
    engine.model.eval()
    if last < steps:
        return {**_progress(last, tokens, losses, started),
                "resume": {"step": last, "tokens": tokens, "losses": losses[-RECENT:], "torch_rng": torch.get_rng_state(),
                           "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}}
    return _progress(steps, tokens, losses, started)


def lr_decay(kind: str, steps: int) -> Callable[[int], float]:
    """The factor on the peak learning rate at optimizer step `step` (0-based) of `steps`: the
    shapes of transformers' schedules of the same names, here over all the steps with the warm-up
    factor applied on top (as damoc's cosine always was). Functions of the step, with no scheduler
    state, so that a run paused at a rung and resumed lands on the same rates."""
    if kind == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))
    if kind == "linear":
        return lambda step: 1 - step / steps
    if kind == "constant":
        return lambda step: 1.0
    raise ValueError(f"lr_scheduler_type must be cosine, linear or constant, got {kind!r}")


RECENT = 20   # micro-batch losses whose mean is reported as the training loss


def _progress(steps: int, tokens: int, losses: list[float], started: float) -> dict:
    recent = losses[-RECENT:] or [float("nan")]
    return {"steps": steps, "train_tokens": tokens, "train_loss": sum(recent) / len(recent),
            "seconds": round(time.perf_counter() - started, 2)}
