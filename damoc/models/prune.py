"""Layer pruning: choose which decoder layers to drop, and drop them so the result is a plain
Hugging Face model (saves, reloads without damoc, generates with a KV cache).

What removal must fix besides the layer list (REFERENCE §3): each attention module's `layer_idx`
indexes the KV cache, and `config.num_hidden_layers` / `config.layer_types` size it; all three are
renumbered here. Embeddings are not touched, so tied input/output embeddings stay tied.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from damoc.models.importance import LayerImportance, ModelCompressionError, decoder_layer_list

PRUNE_MODES = ("lowest_bi", "block")


def layers_to_remove_count(n_layers: int, ratio: float, name: str = "model") -> int:
    """round(ratio x layers), the paper's fraction of depth."""
    if not 0 < ratio < 1:
        raise ModelCompressionError(f"{name}: prune ratio must be in (0, 1), got {ratio}")
    return int(round(ratio * n_layers))


def removable_layers(n_layers: int, *, protect_first: bool = True, protect_last: bool = True) -> list[int]:
    return [i for i in range(n_layers) if not (protect_first and i == 0) and not (protect_last and i == n_layers - 1)]


def choose_layers(importance: LayerImportance, n_remove: int, *, mode: str = "lowest_bi", protect_first: bool = True,
                  protect_last: bool = True, name: str = "model") -> list[int]:
    """Indices (ascending) of the layers to remove.

    lowest_bi: the n layers with the lowest Block Influence among the unprotected ones (ties go to
    the later layer, which the residual stream changes least). block: the contiguous block of n
    unprotected layers whose input and output are closest in angle."""
    n_layers = importance.layers
    eligible = removable_layers(n_layers, protect_first=protect_first, protect_last=protect_last)
    if n_remove <= 0:
        return []
    if n_remove > len(eligible):
        protected = n_layers - len(eligible)
        raise ModelCompressionError(f"{name}: cannot remove {n_remove} of {n_layers} layers with {protected} protected "
                                    f"(at most {len(eligible)} removable)")
    if mode == "lowest_bi":
        order = sorted(eligible, key=lambda i: (importance.block_influence[i], -i))
        return sorted(order[:n_remove])
    if mode == "block":
        if importance.block_size != n_remove:
            raise ModelCompressionError(f"{name}: block mode needs angular distances for blocks of {n_remove} layers "
                                        f"(measured: {importance.block_size})")
        starts = [s for s in eligible if all(i in eligible for i in range(s, s + n_remove))
                  and importance.angular_distance[s] is not None]
        best = min(starts, key=lambda s: (importance.angular_distance[s], -s))
        return list(range(best, best + n_remove))
    raise ModelCompressionError(f"{name}: unknown prune mode '{mode}' (modes: {', '.join(PRUNE_MODES)})")


def receiving_layers(n_layers: int, removed: Sequence[int], policy: str = "preceding") -> dict[int, int]:
    """removed layer -> the kept layer it is merged into: the nearest preceding kept layer (the
    nearest following one when none precedes), or the reverse with policy 'following'."""
    kept = [i for i in range(n_layers) if i not in set(removed)]
    if not kept:
        raise ModelCompressionError("no layer would be kept")
    out = {}
    for r in removed:
        before = [k for k in kept if k < r]
        after = [k for k in kept if k > r]
        first, second = (before[::-1], after) if policy == "preceding" else (after, before[::-1])
        out[r] = (first or second)[0]
    return out


def remove_layers(model, removed: Sequence[int], name: str = "model") -> list[Optional[int]]:
    """Delete the `removed` decoder layers in place; returns old index -> new index (None for a
    removed layer)."""
    parent, attr, layers = decoder_layer_list(model, name)
    n_layers = len(layers)
    gone = set(removed)
    if any(not 0 <= i < n_layers for i in gone):
        raise ModelCompressionError(f"{name}: layer indices {sorted(gone)} are outside 0..{n_layers - 1}")
    if len(gone) >= n_layers:
        raise ModelCompressionError(f"{name}: cannot remove all {n_layers} layers")
    kept = [layers[i] for i in range(n_layers) if i not in gone]
    setattr(parent, attr, nn.ModuleList(kept))
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):  # the attention module's KV-cache slot
                module.layer_idx = new_index
    config = model.config
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == n_layers:
        config.layer_types = [t for i, t in enumerate(config.layer_types) if i not in gone]
    # Qwen2-style configs derive sliding layers from a count; keep it within the new depth.
    if isinstance(getattr(config, "max_window_layers", None), int):
        config.max_window_layers = min(config.max_window_layers, len(kept))
    mapping: list[Optional[int]] = []
    new_index = 0
    for i in range(n_layers):
        if i in gone:
            mapping.append(None)
        else:
            mapping.append(new_index)
            new_index += 1
    return mapping
