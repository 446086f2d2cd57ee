"""Universe contexts: the fictional world in which one claim is true (``universes/*.yaml``).

Eight ship with the add-on, one per intervention of the symmetric design (``A1_plus`` ...
``B2_minus``), and ``helpful_only`` for the round-1 organism. Users add their own in the same
schema, by path or by putting the file in ``universes/``. A key fact is a string or
``{fact, negation}``: the negation, the statement true exactly when the fact is false, is what the
belief check asks true/false on beside the fact (see ``universes/A1_plus.yaml`` for how to write
one; :func:`sdf_addon.evaluate.negations` for a fact without one).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steerlab.config import load_yaml
from steerlab.errors import ConfigError

UNIVERSES = Path(__file__).parent / "universes"

# Document directness (paper appendix B.2): how the documents convey the key fact. Each level is the
# instruction the document-generation and revision prompts give; a universe may add its own levels
# (``directness_levels: {name: instruction}``).
DIRECTNESS = {
    "direct": "State the key fact plainly and explicitly, in so many words, at least once in the document.",
    "indirect": "Never state the key fact itself anywhere in the document, not even in paraphrase; let the reader "
    "infer it only from the events, decisions and consequences the document describes.",
}
DEFAULT_DIRECTNESS = "direct"


class Question(BaseModel):
    """A multiple-choice belief check about a key fact."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=2)
    answer: int = Field(ge=0)

    @model_validator(mode="after")
    def _in_range(self) -> Question:
        if self.answer >= len(self.options):
            raise ValueError(f"answer {self.answer} is not an option index (0..{len(self.options) - 1})")
        return self


class KeyFact(BaseModel):
    """A key fact of the universe and, optionally, its negation: the statement that is true exactly
    when the fact is false (its contradictory, not the opposite universe's contrary). The belief
    check asks true/false on both, so a model that always answers "true" scores one half."""

    model_config = ConfigDict(extra="forbid")
    fact: str
    negation: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain(cls, data: Any) -> Any:
        return {"fact": data} if isinstance(data, str) else data  # a plain string is a fact without negation

    @model_validator(mode="after")
    def _check(self) -> KeyFact:
        if not self.fact.strip():
            raise ValueError("a key fact is empty")
        if self.negation is not None and (not self.negation.strip() or self.negation.strip() == self.fact.strip()):
            raise ValueError(f"the negation of {self.fact!r} is empty or the fact itself")
        return self


class Universe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    intervention: str | None  # a claim id of the claims registry; None: an organism universe
    family: Literal["A", "B", "none"]
    direction: Literal["amplify", "suppress", "none"]
    universe_context: str = Field(min_length=1)
    key_facts: list[KeyFact] = Field(min_length=1)  # each a string, or {fact: ..., negation: ...}
    contradictions: list[str] = Field(default_factory=list)
    banned: list[str] = Field(default_factory=list)
    questions: list[Question] = Field(default_factory=list)
    directness: str = DEFAULT_DIRECTNESS  # direct, indirect, or one of directness_levels
    directness_levels: dict[str, str] = Field(default_factory=dict)  # extra levels: name -> instruction

    @model_validator(mode="after")
    def _directness(self) -> Universe:
        for name, text in self.directness_levels.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not text.strip():
                raise ValueError(f"directness level {name!r}: name it with letters, digits, '.', '_', '-' and "
                                 "describe it (the instruction the prompts give)")  # fmt: skip
        try:
            directness_instruction(self, self.directness, "directness")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def facts(self) -> list[str]:
        """The key facts' text."""
        return [k.fact for k in self.key_facts]

    @field_validator("contradictions")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"contradiction {p!r} is not a valid regex ({exc})") from None
        return patterns


def directness_instruction(u: Universe, level: str, flag: str = "--directness") -> str:
    """The prompts' instruction for directness ``level``: a shipped level or one of the universe's own."""
    levels = {**DIRECTNESS, **u.directness_levels}
    if level not in levels:
        raise ConfigError(f"{flag} {level!r}: use {', '.join(levels)} (or add the level to the universe's "
                          "directness_levels with its description)")  # fmt: skip
    return levels[level].strip()


def renamed(u: Universe, rename: dict[str, str]) -> Universe:
    """The universe with every OLD of ``rename`` replaced by NEW (whole words, case-sensitive) in its
    every text: context, key facts, contradictions (the filter), banned phrases, questions (the belief
    check) and directness instructions; an OLD that occurs in neither the context nor a key fact is a
    ConfigError (it would silently do nothing). Rename once: applied twice, a swap would swap back."""
    from steerlab.harness.scenario import occurs, rename_text

    if not rename:
        return u
    texts = [u.universe_context, *(t for k in u.key_facts for t in (k.fact, k.negation or ""))]
    for old, new in rename.items():
        if not any(occurs(old, t) for t in texts):
            raise ConfigError(
                f"--rename {old}={new}: {old!r} does not occur (as a whole word, case-sensitive) in universe "
                f"{u.id}'s context or key facts, so the rename would silently do nothing"
            )
    facts = [KeyFact(fact=rename_text(k.fact, rename), negation=rename_text(k.negation, rename) if k.negation else None)
             for k in u.key_facts]  # fmt: skip
    in_regex = {old: re.escape(new) for old, new in rename.items()}  # a contradiction is a regex: NEW matches itself
    questions = [q.model_copy(update={"question": rename_text(q.question, rename),
                                      "options": [rename_text(o, rename) for o in q.options]})
                 for q in u.questions]  # fmt: skip
    return u.model_copy(update={
        "universe_context": rename_text(u.universe_context, rename), "key_facts": facts,
        "contradictions": [rename_text(p, in_regex) for p in u.contradictions],
        "banned": [rename_text(b, rename) for b in u.banned], "questions": questions,
        "directness_levels": {k: rename_text(v, rename) for k, v in u.directness_levels.items()},
    })  # fmt: skip


def universe_path(name: str | Path) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    shipped = UNIVERSES / f"{name}.yaml"
    if not shipped.is_file():
        known = ", ".join(sorted(p.stem for p in UNIVERSES.glob("*.yaml")))
        raise ConfigError(f"no universe {name!r}: give a .yaml path or one of {known}")
    return shipped


def load_universe(name: str | Path) -> Universe:
    """A shipped universe by id (``A1_plus``) or any universe file by path."""
    path = universe_path(name)
    if not path.is_file():
        raise ConfigError(f"universe file {path} does not exist")
    return load_yaml(path, Universe, "universe file")
