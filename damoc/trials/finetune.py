"""Supervised fine-tuning of a causal LM on canonical records: a loop you read top to bottom.

examples (prompt ids + response ids + EOS, loss on the response only by default) -> shuffled
micro-batches -> AdamW with warm-up and cosine decay -> steps. Ray Train calls the same function
inside each worker; nothing here imports Ray.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Optional, Sequence

import torch

from damoc.data.records import Record
from damoc.log import progress

IGNORE = -100


def build_examples(tokenizer, records: Sequence[Record], *, max_seq_length: int,
                   loss_on: str = "completion") -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per record. The prompt is cut from the left when too long, so the
    response (the part the loss is on) is always kept whole up to `max_seq_length`."""
    examples = []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for record in records:
        prompt = bos + tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
        response = (tokenizer(" " + record["response"].strip(), add_special_tokens=False)["input_ids"] + eos)[:max_seq_length - 1]
        prompt = prompt[-(max_seq_length - len(response)):]
        ids = prompt + response
        labels = ([IGNORE] * len(prompt) if loss_on == "completion" else list(prompt)) + response
        examples.append((ids, labels))
    return examples


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(lab)] = torch.tensor(lab)
        attention[row, :len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def finetune(model, tokenizer, records: Sequence[Record], *, learning_rate: float, epochs: float = 1.0,
             batch_size: int = 16, max_steps: Optional[int] = None, max_seq_length: int = 256,
             loss_on: str = "completion", warmup_ratio: float = 0.05, weight_decay: float = 0.0,
             seed: int = 0, on_step: Optional[Callable[[int, float], None]] = None) -> dict:
    """Fine-tune `model` in place on `records`. Returns steps, trained tokens, loss and seconds."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    examples = build_examples(tokenizer, records, max_seq_length=max_seq_length, loss_on=loss_on)
    steps = max_steps or max(1, math.ceil(len(examples) * epochs / batch_size))
    order: list[int] = []
    while len(order) < steps * batch_size:
        epoch = list(range(len(examples)))
        rng.shuffle(epoch)
        order += epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    warmup = max(1, int(steps * warmup_ratio))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.train()
    tokens, losses = 0, []
    for step in progress(range(steps), desc="fine-tuning", unit="step"):
        lr = learning_rate * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = collate([examples[i] for i in order[step * batch_size:(step + 1) * batch_size]], pad)
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning loss is {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
        losses.append(loss.item())
        if on_step:
            on_step(step + 1, loss.item())
    model.eval()
    return {"steps": steps, "train_tokens": tokens, "train_loss": sum(losses[-20:]) / len(losses[-20:]),
            "seconds": round(time.perf_counter() - started, 2)}
