"""Learning-curve ranking: choose the model to fine-tune from its loss at small fine-tuning budgets.

Each candidate is fine-tuned on budgets of B/2^j .. B examples and its test loss recorded; a ranker
turns those curves into one predicted loss per model at the full (target) budget, and the models
are ranked by it. This is the setting of AtS ("Selecting Large Language Model to Fine-tune via
Rectified Scaling Law", Lin et al., ICML 2024, https://arxiv.org/abs/2402.02314), whose released
tables have one row per model and the columns

    config name, 0, 200, 400, ..., 1638400, size, family

(`0` is the zero-shot loss, every other number a fine-tuning budget, `size` the parameter count).
Plain functions over a small dataclass; numpy and scipy only; every optimizer restart is seeded,
so a result is the same on every run.

- `load_table` reads such a CSV; bad input raises DamocError naming the row and the column.
- `VANILLA` and `RECTIFIED` are the two laws, `fit_law` fits one in log space.
- `ats_transition` / `ats_predict` are AtS as published (k = 3, delta = 5).
- `RANKERS` is the registry (`ats`, `ats_plus`, `rectified`, `vanilla`, `subtuning`, `zeroshot`,
  `size`); `rank` ranks one table at one budget, `evaluate` scores every ranker at budget ratios
  1/8 .. 1/512 of a target the table has measured (PearCorr and RelAcc, as in the paper).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
from scipy.optimize import least_squares
from scipy.special import expit, logit

from damoc.errors import DamocError

PAPER = "https://arxiv.org/abs/2402.02314"
BUNDLED_FLAN = Path(__file__).with_name("data") / "ats_flan.csv"
DEFAULT_RATIOS = tuple(1 / 2 ** j for j in range(3, 10))  # 1/8 .. 1/512, as in the paper's tables
EXTRA_COLUMNS = ("size", "family")
MIN_BUDGETS = 3  # k of AtS: a table needs at least this many fine-tuning budgets


# ------------------------------------------------------------------------------ table
@dataclass(frozen=True)
class CurveTable:
    """Loss curves, one row per model. `budgets` are the positive budgets, ascending; `losses` is
    models x budgets; `zero_shot` the budget-0 column and `sizes` the `size` column, when present."""

    models: tuple[str, ...]
    budgets: np.ndarray
    losses: np.ndarray
    zero_shot: Optional[np.ndarray] = None
    sizes: Optional[np.ndarray] = None
    families: Optional[tuple[str, ...]] = None
    source: str = "<table>"

    def column(self, budget: float) -> np.ndarray:
        hits = np.flatnonzero(self.budgets == budget)
        if not hits.size:
            raise DamocError(f"{self.source}: no column for budget {_fmt_budget(budget)} "
                             f"(budgets: {', '.join(_fmt_budget(b) for b in self.budgets)})")
        return self.losses[:, hits[0]]


def _fmt_budget(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else repr(float(b))


def _parse_budget(name: str) -> Optional[float]:
    try:
        value = float(name)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def load_table(path: str | Path) -> CurveTable:
    """Read a curve table (CSV, AtS layout). The first column names the models; every numeric
    header is a budget (`0` = zero-shot); `size` and `family` are optional. Raises DamocError on a
    missing file, unknown or duplicate columns, fewer than 3 budgets, and on any loss cell that is
    empty, not a number, NaN or not positive (naming the row and the column)."""
    path = Path(path)
    if not path.is_file():
        raise DamocError(f"curve table not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DamocError(f"{path}: cannot read the curve table: {e}") from e
    return table_from_rows(rows, source=str(path))


def table_from_rows(rows: Sequence[Sequence[str]], source: str = "<table>") -> CurveTable:
    """The same checks as `load_table`, on rows already split into cells (header first). Row
    numbers in messages are file lines (the header is row 1)."""
    rows = [list(r) for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DamocError(f"{source}: empty curve table")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise DamocError(f"{source}: header has {len(header)} column(s); expected 'config name', budgets 0, 200, ..., size, family")
    budget_cols: dict[int, float] = {}
    extra_cols: dict[str, int] = {}
    for i, name in enumerate(header[1:], start=1):
        b = _parse_budget(name)
        if b is not None:
            if b < 0:
                raise DamocError(f"{source}: column '{name}': a budget cannot be negative")
            if b in budget_cols.values():
                raise DamocError(f"{source}: column '{name}': budget {_fmt_budget(b)} appears twice")
            budget_cols[i] = b
        elif name in EXTRA_COLUMNS:
            if name in extra_cols:
                raise DamocError(f"{source}: column '{name}' appears twice")
            extra_cols[name] = i
        else:
            raise DamocError(f"{source}: column '{name}' is neither a budget (a number) nor one of {', '.join(EXTRA_COLUMNS)}")
    positive = sorted(b for b in budget_cols.values() if b > 0)
    if len(positive) < MIN_BUDGETS:
        raise DamocError(f"{source}: {len(positive)} fine-tuning budget column(s) "
                         f"({', '.join(_fmt_budget(b) for b in positive) or 'none'}); at least {MIN_BUDGETS} are needed")
    order = [i for i, _ in sorted(((i, b) for i, b in budget_cols.items() if b > 0), key=lambda t: t[1])]
    zero_col = next((i for i, b in budget_cols.items() if b == 0), None)

    models: list[str] = []
    losses, zero, sizes, families = [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DamocError(f"{source}: row {line}: {len(row)} cells, the header has {len(header)}")
        name = row[0].strip()
        if not name:
            raise DamocError(f"{source}: row {line}, column '{header[0]}': empty model name")
        if name in models:
            raise DamocError(f"{source}: row {line}, column '{header[0]}': model '{name}' appears twice")
        models.append(name)

        def cell(i: int, what: str = "loss") -> float:
            text = row[i].strip()
            where = f"{source}: row {line} ({name}), column '{header[i]}'"
            if not text:
                raise DamocError(f"{where}: empty cell")
            try:
                value = float(text)
            except ValueError:
                raise DamocError(f"{where}: '{text}' is not a number") from None
            if math.isnan(value):
                raise DamocError(f"{where}: NaN")
            if not math.isfinite(value) or value <= 0:
                raise DamocError(f"{where}: {what} must be positive and finite, got {text}")
            return value

        losses.append([cell(i) for i in order])
        if zero_col is not None:
            zero.append(cell(zero_col))
        if "size" in extra_cols:
            sizes.append(cell(extra_cols["size"], "size"))
        if "family" in extra_cols:
            families.append(row[extra_cols["family"]].strip())
    if not models:
        raise DamocError(f"{source}: the curve table has a header but no models")
    return CurveTable(models=tuple(models), budgets=np.array(positive, dtype=float), losses=np.array(losses, dtype=float),
                      zero_shot=np.array(zero) if zero_col is not None else None,
                      sizes=np.array(sizes) if "size" in extra_cols else None,
                      families=tuple(families) if "family" in extra_cols else None, source=source)


# ------------------------------------------------------------------------------ laws
@dataclass(frozen=True)
class Law:
    """A loss-vs-data law fitted in log space. Parameters are optimised as `theta` (log B, beta,
    log E, alpha[, log D_l]) so that the bounds keep B, E, D_l positive."""

    name: str
    formula: str
    theta_names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    log_loss: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (theta, log D) -> log L
    jacobian: Callable[[np.ndarray, np.ndarray], np.ndarray]  # d log L / d theta, points x params

    def params(self, theta: np.ndarray) -> dict[str, float]:
        """Natural parameters: B, beta, E, alpha (and D_l)."""
        out = {}
        for name, value in zip(self.theta_names, theta):
            if name.startswith("log_"):
                out[name[4:]] = float(np.exp(value))
            else:
                out[name] = float(value)
        return out

    def theta(self, **params: float) -> np.ndarray:
        return np.array([math.log(params[n[4:]]) if n.startswith("log_") else params[n] for n in self.theta_names])

    def predict(self, theta: np.ndarray, budgets) -> np.ndarray:
        return np.exp(self.log_loss(np.asarray(theta, dtype=float), np.log(np.asarray(budgets, dtype=float))))


def _vanilla_log_loss(theta, x):
    log_b, beta, log_e, alpha = theta
    return alpha * np.logaddexp(log_b - beta * x, log_e)


def _vanilla_jacobian(theta, x):
    log_b, beta, log_e, alpha = theta
    u = log_b - beta * x
    p = expit(u - log_e)  # share of the B term in B / D^beta + E
    return np.stack([alpha * p, -alpha * p * x, alpha * (1 - p), np.logaddexp(u, log_e)], axis=1)


def _rectified_log_loss(theta, x):
    log_b, beta, log_e, alpha, log_dl = theta
    return alpha * np.logaddexp(log_b - np.logaddexp(log_dl, beta * x), log_e)


def _rectified_jacobian(theta, x):
    log_b, beta, log_e, alpha, log_dl = theta
    u = log_b - np.logaddexp(log_dl, beta * x)
    p = expit(u - log_e)
    q = expit(beta * x - log_dl)  # share of D^beta in D_l + D^beta
    return np.stack([alpha * p, -alpha * p * q * x, alpha * (1 - p), np.logaddexp(u, log_e), -alpha * p * (1 - q)], axis=1)


VANILLA = Law("vanilla", "L(D) = (B / D^beta + E)^alpha", ("log_B", "beta", "log_E", "alpha"),
              lower=(-50.0, 1e-3, -30.0, 1e-2), upper=(100.0, 5.0, 10.0, 10.0), log_loss=_vanilla_log_loss, jacobian=_vanilla_jacobian)
RECTIFIED = Law("rectified", "L(D) = (B / (D_l + D^beta) + E)^alpha", ("log_B", "beta", "log_E", "alpha", "log_D_l"),
                lower=(-50.0, 1e-3, -30.0, 1e-2, -30.0), upper=(100.0, 5.0, 10.0, 10.0, 100.0), log_loss=_rectified_log_loss, jacobian=_rectified_jacobian)
LAWS = {law.name: law for law in (VANILLA, RECTIFIED)}


@dataclass(frozen=True)
class Fit:
    law: Law
    theta: np.ndarray
    rmse: float  # root mean squared error in log loss over the fitted points

    @property
    def params(self) -> dict[str, float]:
        return self.law.params(self.theta)

    def predict(self, budgets) -> np.ndarray:
        return self.law.predict(self.theta, budgets)


def _initial_theta(law: Law, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random start consistent with the data: floor E^alpha below the lowest loss, the B term
    carrying the rest of the first point's loss."""
    alpha = rng.uniform(0.3, 2.0)
    beta = rng.uniform(0.05, 1.5)
    log_e = (y.min() + rng.uniform(-2.0, -0.05)) / alpha
    head = np.exp(y[0] / alpha) - np.exp(log_e)
    log_dl = beta * rng.uniform(x[0] - 2.0, x[-1])
    log_b = np.log(max(head, 1e-6)) + (np.logaddexp(log_dl, beta * x[0]) if law is RECTIFIED else beta * x[0])
    theta = [log_b, beta, log_e, alpha] + ([log_dl] if law is RECTIFIED else [])
    lo, hi = np.array(law.lower), np.array(law.upper)
    return np.clip(np.array(theta), lo + 1e-6 * (hi - lo), hi - 1e-6 * (hi - lo))


def fit_law(law: Law, budgets, losses, restarts: int = 5, seed: int = 0, max_nfev: int = 1000) -> Fit:
    """Least squares on log loss from `restarts` seeded random starts; the best fit is kept. The
    bounds are imposed by a smooth map theta = lower + (upper - lower) * sigmoid(z), so the
    unconstrained Levenberg-Marquardt (MINPACK, analytic Jacobian) can run. Needs at least as many
    points as the law has parameters."""
    x = np.log(np.asarray(budgets, dtype=float))
    y = np.log(np.asarray(losses, dtype=float))
    if x.size < len(law.theta_names):
        raise ValueError(f"{law.name} law has {len(law.theta_names)} parameters; {x.size} points cannot fit it")
    lo, span = np.array(law.lower), np.array(law.upper) - np.array(law.lower)

    def residuals(z):
        return law.log_loss(lo + span * expit(z), x) - y

    def jacobian(z):
        s = expit(z)
        return law.jacobian(lo + span * s, x) * (span * s * (1 - s))

    rng = np.random.default_rng(seed)
    best: Optional[tuple[float, np.ndarray]] = None
    with np.errstate(all="ignore"):
        for _ in range(restarts):
            z0 = logit((_initial_theta(law, x, y, rng) - lo) / span)
            try:
                res = least_squares(residuals, z0, jac=jacobian, method="lm", max_nfev=max_nfev)
            except (ValueError, FloatingPointError, np.linalg.LinAlgError):
                continue
            if np.all(np.isfinite(res.fun)) and (best is None or res.cost < best[0]):
                best = (float(res.cost), lo + span * expit(res.x))
    if best is None:
        raise ValueError(f"{law.name} law: no start converged")
    return Fit(law, best[1], math.sqrt(2 * best[0] / x.size))


# ------------------------------------------------------------------------------ AtS
def _line(x: np.ndarray, y: np.ndarray, w: Optional[np.ndarray] = None) -> tuple[float, float]:
    """Least-squares line y = a + b x (optionally weighted): (a, b)."""
    w = np.ones_like(x) if w is None else w
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    b = float(np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2))
    return ym - b * xm, b


def ats_transition(budgets, losses, k: int = 3, delta: float = 5.0) -> int:
    """Index of the first point AtS keeps as the power phase (points before it are the pre-power
    phase). A log-log line is fitted on the last k points; the walk goes backwards, testing the next
    earlier point's standardized residual |y - yhat| / std(residuals of the fit); a point within
    `delta` is accepted and the line refitted with it, the first point beyond stops the walk.
    As in the authors' release (src/model_select.py), the walk ends when the fit reaches the second
    point: the smallest budget is tested but never added. With k or fewer points all are kept."""
    x, y = np.log(np.asarray(budgets, float)), np.log(np.asarray(losses, float))
    n = x.size
    if n <= k:
        return 0
    m = k
    while m < n - 1:
        a, b = _line(x[-m:], y[-m:])
        spread = float(np.std(y[-m:] - (a + b * x[-m:])))
        r = abs(y[-m - 1] - (a + b * x[-m - 1]))
        z = (0.0 if r == 0 else math.inf) if spread == 0 else r / spread
        if z > delta:
            break
        m += 1
    return n - m


def power_phase_predict(budgets, losses, target: float, k: int = 3, delta: float = 5.0,
                        weight_by_budget: bool = False) -> float:
    """The log-log line through the power-phase points (`ats_transition`), evaluated at the target
    budget. `weight_by_budget` fits it by weighted least squares, each point weighted by its budget."""
    x, y = np.log(np.asarray(budgets, float)), np.log(np.asarray(losses, float))
    start = ats_transition(budgets, losses, k, delta)
    a, b = _line(x[start:], y[start:], np.exp(x[start:] - x[-1]) if weight_by_budget else None)
    return float(np.exp(a + b * math.log(target)))


def ats_predict(budgets, losses, target: float, k: int = 3, delta: float = 5.0) -> float:
    """AtS as published: ordinary least squares on the power phase."""
    return power_phase_predict(budgets, losses, target, k, delta)


def ats_plus_predict(budgets, losses, target: float, k: int = 3, delta: float = 5.0) -> float:
    """AtS+ (damoc's variant): the same power phase, k and delta, but the line is fitted with each
    point weighted by its budget D, so the newest point counts as much as all earlier ones together.
    Why: AtS's line averages the slope over the accepted window, while fine-tuning curves keep
    steepening through it (the pre-power phase fades out gradually rather than ending at one point),
    so the slope at the end of the window is the better guess of the slope to come; the averaged
    slope predicts too high a loss for the models furthest from their power phase. Weighting by D
    adds no constant to tune."""
    return power_phase_predict(budgets, losses, target, k, delta, weight_by_budget=True)


# ------------------------------------------------------------------------------ rankers
@dataclass(frozen=True)
class Ranker:
    """A named way to score models. `score(table, max_budget, target)` returns one value per model
    and {model: reason} for those that fell back to SubTuning. Ranking is ascending by the value
    (a predicted loss) unless `larger_is_better` (model size)."""

    name: str
    title: str
    reference: str
    score: Callable[[CurveTable, float, float], tuple[np.ndarray, dict[str, str]]]
    larger_is_better: bool = False
    uses_budgets: bool = True
    min_points: int = 1


def _affordable(table: CurveTable, max_budget: float) -> np.ndarray:
    return np.flatnonzero(table.budgets <= max_budget)


def _per_model(predict_one: Callable[[np.ndarray, np.ndarray, float], float], min_points: int, why: str):
    """Wrap a per-curve predictor: SubTuning (loss at the largest affordable budget) where the curve
    is too short or the prediction is not finite, flagged in the fallbacks."""
    def score(table: CurveTable, max_budget: float, target: float):
        cols = _affordable(table, max_budget)
        budgets = table.budgets[cols]
        out = np.empty(len(table.models))
        fallbacks: dict[str, str] = {}
        for i, model in enumerate(table.models):
            curve = table.losses[i, cols]
            if cols.size < min_points:
                out[i] = curve[-1]
                fallbacks[model] = f"subtuning: {cols.size} budget(s) <= {_fmt_budget(max_budget)}, {why} needs {min_points}"
                continue
            try:
                value = predict_one(budgets, curve, target)
            except (ValueError, FloatingPointError, np.linalg.LinAlgError) as e:
                value, reason = math.nan, str(e)
            else:
                reason = f"{why} prediction not finite"
            if not math.isfinite(value) or value <= 0:
                out[i] = curve[-1]
                fallbacks[model] = f"subtuning: {reason}"
            else:
                out[i] = value
        return out, fallbacks
    return score


def _law_predictor(law: Law):
    def predict_one(budgets, curve, target):
        return float(fit_law(law, budgets, curve).predict([target])[0])
    return predict_one


def _subtuning(table: CurveTable, max_budget: float, target: float):
    return table.losses[:, _affordable(table, max_budget)[-1]].copy(), {}


def _zeroshot(table: CurveTable, max_budget: float, target: float):
    if table.zero_shot is None:
        raise DamocError(f"{table.source}: column '0' (zero-shot loss) is missing; the zeroshot ranker needs it")
    return table.zero_shot.copy(), {}


def _size(table: CurveTable, max_budget: float, target: float):
    if table.sizes is None:
        raise DamocError(f"{table.source}: column 'size' is missing; the size ranker needs it")
    return np.log(table.sizes), {}


RANKERS: dict[str, Ranker] = {r.name: r for r in (
    Ranker("ats", "AtS", PAPER, _per_model(ats_predict, MIN_BUDGETS, "ats"), min_points=MIN_BUDGETS),
    Ranker("ats_plus", "AtS+ (damoc)", "damoc: AtS with the power-phase line weighted by budget", _per_model(ats_plus_predict, MIN_BUDGETS, "ats_plus"), min_points=MIN_BUDGETS),
    Ranker("rectified", "Rectified law", PAPER, _per_model(_law_predictor(RECTIFIED), 5, "rectified law"), min_points=5),
    Ranker("vanilla", "Vanilla law", PAPER, _per_model(_law_predictor(VANILLA), 4, "vanilla law"), min_points=4),
    Ranker("subtuning", "SubTuning", PAPER, _subtuning),
    Ranker("zeroshot", "ZeroShot", PAPER, _zeroshot, uses_budgets=False),
    Ranker("size", "ModelSize", PAPER, _size, larger_is_better=True, uses_budgets=False),
)}


def _ranker(method: str) -> Ranker:
    if method not in RANKERS:
        raise DamocError(f"unknown ranking method '{method}'; choose from {', '.join(RANKERS)}")
    return RANKERS[method]


def _order(values: np.ndarray, larger_is_better: bool) -> np.ndarray:
    """Indices best first; ties keep table order."""
    return np.argsort(-values if larger_is_better else values, kind="stable")


def _scores(table: CurveTable, ranker: Ranker, max_budget: float, target: float):
    if ranker.uses_budgets:
        if not max_budget > 0:
            raise DamocError(f"max budget must be positive, got {_fmt_budget(max_budget)}")
        if max_budget >= target:
            raise DamocError(f"max budget {_fmt_budget(max_budget)} must be below the target {_fmt_budget(target)}")
        if not _affordable(table, max_budget).size:
            raise DamocError(f"{table.source}: no budget column <= max budget {_fmt_budget(max_budget)} "
                             f"(smallest is {_fmt_budget(table.budgets[0])})")
    return ranker.score(table, max_budget, target)


def rank(table: CurveTable, method: str, max_budget: float, target: float) -> dict:
    """Rank the table's models with one ranker, using only budgets <= max_budget (the target column,
    if the table has one, is never read). Returns {"method", "predicted": {model: value},
    "ranking": [models, best first]} plus "fallbacks": {model: reason} when any model fell back."""
    ranker = _ranker(method)
    if not target > 0:
        raise DamocError(f"target budget must be positive, got {_fmt_budget(target)}")
    values, fallbacks = _scores(table, ranker, max_budget, target)
    out = {"method": method,
           "predicted": {m: float(v) for m, v in zip(table.models, values)},
           "ranking": [table.models[i] for i in _order(values, ranker.larger_is_better)]}
    if fallbacks:
        out["fallbacks"] = fallbacks
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / denom) if denom > 0 else math.nan


def evaluate(table: CurveTable, target: float, ratios: Sequence[float] = DEFAULT_RATIOS,
             methods: Optional[Sequence[str]] = None) -> dict:
    """Score rankers against the table's own `target` column, as the AtS paper does: for each ratio,
    max budget = target * ratio, and
      PearCorr = 100 * Pearson(value, true loss at target), the value being the predicted loss (for
                 `size`, log parameter count, exactly as the paper reports ModelSize: there a
                 negative value means larger models did have lower loss);
      RelAcc   = 100 * (worst - chosen) / (worst - best), true losses at the target, chosen = the
                 ranker's top model.
    Returns {"target", "ratios", "methods": {method: [{"ratio", "max_budget", "pearcorr", "relacc",
    "top", "fallbacks"}]}}."""
    methods = list(methods or RANKERS)
    for m in methods:
        _ranker(m)
    truth = table.column(target)
    best, worst = float(truth.min()), float(truth.max())
    out: dict = {"table": table.source, "target": float(target), "ratios": [float(r) for r in ratios], "methods": {}}
    for method in methods:
        ranker = RANKERS[method]
        rows = []
        for ratio in ratios:
            if not 0 < ratio < 1:
                raise DamocError(f"budget ratio must be between 0 and 1, got {ratio}")
            max_budget = target * ratio
            values, fallbacks = _scores(table, ranker, max_budget, target)
            top = int(_order(values, ranker.larger_is_better)[0])
            relacc = 100.0 * (worst - truth[top]) / (worst - best) if worst > best else math.nan
            pearcorr = 100.0 * _pearson(values, truth)
            rows.append({"ratio": float(ratio), "max_budget": float(max_budget),
                         "pearcorr": pearcorr if math.isfinite(pearcorr) else None,
                         "relacc": relacc if math.isfinite(relacc) else None,
                         "top": table.models[top], "fallbacks": len(fallbacks)})
        out["methods"][method] = rows
    return out


# ------------------------------------------------------------------------------ text output
def _ratio_label(r: float) -> str:
    inv = 1 / r
    return f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-9 else f"{r:g}"


def format_ranking(result: dict) -> str:
    ranker = RANKERS[result["method"]]
    what = "log size" if ranker.larger_is_better else "predicted loss"
    width = max(len(m) for m in result["ranking"])
    lines = [f"method: {result['method']} ({ranker.title})", f"{'rank':>4}  {'model':<{width}}  {what}"]
    fallbacks = result.get("fallbacks", {})
    for i, model in enumerate(result["ranking"], start=1):
        mark = "  *" if model in fallbacks else ""
        lines.append(f"{i:>4}  {model:<{width}}  {result['predicted'][model]:.4f}{mark}")
    if fallbacks:
        lines.append("")
        lines.append(f"* fell back ({len(fallbacks)}):")
        lines += [f"  {m}: {why}" for m, why in fallbacks.items()]
    return "\n".join(lines)


def format_evaluation(result: dict) -> str:
    labels = [_ratio_label(r) for r in result["ratios"]]
    width = max(len(RANKERS[m].title) for m in result["methods"]) + 2
    lines = [f"target budget {_fmt_budget(result['target'])}; max budget = target x ratio"]
    for metric, key in (("PearCorr", "pearcorr"), ("RelAcc", "relacc")):
        lines.append("")
        lines.append(f"{metric:<{width}}" + "".join(f"{l:>8}" for l in labels))
        for method, rows in result["methods"].items():
            cells = "".join(f"{r[key]:>8.1f}" if r[key] is not None else f"{'n/a':>8}" for r in rows)
            flag = "  (fallbacks)" if any(r["fallbacks"] for r in rows) else ""
            lines.append(f"{RANKERS[method].title:<{width}}{cells}{flag}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ inside damoc select
SELECT_METHODS = ("ats", "ats_plus", "rectified", "vanilla", "subtuning")


def rank_curves(curves: Mapping[str, Sequence[tuple[float, float]]], method: str, targets: Mapping[str, float],
                grid_points: int = 16) -> dict:
    """Rank candidates by their own loss curves, each extrapolated to its own target budget.

    `curves`: name -> [(budget, loss), ...] as the trial measured them (candidates may have
    different budgets, and a trial stopped early has fewer points: a curve too short for the method
    falls back to SubTuning, flagged in `fallbacks`). Returns the curves, targets, predicted loss at
    the target, the ranking (lowest predicted loss first) and, for the report's plot, each fitted
    curve sampled on a log grid from the first budget to the target."""
    if method not in SELECT_METHODS:
        raise DamocError(f"ranking.curve_method '{method}' is not one of {', '.join(SELECT_METHODS)}")
    ranker = _ranker(method)
    predicted: dict[str, float] = {}
    fallbacks: dict[str, str] = {}
    fitted: dict[str, dict] = {}
    kept: dict[str, dict] = {}
    for name, points in curves.items():
        points = sorted({b: l for b, l in points if b > 0 and math.isfinite(l) and l > 0}.items())
        if not points:
            continue
        budgets = np.array([b for b, _ in points], float)
        losses = np.array([[l for _, l in points]], float)
        table = CurveTable(models=(name,), budgets=budgets, losses=losses, source=f"trial {name}")
        target = float(targets[name])
        values, why = ranker.score(table, float(budgets[-1]), target)
        predicted[name] = float(values[0])
        fallbacks.update(why)
        grid = np.geomspace(budgets[0], max(target, budgets[-1]), grid_points)
        fitted[name] = {"budgets": grid.tolist(),
                        "losses": [float(ranker.score(table, float(budgets[-1]), float(b))[0][0]) for b in grid]}
        kept[name] = {"budgets": budgets.tolist(), "losses": losses[0].tolist()}
    ranking = sorted(predicted, key=lambda n: (predicted[n], n))
    out = {"method": method, "targets": {n: float(targets[n]) for n in predicted}, "curves": kept,
           "predicted": predicted, "ranking": ranking, "fitted": fitted}
    if fallbacks:
        out["fallbacks"] = fallbacks
    return out


def curve_table_csv(curves: Mapping[str, dict]) -> Optional[str]:
    """The trials' curves in the AtS layout (`config name`, one column per budget), readable by
    `damoc curves rank`, when every candidate was measured at the same budgets; else None."""
    budget_sets = {tuple(c["budgets"]) for c in curves.values()}
    if len(budget_sets) != 1:
        return None
    budgets = next(iter(budget_sets))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["config name", *(_fmt_budget(b) for b in budgets)])
    for name, c in curves.items():
        writer.writerow([name, *(repr(float(l)) for l in c["losses"])])
    return buffer.getvalue()
