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
    """LESS: the LoRA warm-up runs once in the driver (damoc.data.gradients.less_warmup) and is
    saved with Adam's m and v (save_less_checkpoint); the per-row gradient features of the training
    and validation rows are computed by LessGradientScorer on the engine; the influence (mean cosine
    to the validation features) and the top-k run in the driver.

    Time: the warm-up (4 epochs of warmup_ratio x n rows, at most 256 tokens each), then one forward
    and backward pass per training and validation row on the engine, then O(n v proj_dim) for the
    influence (v validation rows) and O(n log n) for the top-k. Memory in the driver: the scorer and
    its LoRA copy with AdamW state during the warm-up, then the features, (n + v) x proj_dim float32
    (200 MiB for 100,000 rows at proj_dim 512), and the n x v cosine matrix; each actor holds the
    scorer, the adapter with m and v and one block of gradients (see less_scores)."""
    from damoc.data import gradients as G
    from damoc.data.scorers import LessGradientScorer
    from damoc.data.selectors import top_k

    if not ctx.validation:
        from damoc.errors import DataError

        raise DataError("data_compression.filter.method less: the data has no validation rows to match gradients against")
    p = ctx.params
    validation = ctx.validation[:p["validation_rows"]]
    projection = {"proj_dim": p["proj_dim"], "seed": ctx.seed, "max_seq_length": G.MAX_SEQ_LENGTH,
                  "gradient_block": 32, "chunk_rows": G.DEFAULT_CHUNK_ROWS}
    tune = {"warmup_ratio": p["warmup_ratio"], "lora_r": p["lora_r"], "learning_rate": p["learning_rate"], **projection}

    def warm_up(directory) -> None:
        model, adam = G.less_warmup(ctx.scorer_lm(), ctx.records, warmup_ratio=p["warmup_ratio"], lora_r=p["lora_r"],
                                    learning_rate=p["learning_rate"], seed=ctx.seed, batch_size=ctx.batch_size,
                                    max_seq_length=G.MAX_SEQ_LENGTH)
        G.save_less_checkpoint(directory, model, adam, base=ctx.models.path("scorer"), settings=projection)

    features = [ctx.tuned_scores("less", tune, warm_up, LessGradientScorer, rows, adam=adam,
                                 desc=f"data: LESS gradient features ({split} rows)")["feature"]
                for split, rows, adam in (("training", ctx.records, True), ("validation", validation, False))]
    return top_k(G.less_influence(*features), ctx.keep)


# ------------------------------------------------------------------------------ hybrid
def _mods(ctx) -> np.ndarray:
    """MoDS: quality pool (the best max(k, quality_ratio x n) rows by the reward/quality score),
    a k-center seed set of s = seed_ratio x k pool rows, a brief LoRA fine-tune of the scorer on the
    seed rows (once, in the driver; saved merged under CACHE/data-finetunes), then the rest of the
    budget from the pool rows that fine-tuned model answers worst (answer loss, IFDScorer on the
    engine).

    Time: one quality score per row (n rows on the engine: an instruct-LM prompt, or a reward-model
    forward pass), k-center on the pool O(p d s) (p pool rows, d embedding dimensions), `steps`
    optimizer steps on the seed rows, one conditioned forward pass per remaining pool row (p - s
    rows on the engine) and an O(p log p) top-k. Memory in the driver: O(n d) embeddings and O(n)
    scores (no n x n matrix), plus the scorer and its fine-tuned copy (two copies of its weights
    and the LoRA/AdamW state) during the fine-tune; each actor holds one scorer model."""
    from damoc.data import gradients as G
    from damoc.data.scorers import IFDScorer
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
    seed_records = [ctx.records[i] for i in seed_rows]
    tune = {"steps": p["steps"], "learning_rate": p["learning_rate"], "rows": seed_rows.tolist()}
    losses = ctx.tuned_scores("mods-seed", tune, lambda directory: G.save_merged(G.seed_model(
        ctx.scorer_lm(), seed_records, steps=p["steps"], learning_rate=p["learning_rate"], seed=ctx.seed,
        batch_size=ctx.batch_size), directory), IFDScorer, [ctx.records[i] for i in rest], conditioned_only=True,
        desc="data: MoDS necessity (answer loss under the seed model)")["loss_conditioned"]
    added = rest[top_k(losses, need)]
    ctx.step("necessity", len(rest), len(added))
    return np.concatenate([seed_rows, added])


def _cherry(ctx) -> np.ndarray:
    """Cherry: k-center "pre-experience" rows, a brief LoRA fine-tune on them (once, in the driver;
    saved merged under CACHE/data-finetunes), then IFD of every row under that model (IFDScorer on
    the engine) and the highest IFD below ifd_max. Time: k-center O(n d m) for m pre-experience
    rows, `steps` optimizer steps, two forward passes per row on the engine, an O(n log n) top-k.
    Memory in the driver: O(n d) embeddings and O(n) scores, plus two copies of the scorer's weights
    and the LoRA/AdamW state during the fine-tune."""
    from damoc.data import gradients as G
    from damoc.data.scorers import IFDScorer
    from damoc.data.selectors import kcenter_greedy

    p = ctx.params
    pre_rows = max(1, min(ctx.n, round(ctx.n * p["pre_experience_ratio"])))
    pre = kcenter_greedy(_embeddings(ctx), pre_rows, seed=ctx.seed)
    ctx.step("pre-experience (k-center)", ctx.n, len(pre))
    tune = {"steps": p["steps"], "learning_rate": p["learning_rate"], "rows": pre.tolist()}
    ifd = ctx.tuned_scores("cherry-pre-experienced", tune, lambda directory: G.save_merged(G.pre_experienced_model(
        ctx.scorer_lm(), ctx.records, pre, steps=p["steps"], learning_rate=p["learning_rate"], seed=ctx.seed,
        batch_size=ctx.batch_size), directory), IFDScorer, ctx.records,
        desc="data: Cherry IFD under the pre-experienced model")["ifd"]
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
                 {"quality_ratio": 0.5, "seed_ratio": 0.5, "steps": 20, "learning_rate": 1e-4, "reward_model": None},
                 _mods),
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
