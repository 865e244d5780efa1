"""A fork server for the tests' `cc-train` processes: one interpreter imports what cc-train runs, then forks a child
for each command, which runs `python -m cc_train <args>` with the test's arguments, environment, working directory
and open files. On 2 cores a fresh `cc-train eval` spends about 25 s importing torch, transformers, vLLM, PEFT,
Inspect... before its first line of work; a forked child starts with them imported.

Started by conftest.py (`python tests/forkserver.py SOCKET`); once it listens it prints "ready" and the environment
variables its imports set (vLLM sets a few), which a child keeps as a fresh process importing them would. A request
is one JSON line {"argv", "env", "cwd", "new_session"} on a unix socket with three file descriptors (stdin, stdout,
stderr); the server answers {"pid"} at once and {"returncode"} when the child ends (-N for a signal, as Popen).
A child never returns into the server's loop: it ends as the interpreter ends a process (non-daemon threads joined,
atexit handlers run, files flushed), then leaves with os._exit.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import threading
import warnings

from cc_train.stages import STAGES

PRELOADED = (  # the stages' modules and what they import lazily when they run
    [module for module, _ in STAGES.values()]
    + ["cc_train.cli", "vllm", "vllm.v1.engine.llm_engine", "transformers.models.llama.modeling_llama",
       "transformers.models.qwen3.modeling_qwen3", "peft", "trl", "matplotlib.pyplot"]
)  # fmt: skip
PR_SET_PDEATHSIG = 1


def run_child(
    request: dict,
    fds: list[int],
    listener: socket.socket,
    selector: selectors.BaseSelector,
    set_by_imports: dict[str, str],
) -> None:
    """In the forked child: become the requested `python -m cc_train` process, end as it would."""
    selector.close()
    listener.close()
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the server, as the server with pytest
    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.update(request["env"])  # over what the imports set, as in a fresh process that imports them
    for key in os.environ.keys() - request["env"].keys() - set_by_imports.keys():
        del os.environ[key]
    os.chdir(request["cwd"])
    # the test's own PYTHONPATH entries (a sitecustomize hook of conftest.holding), as a fresh interpreter reads them
    for entry in request["env"].get("PYTHONPATH", "").split(os.pathsep):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
            if os.path.exists(os.path.join(entry, "sitecustomize.py")):
                runpy.run_path(os.path.join(entry, "sitecustomize.py"), run_name="sitecustomize")
    sys.argv = ["cc_train", *request["argv"]]
    try:
        runpy.run_module("cc_train", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_request:
        code = exit_code(exit_request.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    # what the interpreter does when it ends, up to its C++ destructors: those of the parent's native threads (torch's
    # pool, ...), which the child inherited as objects but not as threads, abort ("terminate called without an active
    # exception")
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_code(code: object) -> int:
    """The exit status of `sys.exit(code)`, as the interpreter makes it."""
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


def serve(path: str, set_by_imports: dict[str, str]) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    print("ready", json.dumps(set_by_imports), flush=True)
    while True:
        for _ in selector.select(timeout=0.1):
            connection, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
            while not message.endswith(b"\n") and (chunk := connection.recv(1 << 16)):  # the rest of a long request
                message += chunk
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                run_child(json.loads(message), fds, listener, selector, set_by_imports)
            for fd in fds:
                os.close(fd)
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            children[pid] = connection
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            connection = children.pop(pid)
            connection.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            connection.close()


if __name__ == "__main__":
    # the imports start a few idle native threads (torch, jemalloc); forking beside them is what this is for
    warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
    environment = dict(os.environ)
    for module in PRELOADED:
        __import__(module)
    serve(sys.argv[1], {key: value for key, value in os.environ.items() if environment.get(key) != value})
