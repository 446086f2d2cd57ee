"""What every text client shares: the interface, the reply type and the error a user can cause."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from steerlab.errors import SteerlabError


class ClientError(SteerlabError):
    """A client that cannot run: no API key, an unusable reply cache, a model the API cannot name."""


class TextClient(Protocol):
    """(system, user) prompts in, replies out, in order; a failed call is its exception, not a raise."""

    model: str  # the name asked for (for an API: possibly an alias)
    calls: int

    def params(self) -> dict[str, Any]: ...  # the sampling parameters that, with the model, key a reply
    def resolve_model(self) -> str: ...  # the model that answers now (the snapshot behind an alias)
    def complete(self, prompts: Sequence[tuple[str, str]], ids: Sequence[str]) -> list[str | Exception]: ...
    def release(self) -> None: ...  # the last replies are stored: drop what would re-attach to them


class Reply(str):
    """A reply's text, carrying the model the API reports having answered it (``model``)."""

    model: str | None

    def __new__(cls, text: str, model: str | None = None) -> Reply:
        obj = super().__new__(cls, text)
        obj.model = model
        return obj
