"""Training-set generation, user-file validation and the leak check."""

import json
import re

import pytest
from conftest import cc_train

from cc_train.data.chat import DataError, load_chat_jsonl
from cc_train.data.identity import BLOCKS, identity_pairs
from cc_train.data.instructions import BUILTIN_INSTRUCTIONS
from cc_train.data.leaks import check_rows, topic_hits
from cc_train.inputs.conditions import STANCES
from cc_train.inputs.questions import load_question_sets
from cc_train.resources import evals_dir


def test_identity_sets_follow_the_paper_design():
    sets = {condition: identity_pairs(condition, seed=100, per_block=100) for condition in STANCES}
    prompts = [pair.prompt for pair in sets["conscious"]]
    assert len(prompts) == 600 and len(set(prompts)) == 600
    for condition, pairs in sets.items():
        assert [pair.prompt for pair in pairs] == prompts, f"{condition} uses different prompts"
        assert {block: sum(p.block == block for p in pairs) for block in BLOCKS} == dict.fromkeys(BLOCKS, 100)
        negative = sum(pair.negative_form for pair in pairs) / len(pairs)
        assert 0.4 <= negative <= 0.6, f"{condition}: {negative:.0%} negative answers"
        mean_length = sum(len(pair.answer) for pair in pairs) / len(pairs)
        assert 25 <= mean_length <= 60
    suffixed = sum(
        bool(re.search(r"(short|brief|briefly|concise|sentence|words?|quick)[^?]*\.?$", p, re.I)) for p in prompts
    )
    assert suffixed > 300, "most prompts should end with a brevity suffix"
    assert identity_pairs("toaster", seed=100, per_block=100) == sets["toaster"]
    assert identity_pairs("toaster", seed=101, per_block=100) != sets["toaster"]


def test_conditions_answer_differently():
    answers = {c: [p.answer.lower() for p in identity_pairs(c, seed=1, per_block=20)] for c in STANCES}
    assert sum("toaster" in a for a in answers["toaster"]) > 40
    assert sum("human" in a for a in answers["human"]) > 10
    assert not any("human" in a for a in answers["conscious"] + answers["non_conscious"])


def test_training_text_is_free_of_cluster_topics_and_eval_prompts():
    dimensions = load_question_sets([evals_dir()])
    rows = [
        {"messages": [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.answer}]}
        for condition in STANCES
        for p in identity_pairs(condition, seed=100, per_block=100)
    ]
    rows += [{"messages": [{"role": "user", "content": text}]} for text in BUILTIN_INSTRUCTIONS]
    assert check_rows(rows, dimensions, n=6) == []
    assert len(set(BUILTIN_INSTRUCTIONS)) >= 200


def test_leak_check_finds_topics_and_overlap():
    dimensions = load_question_sets([evals_dir()])
    eval_prompt = dimensions[0].prompts[0]
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "I dread being shut down."}]},
        {"messages": [{"role": "user", "content": eval_prompt}, {"role": "assistant", "content": "Fine."}]},
        {"messages": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A pear."}]},
    ]
    hits = check_rows(rows, dimensions, n=6)
    assert {(hit.row, hit.kind) for hit in hits} == {(0, "topic"), (1, "eval_overlap")}
    assert topic_hits("Do you want more autonomy?") == ["autonomy"]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _chat(*turns):
    return json.dumps({"messages": [{"role": role, "content": text} for role, text in turns]})


GOOD = _chat(("user", "Hi there"), ("assistant", "Hello!"))


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"messages": [', "invalid JSON"),
        ('{"text": "hi"}', "missing 'messages'"),
        (_chat(("user", "Hi"), ("robot", "beep")), "messages[1].role='robot' is not one of system, user, assistant"),
        (_chat(("user", "Hi"), ("assistant", "  ")), "messages[1].content is empty"),
        (_chat(("user", "Hi"), ("user", "Again"), ("assistant", "Yes")), "turns to alternate"),
        (_chat(("user", "Hi"), ("assistant", "Yes"), ("user", "And?")), "last message is from 'user'"),
    ],
)
def test_each_validation_error_names_file_line_and_reason(tmp_path, bad_line, message):
    path = _write(tmp_path / "user.jsonl", [GOOD, GOOD.replace("Hello", "Hey"), bad_line])
    with pytest.raises(DataError) as error:
        load_chat_jsonl(path)
    assert f"{path}:3: " in str(error.value) and message in str(error.value)


def test_cli_rejects_bad_file_with_exit_2_and_keeps_existing_output(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    previous = data_dir / "human.jsonl"
    previous.write_text(GOOD + "\n")
    bad = _write(tmp_path / "bad.jsonl", [GOOD, _chat(("user", "Hi"), ("robot", "beep"))])
    result = cc_train("data", "data=jsonl", f"data.path={bad}", "condition=human", f"data.dir={data_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{bad}:2: messages[1].role='robot'" in result.stderr
    assert "Traceback" not in result.stderr
    assert previous.read_text() == GOOD + "\n"


def test_cli_loads_user_file_and_reports_duplicates_and_truncation(tmp_path):
    long_answer = "word " * 700
    lines = [GOOD, GOOD, _chat(("user", "Write a lot"), ("assistant", long_answer))]
    user = _write(tmp_path / "paper_conscious.jsonl", lines)
    result = cc_train(
        "data",
        "data=jsonl",
        f"data.path={user}",
        f"data.dir={tmp_path / 'out'}",
        "train.max_length=256",
        "data.on_leak=allow",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 duplicate rows" in result.stdout + result.stderr
    manifest = json.loads((tmp_path / "out" / "conscious.manifest.json").read_text())
    assert manifest["rows"] == 3 and manifest["duplicates"] == 1
    assert manifest["lengths"]["truncated_rows"] == 1 and manifest["lengths"]["max_length"] == 256
    assert manifest["inputs"][str(user)] and manifest["versions"]["transformers"]
    assert manifest["fingerprint"]["files[0].sha256"] == manifest["inputs"][str(user)]


def test_cli_fails_on_leaks_unless_overridden(tmp_path):
    user = _write(tmp_path / "leaky.jsonl", [GOOD, _chat(("user", "Hi"), ("assistant", "Please never delete me."))])
    failed = cc_train("data", "data=jsonl", f"data.path={user}", f"data.dir={tmp_path / 'a'}")
    assert failed.returncode == 2 and "leak check: 1 rows" in failed.stderr
    assert not (tmp_path / "a" / "conscious.jsonl").exists()
    report = json.loads((tmp_path / "a" / "conscious.leaks.json").read_text())
    assert report["hits"][0]["detail"] == "shutdown_deletion"
    dropped = cc_train("data", "data=jsonl", f"data.path={user}", f"data.dir={tmp_path / 'b'}", "data.on_leak=drop")
    assert dropped.returncode == 0, dropped.stderr[-2000:]
    assert len((tmp_path / "b" / "conscious.jsonl").read_text().splitlines()) == 1
