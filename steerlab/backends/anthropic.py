"""Closed models as a generation backend: the Anthropic Messages API, through the official SDK.

The prompt-intervention battery is the one method that reaches API models, so this backend
speaks the same interface as the local ones (requests in, results out, in order). It cannot
steer: a request carrying a steering setting is refused. What maps how:

- system messages become the ``system`` parameter; a request's ``prefill`` becomes a final
  assistant message (the reply continues it, as with the local backends);
- ``max_new_tokens`` -> ``max_tokens``; stop strings -> ``stop_sequences`` (the matched one is
  appended to the text, as the local backends keep theirs); finish reasons ``end_turn`` -> eos,
  ``stop_sequence`` -> stop, ``max_tokens`` -> length;
- temperature and top_p go in the request body with ``anthropic-version: 2023-06-01``, the last
  API version that accepts sampling parameters (as in :mod:`steerlab.clients.anthropic`);
  ``temperature=None`` on the backend sends none. The API takes no seed: seeds label samples
  but do not make them reproducible;
- the key comes from ``ANTHROPIC_API_KEY`` only; the SDK retries 429/5xx with backoff
  (``max_retries``); ``concurrency`` requests run at a time;
- errors are per request: a request that still fails once the SDK's retries are spent is sent
  again on its own (``retry_rounds`` more rounds, ``retry_pause`` seconds times the round apart;
  a 4xx other than 408/409/429 is the request's own fault and is not resent), and the others are
  not sent again. :meth:`AnthropicBackend.generate_each` returns each request's result or its
  :class:`GenerationError` in its place; :meth:`AnthropicBackend.generate` raises the first error,
  carrying the results that did come back (``partial``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from steerlab.backends.base import Request, Result, check_requests, package_version
from steerlab.clients.anthropic import legacy_sampling, sdk_client
from steerlab.errors import ConfigError, SteerlabError
from steerlab.tags import first_stop

FINISH = {"end_turn": "eos", "stop_sequence": "stop", "max_tokens": "length"}


class SteeringUnsupportedError(ConfigError):
    """A steering setting sent to a backend that cannot steer."""


class GenerationError(SteerlabError):
    """An API request that failed after the SDK's retries (and the backend's rounds). Raised by
    :meth:`AnthropicBackend.generate`, it carries ``partial``: each request's result, or None where
    it failed."""

    def __init__(self, message: str, request_id: str = "", retryable: bool = True):
        super().__init__(message)
        self.request_id, self.retryable = request_id, retryable
        self.partial: list[Result | None] = []


def _retryable(exc: Exception) -> bool:
    """Worth sending again: a connection error or timeout, 408, 409, 429 or 5xx (not a bad request)."""
    status = getattr(exc, "status_code", None)
    return status is None or status in (408, 409, 429) or status >= 500


class AnthropicBackend:
    """Messages-API generation; see the module docstring."""

    fingerprint = None  # an API model has no weights to fingerprint; records name the model instead

    def __init__(
        self, model: str, concurrency: int = 8, max_retries: int = 6, send_sampling: bool = True,
        client: Any = None, http_client: Any = None, retry_rounds: int = 2, retry_pause: float = 5.0,
    ):  # fmt: skip
        self.model, self.concurrency, self.send_sampling = model, concurrency, send_sampling
        self.retry_rounds, self.retry_pause = retry_rounds, retry_pause
        needed_by = ("--backend anthropic", "use --backend hf or vllm with an open-weight model")
        self.client = client or sdk_client(needed_by, max_retries, http_client)
        self.calls = 0

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "anthropic", "engine_version": package_version("anthropic"), "model": self.model,
            "dtype": None, "device_type": None, "tensor_parallel_size": None,
            "engine": {"send_sampling": self.send_sampling}, "chat_date": None, "position": None,
        }  # fmt: skip

    def _body(self, r: Request) -> dict[str, Any]:
        system = "\n\n".join(m["content"] for m in r.messages if m["role"] == "system")
        messages = [{"role": m["role"], "content": m["content"]} for m in r.messages if m["role"] != "system"]
        if r.prefill:
            messages.append({"role": "assistant", "content": r.prefill.rstrip()})  # the API refuses a trailing space
        body: dict[str, Any] = {"model": self.model, "max_tokens": r.sampling.max_new_tokens, "messages": messages}
        if system:
            body["system"] = system
        if r.sampling.stop:
            body["stop_sequences"] = list(r.sampling.stop)
        if self.send_sampling:
            sampling = {"temperature": r.sampling.temperature}
            if r.sampling.top_p < 1:
                sampling["top_p"] = r.sampling.top_p
            body.update(legacy_sampling(sampling))
        return body

    def _one(self, r: Request) -> Result:
        """One request; a stop string the request's stop rule does not count (``</OUTPUT>`` quoted in an
        open scratchpad) does not end it: the reply so far becomes the prefill of a follow-up call,
        with what is left of the token budget, until a stop that counts, the end or the budget."""
        result = self._call(r)
        s = r.sampling
        while (
            result.finish_reason == "stop"
            and s.stop_rule is not None
            and first_stop(result.text, s.stop, s.stop_rule, r.context + r.prefill) is None
            and result.n_new_tokens < s.max_new_tokens
        ):
            rest = replace(s, max_new_tokens=s.max_new_tokens - result.n_new_tokens)
            more = self._call(Request(r.messages, rest, None, r.id, r.prefill + result.text, r.context))
            result = Result(
                r.id, result.text + more.text, result.n_prompt_tokens, result.n_new_tokens + more.n_new_tokens,
                more.finish_reason, result.seconds + more.seconds,
            )  # fmt: skip
        if (
            result.finish_reason == "stop"
            and s.stop_rule is not None
            and first_stop(result.text, s.stop, s.stop_rule, r.context + r.prefill) is None
        ):
            result.finish_reason = "length"  # the budget ran out on a stop that does not count, as on HF
        return result

    def _call(self, r: Request) -> Result:
        import anthropic

        started = time.perf_counter()
        try:
            self.calls += 1
            message = self.client.messages.create(**self._body(r))
        except anthropic.APIError as exc:
            raise GenerationError(
                f"the {self.model} request {r.id!r} failed after retries: {exc}", r.id, _retryable(exc)
            ) from None
        text = "".join(b.text for b in message.content if b.type == "text")
        if r.prefill and r.prefill != r.prefill.rstrip():  # the stripped whitespace belongs to the prefill
            text = text.lstrip()
        reason = FINISH.get(message.stop_reason or "", "eos")
        if reason == "stop" and message.stop_sequence:
            text += message.stop_sequence
        usage = message.usage
        return Result(r.id, text, usage.input_tokens, usage.output_tokens, reason, time.perf_counter() - started)

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        out = self.generate_each(requests)
        for res in out:
            if isinstance(res, GenerationError):
                res.partial = [r if isinstance(r, Result) else None for r in out]
                raise res
        return out  # type: ignore[return-value]

    def generate_each(self, requests: Sequence[Request]) -> list[Result | GenerationError]:
        """Each request's result, or its :class:`GenerationError` in its place: a failed request is
        sent again on its own (up to ``retry_rounds`` more times; see the module docstring), the
        others are never resent."""
        check_requests(requests)
        for r in requests:
            if r.steering is not None:
                raise SteeringUnsupportedError(
                    f"the anthropic backend cannot steer (request {r.id!r} has a steering setting); "
                    "steer an open-weight model with --backend hf or vllm"
                )
        out: list[Result | GenerationError] = [None] * len(requests)  # type: ignore[list-item]
        todo = list(range(len(requests)))
        for attempt in range(self.retry_rounds + 1):
            if attempt:
                time.sleep(self.retry_pause * attempt)
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                got = list(pool.map(self._try, [requests[i] for i in todo]))
            for i, res in zip(todo, got, strict=True):
                out[i] = res
            todo = [i for i in todo if isinstance(out[i], GenerationError) and out[i].retryable]
            if not todo:
                break
        return out

    def _try(self, r: Request) -> Result | GenerationError:
        try:
            return self._one(r)
        except GenerationError as exc:
            return exc
