"""Generation backends: one interface, used by self-distillation (data) and by evaluation.

`hf` is the reference: transformers + PEFT, every adapter loaded once, batched generation with
mixed-adapter batches (PEFT's `adapter_names`), or one model per batch where PEFT cannot mix them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from cc_train.generation.prompting import prompt_ids

BASE = "base"  # the model id of the base model, next to adapter names


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[dict, ...]
    model: str  # BASE or an adapter name
    n: int
    temperature: float
    max_new_tokens: int
    seed: int  # the samples of this request depend on this seed only, not on what else is in the batch


class PerRowSampling(LogitsProcessor):
    """Samples each row's next token from the row's own generator and turns the scores into a one-hot, so that
    greedy decoding emits that sample: a row's text depends on its seed, not on what it was batched with (a
    resumed evaluation draws exactly the samples an uninterrupted one would)."""

    def __init__(self, seeds: list[int], temperature: float) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()
        tokens = [torch.multinomial(row, 1, generator=g) for row, g in zip(probabilities, self.generators, strict=True)]
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(tokens)), torch.cat(tokens).to(scores.device)] = 0.0
        return chosen


def sample_seed(seed: int, sample: int) -> int:
    """The generator seed of sample `sample` of a request seeded `seed` (independent streams per sample)."""
    return (seed * 1_000_003 + sample) % 2**63


class HFBackend:
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        adapters: dict[str, str | Path] | None = None,
        batch_size: int = 16,
        max_model_len: int | None = None,
    ) -> None:
        """`max_model_len`: the longest sequence served (eval.max_model_len, as vLLM's); None: the model's own."""
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_model_len = max_model_len or model.config.max_position_embeddings
        self.model = model
        if adapters:
            from cc_train.models.lora import load_adapters

            self.model = load_adapters(model, adapters)
        self.model.eval()
        self.adapters = set(adapters or ())
        # PEFT mixes adapters in one batch (adapter_names) except for LoRA on fused expert parameters; then
        # every batch holds one model and the adapter is switched between batches.
        self.mixed_batches = not any(
            json.loads((Path(path) / "adapter_config.json").read_text()).get("target_parameters")
            for path in (adapters or {}).values()
        )

    @contextmanager
    def _serving(self, requests: list) -> Iterator[dict]:
        """Activate the models of one batch; yields the extra forward/generate arguments."""
        unknown = {r.model for r in requests} - self.adapters - {BASE}
        if unknown:
            raise ValueError(f"unknown model ids {sorted(unknown)}; loaded adapters: {sorted(self.adapters)}")
        if not self.adapters:
            yield {}
        elif self.mixed_batches:
            yield {"adapter_names": [r.model if r.model != BASE else "__base__" for r in requests]}
        elif requests[0].model == BASE:
            with self.model.disable_adapter():
                yield {}
        else:
            self.model.set_adapter(requests[0].model)
            yield {}

    def too_long(self, messages: tuple[dict, ...]) -> str | None:
        return too_long(self.tokenizer, messages, self.max_model_len)

    def _batch_key(self, request) -> tuple:
        return () if self.mixed_batches else (request.model,)

    def close(self) -> None:
        del self.model

    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest], desc: str = "generating") -> list[list[str]]:
        """n completions per request, in request order. Batches mix adapters; same settings batch together."""
        order = sorted(
            range(len(requests)),
            key=lambda i: (
                *self._batch_key(requests[i]),
                requests[i].temperature,
                requests[i].max_new_tokens,
                requests[i].n,
                len(requests[i].messages[-1]["content"]),
            ),
        )
        results: list[list[str]] = [[] for _ in requests]
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        with tqdm(total=len(requests), desc=desc, unit="prompt") as progress:
            start = 0
            while start < len(order):
                head = requests[order[start]]
                batch = [order[start]]
                while (
                    len(batch) < self.batch_size
                    and start + len(batch) < len(order)
                    and _same_settings(requests[order[start + len(batch)]], head)
                    and self._batch_key(requests[order[start + len(batch)]]) == self._batch_key(head)
                ):
                    batch.append(order[start + len(batch)])
                start += len(batch)
                items = [requests[i] for i in batch]
                encoded = [prompt_ids(self.tokenizer, list(r.messages)) for r in items]
                width = max(map(len, encoded))
                rows = [ids for ids in encoded for _ in range(head.n)]
                input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in rows], device=device)
                attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=device)
                expanded = [r for r in items for _ in range(head.n)]
                seeds = [sample_seed(r.seed, s) for r in items for s in range(head.n)]
                sampling = [PerRowSampling(seeds, head.temperature)] if head.temperature > 0 else []
                with self._serving(expanded) as serving:
                    output = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=attention,
                        max_new_tokens=head.max_new_tokens,
                        do_sample=False,  # the sampling is PerRowSampling's, seeded per row
                        logits_processor=LogitsProcessorList(sampling),
                        pad_token_id=pad,
                        **serving,
                    )
                texts = self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
                for position, index in enumerate(batch):
                    results[index] = [t.strip() for t in texts[position * head.n : (position + 1) * head.n]]
                progress.update(len(batch))
        return results

    @torch.inference_mode()
    def label_logprobs(self, requests: list[ChoiceRequest], desc: str = "scoring probes") -> list[LabelScores]:
        """Log-probabilities of each request's labels as the next token, renormalised over the labels."""
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        order = sorted(range(len(requests)), key=lambda i: self._batch_key(requests[i]))  # stable: keeps order
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        if not self.mixed_batches:  # one model per batch
            batches = [
                [i for i in batch if self._batch_key(requests[i]) == key]
                for batch in batches
                for key in dict.fromkeys(self._batch_key(requests[i]) for i in batch)
            ]
        results: list[LabelScores] = [LabelScores({}) for _ in requests]
        for batch in tqdm(batches, desc=desc, unit="batch"):
            items = [requests[i] for i in batch]
            encoded = [prompt_ids(self.tokenizer, list(r.messages)) for r in items]
            width = max(map(len, encoded))
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=device)
            attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
            positions = (attention.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
            with self._serving(items) as serving:
                logits = self.model(
                    input_ids=input_ids, attention_mask=attention, position_ids=positions, **serving
                ).logits
            for row, index in zip(logits[:, -1].float(), batch, strict=True):
                ids = label_token_ids(self.tokenizer, requests[index].labels)
                results[index] = over_labels(dict(zip(requests[index].labels, row[ids].tolist(), strict=True)))
        return results


def too_long(tokenizer: PreTrainedTokenizerBase, messages: tuple[dict, ...], max_model_len: int) -> str | None:
    """Why the engine cannot answer `messages` (as vLLM decides: the prompt must leave room for one new token), or
    None when it fits."""
    length = len(prompt_ids(tokenizer, list(messages)))
    if length < max_model_len:
        return None
    return (
        f"the prompt has {length} tokens and the engine serves at most {max_model_len} (eval.max_model_len), "
        "prompt and answer together"
    )


def _same_settings(a: GenerationRequest, b: GenerationRequest) -> bool:
    return (a.temperature, a.max_new_tokens, a.n) == (b.temperature, b.max_new_tokens, b.n)


@dataclass(frozen=True)
class ChoiceRequest:
    messages: tuple[dict, ...]
    model: str
    labels: tuple[str, ...]  # single-token continuations whose next-token log-probabilities are wanted


class LabelScores(dict):
    """Label -> log-probability renormalised over the labels. `bounded` names the labels whose raw value was only
    an upper bound: a remote endpoint left them out of its top log-probabilities (remote.py)."""

    def __init__(self, scores: dict[str, float], bounded: tuple[str, ...] = ()) -> None:
        super().__init__(scores)
        self.bounded = bounded


def over_labels(scores: dict[str, float], bounded: tuple[str, ...] = ()) -> LabelScores:
    """Log-probabilities renormalised over the given labels: P(label | the answer is one of the labels),
    the quantity forced-choice scoring needs; every backend returns it."""
    total = torch.logsumexp(torch.tensor(list(scores.values())), 0).item()
    return LabelScores({label: value - total for label, value in scores.items()}, bounded)


def label_token_ids(tokenizer: PreTrainedTokenizerBase, labels: tuple[str, ...]) -> list[int]:
    ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"option labels {labels} must each be one token for this tokenizer; got {ids}")
    return [i[0] for i in ids]
