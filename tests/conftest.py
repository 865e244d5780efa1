"""Shared fixtures: composed configs, the cc-train CLI as a subprocess, tiny checkpoints built once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
    return subprocess.run(
        [sys.executable, "-m", "cc_train", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        timeout=timeout,
        cwd=cwd or REPO,
    )


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


def start_cc_train(*args: str, env: dict, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) -> subprocess.Popen:
    """Start the console entry point in a session of its own, so that a test can kill -9 the whole process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "cc_train", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


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


@pytest.fixture(scope="session")
def judge_server(embedded_checkpoint):
    """The embedded model behind one real `vllm serve` on 127.0.0.1 (served as "judge"), shared by every test that
    needs a live OpenAI-compatible endpoint: judge, model auditor, remote target. Tests count its requests as
    differences, so sharing it keeps them independent; a test that kills a server starts its own."""
    from vllm_server import VLLMServer

    with VLLMServer(embedded_checkpoint) as running:
        print(f"vllm serve ready in {running.startup_s:.1f} s")
        yield running


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
            body = json.dumps({"error": {"message": "busy, try later", "code": self.status}}).encode()
            self.send_response(self.status)
            if self.status == 429:
                self.send_header("Retry-After", "0")
        else:
            reply = "TRUE" if "NOT_SURE" in json.dumps(request["messages"]) else "50"  # verdict or coherence
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
