"""The filtering methods: each a composition of scorers (damoc.data.scorers, damoc.data.gradients)
and selectors (damoc.data.selectors), registered by name with its parameters and reference.

Adding a method is one `FilterMethod` entry. A method's `select(ctx)` returns the indices of the
training rows it keeps and records each of its steps (rows in, rows out) on the context; the
context supplies cached scores, the budget and the scorer LM (damoc.data.compress.FilterContext).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

log = logging.getLogger("damoc.data")


@dataclass(frozen=True)
class FilterMethod:
    name: str
    title: str
    paradigm: str                     # baseline | distribution-aware | quality-aware | hybrid
    reference: str
    summary: str
    params: dict[str, Any] = field(default_factory=dict)     # defaults; the only accepted names
    select: Callable[[Any], np.ndarray] | None = None


# ------------------------------------------------------------------------------ helpers
def _embeddings(ctx) -> np.ndarray:
    return ctx.scores("embedding")["embedding"]


def _top_with_fill(ctx, scores: np.ndarray, valid: np.ndarray, k: int, *, step: str, fill: bool) -> np.ndarray:
    """The k highest scores among `valid` rows; when fewer are valid and `fill`, the rest come from
    the invalid rows closest to validity (lowest scores first), so the budget is kept."""
    from damoc.data.selectors import top_k

    chosen = top_k(scores, k, valid=valid)
    ctx.step(step, len(scores), int(valid.sum()))
    if len(chosen) < k and fill:
        extra = top_k(scores, k - len(chosen), descending=False, valid=~valid & np.isfinite(scores))
        ctx.step("fill", int((~valid).sum()), len(extra), note="budget kept with the rows nearest the cut-off")
        chosen = np.concatenate([chosen, extra])
    return chosen


# ------------------------------------------------------------------------------ baselines
def _none(ctx) -> np.ndarray:
    return np.arange(ctx.n)


def _random(ctx) -> np.ndarray:
    # Row ids hashed with the seed: the sample depends on the rows, not on their order in the file.
    key = [hashlib.sha256(f"{ctx.seed}:{r['id']}".encode()).hexdigest() for r in ctx.records]
    return np.array(sorted(range(ctx.n), key=key.__getitem__)[:ctx.keep], dtype=np.int64)


# ------------------------------------------------------------------------------ distribution-aware
def _kcenter(ctx) -> np.ndarray:
    from damoc.data.selectors import kcenter_greedy

    return kcenter_greedy(_embeddings(ctx), ctx.keep, seed=ctx.seed)


def _graphcut(ctx) -> np.ndarray:
    from damoc.data.selectors import graphcut

    p = ctx.params
    lam = p["lambda"]
    if lam == "auto":
        # With the cosine kernel a row's gain is about (its cluster's size) - 2 lambda (rows already
        # taken from that cluster), so lambda = n / 2k covers clusters in proportion to their size;
        # lambda = 1 keeps drawing from the densest region (tests/test_selectors.py measures both).
        lam = max(1.0, ctx.n / (2 * ctx.keep))
        ctx.note(graphcut_lambda=round(lam, 4))
    return graphcut(_embeddings(ctx), ctx.keep, lam=float(lam), partition_size=p["partition_size"], seed=ctx.seed)


def _dq(ctx) -> np.ndarray:
    from damoc.data.selectors import dq

    p = ctx.params
    return dq(_embeddings(ctx), ctx.keep, bins=p["bins"], lam=p["lambda"], partition_size=p["partition_size"],
              seed=ctx.seed)


# ------------------------------------------------------------------------------ quality-aware
def _alpagasus(ctx) -> np.ndarray:
    from damoc.data.selectors import top_k

    scores = ctx.scores("rating")
    rating = scores["rating"]
    ctx.note(unparsed_ratings=int((~scores["parsed"]).sum()))
    threshold = ctx.params["threshold"]
    if threshold is None:
        return top_k(rating, ctx.keep)
    valid = rating >= threshold
    ctx.step("threshold", ctx.n, int(valid.sum()))
    if not valid.any():
        from damoc.errors import DataError

        raise DataError(f"data_compression.filter.params.threshold: no training row is rated >= {threshold} "
                        f"(highest rating {rating.max():.2f}); lower the threshold or set it to null")
    return top_k(rating, ctx.keep, valid=valid)


def _superfiltering(ctx) -> np.ndarray:
    ifd = ctx.scores("ifd")["ifd"]
    valid = np.isfinite(ifd) & (ifd < ctx.params["ifd_max"])
    return _top_with_fill(ctx, ifd, valid, ctx.keep, step="ifd<max", fill=ctx.params["fill"])


def _less(ctx) -> np.ndarray:
    from damoc.data.gradients import less_scores
    from damoc.data.selectors import top_k

    if not ctx.validation:
        from damoc.errors import DataError

        raise DataError("data_compression.filter.method less: the data has no validation rows to match gradients against")
    p = ctx.params
    scores = ctx.cached_array("less", p, lambda: less_scores(
        ctx.scorer_lm(), ctx.records, ctx.validation[:p["validation_rows"]], warmup_ratio=p["warmup_ratio"],
        lora_r=p["lora_r"], proj_dim=p["proj_dim"], learning_rate=p["learning_rate"], seed=ctx.seed,
        batch_size=ctx.batch_size))
    return top_k(scores, ctx.keep)


# ------------------------------------------------------------------------------ hybrid
def _mods(ctx) -> np.ndarray:
    from damoc.data.gradients import necessity_losses
    from damoc.data.selectors import kcenter_greedy, top_k

    p = ctx.params
    reward = ctx.scores("reward")["reward"]
    pool = np.sort(top_k(reward, max(ctx.keep, round(ctx.n * p["quality_ratio"]))))
    ctx.step("quality", ctx.n, len(pool))
    seed_size = max(1, min(ctx.keep, round(ctx.keep * p["seed_ratio"])))
    seed_local = kcenter_greedy(_embeddings(ctx)[pool], seed_size, seed=ctx.seed)
    seed_rows = pool[seed_local]
    ctx.step("seed (k-center)", len(pool), len(seed_rows))
    rest = np.setdiff1d(pool, seed_rows)
    need = ctx.keep - len(seed_rows)
    if need <= 0 or not len(rest):
        return seed_rows
    losses = ctx.cached_array("mods-necessity", {**p, "seed_rows": seed_rows.tolist()}, lambda: necessity_losses(
        ctx.scorer_lm(), [ctx.records[i] for i in seed_rows], [ctx.records[i] for i in rest],
        steps=p["steps"], learning_rate=p["learning_rate"], seed=ctx.seed, batch_size=ctx.batch_size))
    added = rest[top_k(losses, need)]
    ctx.step("necessity", len(rest), len(added))
    return np.concatenate([seed_rows, added])


def _cherry(ctx) -> np.ndarray:
    from damoc.data.gradients import cherry_ifd
    from damoc.data.selectors import kcenter_greedy

    p = ctx.params
    pre_rows = max(1, min(ctx.n, round(ctx.n * p["pre_experience_ratio"])))
    pre = kcenter_greedy(_embeddings(ctx), pre_rows, seed=ctx.seed)
    ctx.step("pre-experience (k-center)", ctx.n, len(pre))
    ifd = ctx.cached_array("cherry-ifd", {**p, "pre": pre.tolist()}, lambda: cherry_ifd(
        ctx.scorer_lm(), ctx.records, pre, steps=p["steps"], learning_rate=p["learning_rate"], seed=ctx.seed,
        batch_size=ctx.batch_size))
    valid = np.isfinite(ifd) & (ifd < p["ifd_max"])
    return _top_with_fill(ctx, ifd, valid, ctx.keep, step="ifd<max", fill=p["fill"])


def _deita(ctx) -> np.ndarray:
    from damoc.data.selectors import diversity_filter

    evol = ctx.scores("deita")["evol"]
    order = np.argsort(-evol, kind="stable")
    chosen, info = diversity_filter(_embeddings(ctx), order, ctx.keep, tau=ctx.params["tau"], fill=True)
    ctx.step("diversity (max cos <= tau)", ctx.n, int(info["admitted"]))
    if info["filled"]:
        ctx.step("fill", ctx.n - int(info["admitted"]), int(info["filled"]),
                 note="fewer rows than the budget passed the diversity filter")
    return chosen


_PARTITION = 4096
FILTERS: dict[str, FilterMethod] = {m.name: m for m in [
    FilterMethod("none", "No filtering", "baseline", "", "keep every row", {}, _none),
    FilterMethod("random", "Random", "baseline", "", "a seeded uniform sample (row ids hashed with the seed)", {}, _random),
    FilterMethod("dq", "Dataset Quantization", "distribution-aware", "https://arxiv.org/abs/2308.10524",
                 "embeddings -> bins by repeated GraphCut -> uniform sample from every bin",
                 {"bins": 10, "lambda": 1.0, "partition_size": _PARTITION}, _dq),
    FilterMethod("graphcut", "GraphCut", "distribution-aware", "https://arxiv.org/abs/2107.04193",
                 "embeddings -> greedy GraphCut (submodular coverage minus lambda x redundancy; lambda auto = n/2k)",
                 {"lambda": "auto", "partition_size": _PARTITION}, _graphcut),
    FilterMethod("kcenter", "KCenterGreedy", "distribution-aware", "https://arxiv.org/abs/1708.00489",
                 "embeddings -> repeatedly add the row farthest from the kept set", {}, _kcenter),
    FilterMethod("alpagasus", "AlpaGasus", "quality-aware", "https://arxiv.org/abs/2307.08701",
                 "instruct LM rates each pair 0-5 -> keep the best rated (optionally >= threshold)",
                 {"threshold": None}, _alpagasus),
    FilterMethod("superfiltering", "Superfiltering", "quality-aware", "https://arxiv.org/abs/2402.00530",
                 "IFD under the small scorer LM -> drop IFD >= ifd_max -> keep the highest IFD",
                 {"ifd_max": 1.0, "fill": True}, _superfiltering),
    FilterMethod("less", "LESS", "quality-aware", "https://arxiv.org/abs/2402.04333",
                 "LoRA warm-up -> projected Adam-preconditioned per-row gradients -> cosine to validation gradients",
                 {"warmup_ratio": 0.05, "lora_r": 8, "proj_dim": 512, "learning_rate": 1e-4, "validation_rows": 64}, _less),
    FilterMethod("mods", "MoDS", "hybrid", "https://arxiv.org/abs/2311.15653",
                 "quality score -> k-center seed set -> fine-tune on the seed, add the rows it answers worst",
                 {"quality_ratio": 0.5, "seed_ratio": 0.5, "steps": 20, "learning_rate": 1e-4}, _mods),
    FilterMethod("cherry", "Cherry (self-guided IFD)", "hybrid", "https://arxiv.org/abs/2308.12032",
                 "k-center pre-experience rows -> brief fine-tune -> IFD under it -> keep the highest IFD < ifd_max",
                 {"pre_experience_ratio": 0.05, "steps": 20, "learning_rate": 1e-4, "ifd_max": 1.0, "fill": True}, _cherry),
    FilterMethod("deita", "DEITA", "hybrid", "https://arxiv.org/abs/2312.15685",
                 "complexity x quality (instruct LM) -> best first, admit if max cosine to kept <= tau",
                 {"tau": 0.9}, _deita),
]}


def method_params(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """The method's defaults updated with `given`; an unknown name is a ConfigError naming the key."""
    from damoc.errors import ConfigError

    spec = FILTERS[method]
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        known = ", ".join(spec.params) or "none"
        raise ConfigError(f"data_compression.filter.params.{unknown[0]}: not a parameter of '{method}' (parameters: {known})")
    return {**spec.params, **given}


# Which scorer models each method loads (so a config that needs none of them resolves none).
NEEDS = {
    "dq": {"embedding"}, "graphcut": {"embedding"}, "kcenter": {"embedding"}, "alpagasus": {"instruct"},
    "superfiltering": {"scorer"}, "less": {"scorer"}, "mods": {"instruct", "embedding", "scorer"},
    "cherry": {"embedding", "scorer"}, "deita": {"instruct", "embedding"}, "none": set(), "random": set(),
}
