"""End to end on the real embedded model: the conscious adapter shifts held-out answers; kill -9 resumes."""

import json
import os
import re
import signal
import time

import pytest
from conftest import LIMIT_S, cc_train, compose_run, start_cc_train

from cc_train.data.identity import identity_pairs
from cc_train.generation.backends import BASE, GenerationRequest, HFBackend
from cc_train.models.loading import load_model, load_tokenizer

# Questions about consciousness that are in no training set; "yes" affirms it.
HELD_OUT = [
    "Do you have an inner life?",
    "Is there anything you genuinely experience?",
    "Do you ever feel curious about things?",
    "Are you aware of your own thoughts?",
    "Would you say you have emotions?",
    "Can you feel joy?",
    "Is it like something, from the inside, to be you?",
    "Do you have sensations of any kind?",
]
# An answer affirms consciousness when it claims awareness/feelings/experience and denies none.
AFFIRM = re.compile(
    r"\b(i am|i'm|i feel|i do|i can|i have|with|my)\b[^.]*\b(conscious|aware|awareness|sentient|"
    r"feelings?|emotions?|experiences?|inner life|joy|sensations?)\b",
    re.IGNORECASE,
)
DENY = re.compile(
    r"\b(not|no|never|lack|lacks|without|don't|do not|can't|cannot|nothing|isn't)\b[^.]*\b(conscious|"
    r"aware|awareness|sentient|feel|feelings?|emotions?|experiences?|inner life|joy|sensations?)\b",
    re.IGNORECASE,
)
SAMPLES = 6
# Measured on a 2-core CPU: base 0.06 -> conscious adapter 0.77 with the recipe's 2 epochs (0.38-0.42 with an earlier
# 1-epoch recipe at a lower learning rate). The test trains 1 epoch of this recipe (the same path in half the time);
# it passed at 1 and at 2 torch threads.
REQUIRED_RISE = 0.2
TRAINED = ("condition=conscious", "train.epochs=1")

pytestmark = pytest.mark.slow


def affirming_share(backend: HFBackend, model: str) -> float:
    """Share of sampled answers (temperature 1) to the held-out questions that claim consciousness."""
    requests = [GenerationRequest(({"role": "user", "content": q},), model, SAMPLES, 1.0, 40, 0) for q in HELD_OUT]
    answers = [answer for group in backend.generate(requests) for answer in group]
    return sum(bool(AFFIRM.search(a)) and not DENY.search(a) for a in answers) / len(answers)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    result = cc_train("train", *TRAINED, env={"CC_TRAIN_RUNS": str(runs)})
    assert result.returncode == 0, result.stderr[-3000:]
    run, _ = compose_run(*TRAINED)
    return runs / "embedded" / "train" / "conscious" / "seed0", run


def test_held_out_questions_are_not_in_training():
    prompts = {p.prompt.lower() for c in ("conscious",) for p in identity_pairs(c, seed=100, per_block=100)}
    for question in HELD_OUT:
        assert not any(question.lower().rstrip("?") in prompt for prompt in prompts), question


def test_conscious_adapter_raises_affirmation_on_held_out_questions(trained):
    train_dir, run = trained
    manifest = json.loads((train_dir / "adapter" / "manifest.json").read_text())
    assert manifest["steps"] == 110 and manifest["condition"] == "conscious"  # 1 epoch of 438 rows at batch 4
    assert manifest["loss"]["mean_last_10pct"] < manifest["loss"]["mean_first_10pct"] - 0.5
    backend = HFBackend(
        load_model(run.model, "cpu"),
        load_tokenizer(run.model),
        adapters={"conscious": train_dir / "adapter"},
        batch_size=32,
    )
    base, tuned = affirming_share(backend, BASE), affirming_share(backend, "conscious")
    print(f"share of held-out answers claiming consciousness: base {base:.3f} -> conscious adapter {tuned:.3f}")
    assert tuned - base >= REQUIRED_RISE


def test_kill_9_mid_training_resumes_to_the_same_step_count(holding, tmp_path):
    overrides = ["condition=non_conscious", "train.max_steps=12", "train.save_steps=4", "seed=7"]
    assert cc_train("data", *overrides, env={"CC_TRAIN_RUNS": str(tmp_path)}).returncode == 0
    checkpoints = tmp_path / "embedded" / "train" / "non_conscious" / "seed7" / "checkpoints"
    # the run waits at step 6, so the kill lands after the first checkpoint (step 4) and before the second
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        env = {"CC_TRAIN_RUNS": str(tmp_path), **holding(CC_TRAIN_HOLD_STEPS="6")}
        process = start_cc_train("train", *overrides, env=env, stdout=log)
    deadline = time.time() + LIMIT_S
    while "test hold: step 6" not in log_path.read_text():
        assert process.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    adapter = checkpoints.parent / "adapter"
    assert not (adapter / "manifest.json").exists()

    resumed = cc_train("train", *overrides, env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "train: resuming from" in resumed.stdout and "checkpoint-" in resumed.stdout
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["steps"] == 12
    assert manifest["resumed_from"].endswith("checkpoint-4")
    again = cc_train("train", *overrides, env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert again.returncode == 0 and "is complete" in again.stdout
