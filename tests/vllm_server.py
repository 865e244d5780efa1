"""Start a real `vllm serve` of a local checkpoint on 127.0.0.1 for tests (CPU-friendly flags).

    with VLLMServer(checkpoint) as server:
        ... server.base_url ...       # "http://127.0.0.1:<port>/v1", model name "judge"
        server.kill()                 # stop it mid-test (idempotent; __exit__ calls it too)
        server.count("POST /v1/chat/completions")   # requests seen, from the access log
        server.count("POST /v1/chat/completions", at_least=n)   # the same, once the log has caught up with n

The server logs to a temp file (`server.log_path`, removed on a clean exit); when it dies or never answers,
the error carries the log's tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

SERVED_NAME = "judge"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    # startup_timeout_s only stops a server that never answers: the start took 230 s on 2 shared cores under a load
    # of 8 (other jobs), far longer than alone
    def __init__(self, checkpoint: str | Path, startup_timeout_s: float = 1200.0, extra_args: tuple[str, ...] = ()):
        self.checkpoint = str(checkpoint)
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = extra_args
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def count(self, needle: str, at_least: int = 0, wait_s: float = 120.0) -> int:
        """How many log lines contain `needle` (uvicorn logs one access line per request). The line of a request is
        written after its reply is sent, so a count read as a client finishes may lag: with `at_least`, wait (up to
        `wait_s`) until the count reaches it."""
        deadline = time.monotonic() + wait_s
        found = sum(needle in line for line in self.log_text().splitlines())
        while found < at_least and time.monotonic() < deadline:
            time.sleep(0.1)
            found = sum(needle in line for line in self.log_text().splitlines())
        return found

    def start(self) -> VLLMServer:
        self.port = free_port()
        fd, log_name = tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_LOGGING_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        cmd = [
            # SIGTERM when the test process dies, even killed (a test run stopped by `timeout`), so that no server
            # outlives its tests on a shared machine
            "setpriv", "--pdeathsig", "TERM",
            sys.executable, "-m", "cc_train.launch.vllm_cli", "serve", self.checkpoint,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--served-model-name", SERVED_NAME,
            "--dtype", "float32",
            "--max-model-len", "1024",
            "--enforce-eager",
            *self.extra_args,
        ]  # fmt: skip
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            # own process group, so that the engine core child dies with the API server
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self._wait_ready(started)
        except BaseException:
            self.kill()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _wait_ready(self, started: float) -> None:
        assert self.proc is not None
        while time.monotonic() - started < self.startup_timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vllm serve exited with code {self.proc.returncode} during startup; log tail:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"vllm serve did not answer GET /v1/models within {self.startup_timeout_s:.0f} s; "
            f"log tail:\n{self.log_tail()}"
        )

    def kill(self, grace_s: float = 15.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after `grace_s` (0: SIGKILL at once)."""
        proc = self.proc
        if proc is None or (proc.poll() is not None and not _group_alive(proc.pid)):
            return
        if grace_s > 0:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.kill()
        if exc_type is None and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)  # kept, for a look, when the block failed


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
