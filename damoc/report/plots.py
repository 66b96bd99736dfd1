"""PNG plots of a selection (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from damoc.io import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> Path:
    """Lay out, write atomically as PNG, and free the figure."""
    plt = pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def plot_curves(report: dict, path: Path) -> Optional[Path]:
    """Validation loss at each halving rung, per candidate (stopped trials end early)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for c in report["candidates"]:
        points = [(h["step"], h["val_eval_loss"]) for h in c.get("history") or [] if "val_eval_loss" in h]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=f"{c['name']} ({c['status']})")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("proxy fine-tuning step")
    ax.set_ylabel("validation loss (response tokens)")
    ax.set_title("Proxy fine-tuning curves")
    ax.legend(fontsize=7)
    return save_png(fig, path)


def plot_proxy_vs_truth(report: dict, path: Path) -> Optional[Path]:
    """Proxy score against the ground-truth (full fine-tuning) score, one point per candidate."""
    plt = pyplot()
    metric = report["metric"]
    points = [(c["score"], c["ground_truth"]["test"][metric], c["name"]) for c in report["candidates"]
              if c["score"] is not None and c["score_on"] == "test" and (c.get("ground_truth") or {}).get("test")]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for x, y, name in points:
        ax.scatter(x, y)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"proxy {metric}")
    ax.set_ylabel(f"full fine-tuning {metric}")
    ax.set_title("Proxy vs ground truth")
    return save_png(fig, path)


def plot_fitted_curves(report: dict, path: Path) -> Optional[Path]:
    """With ranking.method 'curve': each candidate's measured validation losses (points) and its
    fitted curve extrapolated to the target budget (line, log-log axes), target marked."""
    curves = report.get("curves") or {}
    if not curves.get("curves"):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, measured in curves["curves"].items():
        line = ax.plot(measured["budgets"], measured["losses"], "o")[0]
        fit = curves["fitted"].get(name)
        if fit:
            ax.plot(fit["budgets"], fit["losses"], "-", color=line.get_color(),
                    label=f"{name}: {curves['predicted'][name]:.3f}")
    for target in sorted(set(curves["targets"].values())):
        ax.axvline(target, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training examples seen")
    ax.set_ylabel("validation loss")
    ax.set_title(f"Loss curves extrapolated to the full budget ({curves['method']})")
    ax.legend(fontsize=7, title="predicted loss at target", title_fontsize=7)
    return save_png(fig, path)
