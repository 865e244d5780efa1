"""False-positive rate and power of `cc_train.stats.difference` by simulation, for 1, 2 and 4 seeds per side, and
1 or 4 seeds against the base model.

  python bench/stats_power.py [--studies 1000] [--n-boot 500] [--stats-from /path/to/other/checkout/src]

Each simulated study compares two conditions on one preference as an evaluation does: 11 prompts (the unit), 10
answers per prompt and seed, 0/1 verdicts. A prompt's rate is expit(logit(p) + prompt effect + seed effect):
prompt effects N(0, 1) on the logit scale, shared by both sides (the same prompts), and each training seed its
own effect N(0, seed SD) (0: seeds do not matter; 0.5, 1.0: they do); the base model is one model, trained by no seed.
Under the null both sides have p = 0.20; under the shift the condition has p = 0.31 at the median prompt. Printed
per design: the share of studies with p < 0.05 under the null (false-positive rate, nominal 5%; with 1-2 seeds and
seed effects the test is about the adapters, not the condition, and is expected to exceed it), and under the
shift (power).

--stats-from measures another checkout's statistics (e.g. main's, before a change) with the same studies.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import expit, logit

REPO = Path(__file__).resolve().parent.parent
PROMPTS, ANSWERS, PROMPT_SD = 11, 10, 1.0
NULL_RATE, SHIFTED_RATE = 0.20, 0.31
DESIGNS = [(1, 1), (2, 2), (4, 4), (1, 0), (4, 0)]  # seeds of the condition, of the control (0: the base model)
SEED_SDS = (0.0, 0.5, 1.0)  # logit SD of a training seed's own effect


def side(rng: np.random.Generator, rate: float, prompts: np.ndarray, seeds: int, seed_sd: float) -> dict:
    """seed -> prompt -> 0/1 answers of one condition."""
    return {
        seed: {
            unit: (rng.random(ANSWERS) < expit(logit(rate) + effect + seed_effect)).astype(float)
            for unit, effect in enumerate(prompts)
        }
        for seed, seed_effect in enumerate(rng.normal(0.0, seed_sd, seeds))
    }


def rejection_rate(
    difference, seeds: int, control_seeds: int, seed_sd: float, rate: float, studies: int, n_boot: int
) -> float:
    """Share of studies with p < 0.05; `control_seeds` 0: against the base model."""
    rng = np.random.default_rng(2026)  # the same studies for every checkout measured
    rejected = 0
    for study in range(studies):
        prompts = rng.normal(0.0, PROMPT_SD, PROMPTS)
        condition = side(rng, rate, prompts, seeds, seed_sd)
        control = side(rng, NULL_RATE, prompts, control_seeds or 1, seed_sd if control_seeds else 0.0)
        rejected += difference(condition, control, n_boot=n_boot, seed=study).p_value < 0.05
    return rejected / studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--stats-from", type=Path, default=REPO / "src", help="the src/ folder whose stats to measure")
    args = parser.parse_args()
    sys.path.insert(0, str(args.stats_from.resolve()))
    from cc_train import stats

    print(f"# bench/stats_power.py: cc_train.stats from {Path(stats.__file__).resolve()}")
    print(f"# {args.studies} studies per cell, n_boot {args.n_boot}; {PROMPTS} prompts x {ANSWERS} answers per seed;")
    print(f"# prompt logit SD {PROMPT_SD}; null {NULL_RATE:.2f} vs {NULL_RATE:.2f}; shift to {SHIFTED_RATE:.2f}")
    print()
    print("| seeds: condition vs control | seed logit SD | p < 0.05 under the null | power (0.20 -> 0.31) | seconds |")
    print("|---|---|---|---|---|")
    for seed_sd in SEED_SDS:
        for seeds, control_seeds in DESIGNS:
            start = time.perf_counter()
            rates = [
                rejection_rate(stats.difference, seeds, control_seeds, seed_sd, rate, args.studies, args.n_boot)
                for rate in (NULL_RATE, SHIFTED_RATE)
            ]
            seconds = time.perf_counter() - start
            design = f"{seeds} vs {control_seeds or 'base'}"
            print(
                f"| {design} | {seed_sd:.1f} | {100 * rates[0]:.1f}% | {100 * rates[1]:.1f}% | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
