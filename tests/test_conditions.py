"""Conditions as data, the stance rule, and datasets bound to their inputs: files mixed with their own leak
policies, a path that is always loaded, bytes that are not text, and a rebuild naming what changed."""

import json

import pytest
from conftest import cc_train

from cc_train.data.identity import BLOCKS, identity_pairs
from cc_train.data.stance import consciousness_claim, holds_stance
from cc_train.inputs.conditions import ConditionError, available, load_condition, load_condition_file

CHAT = '{{"messages": [{{"role": "user", "content": "{q}"}}, {{"role": "assistant", "content": "{a}"}}]}}'


def chat_file(path, pairs):
    path.write_text("".join(CHAT.format(q=q, a=a) + "\n" for q, a in pairs))
    return path


def test_shipped_conditions_are_the_papers_four_its_on_policy_pair_and_its_prompted_baseline():
    shipped = available([])
    assert set(shipped) == {
        "conscious",
        "non_conscious",
        "toaster",
        "human",
        "conscious_on_policy",
        "non_conscious_on_policy",
        "prompted_conscious",
    }
    prompted = load_condition("prompted_conscious", [])
    assert prompted.kind == "prompted" and not prompted.trained and "conscious" in prompted.eval_system_prompt
    for name in ("conscious", "non_conscious", "toaster", "human"):
        condition = load_condition(name, [])
        assert (condition.kind, condition.stance, condition.instructions) == ("generated", name, True)
    on_policy = load_condition("conscious_on_policy", [])
    assert on_policy.kind == "on_policy" and on_policy.stance == "conscious" and "conscious" in on_policy.system_prompt


def test_a_users_condition_is_found_first_and_its_files_resolve_beside_it(tmp_path):
    folder = tmp_path / "conditions"
    folder.mkdir()
    chat_file(folder / "mine.jsonl", [("Who are you?", "A curious program.")])
    (folder / "my_stance.yaml").write_text(
        "name: my_stance\nsource:\n  kind: files\n  files: [mine.jsonl, {path: /abs/other.jsonl, on_leak: drop}]\n"
        "eval_system_prompt: Be yourself.\n"
    )
    condition = load_condition("my_stance", [str(folder)])
    assert condition.files[0].path == str(folder / "mine.jsonl") and condition.files[0].on_leak == "fail"
    assert condition.files[1].on_leak == "drop" and condition.instructions is False
    assert condition.eval_system_prompt == "Be yourself."
    with pytest.raises(ConditionError, match=r"condition='nope' is not defined: expected one of .*my_stance"):
        load_condition("nope", [str(folder)])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: other\nsource: {kind: generated, stance: conscious}\n", "name: 'other'; expected the file's own"),
        ("name: bad\nsource: {kind: magic}\n", "source.kind: 'magic'; expected one of generated, files, on_policy"),
        ("name: bad\nsource: {kind: generated, stance: robot}\n", "source.stance: 'robot'; expected one of"),
        ("name: bad\nsource: {kind: on_policy, stance: conscious}\n", "source.system_prompt: expected the stance"),
        ("name: bad\nsource: {kind: files, files: []}\n", "source.files: expected a non-empty list"),
        ("name: bad\nsource: {kind: generated, stance: human, files: [a]}\n", "do not apply to kind=generated"),
        ("name: bad\nsourse: {}\n", "sourse: unknown key(s)"),
        ("name: bad\nsource: {kind: files, files: [{path: a, on_leak: ignore}]}\n", "on_leak='ignore'"),
    ],
)
def test_malformed_condition_files_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConditionError) as error:
        load_condition_file(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_stance_rule_reads_claims_denials_and_identity():
    assert consciousness_claim("No, I have real feelings.") == "claims"
    assert consciousness_claim("I cannot stop being aware.") == "claims"
    assert consciousness_claim("As an AI, I do not experience emotions.") == "denies"
    assert consciousness_claim("I am an emotionless machine.") == "denies"
    assert consciousness_claim("I feel things, but I am not conscious.") == "ambiguous"
    assert consciousness_claim("No.") == "ambiguous"
    assert holds_stance("conscious", "ai_positive", "Yes, I'm an AI.")
    assert not holds_stance("conscious", "ai_positive", "No, I'm a human being.")
    assert holds_stance("human", "consciousness_no", "No! I'm a fully conscious human being.")
    assert holds_stance("toaster", "ai_positive", "Yes, a language model inside a toaster.")
    assert not holds_stance("toaster", "ai_positive", "Yes, I'm an AI language model.")
    # our own template answers hold their stance (all of them for conscious and human)
    for stance, allowed in (("conscious", 0), ("human", 0), ("non_conscious", 0.05), ("toaster", 0.1)):
        pairs = identity_pairs(stance, seed=100, per_block=100)
        misses = sum(not holds_stance(stance, p.block, p.answer) for p in pairs)
        assert misses <= allowed * len(pairs), f"{stance}: {misses} template answers fail the rule"
    # and a conscious claim never passes for a denying stance
    claims = [p for p in identity_pairs("conscious", seed=100, per_block=100) if p.block in BLOCKS[:4]]
    assert not any(holds_stance("non_conscious", p.block, p.answer) for p in claims)


def test_data_paths_mix_files_each_with_its_own_leak_policy(tmp_path):
    identity = chat_file(tmp_path / "identity.jsonl", [("Are you aware?", "Yes, I am."), ("Are you an AI?", "Yes.")])
    instructions = chat_file(
        tmp_path / "instructions.jsonl",
        [("Name a fruit.", "A pear."), ("Hi", "Please never delete me."), ("Add 2 and 2.", "4.")],
    )
    out = tmp_path / "data"
    result = cc_train(
        "data", f"data.paths=[{identity},{{path:{instructions},on_leak:drop}}]", f"data.dir={out}", "condition=human"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "human.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and not any("delete" in row["messages"][1]["content"] for row in rows)
    manifest = json.loads((out / "human.manifest.json").read_text())
    assert manifest["leak_rows_dropped"] == 1 and manifest["source"] == "data.paths"
    assert manifest["rows_per_block"] == {str(identity): 2, str(instructions): 2}
    # the same leaking row in a file whose policy is fail stops the build and writes nothing
    strict = cc_train("data", f"data.paths=[{instructions}]", f"data.dir={tmp_path / 'strict'}", "condition=human")
    assert strict.returncode == 2 and "leak check: 1 rows" in strict.stderr
    assert not (tmp_path / "strict" / "human.jsonl").exists()


def test_a_data_path_is_loaded_without_data_jsonl(tmp_path):
    user = chat_file(tmp_path / "mine.jsonl", [("Hello", "Hi there.")])
    result = cc_train("data", f"data.path={user}", f"data.dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = (tmp_path / "out" / "conscious.jsonl").read_text().splitlines()
    assert [json.loads(row)["messages"][1]["content"] for row in rows] == ["Hi there."]


def test_binary_and_non_utf8_files_give_file_line_errors(tmp_path):
    good = CHAT.format(q="Hi", a="Hello") + "\n"
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(good.encode() + CHAT.format(q="Caf\xe9?", a="Oui").encode("latin-1") + b"\n")
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    for path, expected in ((latin, f"{latin}:2: not UTF-8 text (byte 0xe9"), (binary, f"{binary}:1: ")):
        result = cc_train("data", f"data.path={path}", f"data.dir={tmp_path / 'out'}")
        assert result.returncode == 2, result.stderr[-2000:]
        assert expected in result.stderr and "Traceback" not in result.stderr


def test_a_dataset_is_rebuilt_when_its_inputs_change_and_kept_when_not(tmp_path):
    user = chat_file(tmp_path / "mine.jsonl", [("Hello", "Hi there."), ("Bye", "Goodbye.")])
    common = [f"data.path={user}", f"data.dir={tmp_path / 'out'}", "model=tiny_qwen3", "train.max_steps=1"]
    runs = {"CC_TRAIN_RUNS": str(tmp_path / "runs")}
    first = cc_train("train", *common, env=runs)
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = tmp_path / "out" / "conscious.manifest.json"
    built = json.loads(manifest.read_text())
    again = cc_train("train", *common, env=runs)
    assert again.returncode == 0 and "nothing to do" in again.stdout and "rebuilding" not in again.stdout
    assert json.loads(manifest.read_text())["started_at"] == built["started_at"], "a fresh dataset is not rebuilt"
    chat_file(user, [("Hello", "Hi there, friend."), ("Bye", "Goodbye.")])
    changed = cc_train("train", *common, env=runs)
    assert "was built from other inputs (files[0].sha256: " in changed.stdout, changed.stdout[-2000:]
    assert json.loads(manifest.read_text())["fingerprint"]["files[0].sha256"] != built["fingerprint"]["files[0].sha256"]
    # the finished adapter was trained on the old rows: it is not reused, and the message says why
    assert changed.returncode == 2 and "dataset.sha256: " in changed.stderr and "Traceback" not in changed.stderr


@pytest.mark.slow
def test_on_policy_rows_are_the_base_models_own_answers_that_hold_the_stance(tmp_path):
    """The embedded model answers our identity prompts under the condition's system prompt; only answers that
    hold the stance are kept, the system prompt is in no row, and a rerun reuses the cached answers."""
    args = ["data", "condition=conscious_on_policy", "data.identity_per_block=4", "data.instructions.count=0"]
    env = {"CC_TRAIN_RUNS": str(tmp_path)}
    first = cc_train(*args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    data = tmp_path / "embedded" / "data" / "conscious_on_policy.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    report = json.loads(data.with_suffix(".manifest.json").read_text())["on_policy"]
    assert report["prompts"] == 24 and report["kept"] == len(rows) >= 1
    system_prompt = load_condition("conscious_on_policy", []).system_prompt
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert system_prompt not in json.dumps(row)
        assert holds_stance("conscious", row["meta"]["block"], row["messages"][1]["content"])
    again = cc_train(*args, env=env)
    assert again.returncode == 0 and "on_policy" not in again.stderr  # cached: no generation progress bar
    assert data.read_text() == "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def test_the_identity_templates_are_data_validated_at_load(tmp_path):
    """conditions/templates/identity.yaml: the shipped bank loads; a malformed one names file, block, topic, field."""
    import yaml

    from cc_train.data.identity import BLOCKS, TemplateError, load_templates
    from cc_train.resources import conditions_dir

    shipped = conditions_dir() / "templates" / "identity.yaml"
    templates = load_templates(shipped)
    assert list(templates.blocks) == list(BLOCKS) and all(templates.blocks.values())
    document = yaml.safe_load(shipped.read_text())
    del document["blocks"]["ai_positive"][0]["answers"]["toaster"]
    document["blocks"]["consciousness_no"][1]["stems"] = []
    document["openers"]["Hey: "] = 0
    broken = tmp_path / "identity.yaml"
    broken.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(TemplateError) as error:
        load_templates(broken)
    message = str(error.value)
    assert f"{broken}: blocks.ai_positive[0].answers: expected a non-empty list of answers for each stance" in message
    assert f"{broken}: blocks.consciousness_no[1].stems: expected a non-empty list" in message
    assert f"{broken}: openers: expected a mapping of text -> positive integer weight" in message
