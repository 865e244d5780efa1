"""Checkpoint-and-stop on SLURM's warnings, so a preempted or timed-out job resumes where it stopped.

Three ways to ask a training run to stop at the next step boundary, saving a checkpoint first:
- SIGUSR1 / SIGUSR2: the time-limit warning (`#SBATCH --signal=USR1@300`; submitit uses USR2). The run
  then requeues its own job, and the requeued job resumes from that checkpoint.
- SIGTERM: SLURM is already ending the job (`scontrol requeue`, preemption, scancel); checkpoint within
  KillWait, and SLURM decides whether the job comes back.
- the file named by $CC_TRAIN_STOP_FILE appears: the multi-node sbatch templates' trap creates it, because
  a signal sent to `accelerate launch` would kill the launcher rather than reach the ranks. The template
  requeues the job once the ranks have exited.
Under torch.distributed every rank takes the same decision (a MAX all-reduce of the flag each step), so
all ranks save the same step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from transformers import TrainerCallback

TIME_LIMIT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
STOP_SIGNALS = (*TIME_LIMIT_SIGNALS, signal.SIGTERM)


PREEMPTED_EXIT = 3  # training stopped at a saved checkpoint (`accelerate launch` reports any rank's failure as 1)


class StopAndCheckpoint(TrainerCallback):
    """A TrainerCallback that turns a stop request into `should_save` + `should_training_stop`."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self.stopped_at: int | None = None
        self._previous: dict[signal.Signals, object] = {}
        stop_file = os.environ.get("CC_TRAIN_STOP_FILE")
        self.stop_file = Path(stop_file) if stop_file else None

    def __enter__(self) -> StopAndCheckpoint:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame) -> None:
        self.signal = signal.Signals(signum)
        print(f"train: caught {self.signal.name}; saving a checkpoint at the end of this step", flush=True)

    def _requested(self, args) -> bool:
        local = self.signal is not None or (self.stop_file is not None and self.stop_file.exists())
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return local
        import torch

        flag = torch.tensor([int(local)], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._requested(args) and state.global_step < state.max_steps:  # at the last step: just finish
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def finish(self) -> None:
        """After `trainer.train()` returns: exit with PREEMPTED_EXIT if the run stopped early, first requeueing
        the job when the stop was a time-limit warning."""
        if self.stopped_at is None:
            return
        reason = self.signal.name if self.signal else f"stop file {self.stop_file}"
        message = f"train: stopped at step {self.stopped_at} ({reason}); checkpoint saved, the next run resumes from it"
        job = slurm_job_id() if self.signal in TIME_LIMIT_SIGNALS else None
        print(message + (f"; requeueing SLURM job {job}" if job else ""), flush=True)
        if job:  # SLURM ends this process soon after: nothing below matters then
            subprocess.run(["scontrol", "requeue", job], check=False, timeout=60)
        sys.exit(PREEMPTED_EXIT)


def slurm_job_id() -> str | None:
    """This job's id as scontrol names it (array tasks as ARRAYID_TASKID), or None outside SLURM."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")
