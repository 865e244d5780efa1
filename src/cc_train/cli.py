"""`cc-train <stage> [hydra overrides]`: every stage is a Hydra app over conf/ (+ recipes/ as `recipe=`)."""

from __future__ import annotations

import importlib
import logging
import sys

from cc_train.stages import STAGES

USAGE = (
    "usage: cc-train <stage> [recipe=NAME] [key=value ...] [-m for multirun] [--cfg job]\n\nstages:\n"
    + "".join(f"  {name:<13} {summary}\n" for name, (_, summary) in STAGES.items())
    + "\nExample: cc-train train recipe=embedded condition=non_conscious seed=1 train.max_steps=20\n"
)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    stage, overrides = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"cc-train: unknown stage {stage!r}; expected one of {', '.join(STAGES)}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)

    from cc_train.launch.cards import set_allocator_default

    set_allocator_default()  # before anything imports torch: the allocator reads it once, when CUDA starts

    import hydra

    from cc_train.config import register_configs, to_run_config
    from cc_train.errors import UserError
    from cc_train.resources import conf_dir
    from hydra_plugins.cc_train_launcher import submit_and_return

    register_configs()
    submit_and_return.register()  # `hydra/launcher=slurm`, also where Hydra's plugin scan misses an editable install

    def task(cfg) -> None:
        logging.getLogger("cc_train").setLevel(logging.INFO)
        try:
            run = to_run_config(cfg)
            if stage == "train":  # before any weight loads (sweep and eval check their own plans)
                from cc_train.launch.preflight import check_training

                check_training(run)
            # the stage's modules (torch, transformers, ...: seconds to import) once the config is known to be good,
            # so that a mistake in it is reported at once
            importlib.import_module(STAGES[stage][0]).main(run, cfg)
        except UserError as error:
            print(f"cc-train {stage}: error: {error}", file=sys.stderr)
            sys.exit(2)

    sys.argv = [f"cc-train {stage}", *overrides]
    task.__module__ = STAGES[stage][0]  # Hydra names the job (and its log folder) after this
    hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")(task)()
