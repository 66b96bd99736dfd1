"""The filtering stage's selectors on data with known structure: well-separated clusters (which
rows a method should pick is then obvious), brute-force dense oracles on small problems, the output
contract, input errors, and a 100,000-row run that must stay far below an n x n kernel's memory."""

from __future__ import annotations

import itertools
import time
import tracemalloc

import numpy as np
import pytest

from damoc.data.selectors import (allocate, budget, diversity_filter, dq, dq_bins, facility_location, graphcut,
                                  kcenter_greedy, threshold, top_k)


def clusters(sizes, *, dims=16, noise=0.05, seed=0):
    """Rows around orthogonal unit centres (cosine ~0 across clusters, ~0.98 within), cluster by
    cluster, with their cluster labels. Norms vary, so selectors must normalise."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dims)[: len(sizes)]
    rows = [(c + noise * rng.standard_normal((size, dims))) * rng.uniform(0.5, 3.0, (size, 1))
            for c, size in zip(centres, sizes)]
    return np.concatenate(rows).astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


def cosine_matrix(x):
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return unit @ unit.T


def greedy_oracle(f, n, k):
    """Plain greedy on a set function given as a callable: add the row with the largest f(S + j),
    ties to the lower index."""
    chosen: list[int] = []
    for _ in range(k):
        best, best_value = None, -np.inf
        for j in range(n):
            if j not in chosen:
                value = f(chosen + [j])
                if value > best_value:
                    best, best_value = j, value
        chosen.append(best)
    return chosen


EMBEDDING_SELECTORS = {
    "kcenter_greedy": lambda x, k, seed: kcenter_greedy(x, k, seed=seed),
    "graphcut": lambda x, k, seed: graphcut(x, k, seed=seed, partition_size=50),
    "facility_location": lambda x, k, seed: facility_location(x, k, seed=seed, partition_size=50),
    "dq": lambda x, k, seed: dq(x, k, seed=seed, bins=4, partition_size=50),
    "diversity_filter": lambda x, k, seed: diversity_filter(x, np.random.default_rng(seed).permutation(len(x)), k)[0],
}


# --- the output contract ------------------------------------------------------------------------


@pytest.mark.parametrize("name", EMBEDDING_SELECTORS)
@pytest.mark.parametrize("k", [0, 1, 37, 120, 500])
def test_selectors_return_min_k_n_distinct_int64_indices(name, k):
    x, _ = clusters([60, 40, 20])
    before = x.copy()
    chosen = EMBEDDING_SELECTORS[name](x, k, 3)
    assert chosen.dtype == np.int64
    assert len(chosen) == min(k, len(x))
    assert len(np.unique(chosen)) == len(chosen)
    assert chosen.min(initial=0) >= 0 and chosen.max(initial=0) < len(x)
    np.testing.assert_array_equal(x, before)  # the caller's array is not normalised in place


@pytest.mark.parametrize("name", EMBEDDING_SELECTORS)
def test_selectors_are_deterministic_for_a_seed(name):
    x, _ = clusters([60, 40, 20], noise=0.3)
    np.testing.assert_array_equal(EMBEDDING_SELECTORS[name](x, 30, 7), EMBEDDING_SELECTORS[name](x, 30, 7))


@pytest.mark.parametrize("name", ["kcenter_greedy", "graphcut", "facility_location", "dq"])
def test_another_seed_gives_another_selection_where_randomness_applies(name):
    # kcenter: the random start; graphcut/facility location: the random partitions (50 rows each
    # here); dq: the partitions and the uniform draw from each bin.
    x, _ = clusters([60, 40, 20], noise=0.3)
    runs = {tuple(EMBEDDING_SELECTORS[name](x, 30, seed)) for seed in range(4)}
    assert len(runs) > 1


def test_float64_and_zero_rows_are_accepted():
    x, _ = clusters([30, 30])
    x = x.astype(np.float64)
    x[5] = 0.0  # cosine 0 to everything, distance 1
    for chosen in (kcenter_greedy(x, 10), graphcut(x, 10), facility_location(x, 10), dq(x, 10, bins=3)):
        assert len(np.unique(chosen)) == 10


# --- input errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("call", [
    lambda x: kcenter_greedy(x, -1), lambda x: graphcut(x, -1), lambda x: facility_location(x, -1),
    lambda x: dq(x, -1), lambda x: diversity_filter(x, np.arange(len(x)), -1), lambda x: top_k(x[:, 0], -1),
])
def test_negative_k_is_refused(call):
    x, _ = clusters([10, 10])
    with pytest.raises(ValueError, match="k must be >= 0"):
        call(x)


@pytest.mark.parametrize("call", [kcenter_greedy, graphcut, facility_location, dq,
                                  lambda x, k: diversity_filter(x, np.arange(len(x)), k)])
def test_nan_embedding_names_the_first_bad_row(call):
    x, _ = clusters([10, 10])
    x[13, 2] = np.nan
    x[17, 0] = np.inf
    with pytest.raises(ValueError, match="row 13 "):
        call(x, 3)


def test_nan_score_names_the_first_bad_row():
    with pytest.raises(ValueError, match="row 2 is NaN"):
        top_k([1.0, 2.0, np.nan, np.nan], 2)
    with pytest.raises(ValueError, match="row 0 is NaN"):
        threshold([np.nan], 0.5)
    with pytest.raises(ValueError, match="row 3 is NaN"):
        top_k([np.nan, 1.0, 2.0, np.nan], 1, valid=np.array([False, True, True, True]))


def test_top_k_accepts_nan_in_rows_the_mask_excludes():
    scores = np.array([np.nan, 1.0, np.inf, 3.0, np.nan])
    chosen = top_k(scores, 5, valid=np.isfinite(scores))
    assert chosen.tolist() == [3, 1]
    assert top_k(scores, 2, descending=False, valid=~np.isnan(scores)).tolist() == [1, 3]


def test_mismatched_shapes_are_refused():
    x, _ = clusters([10, 10])
    with pytest.raises(ValueError, match="2-D"):
        kcenter_greedy(x[0], 3)
    with pytest.raises(ValueError, match="one-dimensional"):
        top_k(x, 3)
    with pytest.raises(ValueError, match="valid must be a boolean mask of shape"):
        top_k(np.arange(5.0), 2, valid=np.ones(4, bool))
    with pytest.raises(ValueError, match="valid must be a boolean mask of shape"):
        top_k(np.arange(5.0), 2, valid=np.ones(5))  # floats, not booleans
    with pytest.raises(ValueError, match="not a row index"):
        diversity_filter(x, [0, 1, 20], 2)
    with pytest.raises(ValueError, match="repeats"):
        diversity_filter(x, [0, 1, 1], 2)
    with pytest.raises(ValueError, match="not a row index"):
        kcenter_greedy(x, 3, initial=[-1])


# --- top_k, threshold, allocate, budget ---------------------------------------------------------


def test_top_k_breaks_ties_by_lower_index():
    scores = np.array([1.0, 3.0, 2.0, 3.0, 1.0, 3.0])
    np.testing.assert_array_equal(top_k(scores, 4), [1, 3, 5, 2])
    np.testing.assert_array_equal(top_k(scores, 3, descending=False), [0, 4, 2])
    np.testing.assert_array_equal(top_k(scores.astype(np.int64), 2), [1, 3])
    np.testing.assert_array_equal(top_k(np.array([0, 5, 5], dtype=np.uint8), 2), [1, 2])  # no sign flip
    assert top_k(scores, 100).tolist() == [1, 3, 5, 2, 0, 4]
    assert top_k(scores, 0).dtype == np.int64 and len(top_k(scores, 0)) == 0


def test_top_k_only_picks_valid_rows_and_returns_all_of_them_when_short():
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0])
    valid = np.array([False, True, False, True, True])
    np.testing.assert_array_equal(top_k(scores, 2, valid=valid), [1, 3])
    np.testing.assert_array_equal(top_k(scores, 10, valid=valid), [1, 3, 4])


def test_threshold_directions_and_inclusiveness():
    scores = [4.0, 4.5, 5.0, 3.0, 4.5]
    assert threshold(scores, 4.5).tolist() == [1, 2, 4]
    assert threshold(scores, 4.5, inclusive=False).tolist() == [2]
    assert threshold(scores, 4.5, above=False).tolist() == [0, 1, 3, 4]
    assert threshold(scores, 4.5, above=False, inclusive=False).tolist() == [0, 3]
    assert threshold(scores, 10).dtype == np.int64


def test_allocate_is_proportional_with_largest_remainder():
    assert allocate([600, 300, 100], 100) == [60, 30, 10]
    assert allocate([5, 3, 2], 7) == [4, 2, 1]  # quotas 3.5, 2.1, 1.4: the .5 gets the spare row
    assert allocate([1, 1, 1], 2) == [1, 1, 0]  # equal remainders: earlier groups first
    assert allocate([3, 0, 4], 7) == [3, 0, 4]
    assert allocate([], 0) == []
    for k in range(101):
        shares = allocate([7, 0, 50, 13, 30], k)
        assert sum(shares) == k and all(0 <= s <= c for s, c in zip(shares, [7, 0, 50, 13, 30]))
    with pytest.raises(ValueError, match="cannot place"):
        allocate([2, 2], 5)


def test_budget_rounds_half_up_keeps_at_least_one_and_checks_the_ratio():
    assert budget(5, 0.5) == 3  # round() would give the even 2
    assert budget(7, 0.5) == 4
    assert budget(10, 0.15) == 2  # 10 * 0.15 is 1.4999999999999998 in binary floating point
    assert budget(10, 0.14) == 1
    assert budget(1000, 1e-6) == 1
    assert budget(10, 1.0) == 10
    assert budget(0, 0.5) == 0
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\]"):
            budget(10, bad)


# --- KCenterGreedy ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_kcenter_picks_exactly_one_point_per_separated_cluster(seed):
    x, label = clusters([500, 200, 60, 10, 3], seed=seed)
    chosen = kcenter_greedy(x, 5, seed=seed)
    assert sorted(label[chosen]) == [0, 1, 2, 3, 4]


def test_kcenter_matches_a_dense_farthest_first_oracle():
    x = np.random.default_rng(1).standard_normal((80, 6)).astype(np.float32)
    distance = 1.0 - cosine_matrix(x)
    chosen = [11]
    while len(chosen) < 25:
        chosen.append(int(np.argmax(np.where(np.isin(np.arange(80), chosen), -np.inf, distance[:, chosen].min(1)))))
    np.testing.assert_array_equal(kcenter_greedy(x, 25, initial=[11]), chosen)


def test_kcenter_starts_from_the_initial_rows():
    x, label = clusters([100, 100, 100])
    chosen = kcenter_greedy(x, 3, initial=[0, 1])  # both in cluster 0: the third pick must leave it
    assert chosen[:2].tolist() == [0, 1] and label[chosen[2]] != 0
    chosen = kcenter_greedy(x, 3, initial=[150, 0])
    assert chosen[:2].tolist() == [150, 0] and label[chosen[2]] == 2
    with pytest.raises(ValueError, match="exceed"):
        kcenter_greedy(x, 1, initial=[0, 1])


def test_kcenter_with_duplicate_rows_still_returns_distinct_indices():
    x = np.ones((20, 4), np.float32)
    assert sorted(kcenter_greedy(x, 20).tolist()) == list(range(20))


# --- GraphCut -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 4.0])
def test_graphcut_exact_mode_equals_brute_force_dense_greedy(lam):
    x = np.random.default_rng(2).standard_normal((40, 5)).astype(np.float32) * 2.0
    s = cosine_matrix(x)

    def f(subset):
        return s[:, subset].sum() - lam * s[np.ix_(subset, subset)].sum()

    expected = greedy_oracle(f, len(x), 15)
    np.testing.assert_array_equal(graphcut(x, 15, lam=lam, partition_size=40), expected)
    np.testing.assert_array_equal(graphcut(x, 15, lam=lam, partition_size=10_000, seed=9), expected)


@pytest.mark.parametrize("partition_size", [4096, 256])
def test_graphcut_covers_clusters_proportionally_when_lam_balances_the_budget(partition_size):
    # With orthogonal clusters the gain of a row in cluster c is about n_c - 2 lam k_c, so the
    # greedy equalises n_c - 2 lam k_c; lam = n / (2k) makes k_c = k n_c / n.
    x, label = clusters([600, 300, 100])
    chosen = graphcut(x, 100, lam=len(x) / (2 * 100), partition_size=partition_size)
    counts = np.bincount(label[chosen], minlength=3)
    assert np.all(np.abs(counts - [60, 30, 10]) <= 5), counts


def test_graphcut_lam_trades_representativeness_for_diversity():
    x, label = clusters([600, 300, 100])
    share_of_largest = [np.mean(label[graphcut(x, 100, lam=lam)] == 0) for lam in (1.0, 2.0, 5.0, 10.0)]
    assert share_of_largest[0] == 1.0  # small lam: all from the densest region
    assert all(a > b for a, b in itertools.pairwise(share_of_largest))


# --- facility location --------------------------------------------------------------------------


def test_facility_location_exact_mode_equals_brute_force_dense_greedy():
    x = np.random.default_rng(3).standard_normal((40, 5)).astype(np.float32)
    s = cosine_matrix(x)
    expected = greedy_oracle(lambda subset: s[:, subset].max(axis=1).sum(), len(x), 15)
    np.testing.assert_array_equal(facility_location(x, 15, partition_size=40), expected)


@pytest.mark.parametrize("k, partition_size", [(5, 4096), (20, 4096), (40, 300)])
def test_facility_location_covers_every_cluster(k, partition_size):
    x, label = clusters([500, 200, 100, 50, 20])
    chosen = facility_location(x, k, partition_size=partition_size)
    counts = np.bincount(label[chosen], minlength=5)
    assert np.all(counts >= 1), counts
    if k == 5:
        assert np.all(counts == 1), counts  # a second pick in a covered cluster gains ~nothing


# --- Dataset Quantization -----------------------------------------------------------------------


def test_dq_bins_partition_every_row_into_near_equal_bins():
    x, _ = clusters([600, 300, 100])
    groups = dq_bins(x, 7, partition_size=256)
    assert [len(g) for g in groups] == [143, 143, 143, 143, 143, 143, 142]
    assert sorted(np.concatenate(groups).tolist()) == list(range(1000))
    assert [len(g) for g in dq_bins(x[:3], 5)] == [1, 1, 1, 0, 0]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("partition_size", [4096, 256])
def test_dq_covers_clusters_roughly_proportionally(seed, partition_size):
    x, label = clusters([600, 300, 100])
    chosen = dq(x, 100, bins=10, partition_size=partition_size, seed=seed)
    assert len(chosen) == 100
    counts = np.bincount(label[chosen], minlength=3)
    assert np.all(np.abs(counts - [60, 30, 10]) <= 8), counts


def test_dq_draws_from_every_bin_in_proportion():
    x, _ = clusters([600, 300, 100], noise=0.3)
    groups = dq_bins(x, 10, seed=4)
    chosen = set(dq(x, 100, bins=10, seed=4).tolist())
    assert [len(chosen & set(g.tolist())) for g in groups] == [10] * 10


# --- DEITA's diversity filter -------------------------------------------------------------------


def test_diversity_filter_rejects_a_near_duplicate_and_fills():
    x = np.eye(4, dtype=np.float32)
    x = np.vstack([x[0], x[0] + 0.05 * x[1], x[1], x[2], x[3]])  # row 1 ~ row 0 (cos 0.999)
    chosen, info = diversity_filter(x, [0, 1, 2, 3, 4], 4)
    assert chosen.tolist() == [0, 2, 3, 4] and info == {"admitted": 4, "filled": 0, "examined": 5}
    chosen, info = diversity_filter(x, [1, 0, 2], 3)  # the caller's order decides who survives
    assert chosen.tolist() == [1, 2, 0] and info["admitted"] == 2 and info["filled"] == 1
    chosen, info = diversity_filter(x, [0, 1, 2, 3, 4], 5)
    assert chosen.tolist() == [0, 2, 3, 4, 1] and info["filled"] == 1
    chosen, info = diversity_filter(x, [0, 1, 2, 3, 4], 5, fill=False)
    assert chosen.tolist() == [0, 2, 3, 4] and info == {"admitted": 4, "filled": 0, "examined": 5}
    chosen, _ = diversity_filter(x, [0, 1, 2, 3, 4], 5, tau=1.0)  # nothing is above cosine 1
    assert chosen.tolist() == [0, 1, 2, 3, 4]


def test_diversity_filter_matches_a_sequential_oracle_across_blocks():
    # 900 rows from 40 tight clusters: most candidates are near-duplicates of an admitted row, and
    # the walk crosses several blocks of candidates.
    x, _ = clusters([30] * 16, noise=0.4, seed=5)
    x = np.vstack([x, x[:420] + 0.01])
    order = np.random.default_rng(0).permutation(len(x))
    s = cosine_matrix(x)
    for k, tau in [(60, 0.9), (900, 0.9), (100, 0.5)]:
        admitted: list[int] = []
        for row in order:
            if len(admitted) < k and (not admitted or s[row, admitted].max() <= tau):
                admitted.append(int(row))
        chosen, info = diversity_filter(x, order, k, tau=tau)
        assert chosen[: info["admitted"]].tolist() == admitted
        assert len(chosen) == k and info["filled"] == k - len(admitted)


# --- scale --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hundred_thousand_rows():
    x, _ = clusters([40_000, 30_000, 20_000, 10_000], noise=0.5, seed=6)
    return x


@pytest.mark.parametrize("name, call, k", [
    ("kcenter_greedy", lambda x: kcenter_greedy(x, 50), 50),
    ("graphcut", lambda x: graphcut(x, 1000), 1000),
    ("facility_location", lambda x: facility_location(x, 1000), 1000),
    ("dq", lambda x: dq(x, 1000), 1000),
])
def test_hundred_thousand_rows_never_need_an_n_by_n_matrix(hundred_thousand_rows, name, call, k):
    x = hundred_thousand_rows
    dense_bytes = len(x) ** 2 * 4  # 40 GB of float32
    tracemalloc.start()  # numpy reports its array allocations to tracemalloc
    try:
        started = time.process_time()  # CPU time: robust to a busy machine, still catches O(n^2)
        chosen = call(x)
        seconds = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(chosen) == k and len(np.unique(chosen)) == k
    assert peak < 500 * 2**20, f"{name}: peak {peak / 2**20:.0f} MiB"
    assert peak < dense_bytes / 80
    assert seconds < 30, f"{name}: {seconds:.1f} s of CPU"
