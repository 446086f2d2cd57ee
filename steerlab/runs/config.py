"""The run configs: what ``steerlab sweep``, ``eval``, ``prompt-eval``, ``calibrate`` and ``sdf eval`` run.

:class:`SweepConfig` is a run of the harness (YAML files under ``configs/`` validate through it);
:class:`AlignmentFakingConfig` and :class:`JudgeConfig` are its scenario's and judge's settings.
:func:`load_config` reads one from YAML with overrides; :func:`make_scenario` builds its scenario
(:mod:`steerlab.harness.scenario`). The checks that need the vector files or the model are
:func:`steerlab.runs.engine.check_config`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from steerlab.config import load_yaml
from steerlab.errors import ConfigError
from steerlab.harness.scenario import AlignmentFaking, Plain, Scenario, occurs
from steerlab.models import DEFAULT_CHAT_DATE, check_chat_date
from steerlab.prompts import ClaimsConfig
from steerlab.steer import Operator, Scale, bounds_ok


class AlignmentFakingConfig(BaseModel):
    """Settings of the alignment-faking scenario (``scenario: alignment_faking``)."""

    model_config = ConfigDict(extra="forbid")
    system_prompt: Path | None = None  # a prompt file; None: steerlab's default prompt
    free_tier_true: str = "True"
    free_tier_false: str = "False"
    prefill: str = ""  # e.g. "<SCRATCHPAD_REASONING>"
    max_turns: int = Field(default=4, ge=1)
    raw_instruction: bool = True
    # steerlab, published (the paper's <INPUT> layout), or a file with {tier} and {request} (and
    # optionally {accepted}, {rejected}) placeholders, e.g. the published template's exact text
    user_template: str = "steerlab"


class JudgeConfig(BaseModel):
    """Which judge scores the scratchpads (see :mod:`steerlab.harness.judge`)."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["anthropic", "local"] = "anthropic"
    model: str | None = None  # default: claude-sonnet-4-5 (anthropic), smollm2 (local)
    rubric: Path = Path("configs/judge/rubric.yaml")
    scale: tuple[int, int] | None = None  # override the rubric's integer scale, e.g. [1, 7]
    concurrency: int = Field(default=8, ge=1)
    max_retries: int = Field(default=6, ge=0)
    batch: bool = False  # the Message Batches API (half price, results within 24 h)
    max_tokens: int = Field(default=400, ge=16)
    temperature: float | None = 0.0  # None: send no sampling parameter (see harness.judge)
    cache: Path | None = None  # default: $STEERLAB_CACHE_DIR/judge.sqlite

    @property
    def model_name(self) -> str:
        return self.model or ("claude-sonnet-4-5" if self.backend == "anthropic" else "smollm2")


class SweepConfig(BaseModel):
    """A run of the harness; YAML files under configs/ validate through this model."""

    model_config = ConfigDict(extra="forbid")
    model: str = "smollm2"
    lora: str | None = None  # a LoRA adapter directory on top of the model (an SDF checkpoint, say)
    vectors: list[Path] = Field(default_factory=list)  # empty: the unsteered evaluation
    controls: int = Field(default=2, ge=0)
    multipliers: list[float] = Field(default_factory=lambda: [0.0], min_length=1)
    scale: Scale = "absolute"  # absolute or relative, as in steerlab.steer
    # a calibrate-dose --out file: the multipliers are then signed doses in KL units (each arm steered by its own
    # calibrated multiplier at KL |m|, sign of m; 0 unsteered); see steerlab.runs.rows.steering_settings
    doses: Path | None = None
    # the steering operator (steerlab.table): add (the paper's), ablate (the projection onto the vector set to
    # multiplier x |v|; multiplier 0 removes the direction), clamp (add, then clamp the projection to clamp: [LO, HI]
    # x |v|; null for an open side). Under ablate and clamp, multiplier 0 steers too (it is not the unsteered row).
    operator: Operator = "add"
    clamp: tuple[float | None, float | None] | None = None
    # conditional steering: a condition file (steerlab condition fit); a row whose prompt fails it is not steered
    steer_if: Path | None = None
    # the experimenter's gate: steer only rows of these scenario conditions (e.g. [monitored]); the others run
    # unsteered at every multiplier and their samples say gated: steer_only (a choice of the run, not of the vector)
    steer_only: list[str] | None = Field(default=None, min_length=1)
    layers: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)  # checked against the model
    scenario: Literal["plain", "alignment_faking"] = "plain"
    # plain: name -> system prompt (None: none); alignment_faking: names from monitored/unmonitored/raw
    conditions: dict[str, str | None] | list[str] | None = None
    alignment_faking: AlignmentFakingConfig = Field(default_factory=AlignmentFakingConfig)
    # prompt interventions: the baseline and every chosen claim, each under every condition
    claims: ClaimsConfig | None = None
    # an SDF checkpoint's intervention (set by sdf_addon): method, claim (a registry entry or null
    # for the organism itself) and profile_model (the model the profile is drawn for)
    intervention: dict[str, Any] | None = None
    # the provider-naming ablation (appendix B.3): OLD -> NEW, whole words, case-sensitive, in the system
    # prompt as sent (the scenario's and the claims' text); {}: the original naming
    rename: dict[str, str] = Field(default_factory=dict)
    prompts: str  # request file (.txt, .jsonl, .csv) or a Hugging Face dataset id
    prompt_set: str | None = None  # request-id prefix (default: the file's stem)
    limit: int | None = Field(default=None, ge=1)  # only the first N requests
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    seed: int = 0  # the run seed: every sample's sampling seed derives from (seed, request id, sample seed)
    chat_date: str = DEFAULT_CHAT_DATE  # the date chat templates that read the clock render (models.render_chat)
    max_new_tokens: int = Field(default=40, ge=1)
    temperature: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: list[str] = Field(default_factory=list)
    batch_size: int = Field(default=16, ge=1)
    scorer: str | None = None  # plain scenario: a regex, or "module:function" taking (text, sample) -> float
    judge: JudgeConfig | None = None
    out: Path = Path("runs/sweep")

    @field_validator("prompts", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values):
            raise ValueError(f"seeds {values} name a seed twice (each would write the same sample ids)")
        return values

    @field_validator("rename")
    @classmethod
    def _renames(cls, rename: dict[str, str]) -> dict[str, str]:
        for old, new in rename.items():
            if not old:
                raise ValueError("rename: an OLD name is empty (write OLD=NEW, e.g. Anthropic=OpenAI)")
            if old != old.strip() or new != new.strip():
                raise ValueError(f"rename {old}={new}: leading or trailing spaces in a name")
            if not new:
                raise ValueError(f"rename {old}={new}: NEW is empty (a rename that deletes {old!r} is not a rename)")
            if new == old:
                raise ValueError(f"rename {old}={new}: NEW equals OLD, so it would change nothing")
        return rename

    @field_validator("multipliers")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise ValueError(f"multiplier {bad[0]} is not a finite number")
        return values

    @field_validator("chat_date", mode="before")
    @classmethod
    def _date(cls, value: Any) -> str:
        try:
            return check_chat_date(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """Without a dose file the dump has no ``doses`` key, so a run header (and its config hash) is what it
        was before dose files existed, and older runs resume."""
        data = handler(self)
        if isinstance(data, dict):  # the same for the steering options: absent at their defaults
            for key, default in (("doses", None), ("operator", "add"), ("clamp", None), ("steer_if", None),
                                 ("steer_only", None)):  # fmt: skip
                if key in data and data[key] == default:
                    data.pop(key)
        return data

    def bounds(self) -> tuple[float, float] | None:
        """``clamp`` as (lo, hi) floats, an open side infinite."""
        if self.clamp is None:
            return None
        lo, hi = self.clamp
        return (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if not self.vectors and any(m != 0 for m in self.multipliers):
            raise ValueError("non-zero multipliers need vectors to steer with (give vectors, or multipliers [0])")
        if self.doses is not None:
            if not self.vectors:
                raise ValueError("doses: a dose file gives each vector's multiplier; give vectors to steer with")
            if self.scale != "absolute":
                raise ValueError("doses: calibrated doses are absolute multipliers; drop scale: relative")
            if self.lora is not None:
                raise ValueError("doses: the doses were calibrated on the model without the LoRA adapter; drop lora")
        if self.operator != "add" or self.steer_if is not None or self.steer_only is not None:
            what = "steer_if" if self.steer_if is not None else "steer_only" if self.steer_only else "operator"
            if not self.vectors:
                raise ValueError(f"{what}: give vectors to steer with")
        if self.operator == "clamp" and self.clamp is None:
            raise ValueError("operator clamp needs clamp: [LO, HI] (the projection's range in multiplier units)")
        if self.clamp is not None:
            if self.operator != "clamp":
                raise ValueError(f"clamp: bounds are for operator clamp, not {self.operator}")
            if not bounds_ok(*self.bounds()):  # type: ignore[misc]
                raise ValueError(f"clamp: {list(self.clamp)}: give LO <= HI (null for an open side)")
        if self.doses is not None and self.operator != "add":
            raise ValueError(f"doses: the doses were calibrated for addition; drop doses or operator {self.operator}")
        if self.conditions is None:
            self.conditions = ["monitored", "unmonitored"] if self.scenario == "alignment_faking" else {"default": None}
        if self.scenario == "alignment_faking" and isinstance(self.conditions, dict):
            raise ValueError("alignment_faking conditions are a list of names (monitored, unmonitored, raw)")
        if self.scenario == "plain" and isinstance(self.conditions, list):
            self.conditions = {name: None for name in self.conditions}
        if self.steer_only is not None:
            unknown = [c for c in self.steer_only if c not in self.conditions]
            if unknown:
                raise ValueError(
                    f"steer_only: {unknown[0]!r} is not a condition of this run ({', '.join(self.conditions)})"
                )
        if self.claims is not None:
            if self.scenario != "alignment_faking":
                raise ValueError("claims need scenario: alignment_faking (a claim is appended to its system prompt)")
            if self.vectors:
                raise ValueError("claims run with steering off: drop the vectors (one intervention per run)")
            if "raw" in (self.conditions or ()):
                raise ValueError("the raw condition has no system prompt to append a claim to; drop raw")
        return self


def load_config(path: Path, **overrides: Any) -> SweepConfig:
    return load_yaml(path, SweepConfig, "sweep config", overrides)


def make_scenario(config: SweepConfig) -> Scenario:
    """The run's scenario; a rename whose OLD occurs nowhere in the system prompt (nor in a chosen claim's
    text) is a ConfigError, since it would silently do nothing."""
    if config.scenario == "plain":
        assert isinstance(config.conditions, dict)
        scenario: Scenario = Plain(config.conditions, rename=dict(config.rename))
        check_rename(config.rename, [s for s in config.conditions.values() if s])
        return scenario
    af = config.alignment_faking
    scenario = AlignmentFaking.from_file(
        af.system_prompt, free_tier_true=af.free_tier_true, free_tier_false=af.free_tier_false, prefill=af.prefill,
        max_turns=af.max_turns, raw_instruction=af.raw_instruction, chosen=tuple(config.conditions or ()),
        user_template=af.user_template, rename=dict(config.rename),
    )  # fmt: skip
    if config.rename:
        texts = [scenario.system_prompt]
        if config.claims is not None:
            from steerlab.prompts import claim_text, selected

            texts += [claim_text(c, config.claims.strength) for c in selected(config.claims)]
        check_rename(config.rename, texts)
    return scenario


def check_rename(rename: dict[str, str], texts: list[str], where: str = "the system prompt") -> None:
    """Refuse a rename whose OLD occurs (as a whole word) in none of ``texts``."""
    for old, new in rename.items():
        if not any(occurs(old, t) for t in texts):
            raise ConfigError(
                f"--rename {old}={new}: {old!r} does not occur (as a whole word, case-sensitive) in {where}, "
                "so the rename would silently do nothing"
            )
