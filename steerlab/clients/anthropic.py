"""The one client of the Anthropic Messages API: (system, user) prompts in, replies out.

Everything in steerlab that calls the Messages API builds on this module: the judge
(:class:`steerlab.harness.judge.AnthropicJudge`), the SDF add-on's document generator and grader,
and the generation backend (:class:`steerlab.backends.anthropic.AnthropicBackend`, which shares the
key and the version workaround).

- **The version workaround.** anthropic>=1.0 removed ``temperature`` from its Messages methods and
  API version 2026-10-21 rejects it with a 400, so a set temperature goes in the request body with
  ``anthropic-version: 2023-06-01`` (:data:`LEGACY_API_VERSION`, the version that still takes it);
  ``temperature=None`` sends no sampling parameter and the SDK's default API version.
- **Retries and concurrency.** The SDK retries 429, 408/409, 5xx and timeouts with exponential
  backoff (and honours ``retry-after``); calls run ``concurrency`` at a time. A call that failed
  once the retries are spent comes back as its exception, in its place, not raised.
- **Batches.** ``batch=True`` sends everything through the Message Batches API instead (half the
  price): one ``complete`` call is one batch, so a caller sends as many prompts at once as it can
  (:meth:`AnthropicText.batch_parts` splits a list only above the API's limits, 100,000 requests or
  256 MB a batch). The batch id is saved in ``batch_state`` so a killed job re-attaches rather than
  paying twice (also when some of the batch's replies were stored before the kill: a rerun asking
  for a subset of a saved batch's requests re-attaches to it); the saved state is dropped only
  after the caller has stored the results (:meth:`AnthropicText.release`).
- **The model behind an alias.** :meth:`AnthropicText.resolve_model` asks the API once which
  snapshot an alias such as ``claude-sonnet-4-5`` reaches now, and every reply carries the model
  its response reports (:class:`~steerlab.clients.base.Reply`), so a cache keyed by model never
  silently reuses another snapshot's replies.
- **The key** is read from ``ANTHROPIC_API_KEY`` only (:func:`require_api_key`) and never written
  anywhere.
- **Cost.** :func:`estimate_chars` gives an upper bound in USD from :data:`PRICES`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from steerlab.clients.base import ClientError, Reply
from steerlab.fileio import atomic_write_text

API_KEY_ENV = "ANTHROPIC_API_KEY"
LEGACY_API_VERSION = "2023-06-01"  # the last API version that accepts temperature
# USD per million tokens (input, output) for the cost estimate; override with prices=(in, out).
PRICES = {
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku-latest": (0.8, 4.0),
}
MAX_BATCH_REQUESTS = 100_000  # the Message Batches API's limits on one batch
MAX_BATCH_BYTES = 256_000_000
CHARS_PER_TOKEN = 3.5  # a conservative average for English prose (the estimate errs high)


def require_api_key(use: str = "the anthropic judge", alternative: str = "use --judge local") -> str:
    """The API key from the environment, or one line saying who needs it and what else to do."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise ClientError(f"{use} needs an API key: set {API_KEY_ENV} (or {alternative}, or --dry-run for the cost)")
    return key


def cache_params(max_tokens: int, temperature: float | None) -> dict[str, Any]:
    """The parameters that, with model and input, key a reply of :class:`AnthropicText` in a
    :class:`~steerlab.clients.cache.ReplyCache` (the judge's dry run computes the same keys)."""
    return {"temperature": temperature, "max_tokens": max_tokens}


def sdk_client(
    needed_by: tuple[str, str] = ("the anthropic judge", "use --judge local"),
    max_retries: int = 6,
    http_client: Any = None,
) -> Any:
    """The official SDK's client with the key from the environment (``needed_by``: who needs the key
    and what else to do, for the one line when it is missing) and ``max_retries`` SDK retries."""
    import anthropic

    return anthropic.Anthropic(api_key=require_api_key(*needed_by), max_retries=max_retries, http_client=http_client)


def legacy_sampling(sampling: dict[str, float]) -> dict[str, Any]:
    """The keyword arguments that send ``sampling`` (temperature, top_p) to the Messages API: in the
    request body, under :data:`LEGACY_API_VERSION` (the SDK's methods and the newer API versions
    refuse them); see the module docstring."""
    return {"extra_headers": {"anthropic-version": LEGACY_API_VERSION}, "extra_body": dict(sampling)}


class AnthropicText:
    """Claude through the official SDK: (system, user) prompts in, replies out. The judge's backend
    (:class:`steerlab.harness.judge.AnthropicJudge`) and the SDF add-on's document generator and
    grader; see the module docstring."""

    def __init__(
        self,
        model: str,
        max_tokens: int = 400,
        concurrency: int = 8,
        max_retries: int = 6,
        batch: bool = False,
        temperature: float | None = 0.0,
        client: Any = None,
        http_client: Any = None,
        batch_state: Path | None = None,
        poll_seconds: float = 30.0,
        needed_by: tuple[str, str] = ("the anthropic judge", "use --judge local"),
    ):
        self.model, self.max_tokens, self.concurrency, self.batch = model, max_tokens, concurrency, batch
        self.temperature = temperature
        self.client = client or sdk_client(needed_by, max_retries, http_client)
        self.batch_state, self.poll_seconds = batch_state, poll_seconds
        self.calls = 0
        self._resolved: str | None = None
        self._batch_id: str | None = None  # the batch whose replies the last complete() returned

    def params(self) -> dict[str, Any]:
        return cache_params(self.max_tokens, self.temperature)

    def resolve_model(self) -> str:
        """The model the API answers as now: ``self.model`` may be an alias (``claude-sonnet-4-5``)
        whose snapshot changes. One call with a one-token reply, once per client; the answer is the
        ``model`` field of the Messages response."""
        import anthropic

        if self._resolved is None:
            try:
                self.calls += 1
                message = self.client.messages.create(
                    model=self.model, max_tokens=1, messages=[{"role": "user", "content": "Reply with OK."}],
                    **self._extra(),
                )  # fmt: skip
            except anthropic.APIError as exc:
                raise ClientError(f"could not ask the API which model {self.model!r} is: {exc}") from None
            self._resolved = message.model or self.model
        return self._resolved

    def release(self) -> None:
        """The caller has stored the replies of the last batch: drop the saved batch state, so the
        next call sends a new batch. Until then a killed job re-attaches to the batch it paid for
        (its results stay on the API); :func:`steerlab.harness.judge.judge_samples` calls this after writing its cache.
        A state file of another batch (a killed job's, not yet re-attached) is left alone."""
        if self.batch_state is not None and self._batch_id is not None and self.batch_state.is_file():
            if json.loads(self.batch_state.read_text()).get("batch_id") == self._batch_id:
                self.batch_state.unlink()  # only the state of a batch whose replies this client returned
        self._batch_id = None

    def _body(self, system: str, user: str) -> dict[str, Any]:
        body = {"model": self.model, "system": system, "messages": [{"role": "user", "content": user}],
                "max_tokens": self.max_tokens}  # fmt: skip
        return body if self.temperature is None else {**body, "temperature": self.temperature}

    def _extra(self) -> dict[str, Any]:
        return {} if self.temperature is None else legacy_sampling({"temperature": self.temperature})

    def _request(self, system: str, user: str) -> dict[str, Any]:
        body = self._body(system, user)
        body.pop("temperature", None)
        return {**body, **self._extra()}

    def complete(self, prompts: Sequence[tuple[str, str]], ids: Sequence[str]) -> list[str | Exception]:
        if self.batch and prompts:
            return self._complete_batch(prompts, ids)

        def one(prompt: tuple[str, str]) -> str | Exception:
            import anthropic

            try:
                self.calls += 1
                message = self.client.messages.create(**self._request(*prompt))
                return Reply("".join(block.text for block in message.content if block.type == "text"), message.model)
            except anthropic.APIError as exc:  # retries are spent, or the request itself is bad
                return exc

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, prompts))

    def batch_parts(self, prompts: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
        """``(start, stop)`` slices of ``prompts`` that each fit one Message Batch (at most
        :data:`MAX_BATCH_REQUESTS` requests and :data:`MAX_BATCH_BYTES` of request body): one slice
        unless the prompts are over the limits."""
        parts, lo, size = [], 0, 0
        envelope = len(json.dumps({"requests": []}))
        for i, prompt in enumerate(prompts):
            one = len(json.dumps({"custom_id": "x" * 40, "params": self._body(*prompt)}).encode()) + 2
            if i > lo and (i - lo >= MAX_BATCH_REQUESTS or envelope + size + one > MAX_BATCH_BYTES):
                parts.append((lo, i))
                lo, size = i, 0
            size += one
        if lo < len(prompts):
            parts.append((lo, len(prompts)))
        return parts

    def _complete_batch(self, prompts: Sequence[tuple[str, str]], ids: Sequence[str]) -> list[str | Exception]:
        custom = [hashlib.sha256(i.encode()).hexdigest()[:40] for i in ids]
        batch_id = None
        if self.batch_state is not None and self.batch_state.is_file():
            state = json.loads(self.batch_state.read_text())
            if set(custom) <= set(state.get("custom_ids", ())):  # a killed job: re-attach to the batch it
                batch_id = state["batch_id"]  # paid for (whose replies it may have stored in part)
        if batch_id is None:
            self.calls += 1
            requests = [{"custom_id": c, "params": self._body(*p)} for c, p in zip(custom, prompts, strict=True)]
            headers = self._extra().get("extra_headers")
            batch_id = self.client.messages.batches.create(requests=requests, extra_headers=headers).id
            if self.batch_state is not None:
                atomic_write_text(self.batch_state, json.dumps({"batch_id": batch_id, "custom_ids": custom}))
        self._batch_id = batch_id
        while self.client.messages.batches.retrieve(batch_id).processing_status != "ended":
            time.sleep(self.poll_seconds)
        replies: dict[str, str | Exception] = {}
        for entry in self.client.messages.batches.results(batch_id):
            if entry.result.type == "succeeded":
                message = entry.result.message
                replies[entry.custom_id] = Reply("".join(b.text for b in message.content if b.type == "text"),
                                                 message.model)  # fmt: skip
            else:
                replies[entry.custom_id] = RuntimeError(f"batch request {entry.result.type}")
        # the batch state stays until the caller has stored these replies (release): a kill before
        # that re-attaches to this batch instead of paying for a new one
        return [replies.get(c, RuntimeError("missing from the batch results")) for c in custom]


def estimate_chars(prompt_chars: int, calls: int, model: str, max_tokens: int, batch: bool,
                   prices: tuple[float, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Upper-bound cost of ``calls`` calls whose prompts total ``prompt_chars`` characters."""
    tokens_in = prompt_chars / CHARS_PER_TOKEN
    tokens_out = calls * max_tokens
    price = prices or PRICES.get(model)
    out: dict[str, Any] = {"calls": calls, "input_tokens": int(tokens_in), "max_output_tokens": tokens_out}
    if price is None:
        out["usd"] = None
    else:
        out["usd"] = round((tokens_in * price[0] + tokens_out * price[1]) / 1e6 * (0.5 if batch else 1.0), 4)
    return out
