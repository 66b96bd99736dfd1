"""Pretrain one zoo candidate from scratch: a training loop you read top to bottom.

data (random windows of the mixed token streams) -> model (stock transformers class) -> AdamW with
warm-up and cosine decay -> loop -> held-out loss -> save as a plain HF checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from damoc import fingerprint as fp
from damoc.zoo.pretraining_data import split_stream
from damoc.zoo.specs import CandidateSpec

log = logging.getLogger("damoc.zoo")
EVAL_BATCHES = 8


def _windows(stream: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([stream[s:s + length].astype(np.int64) for s in starts]))


def _sample_batch(rng: np.random.Generator, streams: dict[str, np.ndarray], weights: dict[str, float],
                  batch_size: int, seq_len: int) -> torch.Tensor:
    names = list(weights)
    probs = np.array([weights[n] for n in names], dtype=np.float64)
    picks = rng.choice(len(names), size=batch_size, p=probs / probs.sum())
    rows = []
    for index in picks:
        stream = streams[names[index]]
        start = int(rng.integers(0, len(stream) - seq_len))
        rows.append(stream[start:start + seq_len].astype(np.int64))
    return torch.from_numpy(np.stack(rows))


@torch.no_grad()
def heldout_loss(model, streams: dict[str, np.ndarray], weights: dict[str, float], seq_len: int,
                 batch_size: int, seed: int) -> dict[str, float]:
    """Loss on fixed windows of each corpus's held-out tail, and their mix-weighted mean."""
    model.eval()
    rng = np.random.default_rng(seed + 10_000)
    per_corpus = {}
    for name in weights:
        stream = streams[name]
        starts = rng.integers(0, max(1, len(stream) - seq_len), size=EVAL_BATCHES * batch_size)
        losses = []
        for b in range(EVAL_BATCHES):
            x = _windows(stream, starts[b * batch_size:(b + 1) * batch_size], seq_len)
            losses.append(model(input_ids=x, labels=x).loss.item())
        per_corpus[name] = float(np.mean(losses))
    total = sum(weights.values())
    per_corpus["mix"] = sum(per_corpus[n] * w for n, w in weights.items()) / total
    model.train()
    return per_corpus


def pretrain(spec: CandidateSpec, tokenizer_dir: str | os.PathLike, stream_paths: dict[str, str | os.PathLike],
             out_dir: str | os.PathLike, *, max_positions: int = 512, threads: Optional[int] = 1,
             on_step: Optional[Callable[[int, float], None]] = None) -> dict:
    """Pretrain `spec` on the token streams (.npy files) and save it to `out_dir`. Returns stats."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = spec.hf_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                            tokenizer.pad_token_id, max_positions=max_positions)
    model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()

    streams = {name: np.load(stream_paths[name], mmap_mode="r", allow_pickle=False) for name in spec.corpus_mix}
    train = {name: split_stream(s)[0] for name, s in streams.items()}
    heldout = {name: split_stream(s)[1] for name, s in streams.items()}
    rng = np.random.default_rng(spec.seed)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=spec.learning_rate, betas=(0.9, 0.95))
    warmup = max(1, spec.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return spec.learning_rate * (step + 1) / warmup
        progress = (step - warmup) / max(1, spec.steps - warmup)
        return spec.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    recent: list[float] = []
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x = _sample_batch(rng, train, spec.corpus_mix, spec.batch_size, spec.seq_len)
        loss = model(input_ids=x, labels=x).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{spec.name}: pretraining loss is {loss.item()} at step {step}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-20:]
        if on_step:
            on_step(step + 1, loss.item())

    losses = heldout_loss(model, heldout, spec.corpus_mix, spec.seq_len, spec.batch_size, spec.seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stats = {
        "name": spec.name,
        "architecture": type(model).__name__,
        "model_type": spec.model_type,
        "params": params,
        "non_embedding_params": params - embedding * (1 if config.tie_word_embeddings else 2),
        "layers": spec.layers,
        "hidden_size": spec.hidden_size,
        "corpus_mix": spec.corpus_mix,
        "pretraining_steps": spec.steps,
        "pretraining_tokens": spec.pretraining_tokens,
        "train_loss_last20": float(np.mean(recent)),
        "final_loss": losses["mix"],
        "heldout_loss_per_corpus": {k: v for k, v in losses.items() if k != "mix"},
        "seconds": round(time.perf_counter() - started, 2),
        "built_on": fp.arithmetic_platform(),
    }
    (out_dir / "damoc_zoo.json").write_text(json.dumps({"spec": spec.to_dict(), "stats": stats}, indent=2) + "\n")
    log.info("zoo: pretrained %s (%.2fM params, loss %.3f, %.0f s)", spec.name, params / 1e6, losses["mix"], stats["seconds"])
    return stats
