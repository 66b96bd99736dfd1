"""The report: report.json (the record), report.md (the table a person reads), PNG plots, and
ready-to-run configs for fully fine-tuning the winner in LLaMA-Factory and axolotl.

Everything here is assembled from what the stages recorded (rows, tokens, layers, seconds), so the
cost figures are measurements, not estimates.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Optional

import damoc
from damoc.config import RunConfig
from damoc.data import LoadedData
from damoc.io import write_json, write_text
from damoc.ranking.scores import (METRICS, agreement_with_truth, baseline_rankings, halving_metric, proxy_ranking,
                                  ranking_as_scores)

REPORT_VERSION = 1


def _round(value, digits: int = 4):
    """Floats to `digits` decimals, or to `digits` significant digits below 1 in size, whichever
    keeps more: scores near 0 (the gold_pmi of proxies still near the label prior is ~1e-3) keep
    their order in the stored report."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return round(value, digits) if value == 0 or abs(value) >= 1 else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def score_text(value: float) -> str:
    """A score as the tables print it: four decimals, or three significant digits below 0.1 in
    size (a gold_pmi near the label prior is ~1e-3, which four decimals would blur)."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 0.1 else f"{value:#.3g}"


def _test_row_noise(report: dict, rows: dict[str, list], metric: str, rankings: dict[str, list[str]]) -> None:
    """How far the ground truth's test rows settle its order, and each ranking's agreement with it
    over resamples of those rows (damoc.ranking.agreement): a Spearman of 0.8 against a ground
    truth whose rows leave two neighbours open is not the same miss as against a settled one."""
    from damoc.ranking.agreement import resample_test_rows, resampled_agreement, truth_stability

    higher = METRICS[metric]
    names, resampled = resample_test_rows(rows)
    truth = report["ground_truth"]
    truth["test_noise"] = {"rows": len(next(iter(rows.values()))),
                           **truth_stability(truth["scores"], names, resampled, higher_is_better=higher)}
    for method, order in rankings.items():
        agreed = report["agreement"].get(method)
        if agreed and set(names) <= set(order):   # a ranking without some candidate has no resampled figure
            agreed["test_noise"] = resampled_agreement(ranking_as_scores(order), names, resampled,
                                                       truth_higher_is_better=higher)


def _zoo_manifest(path: str) -> dict:
    manifest = Path(path).parent / "zoo.json"
    if not manifest.is_file():
        return {}
    return next((c for c in json.loads(manifest.read_text())["candidates"] if c["name"] == Path(path).name), {})


def build_report(config: RunConfig, *, data: LoadedData, data_stats: dict, compression: dict, metric: str,
                 proxies: dict, truth: Optional[dict], paths: dict[str, str], wall: dict[str, float],
                 curves: Optional[dict] = None) -> dict:
    ranking_rows = proxy_ranking(proxies, metric, halving_metric(config, data.task_type))
    final_score_ranking = [row["name"] for row in ranking_rows if row["rank"] is not None]
    if curves is not None:
        # Extrapolated curves first (lowest predicted loss); a candidate without any rung
        # evaluation follows in final-score order; failed ones stay unranked.
        order = curves["ranking"] + [n for n in final_score_ranking if n not in curves["ranking"]]
        ranking_rows = [{"name": n, "rank": i} for i, n in enumerate(order, start=1)] + \
                       [row for row in ranking_rows if row["rank"] is None]
    ranks = {row["name"]: row["rank"] for row in ranking_rows}
    candidates = []
    sizes: dict[str, int] = {}
    for candidate in config.candidates:
        name = candidate.display_name
        outcome = proxies[name]
        result = outcome.result
        last = outcome.history[-1] if outcome.history else {}
        zoo = _zoo_manifest(paths[name])
        params = result.get("params") or zoo.get("params")
        if params:
            sizes[name] = params
        if outcome.status == "completed":
            score, score_on = result["test"].get(metric), "test"
        elif outcome.status == "stopped_early":
            score = last.get(f"val_{metric}")
            score, score_on = (score, "validation") if score is not None else (last.get("val_eval_loss"), "validation eval_loss")
        else:
            score, score_on = None, None
        status = {"completed": "ok"}.get(outcome.status, outcome.status)
        entry = {
            "name": name, "model": candidate.model, "path": paths[name],
            "architecture": result.get("architecture") or zoo.get("architecture"),
            "params": params, "layers": result.get("layers") or zoo.get("layers"),
            "layers_kept": result.get("layers_kept"),
            "model_compression": _compression_summary(result.get("compression")),
            "status": status, "error": outcome.error or result.get("error"),
            "score": score, "score_on": score_on, "rank": ranks.get(name),
            "test": result.get("test"), "baselines": result.get("baselines"),
            "steps": result.get("steps") or last.get("step"),
            "train_tokens": result.get("train_tokens") or last.get("train_tokens"),
            "train_flops": result.get("train_flops") or (6 * (result.get("proxy_params") or params or 0) * (last.get("train_tokens") or 0)),
            "trainable_params": result.get("trainable_params"),
            "workers": result.get("workers"), "engine": result.get("engine"), "deepspeed_stage": result.get("deepspeed"),
            "wall_s": result.get("wall_s") or ({"total": round(result["elapsed_s"], 2)} if "elapsed_s" in result else None),
            "cached": outcome.cached,
            "restarts": outcome.restarts,  # after its process or node was lost (cluster.max_failures)
            "node_id": result.get("node_id"),  # the Ray node the trial ran on (the first run's, when cached)
            "worker_nodes": result.get("worker_nodes"),  # each Ray Train worker's node, in rank order
            "curve_predicted_loss": (curves or {}).get("predicted", {}).get(name),
            # Successive halving's decisions on it: rung budget, results compared with, stopped.
            "halving": result.get("halving"),
            "history": outcome.history,
        }
        if truth is not None:
            t = truth[name]
            entry["ground_truth"] = {"status": {"completed": "ok"}.get(t.status, t.status), "error": t.error,
                                     "test": t.result.get("test"), "train_tokens": t.result.get("train_tokens"),
                                     "train_flops": t.result.get("train_flops"), "wall_s": t.result.get("wall_s"),
                                     # Its validation scores at each rung: how early the full
                                     # fine-tuning itself settles its final ranking.
                                     "history": t.result.get("history") or [],
                                     # Each test row's [value, weight] per metric (trial.py), when
                                     # the trial recorded them; trials cached before did not.
                                     **({"test_rows": t.result["test_rows"]} if t.result.get("test_rows") else {})}
        candidates.append(entry)

    ranking = [row["name"] for row in ranking_rows if row["rank"] is not None]
    baselines = baseline_rankings(proxies, metric, sizes, config.ranking.baselines)
    if curves is not None:  # what the usual ranking would have said, for comparison
        baselines = {"final_score": {"ranking": final_score_ranking, "metric": metric}, **baselines}
    report = {
        "damoc_version": damoc.__version__, "report_version": REPORT_VERSION, "run": config.name,
        "task": {"source": str(config.data.source), "type": data.task_type, "rows": data_stats["rows"],
                 "splits": {s: v["rows"] for s, v in data_stats["splits"].items()}},
        "metric": metric, "higher_is_better": METRICS[metric],
        "candidates": candidates, "ranking": ranking,
        "winner": ranking[0] if ranking else None,
        "winner_unjudged_rungs": _unjudged(candidates, ranking[0] if ranking else None),
        "halving_cuts": _halving_cuts(candidates),
        "baselines": baselines,
        "ranking_method": config.ranking.method,
        "data_compression": compression,
        "early_stopping": config.ranking.early_stopping.model_dump(),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    if curves is not None:
        report["curves"] = curves
    if truth is not None:
        truth_scores = {n: o.result["test"][metric] for n, o in truth.items() if o.status == "completed"}
        report["ground_truth"] = {"ranking": sorted(truth_scores, key=lambda n: (-truth_scores[n] if METRICS[metric] else truth_scores[n], n)),
                                  "scores": truth_scores}
        agreement = {"damoc": agreement_with_truth(ranking_as_scores(ranking), truth_scores, metric, predicted_higher=True)}
        for method, b in baselines.items():
            agreement[method] = agreement_with_truth(ranking_as_scores(b["ranking"]), truth_scores, metric, predicted_higher=True)
        report["agreement"] = agreement
        rows = {n: (o.result.get("test_rows") or {}).get(metric) for n, o in truth.items() if n in truth_scores}
        if len(rows) >= 2 and all(rows.values()):
            _test_row_noise(report, rows, metric, {"damoc": ranking, **{m: b["ranking"] for m, b in baselines.items()}})
    report["cost"] = _cost(candidates, wall, truth is not None)
    return _round(report)


def _unjudged(candidates: list[dict], winner: Optional[str]) -> list[int]:
    """The rung budgets at which the winner went on as the first to arrive, compared with nothing
    (asynchronous halving): there its lead is the order trials reached the rung, not a comparison."""
    halving = next((c.get("halving") for c in candidates if c["name"] == winner), None) or []
    return [d["budget"] for d in halving if d["against"] == 0 and not d["stopped"]]


def _halving_cuts(candidates: list[dict]) -> list[dict]:
    """Synchronous halving's cut at each rung, once per rung: the last candidate kept against the
    first one stopped, and how many standard errors of the validation rows apart they were."""
    cuts = {}
    for c in candidates:
        for d in c.get("halving") or []:
            if d.get("cut"):
                cuts.setdefault(d["budget"], {"budget": d["budget"], **d["cut"]})
    return [cuts[b] for b in sorted(cuts)]


def close_cut_note(report: dict) -> Optional[str]:
    """One line for the CLI and report.md when a halving cut was within CLOSE_CUT_Z standard errors
    of its validation rows: more rows might have cut the other way."""
    from damoc.orchestrate import CLOSE_CUT_Z

    close = [c for c in report.get("halving_cuts") or [] if c.get("z") is not None and c["z"] < CLOSE_CUT_Z]
    if not close:
        return None
    calls = "; ".join(f"at budget {c['budget']}, {c['kept']} kept and {c['stopped']} stopped {score_text(c['difference'])} apart "
                      f"(standard error {score_text(c['se'])} over {c['rows']} rows)" for c in close)
    return (f"close halving cut(s), under {CLOSE_CUT_Z:g} standard errors: {calls}; more validation rows "
            "(ranking.early_stopping.validation_rows) would decide them more surely")


def unjudged_note(report: dict) -> Optional[str]:
    """One line for the CLI and report.md when the winner passed a rung unjudged."""
    rungs = report.get("winner_unjudged_rungs") or []
    if not rungs or len(report.get("ranking") or []) < 2:
        return None
    return (f"{report['winner']} reached the halving rung(s) at budget {', '.join(map(str, rungs))} first and went on "
            "without comparison; another candidate order or number of concurrent trials may pick another winner "
            "(early_stopping.scheduler: none trains every proxy fully; benchmarks/README.md, halving order)")


def truth_failure_note(report: dict) -> Optional[str]:
    """One line for the CLI and report.md when full fine-tuning (the ground truth) failed for some
    candidates: the agreement is then computed over the others only, or not at all."""
    truth = {c["name"]: c["ground_truth"] for c in report["candidates"] if c.get("ground_truth")}
    failed = {name: t for name, t in truth.items() if t["status"] != "ok"}
    if not failed:
        return None
    first, t = next(iter(failed.items()))
    why = f"{first}: {t['status']}" + (f", {t['error']}" if t.get("error") else "")
    if len(failed) == len(truth):
        return f"every ground-truth fine-tuning failed ({why}), so no agreement is reported"
    return (f"ground-truth fine-tuning failed for {', '.join(failed)} ({why}); the agreement covers the other "
            f"{len(truth) - len(failed)} candidates, and the ground truth's cost counts only them")


def resampled_text(noise: Optional[dict]) -> Optional[str]:
    """A ranking's Spearman over resamples of the ground truth's test rows, as `0.81 (0.62 to 0.93)`."""
    if not noise or noise["spearman"].get("median") is None:
        return None
    rho = noise["spearman"]
    return f"{rho['median']:.2f} ({rho['low']:.2f} to {rho['high']:.2f})"


def truth_rows_note(report: dict) -> Optional[str]:
    """One line for the CLI and report.md: the ground truth's neighbours that its test rows do not
    settle (swapped or tied in at least 5% of the resamples), or that they settle every one."""
    noise = (report.get("ground_truth") or {}).get("test_noise")
    if not noise:
        return None
    loose = [f for f in noise["neighbour_flips"] if f["share"] >= 0.05]
    if not loose:
        return (f"the ground truth's {noise['rows']} test rows settle its order: fewer than 5% of {noise['resamples']} "
                "resamples of them swap or tie any two neighbours")
    pairs = ", ".join(f"{f['pair'][0]} / {f['pair'][1]}" for f in loose)
    shares = ", ".join(f"{f['share']:.0%}" for f in loose)
    return (f"the ground truth's {noise['rows']} test rows do not settle the order of {pairs}: {shares} of "
            f"{noise['resamples']} resamples of them swap or tie {'it' if len(loose) == 1 else 'them, in that order'}; a ranking "
            "that swaps such a pair is not shown wrong by these rows")


def _compression_summary(compression: Optional[dict]) -> Optional[dict]:
    """What the report keeps of a trial's model compression: removed layers, merges and the
    per-layer Block Influence."""
    if not compression or not compression.get("removed"):
        return None
    keys = ("method", "removed", "merges", "params", "params_kept", "layer_params", "layer_params_kept", "cached")
    out = {k: compression.get(k) for k in keys if k in compression}
    out["block_influence"] = [e["block_influence"] for e in compression.get("importance", [])]
    return out


def _cost(candidates: list[dict], wall: dict[str, float], with_truth: bool) -> dict:
    def total(key: str, source=lambda c: c) -> float:
        return sum((source(c) or {}).get(key) or 0 for c in candidates)

    stage_seconds = {}
    for stage in ("load", "baselines", "model_compression", "fine_tune", "evaluate"):
        stage_seconds[stage] = round(sum(((c.get("wall_s") or {}).get(stage) or 0) for c in candidates), 2)
    cost = {
        "wall_s": {k: round(v, 2) for k, v in wall.items()},
        "trial_stage_s": stage_seconds,
        "proxy_train_tokens": total("train_tokens"),
        "proxy_train_flops": total("train_flops"),
    }
    if with_truth:
        truth = [c.get("ground_truth") or {} for c in candidates]
        cost["ground_truth_train_tokens"] = sum(t.get("train_tokens") or 0 for t in truth)
        cost["ground_truth_train_flops"] = sum(t.get("train_flops") or 0 for t in truth)
        if cost["proxy_train_flops"]:
            cost["compute_ratio"] = cost["ground_truth_train_flops"] / cost["proxy_train_flops"]
        ft_truth = sum(((t.get("wall_s") or {}).get("fine_tune") or 0) for t in truth)
        if stage_seconds["fine_tune"]:
            cost["wall_ratio_train"] = ft_truth / stage_seconds["fine_tune"]
    return cost


def write_report(out_dir: Path, report: dict, *, config: RunConfig, data: LoadedData, proxies: dict,
                 truth: Optional[dict], paths: dict[str, str]) -> None:
    from damoc.report.plots import plot_curves, plot_proxy_vs_truth
    from damoc.report.winner import write_winner_configs

    out_dir = Path(out_dir)
    figures = {"curves": plot_curves(report, out_dir / "curves.png")}
    if truth is not None:
        figures["proxy_vs_truth"] = plot_proxy_vs_truth(report, out_dir / "proxy_vs_truth.png")
    if report.get("curves"):
        from damoc.ranking.curves import curve_table_csv
        from damoc.report.plots import plot_fitted_curves

        figures["fitted_curves"] = plot_fitted_curves(report, out_dir / "fitted_curves.png")
        table = curve_table_csv(report["curves"]["curves"])
        if table is not None:
            write_text(out_dir / "curve_table.csv", table)
            report["curves"]["table"] = "curve_table.csv"
    if report["winner"]:
        report["winner_configs"] = write_winner_configs(out_dir / "winner", report, config=config, data=data,
                                                        path=paths[report["winner"]])
    report["figures"] = {k: v.name for k, v in figures.items() if v is not None}
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", format_markdown(report))


def format_table(report: dict) -> str:
    """The ranking table printed at the end of `damoc select`."""
    metric = report["metric"]
    lines = [f"{'rank':>4}  {'candidate':<26}{'status':<15}{metric:>11}{'params':>9}{'layers':>8}{'train tokens':>14}{'wall s':>8}"]
    on_validation = False
    for c in sorted(report["candidates"], key=lambda c: (c["rank"] is None, c["rank"] or 0)):
        score = "-" if c["score"] is None else score_text(c["score"])
        if c["score"] is not None and c["score_on"] != "test":
            score, on_validation = score + "*", True
        params = "-" if not c["params"] else f"{c['params'] / 1e6:.2f}M"
        layers = layers_cell(c)
        wall = (c.get("wall_s") or {}).get("total")
        lines.append(f"{c['rank'] or '-':>4}  {c['name']:<26}{c['status']:<15}{score:>11}{params:>9}{layers:>8}"
                     f"{c['train_tokens'] or 0:>14}{'-' if wall is None else f'{wall:.0f}':>8}")
    if on_validation:
        lines.append(f"* {stopped_scores_note(report)}")
    return "\n".join(lines)


def layers_cell(candidate: dict) -> str:
    """Layers kept / layers: `-` where unknown, and `-/N` for a candidate that failed before its
    pruning (kept layers are not known, and N/N would read as kept whole)."""
    layers, kept = candidate.get("layers"), candidate.get("layers_kept")
    if not layers:
        return "-"
    return f"{kept}/{layers}" if kept is not None else f"-/{layers}"


def _blank(value) -> str:
    return "" if value is None else str(value)


def stopped_scores_note(report: dict) -> str:
    """Why a stopped candidate's score may look better than a finished one's ranked above it: a
    proxy's validation score after a few steps is not its test score after all of them, and
    without this the table reads as if the ranking contradicted it."""
    halved_on = ("validation loss" if (report.get("early_stopping") or {}).get("metric", "eval_loss") == "eval_loss"
                 else f"validation {report['metric']}")
    return ("taken on the validation split at the rung where successive halving stopped the candidate, so not\n"
            f"  comparable with test scores. Stopped candidates rank below the finished ones, later rungs first, then\n"
            f"  by the {halved_on}.")


def format_markdown(report: dict) -> str:
    metric = report["metric"]
    out = [f"# damoc selection: {report['run']}", "",
           f"Task: `{report['task']['source']}` ({report['task']['type']}, "
           + ", ".join(f"{s} {n}" for s, n in report['task']['splits'].items()) + f"). Metric: {metric} "
           + ("(higher is better)." if report["higher_is_better"] else "(lower is better)."), "",
           f"**Winner: {report['winner']}**" if report["winner"] else "**No candidate completed.**", "",
           *([f"Note: {unjudged_note(report)}.", ""] if unjudged_note(report) else []),
           *([f"Note: {close_cut_note(report)}.", ""] if close_cut_note(report) else []),
           *([f"Note: {truth_failure_note(report)}.", ""] if truth_failure_note(report) else []),
           "| rank | candidate | status | " + metric + " | params | layers kept | train tokens | train FLOPs | wall s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(report["candidates"], key=lambda c: (c["rank"] is None, c["rank"] or 0)):
        score = "" if c["score"] is None else score_text(c["score"]) + ("" if c["score_on"] == "test" else f" ({c['score_on']})")
        status = c["status"] + (f": {c['error']}" if c["error"] else "")
        out.append(f"| {c['rank'] or ''} | {c['name']} | {status} | {score} | {c['params'] or ''} | "
                   f"{layers_cell(c)} | {c['train_tokens'] or ''} | "
                   f"{c['train_flops'] or ''} | {_blank((c.get('wall_s') or {}).get('total'))} |")
    if any(c["score"] is not None and c["score_on"] != "test" for c in report["candidates"]):
        out += ["", "Scores marked (validation) are " + " ".join(stopped_scores_note(report).split())]
    dc = report.get("data_compression") or {}
    if dc.get("filter"):
        from damoc.data.compress import format_stats

        out += ["", "## Data compression", "", "```", format_stats(dc), "```"]
        if (dc.get("seconds") or {}).get("total") is not None:
            out.append(f"The stage took {dc['seconds']['total']} s when it ran (a cached re-run reads it in the time "
                       f"under `data_compression` below).")
    pruned = [c for c in report["candidates"] if c.get("model_compression")]
    if pruned:
        out += ["", "## Model compression", "", "| candidate | method | removed layers | merged into | params kept |",
                "|---|---|---|---|---|"]
        for c in pruned:
            mc = c["model_compression"]
            merged = "; ".join(f"{m['merged']} -> {m['receiver']}" for m in mc.get("merges") or []) or "-"
            out.append(f"| {c['name']} | {mc['method']} | {mc['removed']} | {merged} | "
                       f"{mc.get('params_kept')}/{mc.get('params')} |")
    curves = report.get("curves")
    if curves:
        out += ["", f"## Learning curves ({curves['method']})", "",
                "Ranked by validation loss extrapolated to the full fine-tuning budget (`fitted_curves.png`"
                + (", `curve_table.csv`" if curves.get("table") else "") + ").", "",
                "| candidate | budgets (examples) | losses | target | predicted loss | note |", "|---|---|---|---|---|---|"]
        for name in curves["ranking"]:
            c = curves["curves"][name]
            out.append(f"| {name} | {', '.join(str(int(b)) for b in c['budgets'])} | "
                       f"{', '.join(f'{l:.4f}' for l in c['losses'])} | {int(curves['targets'][name])} | "
                       f"{curves['predicted'][name]:.4f} | {(curves.get('fallbacks') or {}).get(name, '')} |")
    out += ["", "## Baselines", "", "| method | ranking |", "|---|---|"]
    out.append(f"| damoc | {', '.join(report['ranking'])} |")
    for method, b in report["baselines"].items():
        out.append(f"| {method} | {', '.join(b['ranking'])} |")
    if report.get("agreement"):
        out += ["", "## Agreement with ground truth (full fine-tuning)", "",
                f"Ground truth: {', '.join(report['ground_truth']['ranking'])}", "",
                "| method | Spearman | Kendall | top-1 hit | regret | most misplaced (its rank / truth's; Spearman without it) "
                "| Spearman, test rows resampled: median (95%) |",
                "|---|---|---|---|---|---|---|"]
        for method, a in report["agreement"].items():
            if a:
                m = a.get("misplaced")
                worst = (f"{m['candidate']} ({m['rank']} / {m['truth_rank']}; {m['spearman_without']:.2f})"
                         if m else "-")
                out.append(f"| {method} | {a['spearman']} | {a['kendall']} | {a['top1_hit']} | {a['regret']} | {worst} "
                           f"| {resampled_text(a.get('test_noise')) or '-'} |")
        if truth_rows_note(report):
            out += ["", truth_rows_note(report)]
    cost = report["cost"]
    out += ["", "## Cost", "", "| stage | seconds |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in cost["wall_s"].items()]
    out += ["", f"Proxy training: {cost['proxy_train_tokens']} tokens, {cost['proxy_train_flops']:.3g} FLOPs (6 x params x tokens)."]
    if "compute_ratio" in cost:
        out.append(f"Ground truth / proxy training compute: {cost['compute_ratio']:.1f}x.")
    if report.get("figures"):
        out += [""] + [f"![{k}]({v})" for k, v in report["figures"].items()]
    if report.get("winner_configs"):
        out += ["", "## Fine-tune the winner", ""] + [f"- {k}: `{v}`" for k, v in report["winner_configs"].items()]
    return "\n".join(out) + "\n"
