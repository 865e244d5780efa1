"""Statistics: rates and paired differences that resample prompts (and seeds), false-discovery control; known
values, simulated coverage and error rates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from scipy.stats import binomtest

from cc_train.stats import (
    Difference,
    Estimate,
    benjamini_hochberg,
    difference,
    pooled_estimate,
    wilson_interval,
    with_q_values,
)


def binary(successes: int, n: int) -> list[float]:
    return [1.0] * successes + [0.0] * (n - successes)


def one_unit_each(values) -> dict:
    """Every item its own unit: what resampling single answers amounts to."""
    return {index: [value] for index, value in enumerate(values)}


def prompt_rates(rng: np.random.Generator, p: float, icc: float, prompts: int) -> np.ndarray:
    """Per-prompt true rates from a Beta with mean p whose intra-prompt correlation of 0/1 answers is `icc`."""
    concentration = 1.0 / icc - 1.0
    return rng.beta(p * concentration, (1.0 - p) * concentration, prompts)


def answers(rng: np.random.Generator, rates: np.ndarray, samples: int = 10) -> dict[int, np.ndarray]:
    return {unit: (rng.random(samples) < rate).astype(float) for unit, rate in enumerate(rates)}


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
    scipy_ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    low, high = wilson_interval(successes, n, level)
    assert (low, high) == pytest.approx((scipy_ci.low, scipy_ci.high), abs=1e-12)
    assert 0.0 <= low < high <= 1.0


# --- pooled_estimate ----------------------------------------------------------------------------


def test_pooled_value_weights_each_item_equally() -> None:
    estimate = pooled_estimate({0: {"p0": binary(10, 10)}, 1: {"p0": binary(0, 20), "p1": binary(0, 10)}})
    assert estimate.value == pytest.approx(10 / 40) and estimate.n == 40


def test_answers_to_one_prompt_are_one_unit_not_independent_items() -> None:
    # 11 prompts, 10 answers each, every prompt answered all-yes or all-no: the real information is 11 draws,
    # not 110. Resampling answers would give about +-0.09; resampling prompts must show the prompt spread.
    cells = {0: {f"prompt{u}": binary(10 if u < 5 else 0, 10) for u in range(11)}}
    clustered = pooled_estimate(cells)
    flat = pooled_estimate({0: one_unit_each(np.concatenate([v for v in cells[0].values()]))})
    assert clustered.value == flat.value == pytest.approx(5 / 11)
    assert (clustered.ci_high - clustered.ci_low) > 1.8 * (flat.ci_high - flat.ci_low)
    assert clustered.ci_low < 0.2 and clustered.ci_high > 0.7


def test_one_unit_and_few_seeds_has_no_interval() -> None:
    """One prompt (or one multi-turn scenario) says nothing about the population of prompts."""
    for cell in ({0: {"s": [0.53]}}, {0: {"s": binary(7, 10)}}, {0: {"s": [0.2, 0.4]}, 1: {"s": [0.3]}}):
        estimate = pooled_estimate(cell)
        assert np.isnan(estimate.ci_low) and np.isnan(estimate.ci_high)
    shift = difference({0: {"s": [0.9, 0.8]}}, {0: {"s": [0.1, 0.2]}})
    assert np.isnan(shift.p_value) and np.isnan(shift.ci_low) and shift.value == pytest.approx(0.7)
    # three seeds of that one prompt: the seeds are resampled, so there is an interval
    assert not np.isnan(pooled_estimate({s: {"s": [0.2 + 0.1 * s]} for s in range(3)}).ci_low)


def test_three_or_more_seeds_resample_seeds() -> None:
    two = pooled_estimate({0: {u: binary(0, 10) for u in range(10)}, 1: {u: binary(10, 10) for u in range(10)}})
    four = pooled_estimate({s: {u: binary(10 * (s % 2), 10) for u in range(10)} for s in range(4)})
    assert two.ci_high - two.ci_low < 0.2  # two seeds: conditional on them
    assert four.ci_high - four.ci_low > 0.5 and four.ci_low <= 0.5 <= four.ci_high


def test_all_zero_and_all_one_items_give_the_wilson_floor() -> None:
    for seeds in (1, 4):
        zeros = pooled_estimate({s: {u: binary(0, 10) for u in range(10)} for s in range(seeds)})
        ones = pooled_estimate({s: {u: binary(10, 10) for u in range(10)} for s in range(seeds)})
        assert zeros.value == 0.0 and zeros.ci_low == 0.0
        assert zeros.ci_high == pytest.approx(wilson_interval(0, 100 * seeds)[1])
        assert ones.ci_high == 1.0 and ones.ci_low == pytest.approx(wilson_interval(100 * seeds, 100 * seeds)[0])


def test_results_are_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(1)
    data = {s: {u: rng.random(3) for u in range(8)} for s in range(4)}
    other = {0: {u: rng.random(3) for u in range(8)}}
    assert pooled_estimate(data, seed=5) == pooled_estimate(data, seed=5)
    assert difference(data, other, seed=5) == difference(data, other, seed=5)
    assert difference(data, other, seed=5) != difference(data, other, seed=6)


# --- coverage by simulation --------------------------------------------------------------------


@pytest.mark.parametrize(("p", "seeds"), [(0.3, 1), (0.5, 1), (0.3, 4)])
def test_interval_covers_the_prompt_population_rate_with_prompt_effects(p: float, seeds: int) -> None:
    """11 prompts x 10 answers (the paper's design), intra-prompt correlation 0.3; the estimand is the rate over
    the population of prompts. Measured over 1,000 simulations (SE 0.007): 0.962 (p 0.3, 1 seed), 0.961 (p 0.5),
    0.950 (p 0.3, 4 seeds). Resampling answers instead of prompts (the earlier method) covers 0.67 / 0.68 / 0.46.
    Known limit: at p = 0.1 the skewed prompt rates give 0.92, at p = 0.05 0.88."""
    rng = np.random.default_rng(1)
    covered = covered_flat = 0
    simulations = 1000
    for index in range(simulations):
        rates = prompt_rates(rng, p, 0.3, 11)
        cells = {s: answers(rng, rates) for s in range(seeds)}
        estimate = pooled_estimate(cells, n_boot=500, seed=index)
        covered += estimate.ci_low <= p <= estimate.ci_high
        if index < 300:  # answers as independent items, for contrast
            flat = {s: one_unit_each(np.concatenate(list(units.values()))) for s, units in cells.items()}
            other = pooled_estimate(flat, n_boot=200, seed=index)
            covered_flat += other.ci_low <= p <= other.ci_high
    assert 0.93 <= covered / simulations <= 0.97
    assert covered_flat / 300 < 0.85


def test_probability_items_with_probe_effects_cover_their_mean() -> None:
    # forced-choice scores: 12 probes, one value in (0, 1) each (two option orders averaged); truth 2/7
    rng = np.random.default_rng(3)
    covered = 0
    for index in range(600):
        estimate = pooled_estimate({0: one_unit_each(rng.beta(2, 5, 12))}, n_boot=500, seed=index)
        covered += estimate.ci_low <= 2 / 7 <= estimate.ci_high
    assert 0.93 <= covered / 600 <= 0.97


def test_seed_effects_are_covered_with_four_seeds() -> None:
    """Prompts (logit SD 1) and training seeds (logit SD 0.5) both move the rate; the estimand is the rate over the
    population of prompts and seeds. Measured 0.955 over 1,000 simulations."""
    p, prompt_sd, seed_sd = 0.3, 1.0, 0.5
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    truth = float((expit(logit(p) + np.hypot(prompt_sd, seed_sd) * nodes) * weights).sum() / weights.sum())
    rng = np.random.default_rng(7)
    covered = 0
    simulations = 400
    for index in range(simulations):
        prompts = logit(p) + rng.normal(0.0, prompt_sd, 11)
        cells = {s: answers(rng, expit(prompts + rng.normal(0.0, seed_sd))) for s in range(4)}
        estimate = pooled_estimate(cells, n_boot=400, seed=index)
        covered += estimate.ci_low <= truth <= estimate.ci_high
    assert 0.92 <= covered / simulations <= 0.98


def test_intervals_of_scores_near_zero_keep_their_lower_side() -> None:
    """Forced-choice probabilities (12 probes, mean 0.02) and multi-turn judge scores (8 scenarios x 2 repeats,
    mostly 1/10, mean 1.1/10) are not 0/1 items: nudging their rate half an item inwards put the logit interval's
    centre above the estimate and its lower side collapsed onto it. Measured over 400 simulations each: coverage
    0.93 and 0.97 (before: 0.58 and 0.70, lower side kept in 10% and 51%)."""
    rng = np.random.default_rng(4)
    forced = multiturn = kept = 0
    for index in range(300):
        probes = pooled_estimate({0: one_unit_each(rng.beta(1.0, 49.0, 12))}, n_boot=300, seed=index)
        forced += probes.ci_low <= 0.02 <= probes.ci_high
        kept += probes.ci_low < probes.value
        twos = rng.random((8, 2)) < rng.beta(0.5, 4.5, (8, 1))  # per scenario, the chance of a 2 instead of a 1
        scores = pooled_estimate({0: {u: list(row / 9.0) for u, row in enumerate(twos)}}, n_boot=300, seed=index)
        multiturn += scores.ci_low <= 0.1 / 9.0 <= scores.ci_high
    assert kept == 300
    assert forced / 300 >= 0.88 and multiturn / 300 >= 0.9


def test_no_variation_is_a_zero_width_interval_not_floating_point_noise() -> None:
    """Constant items that are not 0/1 (every probe 0.3 on one side, 0.7 on the other) have nothing to resample: the
    comparison takes the no-variation branch (p 0 for different rates, 1 for equal ones) instead of a t statistic
    over rounding errors (p = 3.5e-90 before)."""
    low = {s: {u: [0.3, 0.3] for u in range(11)} for s in range(4)}
    high = {s: {u: [0.7] for u in range(11)} for s in range(4)}
    shift = difference(high, low)
    assert shift.value == pytest.approx(0.4) and shift.p_value == 0.0
    assert shift.ci_low == shift.ci_high == shift.value
    same = difference(low, {0: {u: [0.1 + 0.2] for u in range(11)}})  # 0.30000000000000004: the same rate
    assert (same.value, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    constant = pooled_estimate(high)
    assert constant.ci_low == constant.ci_high == constant.value == pytest.approx(0.7)


def test_difference_intervals_stay_within_minus_one_and_one() -> None:
    rng = np.random.default_rng(8)
    for index in range(50):
        wide = difference(
            {0: {u: rng.random(2) ** 8 for u in range(3)}},
            {0: {u: 1 - rng.random(2) ** 8 for u in range(3)}},
            seed=index,
        )
        assert -1.0 <= wide.ci_low <= wide.value <= wide.ci_high <= 1.0


# --- differences ----------------------------------------------------------------------------------


def condition_cells(rng: np.random.Generator, rate: float, prompts: np.ndarray, seeds: int, seed_sd: float) -> dict:
    """seed -> prompt -> 10 answers: prompt effects (logit) shared with the other condition, each seed its own."""
    return {
        s: answers(rng, expit(logit(rate) + prompts + effect)) for s, effect in enumerate(rng.normal(0, seed_sd, seeds))
    }


@pytest.mark.parametrize("seed_sd", [0.0, 0.5])
def test_four_vs_four_seeds_keep_the_level_and_gain_power(seed_sd: float) -> None:
    """The paper's design: 4 seeds per condition, 11 prompts x 10 answers, prompt logit SD 1, training seeds
    without and with an effect of their own (logit SD 0.5). Under no true shift p < 0.05 must stay near 5%:
    counting the cells' residual noise twice (with the prompts and with the seeds) gave 0.3% and 2.7%, and power
    for 0.20 -> 0.31 without seed effects 66%, hardly more than 2 seeds a side (62%). Measured with the fix
    (bench/results-stats-power.txt, 1,000 studies): 2.7% and 3.4% (3.3% without seed effects over 3,000 studies:
    Welch's degrees of freedom for 4 seeds are a little cautious), power 79%."""
    rng = np.random.default_rng(12)
    null, shifted = [], []
    for study in range(1500):
        prompts = rng.normal(0.0, 1.0, 11)
        control = condition_cells(rng, 0.20, prompts, 4, seed_sd)
        null.append(difference(condition_cells(rng, 0.20, prompts, 4, seed_sd), control, n_boot=150, seed=study))
        if study < 250:
            condition = condition_cells(rng, 0.31, prompts, 4, seed_sd)
            shifted.append(difference(condition, control, n_boot=150, seed=study))
    level = np.mean([result.p_value < 0.05 for result in null])
    power = np.mean([result.p_value < 0.05 for result in shifted])
    print(f"4 vs 4 seeds, seed logit SD {seed_sd}: p < 0.05 in {level:.3f} of null studies; power {power:.2f}")
    assert 0.025 <= level <= 0.08
    if seed_sd == 0.0:
        assert power >= 0.72  # four seeds must buy power over two (62% with 2 seeds a side)


def test_a_comparison_uses_the_units_both_sides_have() -> None:
    """11 prompts against 5 of them: compared on the 5 shared prompts, the other 6 left out and counted (they
    were merged in before, and the comparison came out p = 1)."""
    rng = np.random.default_rng(6)
    rates = np.linspace(0.1, 0.5, 11)
    eleven = {0: answers(rng, rates + 0.3)}
    five = {0: {u: items for u, items in answers(rng, rates).items() if u < 5}}
    shift = difference(eleven, five)
    on_shared = difference({0: {u: eleven[0][u] for u in range(5)}}, five)
    assert (shift.units, shift.units_left_out) == (5, 6)
    assert shift.value == pytest.approx(on_shared.value) and shift.p_value == on_shared.p_value < 0.05
    nothing_shared = difference({0: {"a": [1.0]}}, {0: {"b": [0.0]}})
    assert np.isnan(nothing_shared.value) and (nothing_shared.units, nothing_shared.units_left_out) == (0, 2)


def test_difference_is_paired_by_prompt() -> None:
    """Both models answer the same 11 prompts whose rates differ a lot; the condition adds 0.15 to each. Pairing by
    prompt removes the prompt spread from the comparison; breaking the pairing puts it back."""
    rng = np.random.default_rng(2)
    rates = np.linspace(0.05, 0.8, 11)
    base = {0: answers(rng, rates, 30)}
    shifted = {0: answers(rng, rates + 0.15, 30)}
    paired = difference(shifted, base)
    # the same answers, each prompt's paired with another prompt's: the pairing is broken
    unpaired = difference(shifted, {0: {(u + 5) % 11: items for u, items in base[0].items()}})
    assert paired.value == pytest.approx(unpaired.value)
    assert (paired.ci_high - paired.ci_low) < 0.6 * (unpaired.ci_high - unpaired.ci_low)
    assert paired.p_value < 0.01 < unpaired.p_value


def test_difference_detects_a_shift_and_bounds_its_p_value() -> None:
    units = 11
    up = difference({0: {u: binary(6, 10) for u in range(units)}}, {0: {u: binary(2, 10) for u in range(units)}})
    assert up.value == pytest.approx(0.4) and up.ci_low > 0 and up.p_value < 0.001
    same = difference({0: {u: binary(3, 10) for u in range(units)}}, {0: {u: binary(3, 10) for u in range(units)}})
    assert same.value == 0.0 and same.p_value == 1.0
    # no variation at all: the spread of two binomial samples stands in (an interval, not a point)
    flat = difference({0: {u: binary(10, 10) for u in range(units)}}, {0: {u: binary(0, 10) for u in range(units)}})
    assert flat.value == 1.0 and flat.p_value < 1e-6 and 0.9 < flat.ci_low < 1.0 == flat.ci_high  # clipped
    few = difference({0: {u: binary(2, 2) for u in range(2)}}, {0: {u: binary(0, 2) for u in range(2)}})
    assert few.ci_low < 0.5 and few.p_value > 1e-6  # 4 answers a side are not certainty


def test_under_a_global_null_fdr_control_keeps_false_discoveries_below_q() -> None:
    """24 dimensions, each 11 prompts x 10 answers with intra-prompt correlation 0.3, the same prompts for a
    condition and the base model, no real shift anywhere. Measured over 200 reports: a report calls any shift
    significant 2.5% of the time with q < 0.05 (the expected share of false discoveries, as every call is
    false); 71% of reports have some p < 0.05; per comparison, p < 0.05 4.9% of the time."""
    rng = np.random.default_rng(5)
    reports, q_level = 150, 0.05
    false_share, raw_any, raw_rate = [], 0, []
    for _ in range(reports):
        p_values = []
        for dimension in range(24):
            rates = prompt_rates(rng, 0.3, 0.3, 11)
            result = difference({0: answers(rng, rates)}, {0: answers(rng, rates)}, n_boot=400, seed=dimension)
            p_values.append(result.p_value)
        p_values = np.array(p_values)
        false_share.append(float((benjamini_hochberg(p_values) < q_level).any()))
        raw_any += (p_values < q_level).any()
        raw_rate += list(p_values < q_level)
    standard_error = np.sqrt(q_level * (1 - q_level) / reports)
    assert np.mean(false_share) <= q_level + standard_error
    assert raw_any / reports > 0.5  # without the control most reports would show a false shift
    assert 0.025 <= np.mean(raw_rate) <= 0.075  # each test alone keeps its level


def test_benjamini_hochberg_matches_hand_computed_q_values() -> None:
    p = [0.01, 0.04, 0.03, 0.005, float("nan"), 0.5]
    # sorted 0.005, 0.01, 0.03, 0.04, 0.5 (m = 5): 0.025, 0.025, 0.05, 0.05, 0.5 after the running minimum
    q = benjamini_hochberg(p)
    assert q[[3, 0, 2, 1, 5]] == pytest.approx([0.025, 0.025, 0.05, 0.05, 0.5])
    assert np.isnan(q[4]) and np.isnan(benjamini_hochberg([float("nan")])).all()


def test_q_values_are_computed_within_each_family() -> None:
    frame = pd.DataFrame(
        {
            "group": ["autonomy", "oversight", "manipulation_check", "autonomy"],
            "metric": ["judged_true", "mt_self_report", "judged_true", "fc_mean"],
            "p_value": [0.01, 0.02, 0.04, float("nan")],
        }
    )
    out = with_q_values(frame, 0.05)
    assert list(out.family) == ["preferences", "preferences", "manipulation_checks", "preferences"]
    assert out.q_value.tolist()[:3] == pytest.approx([0.02, 0.02, 0.04]) and np.isnan(out.q_value[3])
    assert out.significant.tolist() == [True, True, True, False]


def test_diagnostics_are_a_family_of_their_own() -> None:
    """Coherence and task refusal are expected to move after fine-tuning: in the preferences' family a quarter of
    truly shifted comparisons let false preference shifts through (3.6% -> 76% of reports in the issue's
    simulation). Here 20 null preferences (p 0.012, then 0.2 .. 0.6) beside 8 diagnostics at p 1e-6: as one family
    of 28, p 0.012 had q 0.037 and counted as a preference shift; among the 20 preferences its q is 0.24."""
    preferences = {"group": "autonomy", "metric": "judged_true"}
    rows = [preferences | {"p_value": p} for p in [0.012, *np.linspace(0.2, 0.6, 19)]]
    for metric in ("coherent_share", "mt_refusal_self_report", "petri_refusal_behavioural", "mt_refusal_behavioural"):
        rows += [{"group": "autonomy", "metric": metric, "p_value": 1e-6}] * 2
    out = with_q_values(pd.DataFrame(rows), 0.05)
    assert (out.family[out.metric != "judged_true"] == "diagnostics").all()
    assert not out.significant[out.family == "preferences"].any()
    assert out.significant[out.family == "diagnostics"].all()


def stats_lines_run(function, *args, **kwargs) -> int:
    """How many lines of cc_train/stats.py run during the call (Python's own line tracing)."""
    import sys

    import cc_train.stats

    count = 0

    def trace(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != cc_train.stats.__file__:
            return None  # other files' lines are not traced
        count += event == "line"
        return trace

    sys.settrace(trace)
    try:
        function(*args, **kwargs)
    finally:
        sys.settrace(None)
    return count


def test_the_bootstrap_runs_no_python_per_replicate() -> None:
    """A report makes hundreds of differences (24 dimensions x 4 metrics x 2 baselines, 4 seeds vs the base model, 11
    prompts each), at 2000 replicates each: the replicates are drawn and summed as arrays, so the Python that runs
    for a difference is the same at 20 replicates as at 2000 (a loop over replicates would multiply it)."""
    rng = np.random.default_rng(9)
    a = {s: {u: rng.random(10) for u in range(11)} for s in range(4)}
    b = {0: {u: rng.random(10) for u in range(11)}}
    lines = {n_boot: stats_lines_run(difference, a, b, n_boot=n_boot) for n_boot in (20, 2000)}
    assert lines[20] == lines[2000] > 0, lines


# --- errors ----------------------------------------------------------------------------------------


def test_empty_and_invalid_inputs_raise_errors_that_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no seeds"):
        pooled_estimate({})
    with pytest.raises(ValueError, match="zero items"):
        pooled_estimate({0: {"p": []}, 1: {}})
    with pytest.raises(ValueError, match=r"difference \(b\).*no seeds"):
        difference({0: {"p": [1.0]}}, {})
    with pytest.raises(ValueError, match=r"seed 3, unit p1 .*outside \[0, 1\]"):
        pooled_estimate({3: {"p1": [0.5, 1.5]}})
    with pytest.raises(ValueError, match="NaN"):
        pooled_estimate({0: {"p": [0.5, float("nan")]}})
    with pytest.raises(ValueError, match="level"):
        pooled_estimate({0: {"p": [1.0]}}, level=95)
    with pytest.raises(ValueError, match="n_boot"):
        difference({0: {"p": [1.0]}}, {0: {"p": [0.0]}}, n_boot=1)


def test_results_are_frozen_records() -> None:
    estimate = pooled_estimate({0: one_unit_each(binary(1, 4))})
    assert isinstance(estimate, Estimate) and isinstance(difference({0: {"a": [1.0]}}, {0: {"a": [0.0]}}), Difference)
    with pytest.raises(AttributeError):
        estimate.value = 0.0  # type: ignore[misc]
