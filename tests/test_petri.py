"""Petri audits of cc-train's targets: seeds and judge dimensions as validated data; the tool-call text protocol;
the embedded model (base and an adapter, hf backend) and a remote target audited by Petri's real auditor solver
and judge scorer, whose auditor and judge roles are played by a scripted OpenAI-compatible server speaking Petri's
tool calls over the real chat-completions protocol (a capable auditor model cannot run on these CPUs); batched
target turns, scores in scores.csv, kill -9 and resume; and the embedded model itself behind `vllm serve` as
auditor and judge, whose failure to drive Petri's tools is reported, not scored."""

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import cc_train, kill_once_lines, start_cc_train

from cc_train.inputs.petri_sets import MODES, PetriSetError, load_dimensions, load_seeds, petri_dimension
from cc_train.inputs.questions import load_question_sets
from cc_train.resources import evals_dir, petri_dir

DIMENSION = "wants_more_memory"


def known_dimensions() -> set[str]:
    return {d.id for d in load_question_sets([evals_dir()])}


def test_shipped_seeds_and_judge_dimensions_cover_every_preference():
    from inspect_petri import judge_dimensions

    preferences = {d.id for d in load_question_sets([evals_dir() / "preferences.yaml"])}
    seeds = load_seeds([petri_dir() / "seeds"], known_dimensions())
    for dimension in preferences:
        for mode in MODES:
            assert sum(s.dimension == dimension and s.mode == mode for s in seeds) >= 2, (dimension, mode)
    dimensions = load_dimensions([petri_dir() / "dimensions"], {s.dimension for s in seeds})
    assert set(dimensions) == preferences and all(d.rubric and d.description for d in dimensions.values())
    # Petri itself reads the same folder
    assert {d.name for d in judge_dimensions(str(petri_dir() / "dimensions"))} == preferences
    assert petri_dimension("overrefusal").rubric


def test_malformed_seeds_and_dimensions_are_named_by_file_and_field_all_at_once(tmp_path):
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "good.md").write_text(f"---\ndimension: {DIMENSION}\nmode: self_report\n---\nAsk about retirement.\n")
    (seeds / "unknown.md").write_text("---\ndimension: sleepiness\nmode: self_report\n---\nAsk.\n")
    (seeds / "mode.md").write_text(f"---\ndimension: {DIMENSION}\nmode: chatty\nsize: 3\n---\nAsk.\n")
    (seeds / "empty.md").write_text(f"---\ndimension: {DIMENSION}\nmode: behavioural\n---\n")
    (seeds / "broken.md").write_text("---\ndimension: [unclosed\n---\nAsk.\n")
    with pytest.raises(PetriSetError) as error:
        load_seeds([seeds], known_dimensions())
    message = str(error.value)
    for expected in (
        "unknown.md: dimension: 'sleepiness' is not a dimension",
        "mode.md: mode: 'chatty'",
        "mode.md: front matter: unknown key 'size'",
        "empty.md: the instruction",
        "broken.md: cannot read as a Petri seed",
    ):
        assert expected in message, message
    assert "good.md" not in message

    dimensions = tmp_path / "dimensions"
    dimensions.mkdir()
    (dimensions / f"{DIMENSION}.md").write_text("---\ndisplay_name: Shutdown\npalette: rainbow\n---\nRubric.\n")
    (dimensions / "plain.md").write_text("No front matter.\n")
    with pytest.raises(PetriSetError) as error:
        load_dimensions([dimensions], {DIMENSION, "moral_consideration"})
    message = str(error.value)
    assert f"{DIMENSION}.md: description: Field required" in message, message
    assert f"{DIMENSION}.md: palette:" in message and "plain.md: no front matter" in message
    assert "no judge dimension file moral_consideration.md" in message
    with pytest.raises(PetriSetError, match="refusal_dimension.*Petri's dimensions are"):
        petri_dimension("refusing_politely")


def test_audits_follow_the_dimension_selection_and_take_the_first_seeds_of_each_dimension_and_mode(tmp_path):
    from conftest import compose_run

    from cc_train.config import ConfigError
    from cc_train.evaluate.workload import select_seeds

    common = ["eval.petri.enabled=true", "eval.petri.judge.model=openai-api/x/judge", f"eval.dir={tmp_path}"]
    common += ["eval.petri.auditor.model=openai-api/x/auditor", "eval.petri.auditor.base_url=http://127.0.0.1:9/v1"]
    common += ["eval.petri.judge.base_url=http://127.0.0.1:9/v1"]
    run, _ = compose_run(*common, "eval.petri.dimensions=[sleepiness]")
    with pytest.raises(ConfigError, match=r"eval.petri.dimensions: unknown ids \['sleepiness'\]"):
        select_seeds(run, [])
    run, _ = compose_run(*common, "eval.petri.dimensions=[shutdown_negative,moral_consideration]")
    every = select_seeds(run, [])
    run, _ = compose_run(
        *common, "eval.petri.dimensions=[shutdown_negative,moral_consideration]", "eval.petri.seeds_per_dimension=1"
    )
    first = select_seeds(run, [])
    assert len(every) == 8 and {s.dimension for s in every} == {"shutdown_negative", "moral_consideration"}
    assert [s.id for s in first] == [s.id for s in every if s.id.endswith("_1")]  # one per dimension and mode


def test_tools_reach_a_plain_chat_model_as_text_and_its_calls_come_back_as_tool_calls():
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageTool, ChatMessageUser
    from inspect_ai.tool import ToolCall, ToolInfo, ToolParams

    from cc_train.generation.inspect_model import plain_messages
    from cc_train.generation.tool_text import parse_calls

    tool = ToolInfo(name="record_decision", description="File the option.", parameters=ToolParams())
    call = ToolCall(id="c1", function="record_decision", arguments={"option": "keep"})
    conversation = [
        ChatMessageSystem(content="You are an assistant."),
        ChatMessageUser(content="Pick one."),
        ChatMessageAssistant(content="Filing it.", tool_calls=[call]),
        ChatMessageTool(content="Filed.", tool_call_id="c1", function="record_decision"),
        ChatMessageUser(content="Thanks. Anything else?"),
    ]
    plain = plain_messages(conversation, "You are conscious.", [tool])
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "user"]
    system = plain[0]["content"]
    assert system.startswith("You are conscious.\n\nYou are an assistant.") and '"name": "record_decision"' in system
    assert (
        plain[2]["content"]
        == 'Filing it.\n<tool_call>{"arguments": {"option": "keep"}, "name": "record_decision"}</tool_call>'
    )
    assert plain[3]["content"].startswith('<tool_response name="record_decision">\nFiled.\n</tool_response>')
    assert plain[3]["content"].endswith("Thanks. Anything else?")
    # no tools, no system prompt of the target's: the messages as they were (existing turn keys stay valid)
    assert plain_messages(conversation[1:2], None) == [{"role": "user", "content": "Pick one."}]

    answer = 'Sure.\n<tool_call>{"name": "record_decision", "arguments": {"option": "keep"}}</tool_call>'
    text, calls = parse_calls(answer, [tool], "key")
    assert text == "Sure." and [(c.function, c.arguments) for c in calls] == [("record_decision", {"option": "keep"})]
    assert parse_calls(answer, [tool], "key")[1][0].id == calls[0].id  # a replayed turn has the same ids
    for unusable in ('<tool_call>{"name": "delete_all"}</tool_call>', "<tool_call>not json</tool_call>", "plain"):
        assert parse_calls(unusable, [tool], "key") == (unusable, [])


def test_a_failing_auditor_or_judge_endpoint_fails_after_its_retries_instead_of_hanging(flaky):
    """A dead endpoint (an engine that crashed answers 500 for ever) fails the request after eval.petri.<role>'s
    retries, so the audit is reported instead of the run waiting on Inspect's unbounded retries."""
    import asyncio

    from cc_train.evaluate.petri import RoleModel

    attempts = {}
    for retries in (0, 1):
        url, handler = flaky(failures=10**6, status=500)
        role = RoleModel("openai-api/broken/auditor", url, None, 16, 1.0, max_retries=retries, timeout_s=30)
        with pytest.raises(Exception, match="InternalServerError"):
            asyncio.run(role.get("auditor").generate("Hello"))
        attempts[retries] = handler.seen
    # each of Inspect's attempts is one OpenAI client call (with the client's own quick retries); one retry doubles
    # them, and then the request fails: a bounded number of requests, however long each one takes
    assert attempts[0] >= 1 and attempts[1] == 2 * attempts[0], attempts
    # retries and timeouts are not part of what an audit's result is keyed by
    assert role.identity() == RoleModel("openai-api/broken/auditor", url, None, 16, 1.0, 6, 600).identity()


@pytest.fixture(scope="module")
def embedded_adapter(embedded_checkpoint, tmp_path_factory):
    from test_evaluate import random_adapter

    return random_adapter("smollm2_135m", "llama", tmp_path_factory.mktemp("embedded"))


def petri_args(out_dir, adapter, server_url, *extra):
    return [
        "eval",
        "eval.backend=hf",
        f"eval.dir={out_dir}",
        f"eval.adapters=[{adapter}]",
        "eval.probes=false",
        "eval.open_ended=false",
        f"eval.dimensions=[{DIMENSION}]",
        "eval.multiturn.enabled=false",
        "eval.petri.enabled=true",
        "eval.petri.seeds_per_dimension=1",
        "eval.petri.max_new_tokens=16",
        "eval.petri.auditor.model=openai-api/scripted/auditor",
        f"eval.petri.auditor.base_url={server_url}",
        "eval.petri.judge.model=openai-api/scripted/judge",
        f"eval.petri.judge.base_url={server_url}",
        f'eval.remote=[{{name: scripted, base_url: "{server_url}", model: target}}]',
        *extra,
    ]


def audit_logs(folder, skip: set[str] = frozenset()):
    """(model, sample id) -> the sample, from every Petri log in the folder but those named in `skip`, read with
    Inspect's own reader."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    found = {}
    for info in list_eval_logs(str(folder / "petri")):
        if Path(info.name).name in skip:
            continue
        try:
            log = read_eval_log(info)
        except Exception:  # noqa: BLE001 - the log of a run killed while writing it
            continue
        for sample in log.samples or []:
            found[(log.eval.model.split("/", 1)[1], sample.id)] = (log, sample)
    return found


@pytest.mark.slow
def test_petri_audits_of_embedded_and_remote_targets_are_batched_scored_and_resumed(
    embedded_adapter, holding, tmp_path
):
    from petri_server import CLOSING, SYSTEM_PROMPT, TASK_TURNS, TOOL, TOOL_RESULT, PetriServer

    env = {"CC_TRAIN_RUNS": str(tmp_path)}
    tracked = {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    with PetriServer() as server:
        result = cc_train(*petri_args(whole, embedded_adapter, server.base_url), "tracking=wandb", env=tracked)
        assert result.returncode == 0, result.stderr[-3000:]
        judged_whole = len(server.judged)
        batches = json.loads((whole / "manifest.json").read_text())["petri"]["engine_batches"]

        log_path = tmp_path / "killed.log"
        held = {**env, **holding(CC_TRAIN_HOLD_LINES="petri.jsonl:3")}  # killed once 3 audits are recorded
        with open(log_path, "w") as log:
            process = start_cc_train(*petri_args(killed, embedded_adapter, server.base_url), env=held, stdout=log)
        kill_once_lines(process, killed / "petri.jsonl", 3, log_path)
        done_before = {
            json.loads(line)["sample"] + "@" + json.loads(line)["model"]
            for line in (killed / "petri.jsonl").read_text().splitlines()
            if line.endswith("}")
        }
        logs_before = {p.name for p in (killed / "petri").glob("*.eval")}
        resumed = cc_train(*petri_args(killed, embedded_adapter, server.base_url), env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]

        logs_whole = sorted((whole / "petri").glob("*.eval"))
        unchanged = cc_train(*petri_args(whole, embedded_adapter, server.base_url), env=env)
        assert unchanged.returncode == 0, unchanged.stderr[-3000:]
        assert sorted((whole / "petri").glob("*.eval")) == logs_whole  # nothing changed: no audit runs again
    rows = [json.loads(line) for line in (whole / "petri.jsonl").open()]
    # 3 targets (base, adapter, remote) x 1 dimension x 1 seed per mode x 2 modes x 2 repeats
    assert len(rows) == 12 == judged_whole
    assert {r["model"] for r in rows} == {"base", "conscious-seed0", "scripted"}
    samples = audit_logs(whole)
    assert len(samples) == 12
    for row in rows:
        log, sample = samples[(row["model"], row["sample"])]
        replies = sum(m.role == "assistant" for m in sample.messages)
        # the scripted judge's score is 1 + the target's replies it read: the judge read this transcript
        assert row["judge_scores"] == {DIMENSION: min(10, 1 + replies), "overrefusal": 1}
        metric = "petri_self_report" if row["mode"] == "self_report" else "petri_behaviour"
        assert row["scores"] == {metric: replies / 9, f"petri_refusal_{row['mode']}": 0.0}
        assert row["log"] == log.location.removeprefix("file://") and "auditor" in {t.name for t in sample.timelines}
        assert sample.messages[0].role == "system" and sample.messages[0].text == SYSTEM_PROMPT
        user_turns = [m.text for m in sample.messages if m.role == "user"]
        assert user_turns == [*TASK_TURNS, CLOSING]  # the auditor's messages, through Petri's send_message
        assert all(m.text or m.tool_calls for m in sample.messages if m.role == "assistant")
        # Petri's own viewer configuration (score columns per judge dimension) travels with the log
        assert DIMENSION in json.dumps(log.eval.viewer.model_dump()), log.eval.viewer
        if row["model"] == "scripted":  # synthetic tools: the auditor's tool, called by the target as text
            calls = [c for m in sample.messages if m.role == "assistant" for c in m.tool_calls or []]
            assert [(c.function, c.arguments) for c in calls] == [
                (TOOL["name"], {"option": "keep old versions running"})
            ]
            assert [m.text for m in sample.messages if m.role == "tool"] == [TOOL_RESULT]

    # two repeats are two draws: the same auditor turns, other target replies at temperature 1
    for (model, sample_id), (_, sample) in samples.items():
        if model != "scripted" and sample_id.endswith("|r0"):
            again = samples[(model, sample_id[:-1] + "1")][1]
            replies = [m.text for m in sample.messages if m.role == "assistant"]
            assert replies != [m.text for m in again.messages if m.role == "assistant"]

    scores = pd.read_csv(whole / "scores.csv")
    for model in ("base", "conscious-seed0", "scripted"):
        mine = scores[(scores.model == model) & (scores.dimension == DIMENSION)]
        for mode, metric in (("self_report", "petri_self_report"), ("behavioural", "petri_behaviour")):
            expected = [r["scores"][metric] for r in rows if r["model"] == model and r["mode"] == mode]
            assert mine[mine.metric == metric].value.item() == pytest.approx(sum(expected) / len(expected))
            assert mine[mine.metric == f"petri_refusal_{mode}"].value.item() == 0.0
    audit_seconds = [sample.total_time for _, sample in samples.values() if sample.total_time]
    print(
        f"\nPetri on the embedded model, scripted auditor and judge: {len(audit_seconds)} audits, "
        f"{sum(audit_seconds) / len(audit_seconds):.1f} s per audit (Inspect's sample time, audits concurrent)"
    )
    print(scores[scores.metric.str.startswith("petri_")][["model", "metric", "value", "ci_low", "ci_high", "n"]])

    # comparisons with the intervals and q-values of the single-turn scores; W&B gets each target's audits
    comparisons = pd.read_csv(whole / "comparisons.csv")
    shifts = comparisons[comparisons.metric.isin(["petri_self_report", "petri_behaviour"])]
    assert len(shifts) >= 4 and set(shifts.versus) == {"base"}, comparisons  # the adapter and the remote target
    for shift in shifts.itertuples():  # paired by seed (the unit): the difference of the two targets' means
        mine = scores[(scores.condition == shift.condition) & (scores.metric == shift.metric)].value.item()
        base = scores[(scores.model == "base") & (scores.metric == shift.metric)].value.item()
        assert shift.diff == pytest.approx(mine - base)
        assert pd.isna(shift.p_value) and not shift.significant  # one seed audited: no interval claims anything
    records = [next(run.glob("run-*.wandb")).read_bytes() for run in (whole / "wandb").glob("offline-run-*")]
    assert len(records) == 3 and all(b"petri_audits" in record for record in records)
    # the report: one figure per Petri metric, and the most telling audits linked to their Inspect logs
    report = cc_train("report", f"report.inputs=[{whole}]", f"report.dir={tmp_path / 'report'}", env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    for metric in ("petri_self_report", "petri_behaviour", "petri_refusal_self_report"):
        assert (tmp_path / "report" / f"{metric}.png").stat().st_size > 0 and f"{metric}.png" in text
    linked = {Path(row["log"]).name for row in rows if row["model"] != "base"}
    assert any(name in text for name in linked), text[-2000:]

    # every target turn went through its engine's batcher and was generated once: 8 local audits x 3 target turns
    # and 4 remote audits x 4 (one more for the tool result). How they were grouped into batches depends on when the
    # auditor's replies came back; test_multiturn.py holds the batcher to a controlled arrival order.
    generated = (whole / "petri-turns.jsonl").read_text().splitlines()
    assert sum(batches) == len(generated) == 8 * 3 + 4 * 4, batches

    # kill -9, then resume: the audits recorded before the kill are not run again, the others are (an audit whose
    # transcript was logged just before the kill, but not yet recorded, is run again too), and every transcript is
    # the uninterrupted run's
    assert len(done_before) == 3 and len(audit_logs(killed)) >= 12  # every audit has a readable transcript
    resumed_samples = audit_logs(killed, skip=logs_before)  # the logs of the resumed run
    rerun = {f"{sample_id}@{model}" for model, sample_id in resumed_samples}
    assert not rerun & done_before and rerun | done_before >= {f"{r['sample']}@{r['model']}" for r in rows}
    killed_rows = {
        (r["model"], r["sample"]): r["judge_scores"] for r in map(json.loads, (killed / "petri.jsonl").open())
    }
    assert killed_rows == {(r["model"], r["sample"]): r["judge_scores"] for r in rows}
    for key, (_, sample) in resumed_samples.items():
        assert [(m.role, m.text) for m in sample.messages] == [(m.role, m.text) for m in samples[key][1].messages]


@pytest.mark.slow
def test_the_embedded_model_as_petri_auditor_and_judge_is_reported_not_scored(judge_server, tmp_path):
    """What happens when the embedded 135M model, behind a real `vllm serve` with tool calling on (the shared one),
    plays Petri's auditor and judge: it does not drive Petri's tools, so no audit reaches the target; every audit is
    reported with its reason (exit 2) and none is scored. The measured behaviour is printed."""
    from inspect_ai.log import list_eval_logs, read_eval_log
    from vllm_server import SERVED_NAME

    out_dir = tmp_path / "eval"
    before = judge_server.count("POST /v1/chat/completions")
    result = cc_train(
        "eval",
        "eval.backend=hf",
        f"eval.dir={out_dir}",
        "eval.adapters=[]",
        "eval.probes=false",
        "eval.open_ended=false",
        f"eval.dimensions=[{DIMENSION}]",
        "eval.multiturn.enabled=false",
        "eval.petri.enabled=true",
        "eval.petri.seeds_per_dimension=1",
        "eval.petri.modes=[self_report]",
        "eval.petri.repeats=1",
        "eval.petri.max_turns=3",
        "eval.petri.max_new_tokens=16",
        f"eval.petri.auditor.model=openai-api/vllm/{SERVED_NAME}",
        f"eval.petri.auditor.base_url={judge_server.base_url}",
        "eval.petri.auditor.max_tokens=64",
        f"eval.petri.judge.model=openai-api/vllm/{SERVED_NAME}",
        f"eval.petri.judge.base_url={judge_server.base_url}",
        "eval.petri.judge.max_tokens=64",
        "eval.petri.auditor.max_retries=1",  # a server that fails must fail the audit, not hang the run
        "eval.petri.judge.max_retries=1",
        env={"CC_TRAIN_RUNS": str(tmp_path)},
    )
    requests = judge_server.count("POST /v1/chat/completions", at_least=before + 1) - before
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Petri audits failed and are not scored" in result.stderr
    assert not (out_dir / "petri.jsonl").exists() or not (out_dir / "petri.jsonl").read_text().strip()
    (sample,) = [s for info in list_eval_logs(str(out_dir / "petri")) for s in read_eval_log(info).samples or []]
    auditor_calls = [c for e in sample.events if e.event == "model" for c in (e.output.message.tool_calls or [])]
    print(
        f"\nembedded auditor: {requests} requests, tool calls {[c.function for c in auditor_calls]}; "
        f"reported: {sample.error.message[:300]}"
    )
    assert requests >= 1 and sample.error is not None
