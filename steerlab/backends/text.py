"""Any steerlab generation backend as a text client: (system, user) prompts in, replies out.

:class:`LocalText` speaks the interface of :class:`steerlab.clients.base.TextClient` (the one the
Anthropic client speaks), so a local model (HF or vLLM) can stand in for the API wherever replies
are asked for: the local judge (:class:`steerlab.harness.judge.LocalJudge`), the SDF add-on's
document generation and grading. It lives with the backends, not in ``steerlab.clients``, because
it is an adapter over a backend's ``generate`` (it builds :class:`~steerlab.backends.base.Request`
objects), and ``steerlab.clients`` imports nothing from ``steerlab.backends``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from steerlab.backends.base import Request, Sampling


class LocalText:
    """A local chat model behind a steerlab generation backend: (system, user) prompts in, replies out.

    ``prefill`` starts every reply (and is part of it); with ``temperature > 0`` each prompt's
    sampling seed is derived from its id, so a rerun reproduces it.
    """

    def __init__(self, backend: Any, model: str, max_tokens: int = 200, temperature: float = 0.0, prefill: str = ""):
        self.backend, self.model, self.max_tokens, self.temperature = backend, model, max_tokens, temperature
        self.prefill = prefill
        self.calls = 0

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "prefill": self.prefill}

    def resolve_model(self) -> str:
        return self.model

    def release(self) -> None:
        pass

    def complete(self, prompts: Sequence[tuple[str, str]], ids: Sequence[str]) -> list[str | Exception]:
        requests = [
            Request(
                [{"role": "system", "content": s}, {"role": "user", "content": u}],
                Sampling(
                    max_new_tokens=self.max_tokens,
                    temperature=self.temperature,
                    seed=int(hashlib.sha256(i.encode()).hexdigest()[:8], 16),
                ),
                id=i,
                prefill=self.prefill,
            )  # fmt: skip
            for (s, u), i in zip(prompts, ids, strict=True)
        ]
        self.calls += len(requests)
        return [self.prefill + r.text for r in self.backend.generate(requests)]
