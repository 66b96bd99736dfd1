"""The model level of DaMoC as one function on a Hugging Face model, in short-transformers' order:
analyse (layer importance on calibration rows) -> choose (layers to drop) -> merge (fold them into
kept layers) -> cut (delete them) -> save (a plain checkpoint plus importance.json and a chart).

`compress_model` runs inside a candidate's trial (on the trial's resources) and from
`damoc model prune`; both save the same checkpoint layout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from damoc.config.schema import ModelCompressionConfig
from damoc.data.records import Record
from damoc.models.importance import (ModelCompressionError, calibration_batches, configured_layers,
                                     decoder_layer_list, layer_importance)
from damoc.models.merge import merge_layers
from damoc.models.prune import choose_layers, layers_to_remove_count, receiving_layers, remove_layers

log = logging.getLogger("damoc.models")
IMPORTANCE_FILE = "importance.json"
COMPRESSION_FILE = "compression.json"


def decoder_layers(model) -> int:
    return configured_layers(model)


def _layer_params(model, name: str) -> int:
    _, _, layers = decoder_layer_list(model, name)
    return sum(p.numel() for p in layers.parameters())


def compress_model(model, cfg: ModelCompressionConfig, calibration: Sequence[Record] = (), *, tokenizer=None, fmt=None,
                   max_length: int = 256, batch_size: int = 8, name: str = "model") -> tuple[object, dict]:
    """Prune (and merge) `model` in place as `cfg` says; returns (model, info).

    info: layers before/after, removed indices, old->new index map, merges, parameters before and
    after, and `importance` (one entry per original layer). With nothing to remove (ratio 0, or
    round(ratio x layers) = 0) the model is returned unchanged."""
    n_layers = decoder_layers(model)
    params = sum(p.numel() for p in model.parameters())
    info: dict = {"method": "none", "layers": n_layers, "layers_kept": n_layers, "removed": [], "merges": [],
                  "params": params, "params_kept": params, "importance": []}
    if cfg.prune_ratio <= 0:
        return model, info
    n_remove = layers_to_remove_count(n_layers, cfg.prune_ratio, name)
    if n_remove == 0:
        log.info("%s: prune ratio %.2f of %d layers rounds to 0 layers; nothing removed", name, cfg.prune_ratio, n_layers)
        return model, info
    if tokenizer is None or not calibration:
        raise ModelCompressionError(f"{name}: layer importance needs calibration rows and the model's tokenizer")
    # Fail on an impossible request before spending a forward pass on it.
    _check_removable(n_layers, n_remove, cfg, name)
    batches = calibration_batches(tokenizer, calibration, fmt=fmt, max_length=max_length, batch_size=batch_size)
    importance = layer_importance(model, batches, block_size=n_remove if cfg.mode == "block" else None, name=name)
    removed = choose_layers(importance, n_remove, mode=cfg.mode, protect_first=cfg.protect_first,
                            protect_last=cfg.protect_last, name=name)
    receivers = receiving_layers(n_layers, removed, cfg.merge.receiver) if cfg.merge.method != "none" else {}
    layer_params = _layer_params(model, name)
    merges = merge_layers(model, receivers, method=cfg.merge.method, density=cfg.merge.density,
                          scale=cfg.merge.scale, seed=cfg.merge.seed, name=name)
    mapping = remove_layers(model, removed, name)
    params_kept = sum(p.numel() for p in model.parameters())
    entries = []
    for i in range(n_layers):
        entry = {"layer": i, "block_influence": round(importance.block_influence[i], 8),
                 "removed": i in removed, "new_index": mapping[i], "merged_into": receivers.get(i)}
        if importance.block_size is not None:
            distance = importance.angular_distance[i]
            entry["angular_distance"] = None if distance is None else round(distance, 8)
        entries.append(entry)
    info.update(method=f"{cfg.mode}+{cfg.merge.method}" if cfg.merge.method != "none" else cfg.mode,
                layers_kept=n_layers - len(removed), removed=removed, merges=merges, params_kept=params_kept,
                layer_params=layer_params, layer_params_kept=_layer_params(model, name),
                calibration={"samples": importance.samples, "tokens": importance.tokens, "max_length": max_length},
                importance=entries, settings=cfg.model_dump(mode="json", by_alias=True))
    log.info("%s: removed layers %s of %d (%s)", name, removed, n_layers, info["method"])
    return model, info


def calibration_rows(records: Sequence[Record], n: int, seed: int = 0) -> list[Record]:
    """A seeded sample of `n` rows (all of them when fewer), in their original order."""
    import random

    if n >= len(records):
        return list(records)
    chosen = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in chosen]


def prune_checkpoint(model: str, out: str | Path, *, ratio: float, mode: str = "lowest_bi", merge: str = "none",
                     density: float = 0.5, scale: float = 1.0, receiver: str = "preceding", seed: int = 0,
                     calibration: str = "bundled:wordnet-defgen", samples: int = 64, max_length: int = 256,
                     protect_first: bool = True, protect_last: bool = True, chat_template: bool = True,
                     trust_remote_code: bool = False) -> dict:
    """`damoc model prune`: load a checkpoint, compress it with calibration rows from the training
    split of `calibration`, and save the result to `out`. Bad input raises DamocError."""
    from pydantic import ValidationError

    from damoc.config import DataConfig
    from damoc.data import load_data
    from damoc.errors import DamocError
    from damoc.models.load import CandidateError, load_candidate, resolve_model_path
    from damoc.trials.prompts import PromptFormat

    if not 0 < ratio < 1:
        raise DamocError(f"--ratio must be in (0, 1), got {ratio}")
    if samples < 1 or max_length < 2:
        raise DamocError(f"--samples must be >= 1 and --max-length >= 2 (got {samples}, {max_length})")
    try:
        cfg = ModelCompressionConfig.model_validate({
            "prune_ratio": ratio, "mode": mode, "protect_first": protect_first, "protect_last": protect_last,
            "calibration_samples": samples,
            "merge": {"method": merge, "density": density, "lambda": scale, "seed": seed, "receiver": receiver}})
    except ValidationError as e:
        problem = e.errors()[0]
        raise DamocError(f"model prune: {'.'.join(str(p) for p in problem['loc'])}: {problem['msg']}") from e
    path = resolve_model_path(model)
    _check_feasible(path, cfg, model, trust_remote_code)
    try:
        model_obj, tokenizer = load_candidate(path, trust_remote_code=trust_remote_code)
    except CandidateError as e:
        raise DamocError(str(e)) from e
    rows = calibration_rows(load_data(DataConfig(source=calibration)).splits["train"], samples, seed)
    fmt = PromptFormat(tokenizer, use_chat_template=chat_template)
    model_obj, info = compress_model(model_obj, cfg, rows, tokenizer=tokenizer, fmt=fmt, max_length=max_length,
                                     name=model)
    if not info["removed"]:
        raise DamocError(f"{model}: ratio {ratio} of {info['layers']} layers rounds to 0 layers; nothing to remove")
    info["source_model"] = model
    info["calibration"]["source"] = calibration
    save_compressed(model_obj, tokenizer, info, out, title=f"{Path(str(model)).name}: Block Influence (red: removed)")
    return info


def _layer_count(path: str, trust_remote_code: bool) -> int:
    """Decoder layers of the checkpoint at `path`, from its config alone; 0 when it cannot tell
    (load_candidate reports an unreadable checkpoint with its own message)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return 0
    return int(getattr(config, "num_hidden_layers", 0) or 0)


def unprunable(path: str, cfg: ModelCompressionConfig, name: str, trust_remote_code: bool = False) -> Optional[str]:
    """Why `cfg` cannot prune the checkpoint at `path` (more layers to remove than are not
    protected), from its config alone, before any weights load; None when it can, when the ratio
    removes nothing, or when the config cannot tell."""
    n_layers = _layer_count(path, trust_remote_code)
    if not n_layers or not cfg.prune_ratio:
        return None
    try:
        _check_removable(n_layers, layers_to_remove_count(n_layers, cfg.prune_ratio, name), cfg, name)
    except ModelCompressionError as e:
        return str(e)
    return None


def _check_feasible(path: str, cfg: ModelCompressionConfig, name: str, trust_remote_code: bool) -> None:
    """Refuse an impossible request from the config alone, before any weights load."""
    n_layers = _layer_count(path, trust_remote_code)
    if not n_layers:
        return
    n_remove = layers_to_remove_count(n_layers, cfg.prune_ratio, name)
    if n_remove == 0:
        raise ModelCompressionError(f"{name}: ratio {cfg.prune_ratio} of {n_layers} layers rounds to 0 layers; nothing to remove")
    _check_removable(n_layers, n_remove, cfg, name)


def _check_removable(n_layers: int, n_remove: int, cfg: ModelCompressionConfig, name: str) -> None:
    protected = int(cfg.protect_first) + int(cfg.protect_last)
    if n_remove > n_layers - protected:
        raise ModelCompressionError(f"{name}: cannot remove {n_remove} of {n_layers} layers with {protected} protected "
                                    f"(at most {max(n_layers - protected, 0)} removable)")


def save_compressed(model, tokenizer, info: dict, out_dir: str | Path, *, title: Optional[str] = None) -> Path:
    """Write a compressed model as a plain HF checkpoint (safetensors) with its tokenizer,
    importance.json (one entry per original layer), importance.png and compression.json, into a
    directory that appears only when complete."""
    from damoc.io import atomic_dir

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / IMPORTANCE_FILE).write_text(json.dumps(info["importance"], indent=2) + "\n", encoding="utf-8")
        summary = {k: v for k, v in info.items() if k != "importance"}
        (tmp / COMPRESSION_FILE).write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        if info["importance"]:
            plot_importance(info["importance"], tmp / "importance.png", title=title)
    return out_dir


def plot_importance(entries: Sequence[dict], path: str | Path, *, title: Optional[str] = None) -> Path:
    """Bar chart of Block Influence per layer; removed layers in a second colour."""
    from damoc.report.plots import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(entries) + 2), 3.2))
    colours = ["#d62728" if e["removed"] else "#1f77b4" for e in entries]
    ax.bar([e["layer"] for e in entries], [e["block_influence"] for e in entries], color=colours)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("Block Influence (1 - cos)")
    ax.set_title(title or "layer importance (red: removed)")
    return save_png(fig, Path(path))
