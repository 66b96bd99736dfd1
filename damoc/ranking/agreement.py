"""Agreement between a ranking method and ground truth: Spearman rho, Kendall tau, top-1 hit,
regret. Rank correlations come from scipy; ties are averaged as scipy does."""

from __future__ import annotations

import math
import warnings
from typing import Mapping


def rank(scores: Mapping[str, float], higher_is_better: bool = True) -> list[str]:
    """Candidate names, best first (ties broken by name, so the order is deterministic)."""
    return sorted(scores, key=lambda name: (-scores[name] if higher_is_better else scores[name], name))


def agreement(predicted: Mapping[str, float], truth: Mapping[str, float], *,
              predicted_higher_is_better: bool = True, truth_higher_is_better: bool = True) -> dict:
    """How well `predicted` scores rank candidates compared with `truth` scores.

    regret = truth score of the true best minus truth score of the predicted best (>= 0, in the
    truth metric's units, sign-corrected when lower is better)."""
    from scipy.stats import kendalltau, spearmanr

    names = sorted(set(predicted) & set(truth))
    if len(names) < 2:
        raise ValueError("agreement needs at least two candidates scored by both methods")
    sign_p = 1 if predicted_higher_is_better else -1
    sign_t = 1 if truth_higher_is_better else -1
    p = [sign_p * predicted[n] for n in names]
    t = [sign_t * truth[n] for n in names]
    with warnings.catch_warnings():  # constant scores: correlation undefined, reported as None
        warnings.simplefilter("ignore")
        rho = spearmanr(p, t).statistic
        tau = kendalltau(p, t).statistic
    chosen = rank({n: predicted[n] for n in names}, predicted_higher_is_better)[0]
    best = rank({n: truth[n] for n in names}, truth_higher_is_better)[0]
    regret = sign_t * (truth[best] - truth[chosen])
    rho = None if math.isnan(rho) else float(rho)
    return {
        "spearman": rho,
        "kendall": None if math.isnan(tau) else float(tau),
        "top1_hit": chosen == best,
        "chosen": chosen,
        "best": best,
        "regret": float(regret),
        "candidates": len(names),
        "misplaced": misplaced(dict(zip(names, p)), dict(zip(names, t)), rho),
    }


def misplaced(predicted: Mapping[str, float], truth: Mapping[str, float], rho: float | None) -> dict | None:
    """The candidate whose omission raises Spearman the most: which one a ranking gets most wrong,
    with its rank in each order (1 = best) and the Spearman of the others. Scores are higher-is-better
    here. None below 4 candidates (3 left is too few to read a correlation from), when the ranking
    already agrees perfectly, or when no single omission helps. scipy has no leave-one-out
    correlation, hence this loop."""
    from scipy.stats import spearmanr

    if rho is None or len(predicted) < 4 or rho >= 1.0:
        return None
    by_pred, by_truth = rank(predicted), rank(truth)
    best = None
    for name in predicted:
        rest = [n for n in predicted if n != name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            without = spearmanr([predicted[n] for n in rest], [truth[n] for n in rest]).statistic
        if math.isnan(without) or without <= rho + 1e-12:
            continue
        shift = abs(by_pred.index(name) - by_truth.index(name))
        key = (without, shift)
        if best is None or key > best[0]:
            best = (key, {"candidate": name, "rank": by_pred.index(name) + 1,
                          "truth_rank": by_truth.index(name) + 1, "spearman_without": float(without)})
    return best[1] if best else None


# ------------------------------------------------------------------------------ test-row noise
# How much of an agreement figure is the ground truth's own test sample. A ground truth scored on
# a few hundred test rows orders close candidates partly by which rows were drawn; resampling the
# rows (the same rows for every candidate, since they were scored on the same ones: a paired
# bootstrap) shows which of its pairs the rows settle, and so how high any ranking's Spearman can
# be expected to go against it. scipy.stats.bootstrap resamples one statistic of independent
# samples; here every resample feeds a whole ranking of correlated candidates, hence numpy.
RESAMPLES = 1000


def resample_test_rows(rows: Mapping[str, list], *, resamples: int = RESAMPLES, seed: int = 0):
    """Each candidate's test score on `resamples` bootstrap resamples of its test rows.

    `rows`: candidate -> per-row [value, weight] pairs as evaluate_records(per_row=True) gives them
    (the score is sum(value) / sum(weight)), or a list of such lists, one per ground-truth seed
    (the score is then their mean, as the ground truth over seeds is). Every candidate must have
    been scored on the same rows, in the same order. Returns (names, array resamples x candidates).
    The same `seed` draws the same rows, so two rankings are judged on the same resamples."""
    import numpy as np

    names = sorted(rows)
    if not names:
        raise ValueError("resample_test_rows needs at least one candidate's rows")
    per_seed = {n: rows[n] if rows[n] and _is_seed_list(rows[n]) else [rows[n]] for n in names}
    lengths = {len(one) for n in names for one in per_seed[n]}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every candidate's test rows must be the same rows: row counts {sorted(lengths)}")
    n_rows = lengths.pop()
    drawn = np.random.default_rng(seed).integers(0, n_rows, size=(resamples, n_rows))
    out = np.empty((resamples, len(names)))
    for j, name in enumerate(names):
        seeds = []
        for one in per_seed[name]:
            pairs = np.asarray(one, dtype=float)
            seeds.append(pairs[drawn, 0].sum(axis=1) / np.maximum(pairs[drawn, 1].sum(axis=1), 1e-12))
        out[:, j] = np.mean(seeds, axis=0)
    return names, out


def _is_seed_list(value: list) -> bool:
    """A list of per-row lists (one per seed) rather than one per-row list of [value, weight]."""
    first = value[0]
    return isinstance(first, (list, tuple)) and bool(first) and isinstance(first[0], (list, tuple))


def resampled_agreement(predicted: Mapping[str, float], names: list[str], resampled, *,
                        predicted_higher_is_better: bool = True, truth_higher_is_better: bool = True,
                        level: float = 0.95) -> dict:
    """`predicted` against each resample of the ground truth (resample_test_rows): the Spearman's
    median and central `level` interval over the resamples, and the share of resamples whose best
    candidate is `predicted`'s pick. Resamples where the truth is constant are left out."""
    import numpy as np
    from scipy.stats import rankdata

    missing = [n for n in names if n not in predicted]
    if missing:
        raise ValueError(f"no predicted score for {missing[0]!r}")
    if len(names) < 2:
        raise ValueError("resampled_agreement needs at least two candidates")
    sign_p = 1 if predicted_higher_is_better else -1
    sign_t = 1 if truth_higher_is_better else -1
    p = rankdata([sign_p * predicted[n] for n in names])
    t = rankdata(sign_t * np.asarray(resampled), axis=1)
    pc, tc = p - p.mean(), t - t.mean(axis=1, keepdims=True)
    norm = np.sqrt((tc ** 2).sum(axis=1)) * np.sqrt((pc ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (tc @ pc) / norm
    rho = rho[np.isfinite(rho)]
    chosen = names.index(rank(predicted, predicted_higher_is_better)[0])
    best = (sign_t * np.asarray(resampled)).max(axis=1)
    top1 = float(np.mean(sign_t * np.asarray(resampled)[:, chosen] >= best))
    tail = (1 - level) / 2 * 100
    low, median, high = (np.percentile(rho, [tail, 50, 100 - tail]) if rho.size else (math.nan,) * 3)
    return {"spearman": {"low": _finite(low), "median": _finite(median), "high": _finite(high), "level": level},
            "top1_share": top1, "resamples": int(np.asarray(resampled).shape[0])}


def truth_stability(scores: Mapping[str, float], names: list[str], resampled, *, higher_is_better: bool = True,
                    level: float = 0.95) -> dict:
    """The ground truth's order against its own resamples: resampled_agreement of its point
    scores (a ranking that matched the truth's expected order would score about this), and for
    each pair of neighbours in its order the share of resamples that do not put the first strictly
    ahead (`neighbour_flips`, best first; a tie counts, as the order of tied candidates is only
    their names'): a pair flipped in many resamples is not settled by the rows."""
    import numpy as np

    out = resampled_agreement(scores, names, resampled, predicted_higher_is_better=higher_is_better,
                              truth_higher_is_better=higher_is_better, level=level)
    sign = 1 if higher_is_better else -1
    values = sign * np.asarray(resampled)
    order = rank({n: scores[n] for n in names}, higher_is_better)
    out["neighbour_flips"] = [
        {"pair": [a, b], "share": float(np.mean(values[:, names.index(b)] >= values[:, names.index(a)]))}
        for a, b in zip(order, order[1:])]
    return out


def _finite(value) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)
