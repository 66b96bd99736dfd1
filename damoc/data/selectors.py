"""Selectors of the data-filtering stage: choose row indices given scores and/or embeddings.

A filtering method is a composition of a *scorer* (one number or one vector per row: a quality
rating, IFD, a sentence embedding) and a *selector* from this module (top-k, a threshold,
KCenterGreedy, GraphCut, facility location, Dataset Quantization, DEITA's diversity filter).
Selectors are plain numpy: no Ray, no models, deterministic for a given `seed`. The long loops
(KCenterGreedy's picks, DQ's bins) show a progress bar (damoc.log.progress) when they take seconds.

Similarity between rows is cosine. Rows are normalised on the fly or in a private copy; the caller's
array is never modified. An all-zero row has cosine 0 to everything.

Scale: a dense n x n kernel does not fit past ~50k rows (100k rows in float32 is 40 GB), so no
function here ever builds one. KCenterGreedy and GraphCut need only matrix-vector products (with the
cosine kernel, GraphCut's gains are linear in the embeddings); facility location builds a dense
kernel only inside a random partition of at most `partition_size` rows; the diversity filter keeps
only the admitted rows. Every docstring states time and memory; n rows, d dimensions, k selected,
p = min(n, partition_size).

Every selector returns int64 indices without duplicates, of length exactly min(k, n) unless its
docstring says otherwise, and raises ValueError (one line) on k < 0, mismatched shapes and NaN.
"""

from __future__ import annotations

import math
import operator
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from damoc.log import progress

__all__ = ["allocate", "budget", "diversity_filter", "dq", "dq_bins", "facility_location", "graphcut",
           "kcenter_greedy", "threshold", "top_k"]

# Most matrix entries one temporary may hold (16 MiB of float32): bounds chunked products.
_CHUNK_ENTRIES = 1 << 22
# Candidates the diversity filter compares against the admitted set in one matrix product.
_DIVERSITY_BLOCK = 256


# ---------------------------------------------------------------------------------------------
# Budgets


def budget(n: int, keep_ratio: float) -> int:
    """Rows to keep out of `n`: max(1, round(n * keep_ratio)), rounding halves up (2.5 -> 3, not
    Python's banker's 2), computed in decimal so 10 * 0.15 is 1.5 and rounds to 2. An empty input
    keeps 0 rows. O(1)."""
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"budget: n must be >= 0, got {n}")
    ratio = float(keep_ratio)
    if not (0.0 < ratio <= 1.0):  # also rejects NaN
        raise ValueError(f"budget: keep_ratio must be in (0, 1], got {keep_ratio!r}")
    if n == 0:
        return 0
    rows = int((Decimal(n) * Decimal(repr(ratio))).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return max(1, rows)


def allocate(sizes, k: int) -> list[int]:
    """Split a budget of `k` over groups of the given sizes proportionally, by largest remainder
    (Hamilton): each group gets floor(k * size / total), and the rows still missing go one each to
    the groups with the largest fractional parts (ties: the earlier group). The result sums exactly
    to k and never exceeds a group's size. Exact integer arithmetic. O(g log g) for g groups."""
    sizes = [operator.index(s) for s in sizes]
    k = _check_k(k, "allocate")
    if any(s < 0 for s in sizes):
        raise ValueError(f"allocate: group sizes must be >= 0, got {sizes}")
    total = sum(sizes)
    if k > total:
        raise ValueError(f"allocate: cannot place {k} rows in groups holding {total}")
    if k == 0:
        return [0] * len(sizes)
    shares = [k * s // total for s in sizes]
    missing = k - sum(shares)
    by_remainder = sorted(range(len(sizes)), key=lambda g: (-(k * sizes[g] % total), g))
    for g in by_remainder[:missing]:
        shares[g] += 1
    return shares


# ---------------------------------------------------------------------------------------------
# Score selectors


def top_k(scores, k: int, *, descending: bool = True, valid=None) -> np.ndarray:
    """Indices of the k best scores, best first; equal scores keep index order (lower index
    first). `valid` (boolean, one per row) restricts the choice to eligible rows; with fewer than k
    eligible rows all of them are returned. NaN is refused in eligible rows only, so a caller can
    mask out rows it could not score. Time O(n log n) (one stable sort); memory O(n)."""
    k = _check_k(k, "top_k")
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"top_k: scores must be one-dimensional, got shape {scores.shape}")
    if valid is not None:
        valid = np.asarray(valid)
        if valid.dtype != np.bool_ or valid.shape != scores.shape:
            raise ValueError(f"top_k: valid must be a boolean mask of shape {scores.shape}, "
                             f"got {valid.dtype} {valid.shape}")
    scores = _check_scores(scores, "top_k", eligible=valid)
    n = scores.shape[0]
    if descending:
        # A stable ascending sort of the reversed array, reversed again, is descending with ties
        # in ascending index order; unlike sorting -scores it works for every dtype.
        order = (n - 1 - np.argsort(scores[::-1], kind="stable"))[::-1]
    else:
        order = np.argsort(scores, kind="stable")
    if valid is not None:
        order = order[valid[order]]
    return np.ascontiguousarray(order[:k], dtype=np.int64)


def threshold(scores, value: float, *, above: bool = True, inclusive: bool = True) -> np.ndarray:
    """Indices (ascending) of the rows whose score is >= value (above, inclusive), > value, <= value
    or < value; e.g. AlpaGasus keeps ratings >= 4.5, IFD filtering keeps IFD < 1. Time and memory
    O(n)."""
    scores = _check_scores(scores, "threshold")
    if math.isnan(float(value)):
        raise ValueError("threshold: value is NaN")
    if above:
        keep = scores >= value if inclusive else scores > value
    else:
        keep = scores <= value if inclusive else scores < value
    return np.flatnonzero(keep).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Embedding selectors


def kcenter_greedy(embeddings, k: int, *, seed: int = 0, initial=None) -> np.ndarray:
    """KCenterGreedy (farthest-first traversal): repeatedly add the row farthest, in cosine distance
    1 - cos, from the selected set, which covers the embedding space evenly whatever its density.

    The result starts with `initial` (in the given order; those rows count toward k), else with one
    seeded random row; to add k new rows to an existing set S, pass k + len(S) and drop the prefix.
    Ties go to the lower index. Time O(n d (k + len(initial))); extra memory O(n) (the running
    min-distance vector and the row norms; plus a float32 copy if the input is not float32), the
    distances to `initial` computed in chunks of at most 4M entries."""
    x = _check_embeddings(embeddings, "kcenter_greedy")
    k = _check_k(k, "kcenter_greedy")
    n = x.shape[0]
    target = min(k, n)
    seeds = np.empty(0, np.int64) if initial is None else _check_indices(initial, n, "kcenter_greedy", "initial")
    if len(seeds) > target:
        raise ValueError(f"kcenter_greedy: {len(seeds)} initial rows exceed the budget of {target}")
    if target == 0:
        return np.empty(0, np.int64)
    inv_norm = _inverse_norms(x)
    chosen = np.empty(target, np.int64)
    min_dist = np.full(n, np.inf, np.float32)
    if len(seeds) == 0:
        chosen[0] = np.random.default_rng(seed).integers(n)
        picked = 1
        _lower_distances(x, inv_norm, chosen[0], min_dist)
    else:
        chosen[: len(seeds)] = seeds
        picked = len(seeds)
        _min_distance_to_set(x, inv_norm, seeds, min_dist)
    min_dist[chosen[:picked]] = -np.inf
    with progress(desc="data: k-center greedy", total=target, unit="row") as bar:
        bar.update(picked)
        while picked < target:
            row = int(np.argmax(min_dist))
            chosen[picked] = row
            picked += 1
            _lower_distances(x, inv_norm, row, min_dist)
            min_dist[row] = -np.inf
            bar.update(1)
    return chosen


def graphcut(embeddings, k: int, *, lam: float = 1.0, partition_size: int = 4096, seed: int = 0) -> np.ndarray:
    """Greedy maximisation of GraphCut, f(S) = sum_{i in V, j in S} s_ij - lam sum_{i, j in S} s_ij:
    the first term rewards rows similar to the whole data (representativeness), the second
    penalises similarity inside the selection (diversity).

    With the cosine kernel the gain of row j is linear in the embeddings,
    gain_j = e_j . (sum_V e - 2 lam sum_S e) - lam s_jj, so no kernel matrix is ever built. lam
    sets the balance: for well-separated clusters of sizes n_c the greedy keeps about
    n_c / (2 lam) - const rows of each, so lam = 1 concentrates on the densest region, while
    lam ~ n / (2k) keeps about k n_c / n of each (proportional coverage).

    Rows are split into seeded random partitions of at most `partition_size` rows with the budget
    split proportionally (largest remainder), greedy run in each; with partition_size >= n it is
    the exact greedy (ties to the lower index; the seed is then unused). Returned in selection
    order, partition by partition. Time O(p d k); memory O(n + p d) (one partition in float64)."""
    x = _check_embeddings(embeddings, "graphcut")
    k = _check_k(k, "graphcut")
    lam = _check_lam(lam, "graphcut")
    partition_size = _check_partition_size(partition_size, "graphcut")
    rows = np.arange(x.shape[0], dtype=np.int64)
    return _graphcut_rows(x, _inverse_norms(x), rows, min(k, len(rows)), lam, partition_size,
                          np.random.default_rng(seed))


def facility_location(embeddings, k: int, *, partition_size: int = 4096, seed: int = 0) -> np.ndarray:
    """Greedy maximisation of facility location, f(S) = sum_i max_{j in S} s_ij: every row should
    have a close representative in the selection, so every dense region gets one before any region
    gets a second. The max over an empty S is -1 (the least cosine), so f matches the formula for
    every non-empty S and the greedy is monotone.

    The gains of all candidates are kept exact and updated only for the rows a pick covers better,
    which gives the plain greedy's result (ties to the lower index) at a fraction of its cost.
    Partitioned like `graphcut`: seeded random partitions of at most `partition_size` rows, budget
    split by largest remainder, exact greedy when partition_size >= n. The dense kernel exists only
    inside one partition. Time O(n p d) for the kernels plus O(|R| p) per pick, R the rows it covers
    better (at worst O(k p^2) in all; about 0.3 s per 4096-row partition of 40 picks on 2 cores);
    memory O(p^2) float32 (64 MiB at p = 4096) plus 16 MiB of chunks."""
    x = _check_embeddings(embeddings, "facility_location")
    k = _check_k(k, "facility_location")
    partition_size = _check_partition_size(partition_size, "facility_location")
    n = x.shape[0]
    inv_norm = _inverse_norms(x)
    parts = _partitions(np.arange(n, dtype=np.int64), partition_size, np.random.default_rng(seed))
    shares = allocate([len(part) for part in parts], min(k, n))
    largest = max((len(part) for part, share in zip(parts, shares) if share > 0), default=0)
    scratch = np.empty(largest * largest + _CHUNK_ENTRIES + largest, np.float32)
    picked = [part[_facility_location_greedy(_unit_rows(x, inv_norm, part, np.float32), share, scratch)]
              for part, share in zip(parts, shares) if share > 0]
    return _concat(picked)


def dq_bins(embeddings, bins: int, *, lam: float = 1.0, partition_size: int = 4096, seed: int = 0) -> list[np.ndarray]:
    """Dataset Quantization's bins: bin 1 is the GraphCut greedy selection of n/bins rows from all
    rows, bin 2 the selection of n/bins rows from those left, and so on; the last bin takes what
    remains. Bin sizes differ by at most one (the earlier bins get the extra rows); with bins > n
    the last bins are empty. Each bin is a diverse, representative slice of what the earlier bins
    left. Every row is in exactly one bin. Time O(p d n); memory O(n + p d)."""
    x = _check_embeddings(embeddings, "dq_bins")
    bins = operator.index(bins)
    if bins < 1:
        raise ValueError(f"dq_bins: bins must be >= 1, got {bins}")
    lam = _check_lam(lam, "dq_bins")
    partition_size = _check_partition_size(partition_size, "dq_bins")
    n = x.shape[0]
    inv_norm = _inverse_norms(x)
    rng = np.random.default_rng(seed)
    remaining = np.arange(n, dtype=np.int64)
    out = []
    sizes = [n // bins + (1 if b < n % bins else 0) for b in range(bins)]
    for size in progress(sizes[:-1], desc="data: DQ bins", unit="bin"):
        chosen = _graphcut_rows(x, inv_norm, remaining, size, lam, partition_size, rng)
        out.append(np.sort(chosen))
        remaining = np.setdiff1d(remaining, chosen, assume_unique=True)
    out.append(remaining)
    return out


def dq(embeddings, k: int, *, bins: int = 10, lam: float = 1.0, partition_size: int = 4096,
       seed: int = 0) -> np.ndarray:
    """Dataset Quantization (Zhou et al., 2023): build `bins` GraphCut bins (`dq_bins`), then draw a
    seeded uniform sample from each bin, sized proportionally to the bin (largest remainder), so the
    total is exactly min(k, n). Sampling every bin keeps the spread of the whole data rather than
    only its most representative part. Returned bin by bin, ascending within a bin. Time and memory
    as `dq_bins`."""
    x = _check_embeddings(embeddings, "dq")
    k = _check_k(k, "dq")
    groups = dq_bins(x, bins, lam=lam, partition_size=partition_size, seed=seed)
    rng = np.random.default_rng([seed, 1])  # a stream distinct from the one that built the bins
    shares = allocate([len(group) for group in groups], min(k, x.shape[0]))
    return _concat([np.sort(rng.choice(group, size=share, replace=False))
                    for group, share in zip(groups, shares) if share > 0])


def diversity_filter(embeddings, order, k: int, *, tau: float = 0.9, fill: bool = True) -> tuple[np.ndarray, dict]:
    """DEITA's Repr Filter: walk the rows in `order` (the caller's ranking, best first) and admit a
    row only if its largest cosine to the rows already admitted is <= tau, until k are admitted.

    If the walk ends with fewer than k admitted and `fill` is true, the best-ranked rejected rows
    are appended so that exactly min(k, len(order)) rows come back; with fill false fewer may come
    back. The dict says how many: {"admitted", "filled", "examined"}. Admitted rows come first, in
    walk order, then filled rows in walk order. Time O(m k d) for m rows examined; memory O(k d)
    (the admitted rows) plus one block of 256 candidates."""
    x = _check_embeddings(embeddings, "diversity_filter")
    n, d = x.shape
    order = _check_indices(order, n, "diversity_filter", "order")
    k = _check_k(k, "diversity_filter")
    tau = float(tau)
    if math.isnan(tau):
        raise ValueError("diversity_filter: tau is NaN")
    target = min(k, len(order))
    kept_rows = np.empty((target, d), np.float32)  # unit vectors of the admitted rows
    admitted: list[int] = []
    rejected: list[int] = []
    position = 0
    while len(admitted) < target and position < len(order):
        block = order[position: position + _DIVERSITY_BLOCK]
        vectors = x[block]  # a copy (fancy indexing), normalised in place
        vectors *= _inverse_norms(vectors)[:, None]
        closest = np.full(len(block), -np.inf, np.float32)
        step = max(1, _CHUNK_ENTRIES // len(block))
        for start in range(0, len(admitted), step):
            sims = vectors @ kept_rows[start: min(start + step, len(admitted))].T
            np.maximum(closest, sims.max(axis=1), out=closest)
        within = vectors @ vectors.T  # the block against itself, for rows admitted in this block
        admitted_here: list[int] = []
        examined = 0
        for i, row in enumerate(block):
            if len(admitted) == target:
                break
            examined += 1
            if closest[i] > tau or (admitted_here and within[i, admitted_here].max() > tau):
                rejected.append(int(row))
                continue
            kept_rows[len(admitted)] = vectors[i]
            admitted.append(int(row))
            admitted_here.append(i)
        position += examined
    filled = rejected[: target - len(admitted)] if fill else []
    info = {"admitted": len(admitted), "filled": len(filled), "examined": position}
    return np.array(admitted + filled, dtype=np.int64), info


# ---------------------------------------------------------------------------------------------
# Greedy kernels (one partition)


def _graphcut_rows(x, inv_norm, rows, k, lam, partition_size, rng) -> np.ndarray:
    """GraphCut greedy over the given rows of x (original indices), partitioned; returns original
    indices in selection order."""
    parts = _partitions(rows, partition_size, rng)
    shares = allocate([len(part) for part in parts], k)
    return _concat([part[_graphcut_greedy(_unit_rows(x, inv_norm, part, np.float64), share, lam)]
                    for part, share in zip(parts, shares) if share > 0])


def _graphcut_greedy(unit: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Exact greedy for GraphCut with the cosine kernel on unit rows (zero rows allowed): gains are
    kept as a vector and lowered by 2 lam s_ij for every pick j. O(m d k) time, O(m d) memory."""
    columns = np.ascontiguousarray(unit.T)  # (d, m): e @ columns is twice as fast as unit @ e
    self_sim = np.einsum("ij,ij->j", columns, columns)  # 1, or 0 for an all-zero row
    gains = unit.sum(axis=0) @ columns - lam * self_sim
    similarity_to_pick = np.empty_like(gains)
    chosen = np.empty(k, np.int64)
    for t in range(k):
        j = int(gains.argmax())
        chosen[t] = j
        np.matmul(unit[j], columns, out=similarity_to_pick)
        similarity_to_pick *= 2.0 * lam
        gains -= similarity_to_pick
        gains[j] = -np.inf
    return chosen


def _facility_location_greedy(unit: np.ndarray, k: int, scratch: np.ndarray) -> np.ndarray:
    """Exact greedy for facility location on unit rows, with the gain of every candidate kept up to
    date: when pick j raises the coverage of rows R (those closer to j than to their current
    representative) from old_i to new_i = s_ij, candidate c loses sum_{i in R} clip(s_ic, old_i,
    new_i) - old_i. Only improved rows are touched, so steps get cheaper as the selection grows,
    and there is no Python loop over candidates. Ties go to the lower index.

    `scratch` (at least m^2 + 4M float32 entries, reused across partitions to spare page faults)
    holds the m x m kernel and one chunk of rows. O(m^2 d) for the kernel, then O(|R| m) per step,
    at most O(k m^2)."""
    m = unit.shape[0]
    sim = scratch[: m * m].reshape(m, m)
    np.matmul(unit, np.ascontiguousarray(unit.T), out=sim)
    rows_per_chunk = max(1, _CHUNK_ENTRIES // m)
    chunk_buffer = scratch[m * m: m * m + rows_per_chunk * m].reshape(rows_per_chunk, m)
    coverage = np.full(m, -1.0, np.float32)  # max_{j in S} s_ij, -1 (the least cosine) for the empty S
    gains = sim.sum(axis=0, dtype=np.float64) + m  # sum_i (s_ij - (-1)) against the empty S
    chosen = np.empty(k, np.int64)
    for step in range(k):
        j = int(np.argmax(gains))
        chosen[step] = j
        column = sim[:, j]
        improved = np.flatnonzero(column > coverage)
        for start in range(0, len(improved), rows_per_chunk):
            rows = improved[start: start + rows_per_chunk]
            block = chunk_buffer[: len(rows)]
            np.take(sim, rows, axis=0, out=block)
            old = coverage[rows, None]
            np.clip(block, old, column[rows, None], out=block)
            gains -= block.sum(axis=0, dtype=np.float64) - old.sum(dtype=np.float64)
        coverage[improved] = column[improved]
        gains[j] = -np.inf
    return chosen


# ---------------------------------------------------------------------------------------------
# Helpers


def _partitions(rows: np.ndarray, partition_size: int, rng) -> list[np.ndarray]:
    """Seeded random split of `rows` into ceil(len / partition_size) parts of near-equal size, each
    sorted (so ties inside a part go to the lower original index). One part, unshuffled, when all
    rows fit."""
    if len(rows) <= partition_size:
        return [rows]
    count = -(-len(rows) // partition_size)
    shuffled = rows[rng.permutation(len(rows))]
    return [np.sort(part) for part in np.array_split(shuffled, count)]


def _unit_rows(x, inv_norm, rows, dtype) -> np.ndarray:
    """A normalised copy of x[rows] in the given dtype."""
    picked = x[rows].astype(dtype)
    picked *= inv_norm[rows, None].astype(dtype)
    return picked


def _inverse_norms(x: np.ndarray) -> np.ndarray:
    """1 / ||x_i|| per row (float32), 0 for an all-zero row so it stays a zero vector."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    inv = np.zeros(len(norms), np.float64)
    np.divide(1.0, norms, out=inv, where=norms > 0)
    return inv.astype(np.float32)


def _lower_distances(x, inv_norm, row, min_dist) -> None:
    """min_dist = min(min_dist, 1 - cos(x_i, x_row)) in place; O(n d) time, O(n) memory."""
    centre = x[row] * inv_norm[row]
    dist = x @ centre
    dist *= inv_norm
    np.subtract(np.float32(1.0), dist, out=dist)
    np.minimum(min_dist, dist, out=min_dist)


def _min_distance_to_set(x, inv_norm, centres, min_dist) -> None:
    """min_dist = min over centres of 1 - cos, computed in row x centre chunks of <= 4M entries."""
    centre_step = min(len(centres), _CHUNK_ENTRIES)
    row_step = max(1, _CHUNK_ENTRIES // centre_step)
    for c0 in range(0, len(centres), centre_step):
        block = centres[c0: c0 + centre_step]
        unit_centres = (x[block] * inv_norm[block, None]).T
        for r0 in range(0, x.shape[0], row_step):
            sims = x[r0: r0 + row_step] @ unit_centres
            closest = sims.max(axis=1) * inv_norm[r0: r0 + row_step]
            np.minimum(min_dist[r0: r0 + row_step], 1.0 - closest, out=min_dist[r0: r0 + row_step])


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64, copy=False) if parts else np.empty(0, np.int64)


def _check_k(k, fn: str) -> int:
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"{fn}: k must be an integer, got {k!r}") from None
    if k < 0:
        raise ValueError(f"{fn}: k must be >= 0, got {k}")
    return k


def _check_lam(lam, fn: str) -> float:
    lam = float(lam)
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"{fn}: lam must be a finite number >= 0, got {lam}")
    return lam


def _check_partition_size(size, fn: str) -> int:
    size = operator.index(size)
    if size < 1:
        raise ValueError(f"{fn}: partition_size must be >= 1, got {size}")
    return size


def _check_scores(scores, fn: str, eligible=None) -> np.ndarray:
    """Scores as a 1-D numeric array without NaN (in the `eligible` rows, when a mask is given)."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"{fn}: scores must be one-dimensional, got shape {scores.shape}")
    if not (np.issubdtype(scores.dtype, np.number) or scores.dtype == np.bool_):
        raise ValueError(f"{fn}: scores must be numeric, got dtype {scores.dtype}")
    if np.issubdtype(scores.dtype, np.inexact):
        nan = np.isnan(scores)
        bad = np.flatnonzero(nan if eligible is None else nan & eligible)
        if len(bad):
            raise ValueError(f"{fn}: scores row {bad[0]} is NaN")
    return scores


def _check_embeddings(embeddings, fn: str) -> np.ndarray:
    """A 2-D float32 view of the embeddings (a copy only if the input is not float32), every row
    finite; the finiteness check runs in chunks so it needs no n x d temporary."""
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"{fn}: embeddings must be a 2-D (rows, dims) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"{fn}: embeddings must be real numbers, got dtype {x.dtype}")
    x = np.asarray(x, dtype=np.float32)
    step = max(1, _CHUNK_ENTRIES // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):
        finite = np.isfinite(x[start: start + step]).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise ValueError(f"{fn}: embeddings row {row} contains NaN or inf")
    return x


def _check_indices(indices, n: int, fn: str, name: str) -> np.ndarray:
    """Row indices as int64: one-dimensional, integer, within [0, n), no repeats."""
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"{fn}: {name} must be one-dimensional, got shape {idx.shape}")
    if idx.size == 0:
        return np.empty(0, np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{fn}: {name} must hold integer row indices, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    outside = np.flatnonzero((idx < 0) | (idx >= n))
    if len(outside):
        raise ValueError(f"{fn}: {name}[{outside[0]}] = {idx[outside[0]]} is not a row index (n = {n})")
    if len(np.unique(idx)) != len(idx):
        raise ValueError(f"{fn}: {name} repeats a row index")
    return idx
