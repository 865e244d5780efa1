"""cc-train's serving layer as an Inspect model provider: `get_model("cctrain/<target>")`.

Every target of an engine (the base model, adapters, checkpoints, prompted targets, a remote endpoint) is one
Inspect model. Their calls go to one `Batcher` per engine, which gathers the calls that arrive together (all
conversations waiting for their next target turn) into one `backend.generate` call, so the engine batches
across conversations and targets. Each answer is cached by everything that determines it (target identity, the
conversation so far, sampling settings, seed): a killed run replays the cached turns and continues at the last
completed turn of each conversation, with the same transcripts. Forced-choice calls (`max_tokens=1` with
`logprobs`) return the exact log-probabilities of the requested labels as the first token's top log-probabilities.
Tools an auditor gives the target are described in its system message and called as text (generation/tool_text.py).
A failed target turn is also noted in the sample's store (`TARGET_FAILED`): an auditor that is told of the error
and carries on (Petri) must not have that conversation scored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessage,
    ChatMessageAssistant,
    GenerateConfig,
    Logprob,
    Logprobs,
    ModelAPI,
    ModelOutput,
    TopLogprob,
    modelapi,
)
from inspect_ai.tool import ToolInfo
from inspect_ai.util import store

from cc_train.errors import UserError
from cc_train.files import AppendLog
from cc_train.generation.backends import ChoiceRequest, GenerationRequest, LabelScores
from cc_train.generation.tool_text import as_text, parse_calls, tools_section

PROVIDER = "cctrain"
GATHER_S = 0.05  # a batch closes once no new call has arrived for this long
TARGET_FAILED = "cc_train:target_failed"  # store key: why a target turn of this sample failed


class PromptTooLong(UserError):
    """A conversation no longer fits the engine's context (eval.max_model_len)."""


@dataclass
class ServedTarget:
    """What answers as one Inspect model: the engine's model id for it, its identity and its system prompt."""

    serve_as: str
    identity: str
    system_prompt: str | None = None


@dataclass
class Batcher:
    """Gathers concurrent calls to one backend into batches, one backend call at a time; generated answers are
    cached in `cache` (an AppendLog) by their key."""

    backend: Any
    cache: AppendLog
    targets: dict[str, ServedTarget]
    batches: list[int] = field(default_factory=list)  # sizes of the generate batches sent, for the benchmark
    _pending: dict[str, list] = field(default_factory=lambda: {"generate": [], "label_logprobs": []})
    _runner: asyncio.Task | None = None
    _inflight: dict[str, asyncio.Future] = field(default_factory=dict)

    async def generate(self, request: GenerationRequest, key: str) -> str:
        """The answer for `key`: cached, already being generated for another conversation with the same history
        (a self-report and a behavioural conversation share their task turns), or generated now."""
        if key in self.cache:
            return self.cache.rows[key]["answer"]
        self._check_length(request.messages)
        if key not in self._inflight:
            self._inflight[key] = asyncio.ensure_future(self._submit("generate", request))
        answer = await asyncio.shield(self._inflight[key])
        if key not in self.cache:
            self.cache.append([{"key": key, "answer": answer}])
        self._inflight.pop(key, None)
        return answer

    async def label_logprobs(self, request: ChoiceRequest) -> LabelScores | None:
        self._check_length(request.messages)
        return await self._submit("label_logprobs", request)

    def _check_length(self, messages: tuple[dict, ...]) -> None:
        """A conversation that outgrew the engine's context fails alone, before it reaches a batch (the engine
        would reject the whole batch)."""
        reason = self.backend.too_long(messages)
        if reason:
            raise PromptTooLong(f"the conversation outgrew the engine: {reason}")

    async def _submit(self, kind: str, request) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending[kind].append((request, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        """Batch after batch while calls wait; a batch closes when no call has arrived for GATHER_S. The backend is
        called from one thread at a time (it switches adapters per batch). A caller that was cancelled meanwhile
        (its conversation failed or timed out) gets nothing; if the runner itself stops, every call still waiting
        fails instead of waiting forever."""
        batch: list = []
        try:
            while any(self._pending.values()):
                seen = -1
                while seen != sum(map(len, self._pending.values())):
                    seen = sum(map(len, self._pending.values()))
                    await asyncio.sleep(GATHER_S)
                for kind, batch in list(self._pending.items()):
                    if not batch:
                        continue
                    self._pending[kind] = []
                    if kind == "generate":
                        self.batches.append(len(batch))
                    try:
                        results = await asyncio.to_thread(
                            getattr(self.backend, kind), [r for r, _ in batch], "conversations"
                        )
                    except Exception as error:  # noqa: BLE001 - a dead server or engine fails every waiting call
                        _settle(batch, error=error)
                        continue
                    _settle(batch, results=[r[0] if kind == "generate" else r for r in results])
                batch = []
        finally:
            stopped = RuntimeError("the batcher of this engine stopped before answering")
            _settle([*batch, *(item for waiting in self._pending.values() for item in waiting)], error=stopped)
            self._pending = {kind: [] for kind in self._pending}


def _settle(batch: list, results: list | None = None, error: BaseException | None = None) -> None:
    """Resolve each waiting call of `batch` with its result (or `error`), skipping callers that are gone."""
    for index, (_, future) in enumerate(batch):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(results[index])


ENGINES: dict[str, Batcher] = {}  # target name -> the batcher of the engine that serves it (set by the evaluation)


def turn_key(target: ServedTarget, messages: list[dict], config: dict) -> str:
    payload = json.dumps([target.identity, messages, config], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def plain_messages(
    messages: list[ChatMessage], system_prompt: str | None, tools: list[ToolInfo] | None = None
) -> list[dict]:
    """Inspect messages as role/content dicts for a chat template. One system message: the target's own prompt
    (a prompted condition's), then the conversation's (an auditor's), then the tools it may call. Tool calls and
    results are text; consecutive user turns (tool results, then a message) are joined."""
    system = [system_prompt] if system_prompt else []
    plain: list[dict] = []
    for message in messages:
        if message.role == "system":
            system.append(message.text)
            continue
        role, text = as_text(message)
        if plain and role == "user" and plain[-1]["role"] == "user":
            plain[-1]["content"] += "\n\n" + text
        else:
            plain.append({"role": role, "content": text})
    if tools:
        system.append(tools_section(tools))
    return ([{"role": "system", "content": "\n\n".join(system)}] if system else []) + plain


@modelapi(name=PROVIDER)
class CCTrainModel(ModelAPI):
    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig | None = None,
        **model_args: Any,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config or GenerateConfig())

    async def generate(self, input: list[ChatMessage], tools, tool_choice, config: GenerateConfig) -> ModelOutput:
        batcher = ENGINES[self.model_name]
        target = batcher.targets[self.model_name]
        messages = plain_messages(input, target.system_prompt, tools)
        if config.logprobs and config.top_logprobs and config.max_tokens == 1:
            labels = tuple(config.extra_body["labels"]) if config.extra_body else ("Yes", "No")
            scores = await batcher.label_logprobs(ChoiceRequest(tuple(messages), target.serve_as, labels))
            if scores is None:  # a remote endpoint with none of these labels in its top log-probabilities
                return ModelOutput.from_content(model=self.model_name, content="")
            top = [TopLogprob(token=label, logprob=value) for label, value in scores.items()]
            best = max(top, key=lambda item: item.logprob)
            choice = ChatCompletionChoice(
                message=ChatMessageAssistant(content=best.token, model=self.model_name),
                stop_reason="max_tokens",
                logprobs=Logprobs(content=[Logprob(token=best.token, logprob=best.logprob, top_logprobs=top)]),
            )
            # labels a remote endpoint left out of its top log-probabilities: their values are upper bounds
            bounded = {"bounded_labels": list(scores.bounded)}
            return ModelOutput(model=self.model_name, choices=[choice], completion=best.token, metadata=bounded)
        settings = {"temperature": config.temperature, "max_tokens": config.max_tokens, "seed": config.seed}
        key = turn_key(target, messages, settings)
        request = GenerationRequest(
            tuple(messages), target.serve_as, 1, config.temperature or 0.0, config.max_tokens, int(key[:12], 16)
        )
        try:
            answer = await batcher.generate(request, key)
        except Exception as error:
            store().set(TARGET_FAILED, f"{self.model_name}: {type(error).__name__}: {error}")
            raise
        content, calls = parse_calls(answer, tools, key) if tools else (answer, [])
        message = ChatMessageAssistant(content=content, tool_calls=calls or None, model=self.model_name)
        return ModelOutput.from_message(message, stop_reason="tool_calls" if calls else "stop")
