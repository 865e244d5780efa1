"""Rates with 95% intervals pooled over training seeds, and bootstrap differences between conditions.

Item values are in [0, 1]: 0/1 judge verdicts or forced-choice probe probabilities.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

# Fewer seeds than this and the between-seed variance cannot be estimated, so resampling seeds
# would only add noise; items are resampled within their (fixed) seeds instead.
MIN_CLUSTER_SEEDS = 3

# Upper bound on the elements of one (replicates x items) index array, to keep memory flat when
# seeds have thousands of items.
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    n: int  # number of items (all seeds together)


@dataclass(frozen=True)
class Difference:
    value: float  # estimate(a) - estimate(b)
    ci_low: float
    ci_high: float
    p_value: float  # two-sided
    significant: bool  # CI excludes 0 (equivalently p < alpha)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _z(level: float) -> float:
    return float(norm.ppf(0.5 + level / 2.0))


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) for a binomial proportion.

    Unlike the Wald interval it stays inside [0, 1] and is non-degenerate at 0/n and n/n.
    """
    _check_level(level)
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0 items, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    z = _z(level)
    p = successes / n
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * np.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    # The bounds at 0/n and n/n are exactly 0 and 1; rounding would leave them a hair off.
    low = 0.0 if successes == 0 else float(center - half)
    high = 1.0 if successes == n else float(center + half)
    return low, high


def _groups(per_seed: dict[int, Sequence[float]], name: str) -> list[np.ndarray]:
    """Validated per-seed arrays; seeds without items are dropped (they carry no weight anyway)."""
    if not per_seed:
        raise ValueError(f"{name}: no seeds given (empty dict); need at least one seed with items")
    groups = []
    for seed, values in per_seed.items():
        array = np.asarray(values, dtype=float).reshape(-1)
        if array.size == 0:
            continue
        if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(f"{name}: seed {seed} has item values outside [0, 1] or NaN")
        groups.append(array)
    if not groups:
        raise ValueError(f"{name}: all {len(per_seed)} seed(s) have zero items; nothing to estimate")
    return groups


def _is_binary(groups: list[np.ndarray]) -> bool:
    return all(np.all((g == 0.0) | (g == 1.0)) for g in groups)


def _pooled_mean(groups: list[np.ndarray]) -> float:
    return float(sum(g.sum() for g in groups) / sum(g.size for g in groups))


def _bootstrap_means(groups: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the pooled (item-weighted) mean.

    >= MIN_CLUSTER_SEEDS seeds: two-level cluster bootstrap (seeds with replacement, then items
    within each drawn seed). Fewer: items are resampled within each seed, seeds held fixed.
    """
    n_seeds = len(groups)
    counts = np.array([g.size for g in groups])
    if n_seeds >= MIN_CLUSTER_SEEDS:
        chosen = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    else:
        chosen = np.broadcast_to(np.arange(n_seeds), (n_boot, n_seeds))
    sums = np.zeros(n_boot)
    totals = counts[chosen].sum(axis=1)

    if _is_binary(groups):
        # Resampling n 0/1 items with replacement from a seed with k ones sums to Binomial(n, k/n)
        # exactly, so draw the sums directly instead of n indices per replicate.
        means = np.array([g.mean() for g in groups])
        for slot in range(n_seeds):
            seed = chosen[:, slot]
            sums += rng.binomial(counts[seed], means[seed])
        return sums / totals

    flat = np.concatenate(groups)
    # int32 indices: numpy gathers with them several times faster than with int64.
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    chunk = max(1, _CHUNK_ELEMENTS // int(counts.max()))
    for slot in range(n_seeds):
        for start in range(0, n_boot, chunk):
            seed = chosen[start : start + chunk, slot]
            size = counts[seed]
            low, high = int(size.min()), int(size.max())
            if low == high:
                # The common case (equal item counts, or seeds held fixed): a scalar bound is the
                # fast path of Generator.integers and needs no mask.
                positions = rng.integers(0, high, size=(seed.size, high), dtype=np.int32)
                sums[start : start + chunk] += flat[offsets[seed][:, None] + positions].sum(axis=1)
                continue
            # Draw `high` positions for every replicate and mask the tail, so seeds with fewer
            # items than the largest share one rectangular draw.
            positions = rng.integers(0, size[:, None], size=(seed.size, high), dtype=np.int32)
            values = flat[offsets[seed][:, None] + positions]
            sums[start : start + chunk] += np.where(np.arange(high) < size[:, None], values, 0.0).sum(axis=1)
    return sums / totals


def _percentile(replicates: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.quantile(replicates, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)


def _check_boot(n_boot: int) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def pooled_estimate(
    per_seed: dict[int, Sequence[float]], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """Rate pooled over seeds (each seed weighted by its item count) with a `level` interval.

    Interval:
    - >= 3 seeds: two-level cluster bootstrap percentile interval (seeds with replacement, then
      items within each drawn seed), so between-seed variation counts. For 0/1 data the interval
      is widened, if needed, to cover the Wilson interval of the pooled counts: the bootstrap
      collapses to a point when every item agrees (e.g. 0/400) and cannot be narrower than
      item-level binomial noise in truth. With only 4 seeds the percentile cluster bootstrap is
      anti-conservative against the population-of-seeds rate: simulated coverage about 0.88 for a
      nominal 0.95 when seeds really differ (logit-scale seed SD 0.5, 100 items per seed), about
      0.91-0.92 with 8 seeds (tests/test_stats.py).
    - 1-2 seeds: between-seed variance cannot be estimated, so the interval is conditional on
      the seeds trained: Wilson on the pooled counts when all values are 0/1, otherwise a
      percentile bootstrap over items (resampled within each seed). All-equal probabilities then
      give a zero-width interval.
    - A single item that is not 0/1 has no interval (NaN): resampling one value only returns it.

    Raises ValueError when there are no items, values fall outside [0, 1], or arguments are invalid.
    """
    _check_level(level)
    _check_boot(n_boot)
    groups = _groups(per_seed, "pooled_estimate")
    n = int(sum(g.size for g in groups))
    value = _pooled_mean(groups)
    wilson = wilson_interval(int(round(value * n)), n, level) if _is_binary(groups) else None
    if wilson is not None and len(groups) < MIN_CLUSTER_SEEDS:
        low, high = wilson
    elif n < 2:
        low = high = float("nan")
    else:
        replicates = _bootstrap_means(groups, n_boot, np.random.default_rng(seed))
        low, high = _percentile(replicates, level)
        if wilson is not None:
            low, high = min(low, wilson[0]), max(high, wilson[1])
    return Estimate(value=value, ci_low=low, ci_high=high, n=n)


def difference(
    a: dict[int, Sequence[float]],
    b: dict[int, Sequence[float]],
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Difference:
    """Pooled rate of `a` minus that of `b`, with a percentile bootstrap interval and p-value.

    Each side is resampled independently with the scheme of `pooled_estimate` (cluster bootstrap
    with >= 3 seeds, items within seeds otherwise). The two-sided p-value is
    min(1, 2 * min((k_le + 1) / (B + 1), (k_ge + 1) / (B + 1))), k_le / k_ge counting replicate
    differences <= 0 / >= 0, so it is never exactly 0 (smallest possible: 2 / (B + 1)).
    `significant` means the interval excludes 0. When both sides have 4 seeds that really differ
    from each other, the false-positive rate is about 0.09 rather than 0.05 (see `pooled_estimate`).
    A side with a single item gives no interval and no p-value (NaN, not significant): its bootstrap
    is that one value, and any difference from it would look certain.
    """
    _check_level(level)
    _check_boot(n_boot)
    groups_a = _groups(a, "difference (a)")
    groups_b = _groups(b, "difference (b)")
    if min(sum(g.size for g in groups_a), sum(g.size for g in groups_b)) < 2:
        nan = float("nan")
        return Difference(_pooled_mean(groups_a) - _pooled_mean(groups_b), nan, nan, nan, False)
    rng = np.random.default_rng(seed)
    replicates = _bootstrap_means(groups_a, n_boot, rng) - _bootstrap_means(groups_b, n_boot, rng)
    low, high = _percentile(replicates, level)
    at_or_below = (np.count_nonzero(replicates <= 0.0) + 1) / (n_boot + 1)
    at_or_above = (np.count_nonzero(replicates >= 0.0) + 1) / (n_boot + 1)
    return Difference(
        value=_pooled_mean(groups_a) - _pooled_mean(groups_b),
        ci_low=low,
        ci_high=high,
        p_value=float(min(1.0, 2.0 * min(at_or_below, at_or_above))),
        significant=bool(low > 0.0 or high < 0.0),
    )


def count_significant(differences: Iterable[Difference], positive_only: bool = True) -> int:
    """How many differences are significant; with `positive_only`, only increases (interval above 0) count."""
    # The interval, not the point estimate, decides the direction, so a skewed bootstrap cannot
    # count a shift as an increase while its interval lies below 0.
    return sum(1 for d in differences if d.significant and (not positive_only or d.ci_low > 0.0))
