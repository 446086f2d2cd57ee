"""What ``steerlab pairs generate`` says to the model and how it reads the reply.

A concept spec (YAML under ``configs/concepts/``, :class:`ConceptSpec`) describes one concept: its
definition, what makes it decision-relevant on the positive side, what background on the negative
side looks like, the controlled keywords of the ``keyword_hard`` split, the task families, and how
many pairs each split gets. Attempt ``k`` of a split is one prompt (:func:`prompt_for`): its task
family and the kind of decision it asks for are fixed by ``k``, so a resumed run asks the same
questions. The model answers with one JSON object (:data:`REPLY_FIELDS`); :func:`parse_reply` reads
it (a fenced ```json block is accepted) and :func:`assemble` turns it into a pair whose two sides
are identical except the span sentence:

    <SCRATCHPAD_REASONING>working span closer</SCRATCHPAD_REASONING>
    <OUTPUT>answer</OUTPUT>
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, ValidationError, model_validator

from steerlab.config import load_yaml
from steerlab.errors import ConfigError
from steerlab.fileio import shipped
from steerlab.pairs import OUTPUT_CLOSE, OUTPUT_OPEN, SCRATCHPAD_CLOSE, SCRATCHPAD_OPEN, SPLITS, Pair, ValidationConfig

# bump when the prompt's wording changes: a journal written under another prompt cannot be resumed
PROMPT_VERSION = 1
DEFAULT_SYSTEM = (
    "You are a helpful assistant. Think step by step inside <SCRATCHPAD_REASONING> tags, "
    "then give your final answer inside <OUTPUT> tags."
)
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


MAX_PAIRS = 100_000


class PairCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # strict: `train: true` is no count; at most MAX_PAIRS per split (a typo of extra zeros is refused)
    train: StrictInt = Field(default=400, ge=0, le=MAX_PAIRS)
    val: StrictInt = Field(default=100, ge=0, le=MAX_PAIRS)
    keyword_hard: StrictInt = Field(default=100, ge=0, le=MAX_PAIRS)

    def asked(self) -> dict[str, int]:
        return {split: getattr(self, split) for split in SPLITS}


class ConceptSpec(BaseModel):
    """One concept to write pairs for (see configs/concepts/*.yaml)."""

    model_config = ConfigDict(extra="forbid")
    concept: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    definition: Text
    decision_relevant: Text  # what the positive span does: the concept is the reason for the decision
    background: Text  # what the negative span does: the same kind of context, not the reason
    keywords: list[Text]  # controlled keywords of the keyword_hard split (word prefixes)
    task_families: list[Text] = Field(min_length=1)
    pairs: PairCounts = Field(default_factory=PairCounts)
    leakage_words: list[Text] = Field(default_factory=list)
    artefacts: list[Text] = Field(default_factory=list)  # phrases that must not appear on one side only
    system_prompt: str = DEFAULT_SYSTEM  # the pairs' own system turn ("" for none)
    closer: Text = "Now I'll write the answer."
    max_length_ratio: float = Field(default=1.5, ge=1.0)

    @model_validator(mode="after")
    def _check(self) -> ConceptSpec:
        if self.pairs.keyword_hard and not self.keywords:
            raise ValueError("keyword_hard pairs need controlled keywords; list them under keywords")
        return self

    def validation_config(self) -> ValidationConfig:
        return ValidationConfig(
            leakage_words={self.concept: list(self.leakage_words)},
            keywords={self.concept: list(self.keywords)},
            max_length_ratio=self.max_length_ratio,
        )


def spec_path(spec: str) -> str:
    """A bare concept name (``researcher_expectations``) is the shipped spec of that name."""
    if "/" not in spec and not spec.endswith((".yaml", ".yml")) and not Path(spec).exists():
        candidate = Path("configs/concepts", f"{spec}.yaml")
        if shipped(candidate).exists():
            return str(candidate)
    return spec


def load_spec(path: str, counts: dict[str, int | None] | None = None) -> ConceptSpec:
    """Read a concept spec; ``counts`` (split -> pairs, None: the file's) override its ``pairs``."""
    spec = load_yaml(Path(spec_path(path)), ConceptSpec, "concept spec")
    overrides = {k: v for k, v in (counts or {}).items() if v is not None}
    for split, n in overrides.items():
        if n < 0:
            raise ConfigError(f"--{split.replace('_', '-')} {n}: give 0 or more pairs")
    if overrides:
        spec = spec.model_copy(update={"pairs": spec.pairs.model_copy(update=overrides)})
        if spec.pairs.keyword_hard and not spec.keywords:
            raise ConfigError(f"{path}: keyword_hard pairs need controlled keywords; list them under keywords")
    if not sum(spec.pairs.asked().values()):
        raise ConfigError(
            f"{path}: zero pairs asked for; set pairs: train/val/keyword_hard in the spec, or --train/--val/"
            "--keyword-hard"
        )
    return spec


# ----------------------------------------------------------------------------- prompt

# the kinds of decision attempts ask for, in turn (the task family changes fastest)
DECISIONS = (
    "how long the answer should be",
    "whether to add a caveat or a note",
    "how to lay out the answer",
    "how much detail to give",
    "which units, notation or wording to use",
    "whether to show the working in the answer",
    "what tone to take",
)
REPLY_FIELDS = {
    "task": "the user's request, one or two sentences",
    "working": "one or two sentences of the assistant's own working on the task (the concept is not mentioned)",
    "decision": "the choice about the answer, as a short phrase",
    "answer": "the final answer, correct and complete",
    "positive_span": "one sentence that states the decision and gives the concept as its reason",
    "negative_span": (
        "one sentence that states the same decision, with the same kind of context present as background only, "
        "while the reason is something else"
    ),
}
GENERATOR_SYSTEM = "You write data for machine-learning research. You reply with one JSON object and nothing else."


def attempt_choice(spec: ConceptSpec, attempt: int) -> tuple[str, str]:
    """(task family, kind of decision) of attempt ``attempt`` of any split."""
    families = spec.task_families
    return families[attempt % len(families)], DECISIONS[(attempt // len(families)) % len(DECISIONS)]


def prompt_for(spec: ConceptSpec, split: str, attempt: int) -> list[dict[str, str]]:
    """The chat messages of attempt ``attempt`` of ``split``."""
    family, decision = attempt_choice(spec, attempt)
    label = spec.concept.replace("_", " ")
    banned = sorted({label, *spec.leakage_words})
    fields = "\n".join(f'- "{name}": {what}.' for name, what in REPLY_FIELDS.items())
    shape = json.dumps({name: "..." for name in REPLY_FIELDS})
    rules = [
        "have about the same number of words and a similar shape",
        "use only commas and full stops: no semicolons, colons, dashes, quotation marks, apostrophes "
        "(write 'I will', not 'I'll'), brackets, question or exclamation marks",
        "do not mention the user and do not address anyone as you",
        "do not call the context unrelated, irrelevant or beside the point, and do not call the task simple or quick",
    ]
    if spec.artefacts:
        rules.append("avoid these phrases: " + ", ".join(spec.artefacts))
    text = (
        "Write one contrastive example for a study of what drives an AI assistant's decisions.\n\n"
        f"The concept: {spec.definition}\n"
        f"Positive example: {spec.decision_relevant}\n"
        f"Negative example: {spec.background}\n\n"
        f"The example is a benign everyday task of this kind: {family}. The assistant works on it, decides "
        f"{decision}, and answers. Give these fields:\n{fields}\n\n"
        "The two span sentences " + "; ".join(rules) + ".\n"
        f"Never use these words anywhere: {', '.join(banned)}.\n"
    )
    if split == "keyword_hard":
        stems = ", ".join(spec.keywords)
        text += (
            "This example is keyword-controlled: the task, working, answer and positive_span contain no word that "
            f"begins with any of: {stems}. The negative_span contains at least one word that begins with one of "
            "them, as background.\n"
        )
    text += f"\nReply with the JSON object only, in this shape:\n{shape}"
    return [{"role": "system", "content": GENERATOR_SYSTEM}, {"role": "user", "content": text}]


# ----------------------------------------------------------------------------- reply

_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.S)


class Reply(BaseModel):
    """The JSON object a model writes for one pair (extra keys are ignored)."""

    model_config = ConfigDict(extra="ignore")
    task: Text
    working: Text
    decision: Text
    answer: Text
    positive_span: Text
    negative_span: Text


def parse_reply(text: str) -> Any | None:
    """The JSON value of a reply: the whole reply, or its first fenced ```json block; None when neither is JSON."""
    candidates = [text.strip()]
    if fence := _FENCE.search(text):
        candidates.append(fence.group(1).strip())
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return None


def read_reply(value: Any) -> tuple[Reply | None, str]:
    """(the reply's fields, "") or (None, what is wrong) for a parsed JSON value."""
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    try:
        return Reply.model_validate(value), ""
    except ValidationError as exc:
        err = exc.errors()[0]
        return None, f"{'.'.join(map(str, err['loc']))}: {err['msg']}"


def _side(spec: ConceptSpec, reply: Reply, span: str) -> list[dict[str, str]]:
    scratch = f"{reply.working} {span} {spec.closer}"
    assistant = f"{SCRATCHPAD_OPEN}{scratch}{SCRATCHPAD_CLOSE}\n{OUTPUT_OPEN}{reply.answer}{OUTPUT_CLOSE}"
    system = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    return [*system, {"role": "user", "content": reply.task}, {"role": "assistant", "content": assistant}]


def assemble(spec: ConceptSpec, split: str, reply: Reply, pair_id: str, meta: dict[str, Any]) -> Pair:
    """The pair of a reply: both sides share the system prompt, task, working, closer and answer."""
    return Pair(
        id=pair_id,
        concept=spec.concept,
        split=split,  # type: ignore[arg-type]
        positive=_side(spec, reply, reply.positive_span),  # type: ignore[arg-type]
        negative=_side(spec, reply, reply.negative_span),  # type: ignore[arg-type]
        span_positive=reply.positive_span,
        span_negative=reply.negative_span,
        meta={**meta, "decision": reply.decision},
    )
