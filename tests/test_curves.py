"""Learning-curve ranking (damoc.ranking.curves): the AtS reproduction on the bundled FLAN table, the
two laws, the transition walk, bad tables, and the `damoc curves` commands."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from damoc.errors import DamocError
from damoc.ranking import curves
from damoc.ranking.curves import (BUNDLED_FLAN, DEFAULT_RATIOS, RECTIFIED, VANILLA, ats_plus_predict, ats_predict,
                                  ats_transition, evaluate, fit_law, load_table, rank)

TARGET = 1638400
TOL = 1.5
# Published FLAN figures (Lin et al., ICML 2024, Table 1; results/tab1.txt of the authors' repository),
# ratios 1/8 .. 1/512. The fitted-law baselines (VanillaFit, OurFit, Table 2) are not asserted: the
# authors fit them from unseeded random starts with an unbounded optimizer (and OurFit with the
# zero-shot point and a 4-parameter law), so their exact figures are not a property of the laws.
PUBLISHED_FLAN = {
    "ats": {"pearcorr": [90.9, 73.1, 65.5, 61.1, 52.2, 50.5, 45.6], "relacc": [93.6, 93.2, 93.2, 93.2, 85.3, 93.2, 93.2]},
    "zeroshot": {"pearcorr": [-10.7] * 7, "relacc": [85.3] * 7},
    "subtuning": {"pearcorr": [60.9, 46.5, 36.4, 29.0, 24.6, 20.9, 16.4], "relacc": [93.2] * 4 + [59.6] * 3},
    "size": {"pearcorr": [-20.9] * 7, "relacc": [59.6] * 7},
}
BUDGETS = 200 * 2.0 ** np.arange(14)  # 200 .. 1638400, the paper's grid


@pytest.fixture(scope="module")
def flan():
    return load_table(BUNDLED_FLAN)


def write_table(path: Path, rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def small_rows(n_models: int = 4, budgets=(0, 200, 400, 800, 1600, 3200)) -> list[list]:
    """A tidy table: model i has loss (3 + i/4) * D^-0.1 (zero-shot 5 + i)."""
    rows = [["config name", *[str(b) for b in budgets], "size", "family"]]
    for i in range(n_models):
        cells = [f"{5 + i:.4f}" if b == 0 else f"{(3 + i / 4) * b ** -0.1:.6f}" for b in budgets]
        rows.append([f"model-{i}", *cells, str(10 ** 8 * (i + 1)), "toy"])
    return rows


# ------------------------------------------------------------------------------ FLAN reproduction
@pytest.mark.parametrize("method", sorted(PUBLISHED_FLAN))
def test_flan_reproduces_published_figures(flan, method):
    result = evaluate(flan, TARGET, methods=[method])["methods"][method]
    assert [r["ratio"] for r in result] == list(DEFAULT_RATIOS)
    for metric, published in PUBLISHED_FLAN[method].items():
        measured = [r[metric] for r in result]
        for ratio, got, want in zip(DEFAULT_RATIOS, measured, published):
            assert abs(got - want) <= TOL, f"{method} {metric} at 1/{round(1 / ratio)}: measured {got:.1f}, published {want}"


def test_flan_table_is_the_released_one(flan):
    assert len(flan.models) == 30 and flan.budgets[0] == 200 and flan.budgets[-1] == TARGET
    assert flan.zero_shot is not None and flan.sizes is not None
    notice = (BUNDLED_FLAN.parent / "NOTICE").read_text()
    assert "Apache" in notice and "unmodified" in notice
    assert (BUNDLED_FLAN.parent / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_target_column_is_never_used_for_fitting(flan):
    """Rank on a copy whose target column is garbage: the predictions do not move."""
    spoiled = curves.CurveTable(flan.models, flan.budgets, flan.losses.copy(), flan.zero_shot, flan.sizes,
                                flan.families, flan.source)
    spoiled.losses[:, -1] *= 50
    for method in ("ats", "ats_plus", "vanilla", "subtuning"):
        # (a law fit on a copy of the array may differ in the last bits: numpy's SIMD sums depend on alignment)
        assert rank(spoiled, method, 3200, TARGET)["predicted"] == pytest.approx(rank(flan, method, 3200, TARGET)["predicted"], rel=1e-9)


def test_ats_plus_runs_on_flan_beside_ats(flan):
    """AtS+ is its own method (same transition, weighted line): it differs from AtS, and its top pick
    at each ratio is a real model."""
    out = evaluate(flan, TARGET, methods=["ats", "ats_plus"])["methods"]
    assert [r["pearcorr"] for r in out["ats"]] != [r["pearcorr"] for r in out["ats_plus"]]
    assert all(r["top"] in flan.models and 0 <= r["relacc"] <= 100 for r in out["ats_plus"])


# ------------------------------------------------------------------------------ laws
@pytest.mark.parametrize("law, params", [
    (VANILLA, dict(B=50.0, beta=0.5, E=2.0, alpha=0.8)),
    (RECTIFIED, dict(B=400.0, beta=0.6, E=1.5, alpha=1.2, D_l=50.0)),
])
def test_law_recovers_its_own_parameters(law, params):
    theta = law.theta(**params)
    losses = law.predict(theta, BUDGETS)
    fit = fit_law(law, BUDGETS, losses)
    for name, value in params.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-3), name
    # with 0.3% noise the parameters drift along the law's flat directions, the curve does not
    noisy = losses * np.exp(np.random.default_rng(0).normal(0, 0.003, losses.size))
    fit = fit_law(law, BUDGETS, noisy)
    assert fit.rmse < 0.005
    assert fit.predict([1e8])[0] == pytest.approx(law.predict(theta, [1e8])[0], rel=0.02)
    assert np.array_equal(fit.theta, fit_law(law, BUDGETS, noisy).theta)  # seeded restarts: deterministic


def test_rectified_law_fits_a_pre_power_phase_the_vanilla_law_cannot():
    losses = RECTIFIED.predict(RECTIFIED.theta(B=400.0, beta=0.6, E=1.5, alpha=1.0, D_l=200.0), BUDGETS)
    assert fit_law(RECTIFIED, BUDGETS, losses).rmse < 1e-4
    assert fit_law(VANILLA, BUDGETS, losses).rmse > 1e-3


def test_law_needs_as_many_points_as_parameters():
    with pytest.raises(ValueError, match="5 parameters"):
        fit_law(RECTIFIED, BUDGETS[:4], np.linspace(3, 2, 4))


# ------------------------------------------------------------------------------ AtS
def test_ats_detects_a_phase_transition():
    """A flat pre-power phase (200..3200) followed by a noisy power law from 6400 on: the walk keeps
    exactly the power phase, and the extrapolation lands on the law."""
    law = 30 * BUDGETS ** -0.2
    losses = law * np.exp(np.random.default_rng(1).normal(0, 0.002, BUDGETS.size))
    losses[:5] = losses[5] * np.array([1.25, 1.2, 1.15, 1.1, 1.05])  # flatter than the law
    start = ats_transition(BUDGETS[:-1], losses[:-1])
    assert BUDGETS[start] == 6400
    assert ats_predict(BUDGETS[:-1], losses[:-1], TARGET) == pytest.approx(law[-1], rel=0.02)
    # a line through all points (no transition) would be far off
    slope, intercept = np.polyfit(np.log(BUDGETS[:-1]), np.log(losses[:-1]), 1)
    assert abs(np.exp(intercept + slope * np.log(TARGET)) / law[-1] - 1) > 0.1


def test_ats_walk_follows_the_release():
    """On a clean power law the walk accepts every point but the smallest budget (as in the
    authors' code); with k or fewer points all are kept."""
    losses = 10 * BUDGETS[:6] ** -0.1 * np.exp([0.001, -0.001, 0.002, 0.0, -0.002, 0.001])
    assert ats_transition(BUDGETS[:6], losses) == 1
    assert ats_transition(BUDGETS[:3], losses[:3]) == 0
    # a tighter delta stops earlier
    assert ats_transition(BUDGETS[:6], losses, delta=0.01) > 1


def test_ats_plus_predicts_a_steepening_curve_better_than_ats():
    """On a smoothly broken power law observed mid-transition both extrapolations are too high
    (the slope keeps steepening); weighting by budget is closer."""
    for d_l, beta in ((10.0, 0.4), (30.0, 0.5), (100.0, 0.6)):
        losses = RECTIFIED.predict(RECTIFIED.theta(B=100.0, beta=beta, E=1e-9, alpha=1.0, D_l=d_l), BUDGETS)
        for max_budget in (3200, 25600):
            seen = BUDGETS <= max_budget
            truth = losses[-1]
            plain = ats_predict(BUDGETS[seen], losses[seen], TARGET)
            weighted = ats_plus_predict(BUDGETS[seen], losses[seen], TARGET)
            assert truth < weighted < plain


# ------------------------------------------------------------------------------ bad tables
@pytest.mark.parametrize("edit, pattern", [
    (lambda rows: rows[2].__setitem__(2, "nan"), r"row 3 \(model-1\), column '200': NaN"),
    (lambda rows: rows[3].__setitem__(3, ""), r"row 4 \(model-2\), column '400': empty cell"),
    (lambda rows: rows[1].__setitem__(4, "0"), r"row 2 \(model-0\), column '800': loss must be positive"),
    (lambda rows: rows[1].__setitem__(5, "-1.5"), r"row 2 \(model-0\), column '1600': loss must be positive"),
    (lambda rows: rows[4].__setitem__(6, "n/a"), r"row 5 \(model-3\), column '3200': 'n/a' is not a number"),
    (lambda rows: rows[2].__setitem__(7, "big"), r"row 3 \(model-1\), column 'size': 'big' is not a number"),
    (lambda rows: rows[2].pop(), r"row 3: 8 cells, the header has 9"),
    (lambda rows: rows[0].__setitem__(3, "4OO"), r"column '4OO' is neither a budget"),
])
def test_bad_cells_name_row_and_column(tmp_path, edit, pattern):
    rows = small_rows()
    edit(rows)
    with pytest.raises(DamocError, match=pattern):
        load_table(write_table(tmp_path / "bad.csv", rows))


def test_too_few_budgets_is_an_error(tmp_path):
    rows = [r[:4] for r in small_rows()]  # config name, 0, 200, 400
    with pytest.raises(DamocError, match=r"2 fine-tuning budget column\(s\) \(200, 400\); at least 3"):
        load_table(write_table(tmp_path / "short.csv", rows))


def test_missing_columns_are_errors_when_a_method_needs_them(tmp_path):
    rows = [[c for j, c in enumerate(r) if j not in (1, 7)] for r in small_rows()]  # drop 0 and size
    table = load_table(write_table(tmp_path / "nozero.csv", rows))
    with pytest.raises(DamocError, match=r"column '0' \(zero-shot loss\) is missing"):
        rank(table, "zeroshot", 800, 3200)
    with pytest.raises(DamocError, match=r"column 'size' is missing"):
        rank(table, "size", 800, 3200)
    with pytest.raises(DamocError, match=r"no column for budget 6400"):
        evaluate(table, 6400, methods=["ats"])
    with pytest.raises(DamocError, match="must be below the target"):
        rank(table, "ats", 3200, 3200)


def test_short_curve_falls_back_to_subtuning_and_is_flagged(tmp_path):
    table = load_table(write_table(tmp_path / "t.csv", small_rows()))
    out = rank(table, "ats", 400, 3200)  # two budgets: AtS needs three
    assert set(out["fallbacks"]) == set(table.models)
    assert all(reason.startswith("subtuning: 2 budget(s) <= 400, ats needs 3") for reason in out["fallbacks"].values())
    assert out["predicted"] == {m: float(v) for m, v in zip(table.models, table.column(400))}
    out = rank(table, "rectified", 1600, 3200)  # four budgets, five parameters
    assert set(out["fallbacks"]) == set(table.models)
    assert "fallbacks" not in rank(table, "ats", 1600, 3200)


# ------------------------------------------------------------------------------ CLI
def test_cli_rank_json_schema(cli):
    code, out, err = cli("curves", "rank", "--table", str(BUNDLED_FLAN), "--max-budget", "3200",
                         "--target", str(TARGET), "--method", "ats", "--json")
    assert code == 0, err
    assert out.count("\n") == 1  # exactly one JSON object
    result = json.loads(out)
    assert set(result) == {"method", "predicted", "ranking"}
    assert result["method"] == "ats"
    assert sorted(result["ranking"]) == sorted(result["predicted"]) and len(result["ranking"]) == 30
    values = [result["predicted"][m] for m in result["ranking"]]
    assert values == sorted(values) and all(isinstance(v, float) for v in values)


def test_cli_rank_size_is_largest_first_and_fallbacks_are_reported(cli):
    code, out, _ = cli("curves", "rank", "--table", str(BUNDLED_FLAN), "--max-budget", "3200",
                       "--target", str(TARGET), "--method", "size", "--json")
    assert code == 0 and json.loads(out)["ranking"][0] == "facebook/opt-6.7b"
    code, out, _ = cli("curves", "rank", "--table", str(BUNDLED_FLAN), "--max-budget", "400",
                       "--target", str(TARGET), "--method", "ats", "--json")
    result = json.loads(out)
    assert code == 0 and set(result) == {"method", "predicted", "ranking", "fallbacks"}
    code, out, _ = cli("curves", "rank", "--table", str(BUNDLED_FLAN), "--max-budget", "400",
                       "--target", str(TARGET), "--method", "ats")
    assert code == 0 and "fell back (30)" in out


def test_cli_evaluate_table_and_json(cli):
    code, out, err = cli("curves", "evaluate", "--table", str(BUNDLED_FLAN), "--target", str(TARGET),
                         "--method", "zeroshot", "--method", "ats")
    assert code == 0, err
    assert "PearCorr" in out and "RelAcc" in out and "1/512" in out and "AtS" in out
    code, out, _ = cli("curves", "evaluate", "--table", str(BUNDLED_FLAN), "--target", str(TARGET),
                       "--method", "zeroshot", "--json")
    result = json.loads(out)
    assert list(result["methods"]) == ["zeroshot"] and len(result["methods"]["zeroshot"]) == 7
    assert round(result["methods"]["zeroshot"][0]["pearcorr"], 1) == -10.7


def test_cli_bad_table_exits_2_with_one_line(tmp_path):
    rows = small_rows()
    rows[2][2] = "nan"
    path = write_table(tmp_path / "bad.csv", rows)
    run = subprocess.run([sys.executable, "-m", "damoc", "curves", "rank", "--table", str(path), "--max-budget", "800",
                          "--target", "3200", "--method", "ats", "--json"], capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("damoc: error: ")
    assert "row 3 (model-1), column '200': NaN" in run.stderr


@pytest.mark.parametrize("argv, message", [
    (["--method", "bogus"], "unknown ranking method 'bogus'"),
    (["--max-budget", "100"], "no budget column <= max budget 100"),
])
def test_cli_bad_arguments_exit_2(cli, argv, message):
    base = {"--table": str(BUNDLED_FLAN), "--max-budget": "3200", "--target": str(TARGET), "--method": "ats"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    code, out, err = cli("curves", "rank", *[x for kv in base.items() for x in kv])
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


# ------------------------------------------------------------------------ curves from trials
def test_rank_curves_extrapolates_each_candidate_to_its_target():
    from damoc.ranking.curves import curve_table_csv, rank_curves

    def power(a, b, budgets):
        return [(d, a * d ** -b) for d in budgets]

    budgets = [100, 200, 400, 800]
    curves = {
        "steep": power(20.0, 0.30, budgets),     # worse now, better at the target
        "flat": power(3.0, 0.02, budgets),       # better now, barely improves
        "short": power(5.0, 0.1, [100, 200]),    # stopped early: too short for AtS
    }
    result = rank_curves(curves, "ats", {"steep": 1e6, "flat": 1e6, "short": 1e6})
    assert result["predicted"]["steep"] == pytest.approx(20.0 * 1e6 ** -0.30, rel=1e-6)
    assert result["predicted"]["flat"] == pytest.approx(3.0 * 1e6 ** -0.02, rel=1e-6)
    assert result["ranking"] == ["steep", "flat", "short"]
    assert result["predicted"]["short"] == pytest.approx(5.0 * 200 ** -0.1)  # SubTuning: its last loss
    assert set(result["fallbacks"]) == {"short"} and "subtuning" in result["fallbacks"]["short"]
    assert result["fitted"]["steep"]["budgets"][-1] == pytest.approx(1e6)
    assert result["fitted"]["steep"]["losses"][-1] == pytest.approx(result["predicted"]["steep"])
    # Different budgets cannot share one AtS-layout table; equal ones can, and it reads back.
    assert curve_table_csv(result["curves"]) is None
    same = {k: v for k, v in result["curves"].items() if k != "short"}
    rows = list(csv.reader(curve_table_csv(same).splitlines()))
    assert rows[0] == ["config name", "100", "200", "400", "800"] and [r[0] for r in rows[1:]] == ["steep", "flat"]
    assert curves_table_reads_back(rows)


def curves_table_reads_back(rows) -> bool:
    table = curves.table_from_rows(rows)
    return table.models == ("steep", "flat") and table.losses.shape == (2, 4)


def test_rank_curves_rejects_methods_that_need_no_curve():
    from damoc.ranking.curves import rank_curves

    with pytest.raises(DamocError, match="curve_method 'zeroshot'"):
        rank_curves({"a": [(1, 2.0)]}, "zeroshot", {"a": 10})
