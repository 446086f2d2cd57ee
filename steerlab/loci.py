"""Token loci: which positions of a rendered dialogue an operation reads or writes.

One language for capture and steering. Steering writes at a :data:`Position`: ``all`` (every
prompt and generated token, the paper's setting), ``prompt`` (the prompt's tokens: the prefill
pass) or ``generation`` (generated tokens: the decode steps; the first generated token comes
from the prefill pass and is never steered under ``generation``). Extraction pools activations over
a *locus*:

- ``response_mean``: every token of the assistant turn's content;
- ``scratchpad_mean``: the scratchpad's content only (between the tags; the paper's
  ``--scratchpad-only``);
- ``span_mean``: the annotated sentence that differs between the sides;
- ``last``: the last token of the assistant turn's content (template tokens after it, such as
  an end-of-turn marker, are not part of the turn).

Character ranges are located in the rendered text (the chat template's output) and mapped to
tokens through the tokenizer's offset mapping, never by string search over tokens. A token
belongs to a range when at least half of its characters lie inside it: a word token that
carries the space before a span counts, a merged token such as ``.</`` that is mostly the
closing tag does not. If no token qualifies (a range shorter than its tokens), every token
overlapping the range is taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from steerlab.errors import PairFileError
from steerlab.models import render_chat
from steerlab.pairs import SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN

Position = Literal["all", "prompt", "generation"]
POSITIONS: tuple[str, ...] = ("all", "prompt", "generation")


class Locus(str, Enum):
    response_mean = "response_mean"
    scratchpad_mean = "scratchpad_mean"
    span_mean = "span_mean"
    last = "last"


@dataclass(frozen=True)
class Rendered:
    """A dialogue rendered by the chat template, with character ranges [start, end)."""

    text: str
    response: tuple[int, int]
    scratchpad: tuple[int, int] | None
    span: tuple[int, int] | None


def render(
    tokenizer: Any, messages: list[dict[str, str]], template: str, span: str | None = None, prompt: str | None = None
) -> Rendered:
    """Render a dialogue ending in an assistant turn and locate its response, scratchpad, span.

    ``prompt`` may pass in the already rendered ``messages[:-1]`` with the generation prompt
    (both sides of a pair share it).
    """
    if not messages or messages[-1]["role"] != "assistant":
        raise PairFileError("a dialogue to render must end with an assistant turn")
    text = render_chat(tokenizer, messages, template)
    if prompt is None:
        prompt = render_prompt(tokenizer, messages[:-1], template)
    content = messages[-1]["content"]
    start = text.find(content, len(prompt) if text.startswith(prompt) else 0)
    if start < 0:
        raise PairFileError("the chat template alters the assistant turn; cannot locate it in the rendered text")
    response = (start, start + len(content))

    scratchpad = None
    open_at = content.find(SCRATCHPAD_OPEN)
    close_at = content.find(SCRATCHPAD_CLOSE, open_at + 1) if open_at >= 0 else -1
    if open_at >= 0 and close_at >= 0:
        scratchpad = (start + open_at + len(SCRATCHPAD_OPEN), start + close_at)

    span_range = None
    if span is not None and scratchpad is not None:
        at = text.find(span, scratchpad[0], scratchpad[1])
        if at >= 0:
            span_range = (at, at + len(span))
    return Rendered(text=text, response=response, scratchpad=scratchpad, span=span_range)


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], template: str) -> str:
    """The rendered prompt: the messages before the assistant turn, with the generation prompt."""
    return render_chat(tokenizer, messages, template, add_generation_prompt=True)


def char_range(rendered: Rendered, locus: Locus) -> tuple[int, int]:
    """The character range a locus pools over."""
    if locus in (Locus.response_mean, Locus.last):
        return rendered.response
    if locus is Locus.scratchpad_mean:
        if rendered.scratchpad is None:
            raise PairFileError("no <SCRATCHPAD_REASONING> block in the assistant turn")
        return rendered.scratchpad
    if rendered.span is None:
        raise PairFileError("span not found verbatim in the scratchpad")
    return rendered.span


def token_positions(offsets: list[tuple[int, int]], chars: tuple[int, int], locus: Locus) -> list[int]:
    """Token indices that lie (at least half) inside ``chars``; for ``last`` only the final one."""
    lo, hi = chars
    overlap = [(i, min(e, hi) - max(s, lo), e - s) for i, (s, e) in enumerate(offsets) if e > s and s < hi and e > lo]
    hits = [i for i, inside, width in overlap if 2 * inside >= width] or [i for i, _, _ in overlap]
    if not hits:
        raise PairFileError(f"no token covers characters {lo}..{hi} of the rendered dialogue")
    return hits[-1:] if locus is Locus.last else hits
