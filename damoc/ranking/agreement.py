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
    return {
        "spearman": None if math.isnan(rho) else float(rho),
        "kendall": None if math.isnan(tau) else float(tau),
        "top1_hit": chosen == best,
        "chosen": chosen,
        "best": best,
        "regret": float(regret),
        "candidates": len(names),
    }
