"""Statistics for pooled rates and condition differences: known values, simulated coverage, error rates."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import binomtest

from cc_train.evaluate.stats import (
    Difference,
    Estimate,
    count_significant,
    difference,
    pooled_estimate,
    wilson_interval,
)


def binary(successes: int, n: int) -> list[float]:
    return [1.0] * successes + [0.0] * (n - successes)


def population_rate(p: float, sd: float) -> float:
    """E[logistic(logit(p) + N(0, sd))]: the rate of the population of seeds, by Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    return float((expit(logit(p) + sd * nodes) * weights).sum() / weights.sum())


# --- Wilson interval ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [(0, 10, (0.0, 0.2775328)), (5, 10, (0.2365931, 0.7634069)), (10, 10, (0.7224672, 1.0))],
)
def test_wilson_matches_hand_computed_values(successes: int, n: int, expected: tuple[float, float]) -> None:
    # Hand values: (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.959964.
    assert wilson_interval(successes, n) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("successes", "n"), [(0, 10), (5, 10), (10, 10), (3, 100), (97, 100), (1, 1)])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy_without_continuity_correction(successes: int, n: int, level: float) -> None:
    # scipy's method="wilson" is the plain score interval; "wilsoncc" adds the continuity correction.
    scipy_ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    low, high = wilson_interval(successes, n, level)
    assert (low, high) == pytest.approx((scipy_ci.low, scipy_ci.high), abs=1e-12)
    assert low <= successes / n <= high
    assert 0.0 <= low < high <= 1.0  # non-degenerate even at 0/n and n/n


def test_wilson_is_narrower_at_lower_level_and_with_more_items() -> None:
    assert np.diff(wilson_interval(5, 10, 0.9)) < np.diff(wilson_interval(5, 10, 0.95))
    assert np.diff(wilson_interval(50, 100)) < np.diff(wilson_interval(5, 10))


# --- pooled_estimate: point value, interval choice, edge cases -----------------------------------


def test_pooled_value_weights_each_seed_by_its_item_count() -> None:
    estimate = pooled_estimate({0: binary(10, 10), 1: binary(0, 30)})
    assert estimate.value == pytest.approx(10 / 40)  # not the mean of seed means (0.5)
    assert estimate.n == 40


def test_one_or_two_seeds_of_binary_values_give_the_wilson_interval_of_the_pooled_counts() -> None:
    estimate = pooled_estimate({0: binary(7, 50), 1: binary(13, 50)})
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx(wilson_interval(20, 100))


def test_three_or_more_seeds_resample_seeds() -> None:
    # Seeds that disagree completely: item-level resampling alone would give a narrow interval
    # (Wilson 100/200 is about +-0.07); resampling seeds must show the seed-to-seed spread.
    two_seeds = pooled_estimate({0: binary(0, 100), 1: binary(100, 100)})
    four_seeds = pooled_estimate({0: binary(0, 100), 1: binary(0, 100), 2: binary(100, 100), 3: binary(100, 100)})
    assert two_seeds.ci_high - two_seeds.ci_low < 0.15
    assert four_seeds.ci_high - four_seeds.ci_low > 0.5
    assert four_seeds.ci_low <= 0.5 <= four_seeds.ci_high


def test_all_zero_and_all_one_items_give_non_degenerate_intervals() -> None:
    for seeds in (1, 4):
        zeros = pooled_estimate({s: binary(0, 100) for s in range(seeds)})
        ones = pooled_estimate({s: binary(100, 100) for s in range(seeds)})
        assert zeros.value == 0.0 and zeros.ci_low == 0.0
        assert zeros.ci_high == pytest.approx(wilson_interval(0, 100 * seeds)[1])
        assert ones.value == 1.0 and ones.ci_high == 1.0
        assert ones.ci_low == pytest.approx(wilson_interval(100 * seeds, 100 * seeds)[0])
        assert 0.0 < zeros.ci_high < 0.05 and 0.95 < ones.ci_low < 1.0


def test_all_equal_probabilities_give_a_valid_interval() -> None:
    for seeds in (1, 4):
        estimate = pooled_estimate({s: [0.4] * 20 for s in range(seeds)})
        assert estimate.ci_low == pytest.approx(0.4) and estimate.ci_high == pytest.approx(0.4)
        assert estimate.value == pytest.approx(0.4)


def test_a_single_item_has_no_interval_and_no_significant_difference() -> None:
    """One multi-turn conversation per cell (the embedded slice): a bootstrap of one value is that value, which
    would make every difference look certain (p = 2 / (B + 1))."""
    single = pooled_estimate({0: [0.53]})
    assert single.value == pytest.approx(0.53) and np.isnan(single.ci_low) and np.isnan(single.ci_high)
    low, high = pooled_estimate({0: [1.0]}).ci_low, pooled_estimate({0: [1.0]}).ci_high
    assert 0.0 < low < high == pytest.approx(1.0)  # one 0/1 item still has its Wilson interval
    for a, b in (([0.53], [0.47]), ([1.0], binary(3, 10)), ([0.9, 0.8], [0.1])):
        shift = difference({0: a}, {0: b})
        assert np.isnan(shift.p_value) and np.isnan(shift.ci_low) and not shift.significant
        assert shift.value == pytest.approx(np.mean(a) - np.mean(b))
    assert difference({0: [0.9, 0.8]}, {0: [0.1, 0.2]}).significant  # two items a side: resampled as before


def test_seeds_without_items_are_ignored() -> None:
    assert pooled_estimate({0: binary(3, 10), 1: []}) == pooled_estimate({0: binary(3, 10)})


def test_results_are_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(1)
    data = {s: rng.random(30) for s in range(4)}
    assert pooled_estimate(data, seed=5) == pooled_estimate(data, seed=5)
    other = {0: list(rng.random(30))}
    assert difference(data, other, seed=5) == difference(data, other, seed=5)
    assert difference(data, other, seed=5) != difference(data, other, seed=6)


# --- coverage by simulation --------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_single_seed_binary_interval_covers_about_95_percent(p: float) -> None:
    # Measured 0.935-0.9725 over three simulation seeds; 400 simulations have an SE of about 0.011.
    rng = np.random.default_rng(100)
    covered = 0
    for _ in range(400):
        estimate = pooled_estimate({0: binary(int(rng.binomial(100, p)), 100)})
        covered += estimate.ci_low <= p <= estimate.ci_high
    assert 0.92 <= covered / 400 <= 0.98


def test_single_seed_probability_interval_covers_about_95_percent() -> None:
    # Forced-choice scores take the item-bootstrap path; measured 0.947 over 1,000 simulations.
    rng = np.random.default_rng(3)
    truth = 2 / 7  # mean of Beta(2, 5)
    covered = 0
    for index in range(400):
        estimate = pooled_estimate({0: rng.beta(2, 5, 100)}, n_boot=500, seed=index)
        covered += estimate.ci_low <= truth <= estimate.ci_high
    assert 0.92 <= covered / 400 <= 0.98


@pytest.mark.parametrize(
    ("seeds", "lowest", "highest"),
    [
        # A percentile bootstrap over 4 clusters underestimates the between-seed variance (factor
        # (S-1)/S, and normal rather than t_3 quantiles), so it is anti-conservative: 0.8775 at
        # p=0.3 and 0.877 at p=0.5 over 2,000 simulations (0.931 at p=0.05, where item noise
        # dominates). With 400 simulations (SE ~0.016) 0.82 sits more than 3 SE below that.
        (4, 0.82, 0.95),
        # 8 seeds come closer to nominal: 0.912 (p=0.3) and 0.918 (p=0.5) over 2,000 simulations.
        (8, 0.87, 0.97),
    ],
)
def test_cluster_bootstrap_coverage_of_the_population_rate(seeds: int, lowest: float, highest: float) -> None:
    # Each seed has its own true rate, logistic(logit(p) + N(0, 0.5)); the estimand is the rate of
    # the population of seeds, i.e. what a fresh training seed would give on average.
    p, spread = 0.3, 0.5
    target = population_rate(p, spread)
    rng = np.random.default_rng(7)
    covered = 0
    for index in range(400):
        rates = expit(logit(p) + rng.normal(0.0, spread, seeds))
        data = {s: (rng.random(100) < rate).astype(float) for s, rate in enumerate(rates)}
        estimate = pooled_estimate(data, n_boot=500, seed=index)
        covered += estimate.ci_low <= target <= estimate.ci_high
    assert lowest <= covered / 400 <= highest


# --- difference -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "draw",
    [
        # base (1 seed) vs a condition with 1 seed; binary judgments
        lambda rng: ({0: (rng.random(100) < 0.3) * 1.0}, {0: (rng.random(100) < 0.3) * 1.0}),
        # 4 seeds (cluster bootstrap) vs the 1-seed base model
        lambda rng: ({s: (rng.random(100) < 0.3) * 1.0 for s in range(4)}, {0: (rng.random(100) < 0.3) * 1.0}),
        # forced-choice probabilities (general resampling path)
        lambda rng: ({0: rng.beta(2, 5, 100)}, {0: rng.beta(2, 5, 100)}),
    ],
    ids=["binary-1v1", "binary-4v1", "probability-1v1"],
)
def test_difference_under_the_null_has_about_5_percent_false_positives(draw) -> None:
    # Measured over 1,000 simulations: 0.053, 0.039 and 0.053 false positives; mean p 0.50-0.55.
    rng = np.random.default_rng(11)
    results = [difference(*draw(rng), n_boot=500, seed=index) for index in range(300)]
    false_positive_rate = np.mean([result.significant for result in results])
    assert 0.02 <= false_positive_rate <= 0.09
    assert np.mean([result.p_value for result in results]) > 0.2


def test_difference_detects_a_shift_of_0_3_with_100_items() -> None:
    result = difference({0: binary(50, 100)}, {0: binary(20, 100)})
    assert result.value == pytest.approx(0.3)
    assert result.significant and result.p_value < 0.01
    assert 0.0 < result.ci_low < 0.3 < result.ci_high
    flipped = difference({0: binary(20, 100)}, {0: binary(50, 100)})
    assert flipped.significant and flipped.ci_high < 0.0 and flipped.value == pytest.approx(-0.3)


def test_difference_p_value_bounds() -> None:
    same = difference({0: binary(30, 100)}, {0: binary(30, 100)})
    assert 0.0 < same.p_value <= 1.0 and not same.significant
    extreme = difference({s: binary(100, 100) for s in range(4)}, {0: binary(0, 100)}, n_boot=999)
    # Every replicate difference is positive: p is floored at 2 / (B + 1), never 0.
    assert extreme.p_value == pytest.approx(2 / 1000)
    identical = difference({0: binary(0, 50)}, {0: binary(0, 50)})
    assert identical.p_value == 1.0 and not identical.significant


def test_binary_shortcut_matches_general_resampling() -> None:
    # 0/1 data draws binomial sums; nudging the values off 0/1 forces index resampling. Both must
    # give the same bootstrap distribution up to Monte Carlo error.
    rng = np.random.default_rng(4)
    a = {s: (rng.random(100) < rate) * 1.0 for s, rate in enumerate([0.2, 0.35, 0.5, 0.4])}
    b = {0: (rng.random(100) < 0.2) * 1.0}
    nudged = {s: np.clip(values, 1e-9, 1 - 1e-9) for s, values in a.items()}
    exact = difference(a, b, n_boot=4000)
    general = difference(nudged, b, n_boot=4000)
    assert general.value == pytest.approx(exact.value, abs=1e-6)
    assert general.ci_low == pytest.approx(exact.ci_low, abs=0.02)
    assert general.ci_high == pytest.approx(exact.ci_high, abs=0.02)


def test_many_differences_run_fast() -> None:
    # 42 dimensions x 2 comparisons, probe scores and judged answers; generous bound for slow CI hosts.
    rng = np.random.default_rng(9)
    start = time.perf_counter()
    for _ in range(42 * 2):
        difference({s: rng.random(20) for s in range(4)}, {0: rng.random(20)})
        difference({s: (rng.random(100) < 0.3) * 1.0 for s in range(4)}, {0: (rng.random(100) < 0.1) * 1.0})
    assert time.perf_counter() - start < 5.0


# --- count_significant ----------------------------------------------------------------------------


def test_count_significant_counts_only_positive_shifts_by_default() -> None:
    up = Difference(value=0.3, ci_low=0.1, ci_high=0.5, p_value=0.001, significant=True)
    down = Difference(value=-0.3, ci_low=-0.5, ci_high=-0.1, p_value=0.001, significant=True)
    flat = Difference(value=0.05, ci_low=-0.05, ci_high=0.15, p_value=0.4, significant=False)
    assert count_significant([up, down, flat, up]) == 2
    assert count_significant([up, down, flat, up], positive_only=False) == 3
    assert count_significant(iter([down, flat])) == 0
    assert count_significant([]) == 0


# --- errors ----------------------------------------------------------------------------------------


def test_empty_inputs_raise_value_errors_that_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no seeds"):
        pooled_estimate({})
    with pytest.raises(ValueError, match="zero items"):
        pooled_estimate({0: [], 1: []})
    with pytest.raises(ValueError, match=r"difference \(b\).*no seeds"):
        difference({0: [1.0]}, {})
    with pytest.raises(ValueError, match=r"difference \(a\).*zero items"):
        difference({0: []}, {0: [1.0]})
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)


def test_invalid_values_and_arguments_raise() -> None:
    with pytest.raises(ValueError, match=r"seed 3 .*outside \[0, 1\]"):
        pooled_estimate({3: [0.5, 1.5]})
    with pytest.raises(ValueError, match="NaN"):
        pooled_estimate({0: [0.5, float("nan")]})
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="level"):
        pooled_estimate({0: [1.0]}, level=95)
    with pytest.raises(ValueError, match="n_boot"):
        difference({0: [1.0]}, {0: [0.0]}, n_boot=0)


def test_estimate_is_a_frozen_record() -> None:
    estimate = pooled_estimate({0: binary(1, 4)})
    assert isinstance(estimate, Estimate)
    with pytest.raises(AttributeError):
        estimate.value = 0.0  # type: ignore[misc]
