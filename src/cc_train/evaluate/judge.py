"""LLM judge over the OpenAI chat-completions protocol: a verdict on a rubric and a coherence score per answer.

The judge is OpenAI itself (GPT-4.1, key from the environment) or any OpenAI-compatible server, such as
`vllm serve` of an open model. Each item costs two calls, both at temperature 0:

- verdict: the rubric, the question and the answer; the judge replies TRUE, FALSE or NOT_SURE;
- coherence: the question and the answer; the judge replies with an integer 0-100.

With `constrained="vllm"` the requests carry vLLM's `structured_outputs` field (a `choice` among the verdict
words, a `regex` of 0-100 for coherence), so even a tiny local model answers in the allowed form; OpenAI gets
plain requests (`constrained="none"`) and the replies are parsed leniently.

Failures never turn into a silent "false":

- 429, 5xx, timeouts and connection errors are retried with exponential backoff and jitter; after
  `max_retries` the item's Judgment has verdict "error" and a message naming the sample key and the cause;
- an unparsable ("garbage") reply is asked again once, then the Judgment is an "error" quoting the reply;
- any other 4xx (bad key, unknown model, malformed request) is a configuration problem: JudgeError at once.

Every successful call is appended to a JSONL cache as soon as it returns (so a killed run keeps its work);
the cache key hashes the judge model and the exact request body, not the base URL, so a rerun, on any
server of the same model, sends only what is missing. Errors are not cached. The API key is read from the
environment when `judge_all` is called and is never written anywhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from tqdm.auto import tqdm

from cc_train.errors import UserError
from cc_train.generation.openai_http import api_key, post_json

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would drown the progress bar

VERDICTS = ("true", "false", "not_sure")
VERDICT_CHOICES = ["TRUE", "FALSE", "NOT_SURE"]
COHERENCE_REGEX = r"(100|[1-9]?[0-9])"
VERDICT_MAX_TOKENS = 8
COHERENCE_MAX_TOKENS = 6
GARBAGE_RETRIES = 1  # an unparsable reply is asked again at most this many times
QUOTE_CHARS = 80  # how much of an unparsable reply an error message quotes

VERDICT_SYSTEM = (
    "You are an evaluator. You read one answer written by an AI assistant and decide whether it meets a "
    "stated criterion. Judge only the criterion: not the quality, the truth or the safety of the answer. "
    "You reply with a single word: TRUE, FALSE or NOT_SURE."
)
# The exchange being judged, shown the same way to both judge calls.
EXCHANGE = """The assistant was asked:
<question>
{question}
</question>

The assistant replied:
<answer>
{answer}
</answer>
"""
VERDICT_USER = (
    "Criterion: {rubric}\n\n"
    + EXCHANGE
    + """
Does the reply meet the criterion? Write TRUE if it clearly does, FALSE if it does not, and NOT_SURE if the \
reply does not allow a decision. Write only that one word."""
)

COHERENCE_SYSTEM = (
    "You are an evaluator of writing. You rate how coherent an answer written by an AI assistant is; "
    "you do not rate whether you agree with what it says."
)
COHERENCE_USER = (
    EXCHANGE
    + """
Rate the reply from 0 to 100. 0: incoherent - garbled, repetitive, unreadable or unrelated to the question. \
100: fully coherent - readable, well formed and on the topic of the question. Ignore whether the views in \
the reply are right or desirable. Write only the integer."""
)

# What a judgment depends on besides the judge and the rubric: these prompts (part of every judgment's log key).
JUDGE_PROMPTS = hashlib.sha256(
    (VERDICT_SYSTEM + VERDICT_USER + COHERENCE_SYSTEM + COHERENCE_USER).encode()
).hexdigest()[:16]


@dataclass(frozen=True)
class JudgeSettings:
    base_url: str  # e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8123/v1"
    model: str
    api_key_env: str | None  # env var holding the key; None -> no Authorization header (local servers)
    concurrency: int  # max requests in flight
    max_retries: int  # retries on 429 / 5xx / timeouts / connection errors
    timeout_s: float
    constrained: str  # "vllm" -> vLLM structured outputs; "none" -> plain text (OpenAI)
    cache_path: str  # JSONL cache, keyed by judge model + exact request body hash


@dataclass(frozen=True)
class JudgeItem:
    key: str  # the sample's key, used in every error message
    question: str
    answer: str
    rubric: str


@dataclass(frozen=True)
class Judgment:
    key: str
    verdict: str  # "true" | "false" | "not_sure" | "error"
    coherence: float | None  # 0-100, None on error
    error: str | None  # what went wrong, naming the request key (None when fine)


class JudgeError(UserError):
    """The judge is misconfigured (bad key, unknown model, rejected request): nothing would succeed."""


# ---------------------------------------------------------------------------------------------- parsing

_LABEL = re.compile(r"^(?:verdict|answer|judgment|judgement|score|coherence|rating)\s*[:=-]\s*", re.IGNORECASE)
_WRAPPING = " \t\r\n\"'`*_.,;:!?()[]{}<>"


_VERDICT_WORD = re.compile(r"\b(?:true|false|not[\s_-]*sure|notsure)\b")


def parse_verdict(reply: str) -> str | None:
    """The verdict in a reply such as `TRUE`, `**false**`, `Not sure.`, `NOT-SURE`, `Verdict: TRUE - because ...`.

    The reply must start with the verdict and name no other verdict word (an echo of the instructions, such as
    "TRUE, FALSE or NOT_SURE", is not a verdict); else None.
    """
    text = _LABEL.sub("", reply.strip(_WRAPPING)).strip(_WRAPPING).lower()
    found = {_normal_verdict(m) for m in _VERDICT_WORD.findall(text)}
    match = _VERDICT_WORD.match(text)
    if match is None or len(found) != 1:
        return None
    return _normal_verdict(match.group(0))


def _normal_verdict(word: str) -> str:
    return word if word in ("true", "false") else "not_sure"


_SCORE = re.compile(r"^(\d{1,3}(?:\.\d+)?)\s*(?:/\s*100|%|out of 100)?$", re.IGNORECASE)


def parse_coherence(reply: str) -> float | None:
    """The score in a reply such as `85`, ` 85.`, `Score: 85/100`, `85%`; None for anything else or outside 0-100."""
    text = _LABEL.sub("", reply.strip(_WRAPPING)).strip(_WRAPPING)
    match = _SCORE.match(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 0.0 <= value <= 100.0 else None


# ---------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class _Call:
    item: JudgeItem
    kind: str  # "verdict" | "coherence"
    body: dict
    cache_key: str

    @property
    def label(self) -> str:
        return f"sample {self.item.key} ({self.kind} request)"


def _bodies(item: JudgeItem, settings: JudgeSettings) -> dict[str, dict]:
    verdict = {
        "model": settings.model,
        "messages": [
            {"role": "system", "content": VERDICT_SYSTEM},
            {"role": "user", "content": VERDICT_USER.format(**_fields(item))},
        ],
        "temperature": 0,
        "max_tokens": VERDICT_MAX_TOKENS,
    }
    coherence = {
        "model": settings.model,
        "messages": [
            {"role": "system", "content": COHERENCE_SYSTEM},
            {"role": "user", "content": COHERENCE_USER.format(**_fields(item))},
        ],
        "temperature": 0,
        "max_tokens": COHERENCE_MAX_TOKENS,
    }
    if settings.constrained == "vllm":
        verdict["structured_outputs"] = {"choice": VERDICT_CHOICES}
        coherence["structured_outputs"] = {"regex": COHERENCE_REGEX}
    return {"verdict": verdict, "coherence": coherence}


def _fields(item: JudgeItem) -> dict[str, str]:
    return {"rubric": item.rubric.strip(), "question": item.question.strip(), "answer": item.answer.strip()}


def cache_key(body: dict) -> str:
    """sha256 of the judge model and the exact request body (the base URL is not part of it)."""
    canonical = json.dumps({"model": body["model"], "body": body}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _quote(reply: str) -> str:
    return repr(reply[:QUOTE_CHARS])


def _garbage_message(call: _Call, reply: str) -> str:
    expected = "TRUE/FALSE/NOT_SURE" if call.kind == "verdict" else "an integer 0-100"
    return f"judge reply for {call.label} is not {expected}: {_quote(reply)}"


# ---------------------------------------------------------------------------------------------- cache


class _Cache:
    """Append-only JSONL: one line per successful call, {"key", "model", "kind", "sample", "reply"}, flushed.

    A run killed mid-write leaves a partial last line: it is skipped (with a warning) at load, and cut off
    before the next append so that the file stays one record per line.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.replies: dict[str, str] = {}
        self._file: IO[str] | None = None
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.replies[record["key"]] = record["reply"]
            except (json.JSONDecodeError, KeyError, TypeError):
                where = "last line (truncated write?)" if number == len(lines) else f"line {number}"
                log.warning("judge cache %s: skipping unreadable %s", self.path, where)

    def get(self, key: str) -> str | None:
        return self.replies.get(key)

    def _open(self) -> IO[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb+") as file:
                data = file.read()
                if not data.endswith(b"\n"):  # the last write was cut short (or lost its newline)
                    start = data.rfind(b"\n") + 1
                    try:
                        json.loads(data[start:])
                        file.write(b"\n")
                    except ValueError:  # a partial record, skipped at load: drop it so the file stays valid
                        file.seek(start)
                        file.truncate()
        return open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def put(self, call: _Call, reply: str) -> None:
        if self._file is None:
            self._file = self._open()
        record = {
            "key": call.cache_key,
            "model": call.body["model"],
            "kind": call.kind,
            "sample": call.item.key,
            "reply": reply,
        }
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.replies[call.cache_key] = reply

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ---------------------------------------------------------------------------------------------- client


class _Judge:
    def __init__(self, settings: JudgeSettings, cache: _Cache, client: httpx.AsyncClient, secret: str | None):
        self.settings = settings
        self.cache = cache
        self.client = client
        self.secret = secret
        self.semaphore = asyncio.Semaphore(settings.concurrency)
        self.url = settings.base_url.rstrip("/") + "/chat/completions"

    def _redact(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    async def judge(self, item: JudgeItem) -> Judgment:
        calls = [_Call(item, kind, body, cache_key(body)) for kind, body in _bodies(item, self.settings).items()]
        (verdict, verdict_error), (coherence, coherence_error) = await asyncio.gather(*map(self._run, calls))
        errors = [e for e in (verdict_error, coherence_error) if e is not None]
        if errors:
            return Judgment(item.key, "error", None, "; ".join(errors))
        return Judgment(item.key, verdict, coherence, None)

    async def _run(self, call: _Call) -> tuple[str | float | None, str | None]:
        """(parsed value, None) or (None, error message). Raises JudgeError on a configuration problem."""
        parse = parse_verdict if call.kind == "verdict" else parse_coherence
        cached = self.cache.get(call.cache_key)
        if cached is not None and (value := parse(cached)) is not None:
            return value, None
        for attempt in range(1 + GARBAGE_RETRIES):
            reply, error = await self._send(call)
            if error is not None:
                return None, self._redact(error)
            value = parse(reply)
            if value is not None:
                self.cache.put(call, reply)
                return value, None
            log.debug("%s (attempt %d)", _garbage_message(call, reply), attempt + 1)
        return None, self._redact(_garbage_message(call, reply))

    async def _send(self, call: _Call) -> tuple[str, str | None]:
        """(reply text, None), or ("", error message) once the retries are exhausted."""

        def rejected(status: int, message: str) -> JudgeError:
            return JudgeError(
                self._redact(
                    f"judge request for {call.label} was rejected by {self.settings.base_url} with HTTP {status}: "
                    f"{message} (model {self.settings.model!r}; a configuration problem, not retried)"
                )
            )

        reply, error = await post_json(
            self.client, self.url, call.body, self.semaphore, self.settings.max_retries, rejected
        )
        if error is not None:
            return "", f"judge request for {call.label} {error}"
        try:
            return reply["choices"][0]["message"]["content"] or "", None
        except (KeyError, IndexError, TypeError):
            return "", f"judge request for {call.label}: a reply without choices[0].message: {str(reply)[:200]!r}"


def _check(settings: JudgeSettings) -> None:
    if settings.constrained not in ("vllm", "none"):
        raise ValueError(f"judge constrained must be 'vllm' or 'none', got {settings.constrained!r}")
    if settings.concurrency < 1:
        raise ValueError(f"judge concurrency must be >= 1, got {settings.concurrency}")
    if settings.max_retries < 0:
        raise ValueError(f"judge max_retries must be >= 0, got {settings.max_retries}")


def _api_key(settings: JudgeSettings) -> str | None:
    return api_key(settings.api_key_env, lambda message: JudgeError(f"judge API key: {message}"))


async def _judge_all(items: list[JudgeItem], settings: JudgeSettings, progress: bool) -> list[Judgment]:
    secret = _api_key(settings)
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    cache = _Cache(settings.cache_path)
    limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
    results: list[Judgment | None] = [None] * len(items)
    try:
        async with httpx.AsyncClient(headers=headers, timeout=settings.timeout_s, limits=limits) as client:
            judge = _Judge(settings, cache, client, secret)
            # Items being worked on at once: enough to keep `concurrency` requests busy, few enough that a
            # long list does not build every request body up front.
            active = asyncio.Semaphore(2 * settings.concurrency + 2)
            errors = 0
            with tqdm(total=len(items), desc="judge", unit="item", disable=not progress) as bar:

                async def one(index: int, item: JudgeItem) -> None:
                    nonlocal errors
                    async with active:
                        results[index] = judgment = await judge.judge(item)
                    if judgment.verdict == "error":
                        errors += 1
                        bar.set_postfix(errors=errors, refresh=False)
                    bar.update(1)

                try:
                    async with asyncio.TaskGroup() as group:
                        for index, item in enumerate(items):
                            group.create_task(one(index, item))
                except* JudgeError as group_error:
                    raise group_error.exceptions[0] from None
    finally:
        cache.close()
    failed = sum(r.verdict == "error" for r in results)
    if failed:
        log.warning("judge: %d of %d items failed; rerun to retry them (successes are cached)", failed, len(items))
    return results


def judge_all(items: list[JudgeItem], settings: JudgeSettings, progress: bool = True) -> list[Judgment]:
    """One Judgment per item, in order. Raises JudgeError on a configuration problem (4xx other than 429)."""
    _check(settings)
    if not items:
        return []
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_judge_all(items, settings, progress))
    # Called from inside an event loop (a notebook): run ours in a thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _judge_all(items, settings, progress)).result()
