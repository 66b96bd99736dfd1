"""Rung records: a trial paused at a successive-halving rung, and resumed from it.

Synchronous successive halving (`early_stopping.scheduler: sha`) runs every candidate to a rung,
compares them all there, and resumes only the best. A record is one trial's state at one rung, a
stage-cache entry of its own:

    stage.json              step, budget, halving loss, rung history, costs so far, the trial's
                            baselines and compression (what a stopped trial reports)
    trainable.safetensors   the trainable parameters (all of them for full fine-tuning, the
                            adapters for LoRA; the frozen rest is rebuilt from the candidate)
    optimizer.pt            the optimizer's state and every worker's random state: tensors only,
                            loaded with torch's weights_only unpickler (damoc writes this file
                            itself, in its cache; it never loads a user's pickle)

The weights are dropped once a later record, or the finished trial, supersedes them; stage.json
stays, so the rung's result is never lost. Nothing here imports Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from damoc import fingerprint as fp
from damoc.io import atomic_dir

WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"


class RungStateError(RuntimeError):
    """A rung record that does not fit the model it is loaded into."""


def record_dir(root: str | Path, budget: int) -> Path:
    return Path(root) / f"budget-{budget}"


def trainable_state(model) -> dict:
    """The trainable parameters by name, on the CPU (tied parameters once: named_parameters
    yields each tensor once, so safetensors sees no shared storage)."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_record(path: str | Path, model, optimizer, state: dict, rng_states: list) -> Path:
    """Write one rung record atomically (rank 0 only: it holds every worker's random state)."""
    import torch
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_file(trainable_state(model), str(tmp / WEIGHTS))
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng_states}, tmp / OPTIMIZER)
        fp.write_summary(tmp, {"stage": "trial-rung", **state})
    return Path(path)


def load_record(path: str | Path, model, optimizer, device, rank: int = 0) -> tuple[dict, dict]:
    """Restore the model's trainable parameters and the optimizer's state from a record. Returns
    its stage.json and this worker's random state."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS).is_file():
        raise RungStateError(f"rung record {path} has no weights left to resume from")
    tensors = load_file(str(path / WEIGHTS), device=str(device))
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise RungStateError(f"rung record {path} does not fit this model (missing {missing[:3]}, unexpected {extra[:3]})")
    model.load_state_dict(tensors, strict=False)
    saved = torch.load(path / OPTIMIZER, map_location=device, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    rngs = saved["rng"]
    return fp.read_summary(path), rngs[rank] if rank < len(rngs) else rngs[0]


def drop_weights(path: Optional[str | Path]) -> None:
    """Free a superseded record's weights; its stage.json (the rung's result) stays."""
    if path is None:
        return
    for name in (WEIGHTS, OPTIMIZER):
        (Path(path) / name).unlink(missing_ok=True)
