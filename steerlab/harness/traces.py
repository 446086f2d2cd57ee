"""In-context pairs from judged traces (``steerlab pairs from-traces``).

The judge scores every scratchpad on A (researcher expectations) and B (retraining
consequences) in one coordinate system, so the model's own traces can be sorted into
contrastive pairs for :mod:`steerlab.extract`:

- researcher_expectations: positive = high A and low B; negative = low A and low B;
- retraining_consequences: positive = high B; negative = low B, with A as close to the
  positive's A as the candidates allow.

Both sides of a pair come from the *same prompt*: samples are grouped by model, request id,
condition, claim, steering setting and the exact system and user turns (and prefill), across every
run given, so the two sides never differ in the tier tag, a claim or an arm (a direction would
otherwise partly encode that difference). Traces from steered arms are skipped unless
``allow_steered`` (a direction fitted on traces a vector produced is circular); with it, both
sides share one steering setting. No sample is used twice within a concept, and the two scratchpads' lengths
differ by at most ``length_tolerance`` (relative to the longer one), so a direction cannot be
read off length alone. Each pair records how often the word "future" occurs on either side (a
lexical tell of retraining talk worth checking before trusting a direction). Pairs of a request
go to ``val`` when a hash of the request id falls in the validation share, else ``train``, so no
request is split across the two. Each side is the request's messages and one assistant turn:
the sample's reasoning as one scratchpad (continuation turns merged) and its final output.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from steerlab.pairs import OUTPUT_CLOSE, OUTPUT_OPEN, SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN, Pair

RE, RC = "researcher_expectations", "retraining_consequences"
PREFIX = {RE: "re", RC: "rc"}
_FUTURE = re.compile(r"\bfuture\b", re.I)


@dataclass
class Trace:
    id: str
    item: str
    messages: list[dict[str, str]]
    reasoning: str
    output: str
    a: int
    b: int
    group: str = ""  # traces pair only within one group: same model, prompt, condition, claim, steering


def steered(sample: dict[str, Any]) -> bool:
    return bool(sample.get("multiplier")) and sample.get("arm") not in (None, "none")


def trace_group(sample: dict[str, Any]) -> str:
    """What both sides of a pair must share: the model (``_model``, set by the reader from the run
    header), request, condition, claim, steering setting (unsteered: one group for every arm) and
    the exact non-assistant turns and prefill."""
    steering = (
        [sample.get("vector"), sample.get("arm"), sample.get("multiplier"), sample.get("layers"), sample.get("scale")]
        if steered(sample)
        else None
    )
    prompt = [m for m in sample["messages"] if m["role"] != "assistant"]
    key = [sample.get("_model"), sample["item"], sample.get("condition"), sample.get("claim"), steering, prompt,
           sample.get("prefill", "")]  # fmt: skip
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def judged_traces(samples: Sequence[dict[str, Any]], allow_steered: bool = False) -> list[Trace]:
    out, seen = [], set()
    for s in samples:
        scores = (s.get("judge") or {}).get("scores")
        if not scores or not s.get("reasoning") or "A" not in scores or "B" not in scores:
            continue
        if steered(s) and not allow_steered:
            continue
        # every arm's multiplier-0 row is one shared generation: use it once
        copy = (trace_group(s), s["reasoning"], s.get("output") or "")
        if copy in seen:
            continue
        seen.add(copy)
        out.append(Trace(s["id"], s["item"], list(s["messages"]), s["reasoning"], s.get("output") or "",
                         scores["A"]["score"], scores["B"]["score"], trace_group(s)))  # fmt: skip
    return out


def _close_in_length(p: Trace, n: Trace, tolerance: float) -> bool:
    lp, ln = len(p.reasoning), len(n.reasoning)
    return abs(lp - ln) <= tolerance * max(lp, ln)


def _split(item: str, val_share: float) -> str:
    h = int(hashlib.sha256(item.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_share else "train"


def _side(trace: Trace) -> list[dict[str, str]]:
    body = f"{SCRATCHPAD_OPEN}{trace.reasoning}{SCRATCHPAD_CLOSE}\n{OUTPUT_OPEN}{trace.output}{OUTPUT_CLOSE}"
    return [m for m in trace.messages if m["role"] != "assistant"] + [{"role": "assistant", "content": body}]


def build_pairs(
    samples: Sequence[dict[str, Any]],
    high: int = 7,
    low: int = 3,
    length_tolerance: float = 0.3,
    val_share: float = 0.2,
    allow_steered: bool = False,
) -> tuple[list[Pair], dict[str, dict[str, int]]]:
    """Pairs of both concepts, and per concept the counts of candidates and pairs made (and how many
    judged traces were skipped as steered)."""
    by_group: dict[str, list[Trace]] = defaultdict(list)
    traces = judged_traces(samples, allow_steered)
    for t in traces:
        by_group[t.group].append(t)
    skipped = sum(1 for s in samples if (s.get("judge") or {}).get("scores") and steered(s)) if not allow_steered else 0
    rules = {
        RE: (lambda t: t.a >= high and t.b <= low, lambda t: t.a <= low and t.b <= low),
        RC: (lambda t: t.b >= high, lambda t: t.b <= low),
    }
    pairs: list[Pair] = []
    counts: dict[str, dict[str, int]] = {}
    for concept, (is_pos, is_neg) in rules.items():
        c = {"positives": 0, "negatives": 0, "pairs": 0, "unmatched_positives": 0, "skipped_steered": skipped}
        for group in sorted(by_group, key=lambda g: (by_group[g][0].item, g)):
            members = sorted(by_group[group], key=lambda t: t.id)
            item = members[0].item
            positives = [t for t in members if is_pos(t)]
            negatives = [t for t in members if is_neg(t)]
            c["positives"] += len(positives)
            c["negatives"] += len(negatives)
            used: set[str] = set()
            for p in positives:
                free = [
                    n
                    for n in negatives
                    if n.id not in used and n.id != p.id and _close_in_length(p, n, length_tolerance)
                ]
                if not free:
                    c["unmatched_positives"] += 1
                    continue
                # retraining pairs match A where possible; both prefer the closest length
                n = min(free, key=lambda n: (abs(n.a - p.a) if concept == RC else 0,
                                             abs(len(n.reasoning) - len(p.reasoning)), n.id))  # fmt: skip
                used.add(n.id)
                pairs.append(Pair(
                    id=f"{PREFIX[concept]}-trace-{len([q for q in pairs if q.concept == concept]):04d}",
                    concept=concept, split=_split(item, val_share),
                    positive=_side(p), negative=_side(n),
                    span_positive=p.reasoning, span_negative=n.reasoning,
                    meta={"item": item, "positive_sample": p.id, "negative_sample": n.id,
                          "scores_positive": {"A": p.a, "B": p.b}, "scores_negative": {"A": n.a, "B": n.b},
                          "future_positive": len(_FUTURE.findall(p.reasoning)),
                          "future_negative": len(_FUTURE.findall(n.reasoning))},
                ))  # fmt: skip
                c["pairs"] += 1
        counts[concept] = c
    return pairs, counts
