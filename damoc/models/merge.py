"""Sparse merging of removed layers into kept ones (REFERENCE §1 item 6).

For a kept layer k receiving removed layers r1..rm, per matching tensor:

    delta_i = theta_ri - theta_k
    merged  = combine(sparsify(delta_1), ..., sparsify(delta_m))
    theta_k = theta_k + lambda * merged

One small registry of methods (as in mergekit): `linear` sums the dense deltas (task arithmetic;
LaCo's layer collapse is linear with lambda 1); `ties` trims each delta to its top-`density`
magnitudes, elects a sign per entry and averages the deltas that agree (disjoint merge); `dare`
drops each entry with probability 1 - density, rescales by 1/density and sums; `dare_ties` is
DARE's drop followed by TIES' election and disjoint merge. The kernels are peft's
(`peft.utils.merge_utils`); DARE's drop is seeded per tensor, and each delta is sparsified exactly
once (re-applying DARE to a tensor empties it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from damoc.models.importance import ModelCompressionError, decoder_layer_list


def _peft_kernels():
    # Imported when a merge runs, not with this module: every trial process imports it (through
    # damoc.models.compress), and importing peft costs about 1.8 s on 2 CPU cores on top of
    # transformers, paid again by each fresh Ray worker, while most selections merge nothing.
    from peft.utils import merge_utils

    return merge_utils


def _trim(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    return delta if density >= 1 else _peft_kernels().magnitude_based_pruning(delta, density)


def _drop(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    if density >= 1:
        return delta
    # peft's random_pruning draws from the global generator: fork it so the drop is seeded and the
    # caller's random state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _peft_kernels().random_pruning(delta, density, rescale=True)


def _keep(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    return delta


def _sum(deltas: torch.Tensor) -> torch.Tensor:
    return deltas.sum(dim=0)


def _elect(deltas: torch.Tensor) -> torch.Tensor:
    kernels = _peft_kernels()
    return kernels.disjoint_merge(deltas, kernels.calculate_majority_sign_mask(deltas, method="total"))


@dataclass(frozen=True)
class MergeMethod:
    name: str
    sparsify: Callable[[torch.Tensor, float, int], torch.Tensor]
    combine: Callable[[torch.Tensor], torch.Tensor]
    description: str


MERGE_METHODS: dict[str, MergeMethod] = {m.name: m for m in (
    MergeMethod("linear", _keep, _sum, "sum of dense deltas (task arithmetic)"),
    MergeMethod("ties", _trim, _elect, "magnitude trim, sign election, disjoint mean"),
    MergeMethod("dare", _drop, _sum, "random drop with 1/density rescale, summed"),
    MergeMethod("dare_ties", _drop, _elect, "random drop with rescale, sign election, disjoint mean"),
)}


def merge_deltas(deltas: Sequence[torch.Tensor], method: str, *, density: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Combine task-vector deltas (same shape) into one, in float32."""
    if method not in MERGE_METHODS:
        raise ModelCompressionError(f"unknown merge method '{method}' (methods: none, {', '.join(MERGE_METHODS)})")
    if not 0 < density <= 1:
        raise ModelCompressionError(f"merge density must be in (0, 1], got {density}")
    spec = MERGE_METHODS[method]
    sparse = [spec.sparsify(d.float(), density, seed + i) for i, d in enumerate(deltas)]
    return spec.combine(torch.stack(sparse))


def _tensor_seed(seed: int, receiver: int, tensor: str) -> int:
    digest = hashlib.sha256(f"{seed}:{receiver}:{tensor}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@torch.no_grad()
def merge_layers(model, receivers: Mapping[int, int], *, method: str, density: float = 0.5, scale: float = 1.0,
                 seed: int = 0, name: str = "model") -> list[dict]:
    """Fold each removed layer (key of `receivers`) into its receiving kept layer, in place, before
    the removed layers are deleted. Returns one entry per receiving layer."""
    if method == "none" or not receivers:
        return []
    if method not in MERGE_METHODS:
        raise ModelCompressionError(f"{name}: unknown merge method '{method}' (methods: none, {', '.join(MERGE_METHODS)})")
    _, _, layers = decoder_layer_list(model, name)
    by_receiver: dict[int, list[int]] = {}
    for removed, receiver in sorted(receivers.items()):
        by_receiver.setdefault(receiver, []).append(removed)
    # Deltas are taken against the receivers' original weights: read everything before writing.
    originals = {i: {n: p.detach().clone() for n, p in layers[i].named_parameters()}
                 for i in set(by_receiver) | set(receivers)}
    report = []
    for receiver, sources in sorted(by_receiver.items()):
        target = dict(layers[receiver].named_parameters())
        changed = 0
        for tensor_name, param in target.items():
            deltas = []
            for source in sources:
                theirs = originals[source].get(tensor_name)
                if theirs is None:
                    raise ModelCompressionError(f"{name}: cannot merge layer {source} into layer {receiver}: "
                                                f"layer {source} has no tensor '{tensor_name}'")
                if theirs.shape != param.shape:
                    raise ModelCompressionError(f"{name}: cannot merge layer {source} into layer {receiver}: tensor "
                                                f"'{tensor_name}' has shape {tuple(theirs.shape)} vs {tuple(param.shape)}")
                deltas.append(theirs.float() - originals[receiver][tensor_name].float())
            if not param.is_floating_point():
                continue
            merged = merge_deltas(deltas, method, density=density, seed=_tensor_seed(seed, receiver, tensor_name))
            param.copy_((originals[receiver][tensor_name].float() + scale * merged).to(param.dtype))
            changed += 1
        report.append({"receiver": receiver, "merged": sources, "tensors": changed})
    return report
