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
