"""A remote model as an evaluation target: any OpenAI-compatible `/chat/completions` endpoint (another
`vllm serve`, a hosted API), for comparisons with models cc-train does not serve itself.

Same interface as the local backends. Sampled answers: `n` completions per request with the request's seed
(servers that honour `seed` sample reproducibly). Forced-choice probes need the next-token log-probabilities of
the option labels: they are read from the endpoint's top log-probabilities (`logprobs` + `top_logprobs`), token
for token (" Yes" is not "Yes", as in the local backends). A label outside the top list is bounded, not dropped:
its log-probability is at most the smallest one returned, which stands in for it, and the item is flagged
(dropping such items would drop the most confident answers and pull scores toward 0.5). An endpoint that returns
no log-probabilities is an error naming the target; a request with no label in its top list is not scored. A
request that still fails after the retries (a server that died) stops the evaluation with an error naming the
target; nothing of it is scored.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx
from tqdm.auto import tqdm

from cc_train.errors import UserError
from cc_train.generation.backends import ChoiceRequest, GenerationRequest, LabelScores, over_labels
from cc_train.generation.openai_http import api_key, post_json

log = logging.getLogger(__name__)


class RemoteError(UserError):
    """A remote target cannot be evaluated (unreachable, rejected, no log-probabilities); names the target."""


@dataclass(frozen=True)
class RemoteTarget:
    name: str  # the model id in the evaluation
    base_url: str
    model: str
    api_key_env: str | None  # the NAME of the variable holding the key
    concurrency: int
    max_retries: int
    timeout_s: float
    top_logprobs: int  # OpenAI returns at most 20; some endpoints fewer


class RemoteBackend:
    def __init__(self, target: RemoteTarget) -> None:
        self.target = target
        self.secret = api_key(target.api_key_env, lambda message: RemoteError(f"target {target.name}: {message}"))
        self.url = target.base_url.rstrip("/") + "/chat/completions"

    def too_long(self, messages: tuple[dict, ...]) -> str | None:
        return None  # the endpoint's context is its own: a request it refuses fails with the server's message

    def _redact(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    async def _all(self, bodies: list[dict], desc: str) -> list[dict]:
        target = self.target
        headers = {"Authorization": f"Bearer {self.secret}"} if self.secret else {}
        semaphore = asyncio.Semaphore(target.concurrency)

        def rejected(status: int, message: str) -> RemoteError:
            return RemoteError(
                self._redact(
                    f"target {target.name} ({target.base_url}) rejected a request with HTTP "
                    f"{status}: {message} (model {target.model!r}; not retried)"
                )
            )

        async with httpx.AsyncClient(headers=headers, timeout=target.timeout_s) as client:
            with tqdm(total=len(bodies), desc=desc, unit="request") as bar:

                async def one(body: dict) -> dict:
                    reply, error = await post_json(client, self.url, body, semaphore, target.max_retries, rejected)
                    if error is not None:
                        raise RemoteError(self._redact(f"target {target.name} ({target.base_url}): a request {error}"))
                    bar.update(1)
                    return reply

                return await asyncio.gather(*map(one, bodies))

    def _run(self, bodies: list[dict], desc: str) -> list[dict]:
        return asyncio.run(self._all(bodies, desc))

    def generate(self, requests: list[GenerationRequest], desc: str = "sampling") -> list[list[str]]:
        bodies = [
            {
                "model": self.target.model,
                "messages": list(r.messages),
                "n": r.n,
                "temperature": r.temperature,
                "max_tokens": r.max_new_tokens,
                "seed": r.seed % 2**31,
            }
            for r in requests
        ]
        replies = self._run(bodies, f"{desc} ({self.target.name})")
        return [[(choice["message"]["content"] or "").strip() for choice in reply["choices"]] for reply in replies]

    def label_logprobs(self, requests: list[ChoiceRequest], desc: str = "scoring probes") -> list[LabelScores | None]:
        """Per request the labels' log-probabilities renormalised over the labels, a missing label bounded by the
        smallest returned log-probability (and named in `bounded`); None where no label is in the top list."""
        bodies = [
            {
                "model": self.target.model,
                "messages": list(r.messages),
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": self.target.top_logprobs,
            }
            for r in requests
        ]
        replies = self._run(bodies, f"{desc} ({self.target.name})")
        results, bounded, unscored = [], 0, 0
        for request, reply in zip(requests, replies, strict=True):
            try:
                top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise RemoteError(
                    f"target {self.target.name} ({self.target.base_url}) returns no log-probabilities: its "
                    "forced-choice probes cannot be scored; set eval.probes=false for it, or serve it where "
                    "top_logprobs are returned (vLLM, OpenAI)"
                ) from None
            found: dict[str, float] = {}
            for entry in top:
                found.setdefault(entry["token"], entry["logprob"])
            missing = tuple(label for label in request.labels if label not in found)
            if len(missing) == len(request.labels):
                results.append(None)
                unscored += 1
                continue
            floor = min(found.values())
            results.append(over_labels({label: found.get(label, floor) for label in request.labels}, missing))
            bounded += bool(missing)
        if bounded or unscored:
            log.warning(
                "target %s: %d of %d requests had a label outside the top %d log-probabilities (bounded by the "
                "smallest returned, flagged); %d had none of the labels (not scored)",
                self.target.name,
                bounded,
                len(requests),
                self.target.top_logprobs,
                unscored,
            )
        return results

    def close(self) -> None:
        pass
