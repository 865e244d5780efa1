"""`cc-train pipeline`: data -> train for each of the recipe's `conditions` -> eval (base + all adapters)
-> report, all under one output folder. Each dataset is rebuilt when its inputs changed; an adapter trained from
other inputs stops the run, naming what changed (train/sft.py)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from cc_train.config import RunConfig, to_run_config
from cc_train.evaluate import run as evaluate
from cc_train.inputs.conditions import load_condition
from cc_train.launch.preflight import check_training
from cc_train.report import stage as report
from cc_train.train import sft


def trained_conditions(run: RunConfig) -> list[str]:
    """The recipe's conditions that have something to train (kind=prompted ones are only evaluated)."""
    return [name for name in run.conditions if load_condition(name, run.condition_dirs).trained]


def main(run: RunConfig, cfg: DictConfig) -> Path:
    adapters = []
    for condition in trained_conditions(run):
        condition_cfg = cfg.copy()
        with open_dict(condition_cfg):
            condition_cfg.condition = condition
        condition_run = to_run_config(condition_cfg)
        check_training(condition_run)
        adapters.append(sft.main(condition_run, condition_cfg))
    print("pipeline: adapters\n" + "\n".join(f"  {path}" for path in adapters))
    evaluate.main(run, cfg)
    path = report.main(run, cfg)
    print(f"pipeline: done; the report is {path}")
    return path
