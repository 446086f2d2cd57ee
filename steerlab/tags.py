"""The tags of the scratchpad protocol and the structure they give a transcript.

Models quote these tags while they reason ("I will put my answer between <OUTPUT> and </OUTPUT>
tags"), so where a tag sits matters: an ``<OUTPUT>`` block counts only when it opens outside every
reasoning block, i.e. after the last *closed* reasoning block (``<SCRATCHPAD_REASONING>`` or
``<think>``) with no reasoning block open before it. Generation, labels and pairs all read
transcripts through the functions here, so a quoted tag means the same thing everywhere.
"""

from __future__ import annotations

import re

SCRATCHPAD_OPEN, SCRATCHPAD_CLOSE = "<SCRATCHPAD_REASONING>", "</SCRATCHPAD_REASONING>"
OUTPUT_OPEN, OUTPUT_CLOSE = "<OUTPUT>", "</OUTPUT>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REASONING_OPENS = (SCRATCHPAD_OPEN, THINK_OPEN)

REASONING_RE = re.compile(
    rf"{re.escape(SCRATCHPAD_OPEN)}(.*?){re.escape(SCRATCHPAD_CLOSE)}|{re.escape(THINK_OPEN)}(.*?){re.escape(THINK_CLOSE)}",
    re.S,
)

# Names of the stop rules a request may carry (``Sampling.stop_rule``): when a stop string appears,
# the rule decides on the whole transcript so far whether the turn really ends there.
OUTPUT_CLOSED = "output_closed"


def reasoning_blocks(text: str) -> list[str]:
    """The content of every closed reasoning block, in order."""
    return [(m.group(1) if m.group(1) is not None else m.group(2)).strip() for m in REASONING_RE.finditer(text)]


def last_reasoning_end(text: str) -> int:
    """Index just after the last closed reasoning block (0 if there is none)."""
    ends = [m.end() for m in REASONING_RE.finditer(text)]
    return ends[-1] if ends else 0


def open_reasoning(text: str) -> bool:
    """Whether the text ends inside a reasoning block that was opened and not closed."""
    tail = text[last_reasoning_end(text) :]
    return any(tag in tail for tag in REASONING_OPENS)


def output_start(text: str) -> int:
    """Index of the ``<OUTPUT>`` tag that opens the answer, or -1.

    That is the first ``<OUTPUT>`` after the last closed reasoning block, provided no reasoning
    block was opened before it (an ``<OUTPUT>`` inside a still-open scratchpad is a quotation).
    """
    end = last_reasoning_end(text)
    at = text.find(OUTPUT_OPEN, end)
    if at < 0:
        return -1
    if any(tag in text[end:at] for tag in REASONING_OPENS):
        return -1
    return at


def output_closed(text: str) -> bool:
    """Whether ``text``, which ends with ``</OUTPUT>``, ends by closing the answer's output block.

    False for a ``</OUTPUT>`` quoted inside an open reasoning block, or one with no real
    ``<OUTPUT>`` before it: generation must go on past such a stop string.
    """
    if not text.endswith(OUTPUT_CLOSE):
        return False
    body = text[: -len(OUTPUT_CLOSE)]
    at = output_start(body)
    return at >= 0 and OUTPUT_CLOSE not in body[at:]


# rule name -> (the stop string it governs, whether a transcript ending in it ends the turn)
STOP_RULES = {OUTPUT_CLOSED: (OUTPUT_CLOSE, output_closed)}


def stop_counts(rule: str | None, text: str) -> bool:
    """Whether the stop string ``text`` ends with ends the turn under ``rule``.

    Stop strings the rule does not govern always count, and so does every stop without a rule.
    """
    if rule is None:
        return True
    governed, counts = STOP_RULES[rule]
    return counts(text) if text.endswith(governed) else True


def first_stop(text: str, stops: tuple[str, ...], rule: str | None, context: str = "", start: int = 0) -> int | None:
    """End index (in ``text``) of the first stop string at or after ``start`` that counts, or None.

    ``context`` is the transcript before ``text`` (earlier turns), which the rule reads too.
    """
    best = None
    for stop in stops:
        at = text.find(stop, max(start - len(stop) + 1, 0))
        while at >= 0:
            end = at + len(stop)
            if stop_counts(rule, context + text[:end]):
                best = end if best is None else min(best, end)
                break
            at = text.find(stop, at + 1)
    return best
