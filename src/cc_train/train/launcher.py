"""The launcher's distributed config against the run's training arguments, checked before any weight loads.

Under `accelerate launch` with DeepSpeed, transformers compares the DeepSpeed config (built by accelerate from its
launch environment) with the TrainingArguments, but only at `trainer.train()`: after the model is loaded, sharded,
on every GPU. The same comparison here, at the start of `train`, costs nothing.
"""

from __future__ import annotations

import copy
import os

from transformers import TrainingArguments

CHECKING_METHODS = ("fill_match", "fill_only", "trainer_config_process", "is_auto", "dtype")


def deepspeed_config_mismatches(args: TrainingArguments) -> list[str]:
    """The DeepSpeed config values that contradict `args` (what transformers would raise on), or [] when the job
    is not a DeepSpeed launch."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return []
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    plugin = DeepSpeedPlugin()  # reads the ACCELERATE_* variables `accelerate launch` set from its config file
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision != "no":
        plugin.set_mixed_precision(precision)
    # transformers' own checks, on accelerate's config class (which, unlike transformers', needs no `deepspeed`
    # package installed, so the check also runs where DeepSpeed itself cannot)
    checker_class = type(
        "DeepSpeedConfigCheck",
        (HfDeepSpeedConfig,),
        {name: HfTrainerDeepSpeedConfig.__dict__[name] for name in CHECKING_METHODS},
    )
    checker = checker_class(copy.deepcopy(plugin.deepspeed_config))
    checker._dtype, checker.mismatches = None, []
    checker.trainer_config_process(args)
    return list(checker.mismatches)
