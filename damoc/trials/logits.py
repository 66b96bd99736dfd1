"""Logits at chosen positions only.

Fine-tuning's loss and every score damoc computes read a few positions of each sequence: the
response tokens (1-3 of a ~70-token lexcat row), or the next token after a context. Projecting
every position onto the vocabulary and normalising it is then most of the output head's work for
nothing; on the demo zoo (vocabulary 4,096, hidden size 96-320) the head is 18-37% of a forward
pass. transformers' causal LMs take a boolean `logits_to_keep` mask and project only those
positions; models whose forward has no such argument (remote code, other libraries) get the full
logits, indexed by the same mask, so the two paths return the same values.
"""

from __future__ import annotations

import inspect

import torch


def unwrapped(model):
    """The transformers model under DDP / DeepSpeed (`.module`) and PEFT (`get_base_model`) wrappers."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner


def keeps_logits_by_mask(model) -> bool:
    """Whether `model.forward` takes `logits_to_keep` (transformers >= 5 accepts a boolean mask there)."""
    try:
        return "logits_to_keep" in inspect.signature(unwrapped(model).forward).parameters
    except (TypeError, ValueError):
        return False


def cache_argument(model) -> str | None:
    """The name under which `model.forward` takes a KV cache to continue from (`cache` since
    transformers 5.x renamed it, `past_key_values` before), or None where damoc should not pass one:
    remote-code models (whose cache and `logits_to_keep` may be older kinds) and models without a
    `logits_to_keep` mask."""
    inner = unwrapped(model)
    if not type(inner).__module__.startswith("transformers.") or not keeps_logits_by_mask(model):
        return None
    try:
        parameters = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def logits_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor,
              *, by_mask: bool | None = None, cache=None) -> torch.Tensor:
    """Logits where `keep` (bool, batch x length) is True, flattened row by row: (keep.sum(), vocab).

    With `cache` (the KV cache of tokens every row starts with; only for models with a
    `cache_argument`), `input_ids` and `keep` are the tokens after them and `attention_mask` covers
    the cached tokens too, as in generation.
    `model` may be wrapped (DDP, DeepSpeed, PEFT); the call goes through the wrapper, so its hooks
    (gradient sync, LoRA) run as usual."""
    if by_mask is None:
        by_mask = keeps_logits_by_mask(model)
    cached = {} if cache is None else {cache_argument(model): cache, "use_cache": True}
    if by_mask:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **cached).logits
        if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
            return logits
        if cache is not None:  # the call has grown the cache: it cannot be run again
            raise RuntimeError(f"{type(unwrapped(model)).__name__} took a cache but not a logits_to_keep mask")
        # A forward (remote code) that takes the argument but not a mask: the full logits instead.
    return model(input_ids=input_ids, attention_mask=attention_mask, **cached).logits[keep]


def causal_lm_loss(model, batch: dict[str, torch.Tensor], ignore_index: int = -100,
                   by_mask: bool | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens: the loss `model(**batch).loss` gives
    (labels shifted by one, `ignore_index` skipped), with logits computed only where a label is."""
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != ignore_index
    logits = logits_at(model, batch["input_ids"], batch["attention_mask"], keep, by_mask=by_mask)
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]])
