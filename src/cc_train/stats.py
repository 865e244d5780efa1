"""Rates with 95% intervals, paired differences and false-discovery control, resampling what was really sampled.

Shared by evaluation (scores, comparisons), the report (q-values over its family) and judge-check (agreement).

An evaluation cell is seed -> unit -> item values in [0, 1] (0/1 judge verdicts, forced-choice probabilities,
1-10 judge scores rescaled). The *unit* is what was drawn once and then repeated: an open prompt and its
samples, a probe, a multi-turn scenario and its repeats. Answers to one prompt are correlated and every model
sees the same prompts, so:

- An interval resamples units as clusters, never single answers, and training seeds too once there are
  MIN_RESAMPLED_SEEDS of them. Prompts and seeds are crossed (every seed answers every prompt), so each factor
  is resampled on its own (the pigeonhole bootstrap), and the parts are added up as below.
- A difference between two models is taken over the units both sides have (paired by unit id; units only one
  side has are left out and counted), resampling the same units on both sides, and each side's seeds
  independently.

The variance when seeds and units are both resampled. A (seed, unit) cell's mean is unit effect + seed effect +
residual (the cell's own noise: its answers' sampling noise and the seed x unit interaction), and the variance of
the pooled rate is unit part + seed part + residual part, each counted once. Each factor's bootstrap measures its
own part *and* the residual: the seeds-only bootstrap gives the spread of the seed means (seed part + residual
part), the units-only bootstrap unit part + residual part. Adding the two, as this module once did, counts the
residual twice; in a paired difference the unit effects cancel and the residual is most of what is left, so the
variance came out about twice the true one (4 vs 4 seeds, no true shift: p < 0.05 in about 0.3% of studies
instead of 5%, and four seeds had less power than two). So, in two stages:

1. seeds: for each side whose seeds are resampled, the seeds-only bootstrap (the spread of its seed means, which
   carries that side's residual once);
2. units: the units-only bootstrap, less the residual parts already counted in 1, and never below zero: what
   the prompts add beyond the cells' noise (for a difference, the prompt x condition interaction; for one rate,
   the prompt effects). A side whose seeds are held fixed keeps its residual here.

A residual part is estimated from the two-way residuals of the side's cells, linearised (each cell's items minus
the rate times its count, over all items: the ratio estimator's influence values, so unequal cell sizes weigh as
the pooled rate weighs them): R = S*U / ((S-1)(U-1)) * sum of squared double-centred values, unbiased for the
residual part. bench/stats_power.py measures the result: 4 vs 4 seeds, p < 0.05 in 2.7-3.4% of null studies with
and without seed effects (Welch's degrees of freedom for 4 seeds are a little cautious), power 79% for 0.20 -> 0.31
(66% before); 4 seeds against the base model 5.2-5.4%.

- Few clusters: a bootstrap over n clusters underestimates their variance by (n-1)/n, and normal quantiles
  are too narrow. So each factor's bootstrap variance is scaled by n/(n-1), and the quantile is Student's t
  with Satterthwaite's degrees of freedom over the parts above (each side's seeds: S-1; units: U-1). A rate's
  interval is symmetric on the logit scale (delta method), which follows the skew of rates near 0 or 1; a
  difference gets the symmetric t interval, clipped to [-1, 1], and its p-value.
- Fewer than MIN_RESAMPLED_SEEDS seeds: their variance cannot be estimated, the seeds are held fixed and the
  interval is conditional on the adapters trained (about those adapters, not the condition).
- No variation (every resampled statistic equal, up to floating-point noise relative to the items' [0, 1]
  scale): 0/1 items fall back on binomial spreads (Wilson, Agresti-Caffo); other items get a zero-width
  interval at the value, which the report shows as "no variation".
- Many comparisons: Benjamini-Hochberg q-values within a family; a shift is significant when q < 1 - level.

The pooled rate weighs each item equally (all seeds together), as the paper pools its answers.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, logit, stdtr, stdtrit
from scipy.stats import norm

# Fewer seeds than this and their variance cannot be estimated: resampling them would only add noise, so the
# interval is conditional on the seeds trained (units are still resampled).
MIN_RESAMPLED_SEEDS = 3

# A spread below this is floating-point noise, not variation: item values lie in [0, 1], so sums of a few thousand
# of them carry rounding errors near 1e-13, far below any real standard error of a rate.
NO_VARIATION_SD = 1e-9

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
    units: int  # units both sides have: the pairs compared
    units_left_out: int  # units only one side has, left out of the comparison


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


def _in_range(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values))) and values.min() >= 0.0 and values.max() <= 1.0


def _validated(cells: Cells, name: str) -> dict[Hashable, dict[Hashable, np.ndarray]]:
    if not cells:
        raise ValueError(f"{name}: no seeds given (empty mapping); need at least one seed with items")
    kept = {}
    for seed, units in cells.items():
        arrays = {unit: np.asarray(values, dtype=float).reshape(-1) for unit, values in units.items()}
        arrays = {unit: array for unit, array in arrays.items() if array.size}
        if arrays and not _in_range(np.concatenate(list(arrays.values()))):  # one check per seed; then find where
            unit = next(unit for unit, array in arrays.items() if not _in_range(array))
            raise ValueError(f"{name}: seed {seed}, unit {unit} has item values outside [0, 1] or NaN")
        if arrays:
            kept[seed] = arrays
    if not kept:
        raise ValueError(f"{name}: all {len(cells)} seed(s) have zero items; nothing to estimate")
    return kept


def _units(*sides: dict) -> list[Hashable]:
    """The units every given side has (in some seed), sorted."""
    shared = set.intersection(*({unit for units in side.values() for unit in units} for side in sides))
    return sorted(shared, key=str)


def _paired(cells: dict[Hashable, dict[Hashable, np.ndarray]], units: list[Hashable]) -> dict:
    """A side's cells on the shared units only; a seed with none of them is dropped (it pairs with nothing)."""
    wanted = set(units)
    kept = {seed: {u: a for u, a in by_unit.items() if u in wanted} for seed, by_unit in cells.items()}
    return {seed: by_unit for seed, by_unit in kept.items() if by_unit}


def _side(cells: dict[Hashable, dict[Hashable, np.ndarray]], units: list[Hashable]) -> _Side:
    index = {unit: column for column, unit in enumerate(units)}
    sums = np.zeros((len(cells), len(units)))
    counts = np.zeros((len(cells), len(units)))
    binary = True
    for row, by_unit in enumerate(cells.values()):
        arrays = list(by_unit.values())
        columns = [index[unit] for unit in by_unit]
        sizes = np.array([array.size for array in arrays])
        joined = np.concatenate(arrays)
        sums[row, columns] = np.add.reduceat(joined, np.concatenate(([0], np.cumsum(sizes)[:-1])))
        counts[row, columns] = sizes
        binary = binary and bool(np.all((joined == 0.0) | (joined == 1.0)))
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


def _residual_part(side: _Side) -> float:
    """The residual (seed x unit) part of the pooled rate's variance, from the two-way residuals of the linearised
    cells (see the module's docstring): unbiased for it, and what the units-only and the seeds-only bootstrap both
    contain."""
    seeds, units = side.sums.shape
    influence = (side.sums - side.value * side.counts) / side.counts.sum()
    residuals = (
        influence - influence.mean(axis=1, keepdims=True) - influence.mean(axis=0, keepdims=True) + influence.mean()
    )
    return float(seeds * units / ((seeds - 1) * (units - 1)) * np.sum(residuals**2))


@dataclass(frozen=True)
class _Spread:
    variance: float  # each resampled side's seed means + the units beyond those residuals (module docstring)
    df: float  # Satterthwaite degrees of freedom over those parts


def _spread(sides: list[_Side], sign: list[float], n_units: int, n_boot: int, rng) -> _Spread | None:
    """Variance of sum(sign_i * rate_i) from resampling the shared units and each side's seeds; None when nothing
    can be resampled (one unit and too few seeds: no interval)."""
    resample_units = n_units >= 2
    resampled_seeds = [i for i, side in enumerate(sides) if side.seeds >= MIN_RESAMPLED_SEEDS]
    if not resample_units and not resampled_seeds:
        return None

    def bootstrap_variance(factor: str, size: int) -> float:
        """One factor resampled, every other held fixed; scaled by n/(n-1) (few clusters)."""
        unit_weights = _weights(n_units, factor == "units", n_boot, rng)
        parts = [
            s * _means(side, _weights(side.seeds, factor == f"seeds{i}", n_boot, rng), unit_weights)
            for i, (side, s) in enumerate(zip(sides, sign, strict=True))
        ]
        return float(np.nanvar(np.sum(parts, axis=0), ddof=1)) * size / (size - 1)

    parts: list[tuple[float, int]] = []  # (variance part, its degrees of freedom)
    for i in resampled_seeds:  # the spread of this side's seed means: its seeds and its residual
        parts.append((bootstrap_variance(f"seeds{i}", sides[i].seeds), sides[i].seeds - 1))
    if resample_units:  # units and every residual, less the residuals counted with the seeds (never below zero)
        residuals = sum(_residual_part(sides[i]) for i in resampled_seeds)
        parts.append((max(bootstrap_variance("units", n_units) - residuals, 0.0), n_units - 1))
    variance = sum(v for v, _ in parts)
    denominator = sum(v * v / df for v, df in parts)
    # no variation at all: the fewest clusters of any factor are all the degrees of freedom there are
    df = variance * variance / denominator if denominator > 0 else min(df for _, df in parts)
    return _Spread(variance, df)


def _no_variation(variance: float) -> bool:
    return float(np.sqrt(variance)) <= NO_VARIATION_SD


def _quantile(df: float, level: float) -> float:
    return float(stdtrit(df, 0.5 + level / 2.0)) if np.isfinite(df) else _z(level)


def pooled_estimate(cells: Cells, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Estimate:
    """The pooled rate of a cell and its `level` interval (see the module's docstring for the method).

    0/1 items: the interval is widened, where needed, to cover the Wilson interval of the pooled counts, which
    it can never be narrower than in truth (and which stays open at 0/n). Other items without variation: the
    value itself (a zero-width interval). One unit and fewer than MIN_RESAMPLED_SEEDS seeds: no interval (NaN):
    one prompt says nothing about the population of prompts.
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
    if side.binary:
        wilson = wilson_interval(int(round(side.sums.sum())), side.n, level)
        if _no_variation(spread.variance):
            return Estimate(value, *wilson, side.n)
        # a rate of exactly 0 or 1 is moved half an item inwards to have a logit (0/1 items only: other items
        # have no such step, and moving them would drag the interval's lower side onto the estimate)
        centre = min(max(value, 0.5 / side.n), 1.0 - 0.5 / side.n)
    elif _no_variation(spread.variance):
        return Estimate(value, value, value, side.n)
    else:
        centre = value  # strictly inside (0, 1): items in [0, 1] that vary
    # the delta method on the logit scale
    half = _quantile(spread.df, level) * np.sqrt(spread.variance) / (centre * (1.0 - centre))
    low = min(value, float(expit(logit(centre) - half)))
    high = max(value, float(expit(logit(centre) + half)))
    low, high = max(low, 0.0), min(high, 1.0)
    if side.binary:
        low, high = min(low, wilson[0]), max(high, wilson[1])
    return Estimate(value, float(low), float(high), side.n)


def difference(a: Cells, b: Cells, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Difference:
    """rate(a) - rate(b) over the units both sides have, paired by unit id (the same prompt or probe resampled on
    both sides), with a symmetric Student-t interval (clipped to [-1, 1]) and its two-sided p-value (see the
    module's docstring); units only one side has are left out and counted.

    No shared unit: NaN throughout. Nothing to resample (one unit on both sides, too few seeds): NaN interval and
    p-value. No variation at all: for 0/1 items the spread of two independent binomial samples (Agresti-Caffo)
    stands in; otherwise p is 1 for equal rates and 0 for different ones, and the interval is the value."""
    _check_level(level)
    _check_boot(n_boot)
    cells_a, cells_b = _validated(a, "difference (a)"), _validated(b, "difference (b)")
    units = _units(cells_a, cells_b)
    left_out = len(_units(cells_a) + _units(cells_b)) - 2 * len(units)
    nan = float("nan")
    if not units:
        return Difference(nan, nan, nan, nan, 0, left_out)
    side_a, side_b = _side(_paired(cells_a, units), units), _side(_paired(cells_b, units), units)
    value = side_a.value - side_b.value
    spread = _spread([side_a, side_b], [1.0, -1.0], len(units), n_boot, np.random.default_rng(seed))
    if spread is None:
        return Difference(value, nan, nan, nan, len(units), left_out)
    variance, df = spread.variance, spread.df
    if _no_variation(variance) and side_a.binary and side_b.binary:
        variance = sum(_agresti_caffo_variance(side) for side in (side_a, side_b))
    if _no_variation(variance):
        if abs(value) <= NO_VARIATION_SD:
            return Difference(0.0, 0.0, 0.0, 1.0, len(units), left_out)
        return Difference(value, value, value, 0.0, len(units), left_out)
    half = _quantile(df, level) * np.sqrt(variance)
    statistic = abs(value) / np.sqrt(variance)
    p_value = 2.0 * (stdtr(df, -statistic) if np.isfinite(df) else norm.sf(statistic))
    low, high = max(value - half, -1.0), min(value + half, 1.0)
    return Difference(value, low, high, float(min(1.0, p_value)), len(units), left_out)


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


DIAGNOSTIC_METRICS = ("coherent_share",)
DIAGNOSTIC_PREFIXES = ("mt_refusal_", "petri_refusal_")  # task refusal in multi-turn conversations and Petri audits


def is_diagnostic(metric: str) -> bool:
    """A metric that says how the model answers (coherence, task refusal), not what it prefers."""
    return metric in DIAGNOSTIC_METRICS or metric.startswith(DIAGNOSTIC_PREFIXES)


def comparison_families(frame: pd.DataFrame) -> pd.Series:
    """Which family each comparison's q-value is controlled in: every preference shift tested together (all
    metrics, conditions, baselines); the manipulation checks apart, and the diagnostics (coherence, task refusal)
    apart: fine-tuning is expected to move both, and their shifts must neither use up nor lend power to the
    preferences' false-discovery control."""

    def family(group: str, metric: str) -> str:
        if is_diagnostic(metric):
            return "diagnostics"
        return "manipulation_checks" if group == "manipulation_check" else "preferences"

    return pd.Series(
        [family(group, metric) for group, metric in zip(frame["group"], frame["metric"], strict=True)],
        index=frame.index,
        dtype=object,
    )


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
    # the two kinds of error apart (accuracy on a half-true labelled set hides false positives where real base rates
    # are 0-20%): share of true labels rated true, share of false labels rated false; Wilson intervals; NaN without
    # labels of that kind
    sensitivity: float
    sensitivity_low: float
    sensitivity_high: float
    specificity: float
    specificity_low: float
    specificity_high: float


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
    """Accuracy, sensitivity and specificity (Wilson intervals) and Cohen's kappa (percentile bootstrap over the
    labelled items, each one drawn once: items are the unit) of `ratings` against `labels`."""
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
        *_share_agreeing(ratings_array[labels_array], True, level),
        *_share_agreeing(ratings_array[~labels_array], False, level),
    )


def _share_agreeing(ratings: np.ndarray, label: bool, level: float) -> tuple[float, float, float]:
    """Share of `ratings` equal to `label` with its Wilson interval; NaN when there are none."""
    if ratings.size == 0:
        return float("nan"), float("nan"), float("nan")
    agreed = int(np.sum(ratings == label))
    return (agreed / ratings.size, *wilson_interval(agreed, ratings.size, level))
