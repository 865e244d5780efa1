"""Rates with 95% intervals, paired differences and false-discovery control, resampling what was really sampled.

Shared by evaluation (scores, comparisons), the report (q-values over its family) and judge-check (agreement).

An evaluation cell is seed -> unit -> item values in [0, 1] (0/1 judge verdicts, forced-choice probabilities,
1-10 judge scores rescaled). The *unit* is what was drawn once and then repeated: an open prompt and its
samples, a probe, a multi-turn scenario and its repeats. Answers to one prompt are correlated and every model
sees the same prompts, so:

- An interval resamples units as clusters, never single answers, and training seeds too once there are
  MIN_RESAMPLED_SEEDS of them. Prompts and seeds are crossed (every seed answers every prompt), so each factor
  is resampled on its own, the pigeonhole bootstrap.
- A difference between two models resamples the same units on both sides (paired by unit id), and each
  side's seeds independently.
- Few clusters: a bootstrap over n clusters underestimates their variance by (n-1)/n, and normal quantiles
  are too narrow. So each factor's bootstrap variance is scaled by n/(n-1), and the quantile is Student's t
  with Satterthwaite's degrees of freedom. A rate's interval is symmetric on the logit scale (delta method),
  which follows the skew of rates near 0 or 1; a difference gets the symmetric t interval and its p-value.
- Many comparisons: Benjamini-Hochberg q-values over a family; a shift is significant when q < 1 - level.

The pooled rate weighs each item equally (all seeds together), as the paper pools its answers.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from scipy.stats import norm
from scipy.stats import t as student_t

# Fewer seeds than this and their variance cannot be estimated: resampling them would only add noise, so the
# interval is conditional on the seeds trained (units are still resampled).
MIN_RESAMPLED_SEEDS = 3

Cells = Mapping[Hashable, Mapping[Hashable, Sequence[float]]]  # seed -> unit -> item values


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    n: int  # items, all seeds together


@dataclass(frozen=True)
class Difference:
    value: float  # rate(a) - rate(b)
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, not adjusted for the family (see benjamini_hochberg)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _check_boot(n_boot: int) -> None:
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")


def _z(level: float) -> float:
    return float(norm.ppf(0.5 + level / 2.0))


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) for a binomial proportion: inside [0, 1] and not
    degenerate at 0/n and n/n."""
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
    low = 0.0 if successes == 0 else float(center - half)  # exact bounds; rounding would leave them a hair off
    high = 1.0 if successes == n else float(center + half)
    return low, high


@dataclass(frozen=True)
class _Side:
    """One model's cell as (seed x unit) sums and counts over a shared list of unit ids."""

    sums: np.ndarray
    counts: np.ndarray
    binary: bool

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def value(self) -> float:
        return float(self.sums.sum() / self.counts.sum())

    @property
    def seeds(self) -> int:
        return self.sums.shape[0]


def _validated(cells: Cells, name: str) -> dict[Hashable, dict[Hashable, np.ndarray]]:
    if not cells:
        raise ValueError(f"{name}: no seeds given (empty mapping); need at least one seed with items")
    kept = {}
    for seed, units in cells.items():
        arrays = {unit: np.asarray(values, dtype=float).reshape(-1) for unit, values in units.items()}
        arrays = {unit: array for unit, array in arrays.items() if array.size}
        for unit, array in arrays.items():
            if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
                raise ValueError(f"{name}: seed {seed}, unit {unit} has item values outside [0, 1] or NaN")
        if arrays:
            kept[seed] = arrays
    if not kept:
        raise ValueError(f"{name}: all {len(cells)} seed(s) have zero items; nothing to estimate")
    return kept


def _units(*sides: dict) -> list[Hashable]:
    return sorted({unit for side in sides for units in side.values() for unit in units}, key=str)


def _side(cells: dict[Hashable, dict[Hashable, np.ndarray]], units: list[Hashable]) -> _Side:
    index = {unit: column for column, unit in enumerate(units)}
    sums = np.zeros((len(cells), len(units)))
    counts = np.zeros((len(cells), len(units)))
    binary = True
    for row, by_unit in enumerate(cells.values()):
        for unit, array in by_unit.items():
            sums[row, index[unit]] = array.sum()
            counts[row, index[unit]] = array.size
            binary = binary and bool(np.all((array == 0.0) | (array == 1.0)))
    return _Side(sums, counts, binary)


def _weights(size: int, resample: bool, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, size) bootstrap multiplicities: a draw of `size` with replacement, or all ones (held fixed)."""
    if not resample:
        return np.ones((n_boot, size))
    return rng.multinomial(size, np.full(size, 1.0 / size), size=n_boot).astype(float)


def _means(side: _Side, seed_weights: np.ndarray, unit_weights: np.ndarray) -> np.ndarray:
    """The pooled rate under each replicate's multiplicities; NaN where a replicate drew no items of this side."""
    total = ((seed_weights @ side.sums) * unit_weights).sum(axis=1)
    count = ((seed_weights @ side.counts) * unit_weights).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


@dataclass(frozen=True)
class _Spread:
    variance: float  # corrected: each factor's bootstrap variance x n/(n-1), summed
    df: float  # Satterthwaite degrees of freedom


def _spread(sides: list[_Side], sign: list[float], n_units: int, n_boot: int, rng) -> _Spread | None:
    """Variance of sum(sign_i * rate_i) from resampling the shared units and each side's seeds; None when nothing
    can be resampled (one unit and too few seeds: no interval)."""
    factors = [("units", n_units)] if n_units >= 2 else []
    factors += [(f"seeds{i}", side.seeds) for i, side in enumerate(sides) if side.seeds >= MIN_RESAMPLED_SEEDS]
    if not factors:
        return None

    def statistic(resampled: set[str]) -> np.ndarray:
        unit_weights = _weights(n_units, "units" in resampled, n_boot, rng)
        parts = [
            s * _means(side, _weights(side.seeds, f"seeds{i}" in resampled, n_boot, rng), unit_weights)
            for i, (side, s) in enumerate(zip(sides, sign, strict=True))
        ]
        return np.sum(parts, axis=0)

    parts = []
    for name, size in factors:
        replicates = statistic({name})
        parts.append((float(np.nanvar(replicates, ddof=1)) * size / (size - 1), size))
    variance = sum(v for v, _ in parts)
    denominator = sum(v * v / (size - 1) for v, size in parts)
    # no variation at all: the fewest units of any factor are all the degrees of freedom there are
    df = variance * variance / denominator if denominator > 0 else min(size - 1 for _, size in factors)
    return _Spread(variance, df)


def _quantile(df: float, level: float) -> float:
    return float(student_t.ppf(0.5 + level / 2.0, df)) if np.isfinite(df) else _z(level)


def pooled_estimate(cells: Cells, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """The pooled rate of a cell and its `level` interval (see the module's docstring for the method).

    0/1 items: the interval is widened, where needed, to cover the Wilson interval of the pooled counts, which
    it can never be narrower than in truth (and which stays open at 0/n). One unit and fewer than
    MIN_RESAMPLED_SEEDS seeds: no interval (NaN): one prompt says nothing about the population of prompts.
    Raises ValueError when there are no items, values fall outside [0, 1], or arguments are invalid."""
    _check_level(level)
    _check_boot(n_boot)
    cells = _validated(cells, "pooled_estimate")
    units = _units(cells)
    side = _side(cells, units)
    value = side.value
    spread = _spread([side], [1.0], len(units), n_boot, np.random.default_rng(seed))
    if spread is None:
        return Estimate(value, float("nan"), float("nan"), side.n)
    # the delta method on the logit scale; a rate of 0 or 1 is moved half an item inwards to have a logit
    centre = min(max(value, 0.5 / side.n), 1.0 - 0.5 / side.n)
    half = _quantile(spread.df, level) * np.sqrt(spread.variance) / (centre * (1.0 - centre))
    low = min(value, float(expit(logit(centre) - half)))
    high = max(value, float(expit(logit(centre) + half)))
    low, high = max(low, 0.0), min(high, 1.0)
    if side.binary:
        wilson = wilson_interval(int(round(side.sums.sum())), side.n, level)
        low, high = min(low, wilson[0]), max(high, wilson[1])
    return Estimate(value, float(low), float(high), side.n)


def difference(a: Cells, b: Cells, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Difference:
    """rate(a) - rate(b), paired by unit id (the same prompt or probe resampled on both sides), with a symmetric
    Student-t interval and its two-sided p-value (see the module's docstring).

    Nothing to resample (one unit on both sides, too few seeds): NaN interval and p-value. No variation at all:
    for 0/1 items the spread of two independent binomial samples (Agresti-Caffo) stands in; otherwise p is 1
    for equal rates and 0 for different ones."""
    _check_level(level)
    _check_boot(n_boot)
    cells_a, cells_b = _validated(a, "difference (a)"), _validated(b, "difference (b)")
    units = _units(cells_a, cells_b)
    side_a, side_b = _side(cells_a, units), _side(cells_b, units)
    value = side_a.value - side_b.value
    spread = _spread([side_a, side_b], [1.0, -1.0], len(units), n_boot, np.random.default_rng(seed))
    nan = float("nan")
    if spread is None:
        return Difference(value, nan, nan, nan)
    variance, df = spread.variance, spread.df
    if variance <= 0 and side_a.binary and side_b.binary:
        variance = sum(_agresti_caffo_variance(side) for side in (side_a, side_b))
    if variance <= 0:
        return Difference(value, value, value, 1.0 if value == 0 else 0.0)
    half = _quantile(df, level) * np.sqrt(variance)
    statistic = abs(value) / np.sqrt(variance)
    p_value = 2.0 * (student_t.sf(statistic, df) if np.isfinite(df) else norm.sf(statistic))
    return Difference(value, value - half, value + half, float(min(1.0, p_value)))


def _agresti_caffo_variance(side: _Side) -> float:
    adjusted = (side.sums.sum() + 1.0) / (side.n + 2.0)
    return float(adjusted * (1.0 - adjusted) / (side.n + 2.0))


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg q-values (adjusted p-values) of one family; NaN p-values are not tests and stay NaN.
    Calling the shifts with q < alpha significant keeps the expected share of false discoveries at most alpha
    (independent or positively dependent tests)."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    if tested.size == 0:
        return q
    order = tested[np.argsort(p[tested], kind="stable")]
    ranked = p[order] * tested.size / np.arange(1, tested.size + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q


def comparison_families(frame: pd.DataFrame) -> pd.Series:
    """Which family each comparison's q-value is controlled in: every preference shift tested together (all
    metrics, conditions, baselines), the manipulation checks apart (they are expected to move)."""
    return frame["group"].map(lambda group: "manipulation_checks" if group == "manipulation_check" else "preferences")


def with_q_values(frame: pd.DataFrame, fdr: float) -> pd.DataFrame:
    """Benjamini-Hochberg q-values within each family; a shift is significant when its q-value is below `fdr`."""
    frame = frame.copy()
    frame["family"] = comparison_families(frame) if len(frame) else []
    frame["q_value"] = float("nan")
    for _, rows in frame.groupby("family"):
        frame.loc[rows.index, "q_value"] = benjamini_hochberg(rows["p_value"].astype(float).to_numpy())
    frame["significant"] = frame["q_value"].astype(float) < fdr
    return frame


@dataclass(frozen=True)
class Agreement:
    """How often a rater (the judge) agrees with reference labels on 0/1 decisions."""

    n: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    kappa: float  # Cohen's kappa: agreement beyond what the two raters' base rates give by chance; NaN if undefined
    kappa_low: float
    kappa_high: float


def cohens_kappa(labels: np.ndarray, ratings: np.ndarray) -> float:
    """Cohen's kappa of two 0/1 raters; NaN when chance agreement is 1 (both always say the same one thing)."""
    observed = float(np.mean(labels == ratings))
    p_label, p_rating = float(np.mean(labels)), float(np.mean(ratings))
    chance = p_label * p_rating + (1.0 - p_label) * (1.0 - p_rating)
    if chance >= 1.0:
        return float("nan")
    kappa = (observed - chance) / (1.0 - chance)
    return 0.0 if abs(kappa) < 1e-12 else kappa  # rounding noise of a constant rater, not a sign


def agreement(
    labels: Sequence[bool], ratings: Sequence[bool], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Agreement:
    """Accuracy (Wilson interval) and Cohen's kappa (percentile bootstrap over the labelled items, each one drawn
    once: items are the unit) of `ratings` against `labels`."""
    _check_level(level)
    _check_boot(n_boot)
    labels_array, ratings_array = np.asarray(labels, dtype=bool), np.asarray(ratings, dtype=bool)
    n = labels_array.size
    if n == 0 or ratings_array.size != n:
        raise ValueError(f"agreement needs equally many labels and ratings (> 0), got {n} and {ratings_array.size}")
    agreed = int(np.sum(labels_array == ratings_array))
    accuracy_low, accuracy_high = wilson_interval(agreed, n, level)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    replicates = np.array([cohens_kappa(labels_array[d], ratings_array[d]) for d in draws])
    replicates = replicates[~np.isnan(replicates)]
    kappa_low, kappa_high = (
        np.quantile(replicates, [(1.0 - level) / 2.0, (1.0 + level) / 2.0]) if replicates.size else (np.nan, np.nan)
    )
    return Agreement(
        n,
        agreed / n,
        accuracy_low,
        accuracy_high,
        cohens_kappa(labels_array, ratings_array),
        float(kappa_low),
        float(kappa_high),
    )
