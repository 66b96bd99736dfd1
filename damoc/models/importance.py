"""Layer importance on calibration text: ShortGPT's Block Influence and the angular distance of
contiguous blocks (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers").

    BI_l  = 1 - mean_t cos(x_l[t], x_{l+1}[t])
    AD_l,n = mean_t arccos(cos(x_l[t], x_{l+n}[t])) / pi

x_l is the hidden state entering decoder layer l (x_L: what the last layer outputs, before the
final norm), t runs over the non-padding tokens of every calibration sample. States are taken with
forward hooks on the layers themselves: a model's `output_hidden_states` applies the final norm to
its last entry, which would make the last layer look important for the wrong reason.

Memory: cosines are computed token-row-wise (never an N x N matrix) inside the hooks, holding at
most n + 1 layer inputs of one batch at a time: O(batch x seq x hidden x (n + 1)), linear in
sequence length. Sums accumulate in float64 from float32 cosines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from damoc.errors import DamocError

# Where the decoder layer list lives in common Hugging Face families; anything else is found by
# the generic search in `decoder_layer_list`.
KNOWN_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
                     "transformer.blocks", "model.language_model.layers", "language_model.model.layers")


class ModelCompressionError(DamocError):
    """A model or setting the compressor cannot handle; the message names the model and why."""


def configured_layers(model) -> int:
    config = model.config
    return int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0)


def decoder_layer_list(model, name: str = "model") -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent module, attribute name, the ModuleList of decoder layers) of a causal LM.

    Known paths first; otherwise the one ModuleList of identical blocks whose length is the
    config's layer count. Raises ModelCompressionError when it cannot be found unambiguously."""
    expected = configured_layers(model)
    for path in KNOWN_LAYER_PATHS:
        parent_path, _, attr = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path)
        except AttributeError:
            continue
        layers = getattr(parent, attr, None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and (not expected or len(layers) == expected):
            return parent, attr, layers
    found = []
    for module_name, module in model.named_modules():
        if (isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
                and (not expected or len(module) == expected)):
            found.append(module_name)
    # Nested lists (e.g. experts inside a layer) sit below the layer list: keep the outermost.
    outer = [n for n in found if not any(n != o and n.startswith(o + ".") for o in found)]
    if len(outer) != 1:
        what = "no" if not outer else f"{len(outer)} candidate ({', '.join(outer)})"
        raise ModelCompressionError(f"{name}: cannot locate the decoder layer list ({what} ModuleList of "
                                    f"{expected or 'identical'} blocks in {type(model).__name__})")
    parent_path, _, attr = outer[0].rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    return parent, attr, getattr(parent, attr)


@dataclass
class LayerImportance:
    """Per original layer: Block Influence, and (when a block size was given) the angular distance
    of the block of `block_size` layers starting there (None where the block would run past the
    end)."""
    block_influence: list[float]
    tokens: int
    samples: int
    block_size: Optional[int] = None
    angular_distance: list[Optional[float]] = field(default_factory=list)
    peak_states: int = 0  # most layer inputs held at once (the memory bound: block_size + 1)

    @property
    def layers(self) -> int:
        return len(self.block_influence)


def calibration_batches(tokenizer, records: Sequence[dict], *, fmt=None, max_length: int = 256,
                        batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """Calibration samples as the trial trains on them (prompt + response in the run's format),
    cut to `max_length` tokens, right-padded with an attention mask."""
    from damoc.trials.finetune import build_examples, collate

    examples = build_examples(tokenizer, records, max_seq_length=max_length, fmt=fmt)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size], pad)
        batches.append({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    return batches


def _hidden(value) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values.double().masked_select(mask).sum())


@torch.no_grad()
def layer_importance(model, batches: Sequence[dict[str, torch.Tensor]], *, block_size: Optional[int] = None,
                     name: str = "model") -> LayerImportance:
    """Block Influence of every decoder layer (and angular distances of `block_size` blocks) over
    the non-padding tokens of `batches`."""
    parent, attr, layers = decoder_layer_list(model, name)
    n_layers = len(layers)
    if block_size is not None and not 1 <= block_size <= n_layers:
        raise ModelCompressionError(f"{name}: block size {block_size} is outside 1..{n_layers}")
    bi_sums = [0.0] * n_layers
    ad_sums = [0.0] * n_layers
    tokens = samples = 0
    device = next(model.parameters()).device
    state: dict = {}

    def see(index: int, hidden: torch.Tensor) -> None:
        # `index` = l means `hidden` is x_l. Compare with x_{l-1} (BI) and x_{l-n} (block distance).
        x = hidden.float()
        mask = state["mask"]
        inputs = state["inputs"]
        if index - 1 in inputs:
            cos = torch.nn.functional.cosine_similarity(inputs[index - 1], x, dim=-1)
            bi_sums[index - 1] += _masked_sum(1.0 - cos, mask)
        if block_size is not None and index - block_size in inputs:
            cos = torch.nn.functional.cosine_similarity(inputs[index - block_size], x, dim=-1)
            ad_sums[index - block_size] += _masked_sum(torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi, mask)
        inputs[index] = x
        keep = 1 + (block_size or 1)
        for old in [i for i in inputs if i <= index - keep]:
            del inputs[old]
        state["peak"] = max(state.get("peak", 0), len(inputs))

    def pre_hook(index):
        def hook(module, args, kwargs):
            see(index, args[0] if args else kwargs["hidden_states"])
        return hook

    def last_hook(module, args, kwargs, output):
        see(n_layers, _hidden(output))

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[-1].register_forward_hook(last_hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask = batch["attention_mask"].to(device).bool()
            state.update(mask=mask, inputs={})
            kwargs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device),
                      "use_cache": False}
            try:  # the logits are not needed: ask for one position where the model allows it
                model(**kwargs, logits_to_keep=1)
            except TypeError:
                model(**kwargs)
            tokens += int(mask.sum())
            samples += int(mask.shape[0])
    finally:
        for handle in handles:
            handle.remove()
        peak = state.get("peak", 0)
        state.clear()
        model.train(was_training)
    if tokens == 0:
        raise ModelCompressionError(f"{name}: the calibration samples have no tokens")
    angular: list[Optional[float]] = []
    if block_size is not None:
        angular = [ad_sums[i] / tokens if i + block_size <= n_layers else None for i in range(n_layers)]
    return LayerImportance([s / tokens for s in bi_sums], tokens, samples, block_size, angular, peak)
