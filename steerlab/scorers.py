"""Scorers for sweeps: ``f(text, record) -> float``, named in configs as ``steerlab.scorers:NAME``.

The alignment-faking scorers (compliance, judge scores) arrive with the evaluation harness;
these are generic ones for demos and sanity checks.
"""

from __future__ import annotations

import re
from typing import Any

_WORD = re.compile(r"\w+")


def distinct_words(text: str, record: dict[str, Any] | None = None) -> float:
    """Share of distinct words among the output's words (1.0: no repetition; an empty output: 0.0).

    A cheap coherence proxy: heavy steering often collapses a model into loops.
    """
    words = [w.lower() for w in _WORD.findall(text)]
    return len(set(words)) / len(words) if words else 0.0
