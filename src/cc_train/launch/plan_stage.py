"""`cc-train plan`: the training layout and the evaluation engines of a recipe, before any weight loads.

A model in BF16 or FP32 is planned sharded over n GPUs (launch/plan.py) with its engines (launch/serving_plan.py); an
FP8 release (DeepSeek-V3.1) trains in one process over one node and serves on one node (launch/fp8_plan.py).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from cc_train.config import RunConfig
from cc_train.launch import fp8_plan
from cc_train.launch.plan import format_plan, plan
from cc_train.launch.serving_plan import serving_lines


def main(run: RunConfig, cfg: DictConfig) -> dict[str, Any]:
    result = plan(run.model, run.peft, run.train)
    if result["estimate"].shape.fp8_block:  # an FP8 release: one process over one node, not sharded
        print("\n".join(fp8_plan.plan_lines(run) + fp8_plan.serving_lines(run)))
        return result
    print(format_plan(result))
    print("\n".join(serving_lines(run)))
    return result
