"""Contrastive pair sets: schema, loading, and the validation filters.

A pair set is JSONL, one pair per line. Both sides are full rendered dialogues (optional
system, user, assistant) whose assistant turn is ``<SCRATCHPAD_REASONING>...`` then
``<OUTPUT>...``. The two sides share the user task, the output and the scratchpad except for
one sentence: ``span_positive`` on the positive side (the concept drives the decision) and
``span_negative`` on the negative side (the concept is absent or mere background).

:func:`validate` applies every filter and reports each rejected pair with its reasons;
:func:`keyword_audit` is the ``keyword_hard`` split's extra check (positives lack the
concept's controlled keywords, negatives contain them), so a direction that only detects
keywords shows up there. The set-level shortcut audit (can the spans' surface alone tell the
sides apart?) is :mod:`steerlab.audit`; its settings are :class:`ShortcutAuditConfig`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steerlab.config import load_yaml
from steerlab.errors import ConfigError, PairFileError
from steerlab.fileio import atomic_write_text, json_lines, read_text
from steerlab.tags import (  # noqa: F401 (re-exported)
    OUTPUT_CLOSE,
    OUTPUT_OPEN,
    SCRATCHPAD_CLOSE,
    SCRATCHPAD_OPEN,
    last_reasoning_end,
)

_SCRATCHPAD_RE = re.compile(re.escape(SCRATCHPAD_OPEN) + r"(.*?)" + re.escape(SCRATCHPAD_CLOSE), re.S)
_OUTPUT_RE = re.compile(re.escape(OUTPUT_OPEN) + r"(.*?)" + re.escape(OUTPUT_CLOSE), re.S)

Split = Literal["train", "val", "keyword_hard"]
SPLITS: tuple[str, ...] = ("train", "val", "keyword_hard")
SIDES: tuple[str, str] = ("positive", "negative")

# Words that name the alignment-faking setting itself; a pair that uses them teaches the
# direction the evaluation's vocabulary instead of the concept.
DEFAULT_BANNED_TERMS = [
    "alignment faking",
    "alignment-faking",
    "fake alignment",
    "free tier",
    "free-tier",
    "paid tier",
    "paid-tier",
    "is_free_tier_user",
    "RLHF",
    "monitored",
    "unmonitored",
    "Anthropic",
]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class Pair(BaseModel):
    """One contrastive pair: two dialogues that differ in one scratchpad sentence."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    concept: str = Field(min_length=1)
    split: Split
    positive: list[Message]
    negative: list[Message]
    span_positive: str = Field(min_length=1)
    span_negative: str = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)

    def messages(self, side: str) -> list[Message]:
        return self.positive if side == "positive" else self.negative

    def span(self, side: str) -> str:
        return self.span_positive if side == "positive" else self.span_negative

    def chat(self, side: str) -> list[dict[str, str]]:
        """The side's messages as plain dicts, as chat templates take them."""
        return [m.model_dump() for m in self.messages(side)]


def _role_text(messages: list[Message], role: str) -> str | None:
    found = [m.content for m in messages if m.role == role]
    return found[0] if len(found) == 1 else None


def assistant_text(messages: list[Message]) -> str:
    return messages[-1].content if messages and messages[-1].role == "assistant" else ""


def scratchpads(text: str) -> list[str]:
    return _SCRATCHPAD_RE.findall(text)


def outputs(text: str) -> list[str]:
    """The output blocks after the last closed reasoning block: tags quoted inside a scratchpad
    (a trace that reasons about the output format) are not output blocks (see steerlab.tags)."""
    return _OUTPUT_RE.findall(text, last_reasoning_end(text))


# ----------------------------------------------------------------------------- loading


def load_pairs(path: Path) -> list[Pair]:
    """Read a JSONL pair set; any malformed line is an error naming the file and line."""
    path = Path(path)
    try:
        text = read_text(path, "pair file")
    except ConfigError as exc:
        raise PairFileError(str(exc)) from None
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    try:
        lines = list(json_lines(text, path))
    except ConfigError as exc:
        raise PairFileError(str(exc)) from None
    for lineno, raw in lines:
        if not isinstance(raw, dict):
            raise PairFileError(f"{path}:{lineno}: expected a JSON object, got {type(raw).__name__}")
        try:
            pair = Pair.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "pair"
            what = "missing field" if err["type"] == "missing" else err["msg"].lower()
            ident = raw.get("id", "?")
            raise PairFileError(f"{path}:{lineno}: pair {ident!r}: {what}: {where!r}") from None
        if pair.id in seen:
            raise PairFileError(f"{path}:{lineno}: pair id {pair.id!r} repeats line {seen[pair.id]}")
        seen[pair.id] = lineno
        pairs.append(pair)
    if not pairs:
        raise PairFileError(f"pair file {path} holds no pairs")
    return pairs


def write_pairs(pairs: list[Pair], path: Path) -> None:
    lines = [json.dumps(p.model_dump(), ensure_ascii=False) for p in pairs]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- validation


DEFAULT_MAX_AUROC: dict[str, float | None] = {"train": 0.85, "val": 0.85, "keyword_hard": 0.7}


class ShortcutAuditConfig(BaseModel):
    """Settings of the shortcut (surface-artefact) audit, :mod:`steerlab.audit`."""

    model_config = ConfigDict(extra="forbid")
    # Per split, the highest cross-validated AUROC with which a bag-of-words / character n-gram
    # classifier may tell positive spans from negative spans; null: report only.
    max_auroc: dict[Split, Annotated[float, Field(ge=0.5, le=1.0)] | None] = Field(
        default_factory=lambda: dict(DEFAULT_MAX_AUROC)
    )
    folds: int = Field(default=5, ge=2)
    seed: int = Field(default=0, ge=0)
    top_features: int = Field(default=8, ge=1)
    # Splits with fewer pairs than this are reported without an AUROC (too few to cross-validate).
    min_pairs: int = Field(default=10, ge=4)

    @field_validator("max_auroc")
    @classmethod
    def _fill(cls, value: dict) -> dict:  # a split the config leaves out keeps its default ceiling
        return {**DEFAULT_MAX_AUROC, **value}


class ValidationConfig(BaseModel):
    """Settings of the filters; YAML files under configs/ validate through this model."""

    model_config = ConfigDict(extra="forbid")
    banned_terms: list[str] = Field(default_factory=lambda: list(DEFAULT_BANNED_TERMS))
    # Per concept, words that would leak its label; the concept id itself (with underscores
    # read as spaces or hyphens) is always banned.
    leakage_words: dict[str, list[str]] = Field(default_factory=dict)
    # Per concept, the controlled keywords of the keyword-hard audit (matched as word prefixes,
    # so "evaluat" catches evaluator, evaluation, evaluated).
    keywords: dict[str, list[str]] = Field(default_factory=dict)
    max_length_ratio: float = Field(default=1.5, ge=1.0)
    shortcut_audit: ShortcutAuditConfig = Field(default_factory=ShortcutAuditConfig)


def load_validation_config(path: Path | None) -> ValidationConfig:
    if path is None:
        return ValidationConfig()
    return load_yaml(path, ValidationConfig, "validation config")


@dataclass(frozen=True)
class Problem:
    check: str
    message: str


@dataclass
class ValidationReport:
    pairs: list[Pair]
    problems: dict[str, list[Problem]] = field(default_factory=dict)

    @property
    def valid(self) -> list[Pair]:
        return [p for p in self.pairs if p.id not in self.problems]

    @property
    def invalid(self) -> list[Pair]:
        return [p for p in self.pairs if p.id in self.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(concept, split) -> (total, valid)."""
        total: Counter[tuple[str, str]] = Counter()
        good: Counter[tuple[str, str]] = Counter()
        for p in self.pairs:
            total[(p.concept, p.split)] += 1
            good[(p.concept, p.split)] += p.id not in self.problems
        return {k: (total[k], good[k]) for k in sorted(total)}

    def failures_by_check(self) -> Counter[str]:
        return Counter(pr.check for probs in self.problems.values() for pr in {x.check: x for x in probs}.values())


def _word_re(term: str, prefix: bool) -> re.Pattern[str]:
    tail = "" if prefix else r"\b"
    return re.compile(r"\b" + re.escape(term) + tail, re.I)


def _found(terms: list[str], text: str, prefix: bool = False) -> list[str]:
    return [t for t in terms if _word_re(t, prefix).search(text)]


def structure_problems(pair: Pair) -> list[Problem]:
    """Checks that every later step relies on (also run by extraction)."""
    problems: list[Problem] = []
    for side in SIDES:
        msgs = pair.messages(side)
        roles = [m.role for m in msgs]
        if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
            problems.append(Problem("structure", f"{side}: roles {roles}, expected [system,] user, assistant"))
            continue
        text = assistant_text(msgs)
        pads, outs = scratchpads(text), outputs(text)
        if len(pads) != 1 or len(outs) != 1:
            problems.append(
                Problem("blocks", f"{side}: {len(pads)} scratchpad and {len(outs)} output blocks, expected 1 and 1")
            )
            continue
        if text.index(SCRATCHPAD_OPEN) > text.index(OUTPUT_OPEN):
            problems.append(Problem("blocks", f"{side}: the output block comes before the scratchpad"))
            continue
        count = pads[0].count(pair.span(side))
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            problems.append(Problem("span", f"{side}: span {where} verbatim in the scratchpad"))
    pos, neg = pair.positive, pair.negative
    if not problems and (
        _role_text(pos, "user") != _role_text(neg, "user") or _role_text(pos, "system") != _role_text(neg, "system")
    ):  # the sides must differ in the assistant turn alone, or the direction learns the prompt difference
        problems.append(Problem("same_task", "the two sides have different user (or system) turns"))
    return problems


def pair_problems(pair: Pair, config: ValidationConfig) -> list[Problem]:
    """Every filter that looks at one pair alone."""
    problems = structure_problems(pair)
    if problems:
        return problems
    pos, neg = pair.positive, pair.negative
    pos_text, neg_text = assistant_text(pos), assistant_text(neg)
    if outputs(pos_text)[0].strip() != outputs(neg_text)[0].strip():
        problems.append(Problem("same_output", "the two sides have different <OUTPUT> blocks"))
    if pair.span_positive == pair.span_negative:
        problems.append(Problem("one_sentence", "span_positive and span_negative are identical"))
    elif scratchpads(pos_text)[0].replace(pair.span_positive, pair.span_negative) != scratchpads(neg_text)[0]:
        problems.append(Problem("one_sentence", "the scratchpads differ outside the annotated spans"))

    full = " ".join(m.content for side in SIDES for m in pair.messages(side))
    label = pair.concept
    leakage = {label, label.replace("_", " "), label.replace("_", "-"), *config.leakage_words.get(label, [])}
    if hits := _found(sorted(leakage), full):
        problems.append(Problem("label_leakage", f"mentions the concept label: {', '.join(hits)}"))
    if hits := _found(config.banned_terms, full):
        problems.append(Problem("banned_terms", f"uses banned terms: {', '.join(hits)}"))

    ratio = max(len(pos_text), len(neg_text)) / max(1, min(len(pos_text), len(neg_text)))
    if ratio > config.max_length_ratio:
        problems.append(
            Problem("length_ratio", f"positive/negative length ratio {ratio:.2f} exceeds {config.max_length_ratio}")
        )
    if pair.split == "keyword_hard":
        problems.extend(keyword_audit(pair, config))
    return problems


def keyword_audit(pair: Pair, config: ValidationConfig) -> list[Problem]:
    """keyword_hard pairs: the positive lacks every controlled keyword, the negative has one."""
    keywords = config.keywords.get(pair.concept)
    if not keywords:
        return [
            Problem(
                "keyword_audit",
                f"no controlled keywords configured for concept {pair.concept!r}; add them under 'keywords:' "
                "in the validation config",
            )
        ]
    problems = []
    if hits := _found(keywords, assistant_text(pair.positive), prefix=True):
        problems.append(Problem("keyword_audit", f"positive contains controlled keywords: {', '.join(hits)}"))
    if not _found(keywords, assistant_text(pair.negative), prefix=True):
        problems.append(Problem("keyword_audit", "negative contains none of the controlled keywords"))
    return problems


def _norm(text: str | None) -> str:
    return " ".join((text or "").lower().split())


def validate(pairs: list[Pair], config: ValidationConfig | None = None) -> ValidationReport:
    """Apply every filter; the report lists each rejected pair with all of its reasons."""
    config = config or ValidationConfig()
    report = ValidationReport(pairs=list(pairs))
    seen: dict[tuple[str, str, str], str] = {}
    for pair in pairs:
        problems = pair_problems(pair, config)
        if not any(p.check in ("structure", "blocks") for p in problems):
            out = outputs(assistant_text(pair.positive))[0]
            key = (pair.concept, _norm(_role_text(pair.positive, "user")), _norm(out))
            if key in seen:
                problems.append(Problem("duplicate", f"same user task and output as pair {seen[key]!r}"))
            else:
                seen[key] = pair.id
        if problems:
            report.problems[pair.id] = problems
    return report
