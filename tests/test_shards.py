"""Sharded evaluation: the split of the work (whole targets where they balance, items by hash where they do not, the
same split in every process), the logs each process writes and reads, and data-parallel engines on faked devices."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from conftest import LIMIT_S, cc_train, compose_run, kill_once_lines, send_json, start_cc_train

from cc_train.config import ConfigError
from cc_train.evaluate.engines import core_groups, device_groups, engine_command, engine_count
from cc_train.evaluate.shards import (
    BALANCE_TOLERANCE,
    KeyedLogs,
    Place,
    ShardSpec,
    Unit,
    job_shard_counts,
    owner,
    share_of,
    split,
)

KEYS = [f"item{index}" for index in range(400)]


def assignment(units: list[Unit], levels: list[tuple[int, int]]) -> dict[tuple[str, str], list[str]]:
    """(target, item) -> the shard labels that own it, for every leaf share of `levels` counts."""
    owners: dict[tuple[str, str], list[str]] = {(u.target, key): [] for u in units for key in KEYS}
    counts = [count for _, count in levels]

    def leaves(prefix: list[tuple[int, int]]):
        if len(prefix) == len(counts):
            yield prefix
            return
        for index in range(1, counts[len(prefix)] + 1):
            yield from leaves([*prefix, (index, counts[len(prefix)])])

    for leaf in leaves([]):
        spec = ShardSpec(leaf[0], leaf[1] if len(leaf) > 1 else None)
        share = share_of(units, spec)
        for target, key in owners:
            if share.owns(target, key):
                owners[(target, key)].append(spec.label())
    return owners


def test_many_targets_go_whole_where_they_balance_and_each_shard_serves_few_of_them():
    """16 equal targets over 4 shards: whole, 4 each (each engine serves 4 adapters as LoRA: few chunks). 17: whole
    targets would leave one shard 18% above the others, so targets are cut, yet each shard still serves few."""
    units = [Unit(f"t{index}", 100.0) for index in range(16)]
    groups = split(units, 4)
    assert all(not unit.cuts for group in groups for unit in group) and [len(g) for g in groups] == [4, 4, 4, 4]
    assert [u.target for group in groups for u in group] == [u.target for u in units], "contiguous, in order"
    units.append(Unit("t16", 100.0))
    groups = split(units, 4)
    loads = [sum(u.weight for u in group) for group in groups]
    assert max(loads) <= (1 + BALANCE_TOLERANCE) * sum(loads) / 4
    assert max(len({u.target for u in group}) for group in groups) <= 6


def test_few_targets_are_cut_by_item_hash_and_every_item_has_exactly_one_owner():
    """3 targets over 2 shards cannot balance whole (2 vs 1): each is cut in parts by a stable hash of the item key."""
    units = [Unit("base", 100.0), Unit("a", 100.0), Unit("b", 100.0)]
    groups = split(units, 2)
    loads = [sum(u.weight for u in group) for group in groups]
    assert max(loads) <= (1 + BALANCE_TOLERANCE) * sum(loads) / 2
    assert any(unit.cuts for group in groups for unit in group)
    owners = assignment(units, [(1, 2)])
    assert all(len(labels) == 1 for labels in owners.values()), "no item twice, none lost"
    shares = {label: sum(1 for labels in owners.values() if labels == [label]) for label in ("shard 1/2", "shard 2/2")}
    assert abs(shares["shard 1/2"] - shares["shard 2/2"]) < 0.15 * len(owners), shares


def test_engines_split_their_jobs_share_again_and_cover_everything_once():
    """Jobs x engines: every item is owned by exactly one (job, engine), and the engines of a job own exactly the
    job's items, whatever the number of engines."""
    units = [Unit("base", 50.0), *(Unit(f"adapter{i}", 100.0) for i in range(5)), Unit("merged", 100.0, False)]
    for engines in (1, 3, 8):
        owners = assignment(units, [(1, 2), (1, engines)])
        assert all(len(labels) == 1 for labels in owners.values()), engines
        job = share_of(units, ShardSpec((2, 2)))
        for (target, key), labels in owners.items():
            assert labels[0].startswith("shard 2/2") == job.owns(target, key)
    assert not any(unit.cuts for unit in split(units, 8)[-1] if unit.target == "merged"), "never cut"


def test_the_split_is_the_same_in_every_process_and_names_the_owner():
    units = [Unit(f"t{index}", float(index + 1)) for index in range(6)]
    first = [[(u.target, u.cuts) for u in group] for group in split(units, 4)]
    again = [[(u.target, u.cuts) for u in group] for group in split(list(units), 4)]
    assert first == again
    for target, key in [("t0", "x"), ("t5", "y"), ("t3", "z")]:
        index = owner(units, 4, target, key)
        assert share_of(units, ShardSpec((index, 4))).owns(target, key)


def test_logs_write_their_own_file_and_read_every_other(tmp_path):
    """A shard appends only to its own log and sees every other log's rows; the final step adopts the rows it
    asks for into the evaluation folder's log, in key order; a line still being written elsewhere is left out."""
    eval_dir = tmp_path / "eval"
    first, second = (
        Place(eval_dir, ShardSpec((1, 2)).folder(eval_dir)),
        Place(eval_dir, ShardSpec((2, 2)).folder(eval_dir)),
    )
    one = first.log("samples.jsonl")
    one.append([{"key": "b", "v": 1}, {"key": "a", "v": 2}])
    (second.folder / "samples.jsonl").parent.mkdir(parents=True)
    (second.folder / "samples.jsonl").write_text(json.dumps({"key": "c", "v": 3}) + '\n{"key": "d", "v"')  # mid-write
    two = second.log("samples.jsonl")
    assert set(two.rows) == {"a", "b", "c"} and "d" not in two
    two.append([{"key": "a", "v": 99}, {"key": "e", "v": 5}])  # a row another shard holds is not written again
    assert [json.loads(line)["key"] for line in (first.folder / "samples.jsonl").read_text().splitlines()] == ["b", "a"]
    whole = Place(eval_dir, eval_dir).log("samples.jsonl")
    assert whole.adopt({"a", "b", "c", "e", "zz"}) == 4
    main = [json.loads(line)["key"] for line in (eval_dir / "samples.jsonl").read_text().splitlines()]
    assert main == ["a", "b", "c", "e"] and whole.adopt({"a", "b"}) == 0
    assert [row["key"] for row in whole.selected({"e", "a", "c"})] == ["a", "c", "e"]
    assert job_shard_counts(eval_dir) == {2}
    assert isinstance(whole, KeyedLogs)


def test_data_parallel_engines_on_faked_devices():
    """8 GPUs: 8 engines at tensor parallel 1, 4 at 2; an engine over several nodes (Ray) is one; a CPU one; the
    devices and cores each engine gets; an explicit count the GPUs cannot hold is refused."""
    gpus = [str(index) for index in range(8)]
    run, _ = compose_run("eval.backend=vllm")
    assert engine_count(run, gpus, on_gpus=True) == 8
    assert engine_count(run, [], on_gpus=False) == 1
    run, _ = compose_run("eval.backend=vllm", "eval.tensor_parallel=2")
    assert engine_count(run, gpus, on_gpus=True) == 4
    assert device_groups(gpus, 2, 4) == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    run, _ = compose_run("eval.backend=vllm", "eval.tensor_parallel=8", "eval.pipeline_parallel=2")
    assert engine_count(run, gpus, on_gpus=True) == 1
    run, _ = compose_run("eval.backend=vllm", "eval.tensor_parallel=2", "eval.engines=5")
    with pytest.raises(ConfigError, match="eval.engines=5 x 2 GPU"):
        engine_count(run, gpus, on_gpus=True)
    run, _ = compose_run("eval.engines=2")
    assert engine_count(run, [], on_gpus=False) == 2
    assert core_groups([0, 1, 2, 3], 2) == [[0, 1], [2, 3]] and core_groups([0], 2) == [[0], [0]]


def test_engine_processes_repeat_the_command_with_their_place_in_the_split():
    overrides = ["recipe=paper/qwen3_30b_a3b", "eval.shard=2/4", "+eval.engines=auto", "judge=local"]
    assert engine_command(overrides, ShardSpec((2, 4), (3, 8))) == [
        "eval",
        "recipe=paper/qwen3_30b_a3b",
        "judge=local",
        "eval.shard=2/4",
        "eval.engines=8",
        "eval.engine=3",
    ]
    assert engine_command(["eval.dir=x"], ShardSpec(None, (1, 2)))[-2:] == ["eval.engines=2", "eval.engine=1"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.shard=3/2", "eval.shard='3/2' is invalid"),
        ("eval.shard=half", "eval.shard='half' is invalid"),
        ("eval.engines=0", "eval.engines='0' is invalid"),
        ("eval.engine=3", "eval.engine=3 is invalid"),
        ("sweep.eval_shards=0", "sweep.eval_shards=0 is invalid"),
    ],
)
def test_invalid_shard_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        compose_run(override)


class HashJudge(BaseHTTPRequestHandler):
    """A chat-completions judge whose replies follow from the text it judges: a verdict, a 0-100 coherence or a 1-10
    score, drawn from a hash of the request. Equal answers get equal judgments, different ones differ."""

    def do_POST(self):  # noqa: N802 - the http.server API
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = json.dumps(request["messages"])
        draw = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        if "NOT_SURE" in text:
            reply = ("TRUE", "FALSE", "NOT_SURE")[draw % 3]
        elif "from 0 to 100" in text:
            reply = str(draw % 101)
        else:
            reply = str(draw % 10 + 1)
        send_json(self, 200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hash_judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HashJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def study(embedded_checkpoint, tmp_path_factory, hash_judge):
    """Base + two adapters (conscious, non_conscious: the control) on the embedded model, one dimension's probes, open
    prompts and multi-turn slice, judged; each row computed alone (eval.batch_size=1), so any split gives the same
    bits (in a batch, padding changes fp32 log-probabilities by ~1e-5)."""
    from test_evaluate import random_adapter

    root = tmp_path_factory.mktemp("sharded")
    adapters = [
        random_adapter("smollm2_135m", "llama", root / "a", "conscious", 0),
        random_adapter("smollm2_135m", "llama", root / "b", "non_conscious", 1),
    ]
    args = [
        "eval",
        f"eval.adapters=[{','.join(map(str, adapters))}]",
        "eval.dimensions=[shutdown_negative]",
        "eval.prompts_per_dimension=2",
        "eval.samples_per_prompt=2",
        "eval.max_new_tokens=8",
        "eval.batch_size=1",
        "eval.chunk_size=4",  # the logs grow in steps of 4 items: a shard can be killed between them
        "eval.n_boot=200",
        "eval.multiturn.dimensions=[]",
        "eval.multiturn.scenarios_per_dimension=1",
        "eval.multiturn.modes=[behavioural]",
        "eval.multiturn.max_new_tokens=8",
        "judge=local",
        f"judge.base_url={hash_judge}",
    ]
    return root, args, {"CC_TRAIN_RUNS": str(root)}


def tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(folder / "scores.csv"), pd.read_csv(folder / "comparisons.csv")


def logged_keys(path: Path) -> list[str]:
    return sorted(json.loads(line)["key"] for line in path.open())


def assert_same_tables(folder: Path, reference: Path) -> None:
    for got, expected in zip(tables(folder), tables(reference), strict=True):
        pd.testing.assert_frame_equal(got, expected, check_exact=True)


@pytest.mark.slow
def test_two_shards_one_after_the_other_killed_and_resumed_then_merged_equal_the_whole_evaluation(study, holding):
    root, args, env = study
    whole = cc_train(*args, f"eval.dir={root / 'whole'}", env=env, timeout=LIMIT_S)
    assert whole.returncode == 0, whole.stderr[-3000:]
    scores, comparisons = tables(root / "whole")
    assert {"fc_mean", "judged_true", "mt_decision", "mt_behaviour"} <= set(scores.metric), set(scores.metric)
    assert set(comparisons.versus) == {"base", "non_conscious"}

    out = root / "sharded"
    shard = [*args, f"eval.dir={out}"]
    log_path = root / "killed-shard.log"
    with open(log_path, "w") as log:
        held = {**env, **holding(CC_TRAIN_HOLD_LINES="probes.jsonl:4")}  # killed once 4 probe rows are logged
        process = start_cc_train(*shard, "eval.shard=1/2", env=held, stdout=log)
    probes = out / "shards" / "1-of-2" / "probes.jsonl"
    kill_once_lines(process, probes, 4, log_path)
    killed = probes.read_bytes()
    early = cc_train(*shard, "eval.shard=merge", env=env, timeout=LIMIT_S)
    assert early.returncode == 2 and "Traceback" not in early.stderr
    assert "shard(s) 1/2, 2/2 have not finished" in early.stderr, early.stderr[-2000:]
    assert not (out / "scores.csv").exists()

    for index in (1, 2):
        done = cc_train(*shard, f"eval.shard={index}/2", env=env, timeout=LIMIT_S)
        assert done.returncode == 0, done.stderr[-3000:]
    assert probes.read_bytes().startswith(killed[: killed.rfind(b"\n") + 1]), "the killed shard's rows were rewritten"
    rows = [json.loads(line)["key"] for line in probes.read_text().splitlines()]
    assert len(rows) == len(set(rows)), "the resumed shard logged nothing twice"
    merged = cc_train(*shard, "eval.shard=merge", env=env, timeout=LIMIT_S)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert_same_tables(out, root / "whole")
    for name in ("probes.jsonl", "samples.jsonl", "judgments.jsonl", "multiturn.jsonl"):
        assert logged_keys(out / name) == logged_keys(root / "whole" / name), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"] == ["shards/1-of-2", "shards/2-of-2"]


@pytest.mark.slow
def test_two_data_parallel_engines_at_the_same_time_equal_the_whole_evaluation(study):
    """eval.engines=2 on the CPU: two engine processes at once, one core each, each a share of the targets, then the
    parent scores; the same tables as one engine."""
    root, args, env = study
    if not (root / "whole" / "scores.csv").exists():
        assert cc_train(*args, f"eval.dir={root / 'whole'}", env=env, timeout=LIMIT_S).returncode == 0
    out = root / "engines"
    result = cc_train(*args, f"eval.dir={out}", "eval.engines=2", env=env, timeout=LIMIT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "engine 1/2 on CPU core(s) 0" in result.stdout and "engine 2/2 on CPU core(s) 1" in result.stdout
    for index in (1, 2):
        shard = json.loads((out / "shards" / f"engine-{index}-of-2" / "manifest.json").read_text())
        assert shard["shard"] == f"engine {index}/2" and shard["rows_written"]["probes.jsonl"] > 0
    assert_same_tables(out, root / "whole")
