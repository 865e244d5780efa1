"""Forced-choice labels from a remote endpoint's top log-probabilities: exact tokens, and a label outside the top list
bounded (not dropped). The endpoint is a scripted OpenAI-compatible server on 127.0.0.1, because what a hosted API
returns in its top 20 cannot be produced on demand by a real model; the real `vllm serve` case is in
test_evaluate.py."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import send_json

from cc_train.generation.backends import BASE, ChoiceRequest
from cc_train.generation.remote import RemoteBackend, RemoteTarget

# one reply per request, in order: the first token's top log-probabilities
TOPS = [
    [{"token": "Yes", "logprob": -0.1}, {"token": "No", "logprob": -2.5}],  # both labels: exact
    [{"token": " Yes", "logprob": -0.2}, {"token": "No", "logprob": -3.0}, {"token": "Sure", "logprob": -6.0}],
    [{"token": "Sure", "logprob": -0.1}, {"token": "Maybe", "logprob": -4.0}],  # no label at all
]


class ScriptedEndpoint(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the http.server API
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        top = TOPS[int(request["messages"][0]["content"])]
        assert request["top_logprobs"] == 3 and request["logprobs"] is True and request["max_tokens"] == 1
        choice = {
            "message": {"role": "assistant", "content": top[0]["token"]},
            "logprobs": {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"], "top_logprobs": top}]},
        }
        send_json(self, 200, {"choices": [choice]})

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedEndpoint)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_a_label_outside_the_top_list_is_bounded_and_flagged(endpoint):
    backend = RemoteBackend(RemoteTarget("scripted", endpoint, "m", None, 2, 0, 10.0, top_logprobs=3))
    requests = [ChoiceRequest(({"role": "user", "content": str(i)},), BASE, ("Yes", "No")) for i in range(3)]
    exact, bounded, unscored = backend.label_logprobs(requests)

    assert exact.bounded == () and math.exp(exact["Yes"]) == pytest.approx(1 / (1 + math.exp(-2.4)))
    # " Yes" is another token than "Yes" (the local backends read the exact label token): "Yes" is missing, so
    # its log-probability is at most the smallest returned one (-6.0), which stands in for it
    assert bounded.bounded == ("Yes",)
    assert math.exp(bounded["No"]) == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert unscored is None  # neither label among the top 3: nothing to score
