"""From trial outcomes to rankings: the proxy ranking, the baselines, and agreement with ground
truth when there is one."""

from __future__ import annotations

import math
from typing import Optional

from damoc.errors import ConfigError
from damoc.ranking.agreement import agreement
from damoc.trials import METRICS, RUNG_METRICS


def resolve_metric(requested: str, task_type: str) -> str:
    if requested != "auto":
        return requested
    return "accuracy" if task_type == "classification" else "rouge_l"


def halving_metric(config, task_type: Optional[str] = None) -> str:
    """The validation metric each halving decision compares (and stopped candidates are ranked by).
    Without the task type (before the data is loaded) only an explicit ranking.metric resolves."""
    if config.ranking.early_stopping.metric == "eval_loss":
        return "eval_loss"
    if task_type is None and config.ranking.metric == "auto":
        raise ValueError("halving_metric: ranking.metric 'auto' needs the task type")
    metric = resolve_metric(config.ranking.metric, task_type or "")
    if metric not in RUNG_METRICS:
        raise ConfigError(f"ranking.early_stopping.metric 'ranking' needs a ranking.metric the rungs measure "
                          f"({', '.join(RUNG_METRICS)}); {metric} is measured on the test split only")
    return metric


def _key(scores: dict, metric: str):
    """Sort key, best first: the metric, ties broken by eval loss (lower is better)."""
    value = scores.get(metric)
    primary = -math.inf if value is None else (value if METRICS[metric] else -value)
    loss = scores.get("eval_loss")
    return (-primary, loss if loss is not None else math.inf)


def rank_scores(scores: dict[str, dict], metric: str) -> list[str]:
    """Names, best first, from {name: {metric: value, eval_loss: value}} (ties by eval loss, then name)."""
    return sorted(scores, key=lambda n: (*_key(scores[n], metric), n))


def proxy_ranking(outcomes: dict, metric: str, halving: str = "eval_loss") -> list[dict]:
    """Completed trials by their test score; then those successive halving stopped, later rungs
    first, each by the validation metric the halving compared (`halving`, the loss by default);
    failed trials are listed last and not ranked."""
    completed = {n: o.result["test"] for n, o in outcomes.items() if o.status == "completed"}
    order = rank_scores(completed, metric)
    stopped = [n for n, o in outcomes.items() if o.status == "stopped_early"]
    last = {n: (outcomes[n].history[-1] if outcomes[n].history else {}) for n in stopped}
    sign = -1 if METRICS[halving] else 1

    def halving_loss(name: str) -> float:
        value = last[name].get(f"val_{halving}")
        return math.inf if value is None else sign * value

    stopped.sort(key=lambda n: (-last[n].get("budget", 0), halving_loss(n), n))
    failed = sorted(n for n, o in outcomes.items() if o.status == "failed")
    rows = []
    for rank, name in enumerate(order + stopped, start=1):
        rows.append({"name": name, "rank": rank})
    rows += [{"name": name, "rank": None} for name in failed]
    return rows


def baseline_rankings(outcomes: dict, metric: str, sizes: dict[str, int], baselines: list[str]) -> dict:
    """Zero-shot and few-shot rankings (the uncompressed candidates' test scores before any
    fine-tuning, measured in each trial) and the model-size ranking (larger first)."""
    out = {}
    for method in ("zero_shot", "few_shot"):
        if method not in baselines:
            continue
        scores = {n: o.result["baselines"][method] for n, o in outcomes.items()
                  if method in o.result.get("baselines", {})}
        if scores:
            out[method] = {"ranking": rank_scores(scores, metric), "metric": metric,
                           "scores": {n: _pick(s, metric) for n, s in scores.items()}}
    if "size" in baselines and sizes:
        out["size"] = {"ranking": sorted(sizes, key=lambda n: (-sizes[n], n)), "metric": "params",
                       "scores": dict(sizes)}
    return out


def _pick(scores: dict, metric: str) -> dict:
    return {k: scores[k] for k in (metric, "eval_loss", "accuracy", "gold_logprob", "gold_pmi", "rouge_l", "bertscore") if k in scores}


def agreement_with_truth(predicted: dict[str, float], truth: dict[str, float], metric: str,
                         predicted_higher: Optional[bool] = None) -> Optional[dict]:
    common = sorted(set(predicted) & set(truth))
    if len(common) < 2:
        return None
    higher = METRICS[metric]
    return agreement({n: predicted[n] for n in common}, {n: truth[n] for n in common},
                     predicted_higher_is_better=higher if predicted_higher is None else predicted_higher,
                     truth_higher_is_better=higher)


def ranking_as_scores(ranking: list[str]) -> dict[str, float]:
    """A ranking as scores (higher is better), for agreement when only an order is known."""
    return {name: float(len(ranking) - i) for i, name in enumerate(ranking)}
