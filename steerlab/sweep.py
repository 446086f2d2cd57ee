"""Sweeps: (vectors + their random controls) x signed multipliers x conditions x requests x seeds.

Every combination is a *row*. A scenario (:mod:`steerlab.harness.scenario`) turns a row's
request and condition into chat messages; rows run through a backend in full batches with
per-row steering (a turn that needs continuing, as in the alignment-faking protocol, is sent
again with the next batch of turns), and each finished row is one *sample*, a JSON line of
``RUN_DIR/samples.jsonl`` (see :mod:`steerlab.harness.records`). A killed run resumes: finished
samples are read back and skipped, and a torn last line is dropped. Every option is checked
before the run directory is made (:func:`check_config`), and one process writes a run at a time
(the directory's lock, :func:`steerlab.harness.records.hold_run`).

Rows at multiplier 0 are the same generation whatever the vector, so they are generated once
per (condition, request, seed) and shared. With no vectors the run is the unsteered evaluation
(``steerlab eval``): one arm named ``none`` at multiplier 0.

Summaries: the alignment-faking scenario's labels go through :mod:`steerlab.harness.summary`;
the plain scenario scores every sample with a user scorer (a regex or a ``module:function``)
and reports, per (vector, multiplier, condition), the real vector's mean score against the
envelope of its random controls (min-max, and mean +- 2 s.d. across controls) with the real
effect's z-score relative to the controls.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tqdm.auto import tqdm

from steerlab import prompts
from steerlab.backends.base import Backend, Request, Sampling, backend_identity, derive_seed
from steerlab.config import load_yaml
from steerlab.errors import ConfigError
from steerlab.fileio import atomic_write_text, file_hash, open_append
from steerlab.harness.datasets import Item, load_requests
from steerlab.harness.records import (
    FORMAT,
    SAMPLES,
    SUMMARY,
    check_run,
    check_unique,
    git_commit,
    hold_run,
    open_run,
    read_header,
    read_samples,
    versions,
)
from steerlab.harness.scenario import AlignmentFaking, Plain, Scenario, Turn, next_turn_messages, transcript
from steerlab.models import DEFAULT_CHAT_DATE, Fingerprint, check_chat_date
from steerlab.prompts import ClaimsConfig
from steerlab.steer import Scale, SteeringSetting
from steerlab.vectors import VectorBundle

NONE = "none"  # vector and arm name of unsteered rows in a run without vectors


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

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if not self.vectors and any(m != 0 for m in self.multipliers):
            raise ValueError("non-zero multipliers need vectors to steer with (give vectors, or multipliers [0])")
        if self.conditions is None:
            self.conditions = ["monitored", "unmonitored"] if self.scenario == "alignment_faking" else {"default": None}
        if self.scenario == "alignment_faking" and isinstance(self.conditions, dict):
            raise ValueError("alignment_faking conditions are a list of names (monitored, unmonitored, raw)")
        if self.scenario == "plain" and isinstance(self.conditions, list):
            self.conditions = {name: None for name in self.conditions}
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
    if config.scenario == "plain":
        assert isinstance(config.conditions, dict)
        return Plain(config.conditions)
    af = config.alignment_faking
    return AlignmentFaking.from_file(
        af.system_prompt, free_tier_true=af.free_tier_true, free_tier_false=af.free_tier_false, prefill=af.prefill,
        max_turns=af.max_turns, raw_instruction=af.raw_instruction, chosen=tuple(config.conditions or ()),
        user_template=af.user_template,
    )  # fmt: skip


@dataclass(frozen=True)
class Row:
    id: str
    vector: str  # the real vector's name (its concept), or "none"
    arm: str  # "real", "control<i>", or "none"
    multiplier: float
    condition: str
    item: str  # the request's id
    seed: int
    claim: str | None = None  # prompt interventions: "baseline" or a claim id


@dataclass
class Arm:
    vector: str
    arm: str
    bundle: VectorBundle | None
    control: int | None


def load_arms(config: SweepConfig, fingerprint: Fingerprint | None) -> list[Arm]:
    if not config.vectors:
        return [Arm(NONE, NONE, None, None)]
    arms = []
    names: set[str] = set()
    for path in config.vectors:
        bundle = VectorBundle.load(path, expect=fingerprint)
        name = bundle.meta.get("concept", Path(path).stem)
        if name in names:
            raise ConfigError(f"two vector files for {name!r}; a sweep takes one vector per concept")
        names.add(name)
        if config.controls > len(bundle.controls):
            raise ConfigError(f"{path} has {len(bundle.controls)} controls; the sweep asks for {config.controls}")
        arms.append(Arm(name, "real", bundle, None))
        arms += [Arm(name, f"control{i}", bundle, i) for i in range(config.controls)]
    return arms


def expand(
    config: SweepConfig, arms: Sequence[Arm], items: Sequence[Item], conditions: Sequence[str],
    claims: Sequence[str | None] = (None,),
) -> list[Row]:  # fmt: skip
    rows = []
    for arm in arms:
        for m in config.multipliers:
            for claim in claims:
                for cond in conditions:
                    for item in items:
                        for seed in config.seeds:
                            tag = f"{claim}|" if claim else ""
                            rid = f"{arm.vector}/{arm.arm}|{m:+g}|{tag}{cond}|{item.id}|s{seed}"
                            rows.append(Row(rid, arm.vector, arm.arm, m, cond, item.id, seed, claim))
    return rows


def config_hash(config: SweepConfig) -> str:
    data = config.model_dump(mode="json", exclude={"out", "batch_size", "scorer", "judge"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _items_hash(items: Sequence[Item]) -> str:
    data = [(i.id, i.prompt, i.messages) for i in items]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def build_header(
    config: SweepConfig, scenario: Scenario, items: Sequence[Item], fingerprint, n_rows: int,
    backend: dict[str, Any] | None = None,
) -> dict:  # fmt: skip
    prompt_path = Path(config.prompts)
    system_file = scenario.describe().get("system_prompt_file")
    return {
        "kind": "steerlab-run",
        "format": FORMAT,
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
        "scenario": scenario.describe(),
        "model": fingerprint.to_dict() if fingerprint else None,
        "vector_files": {str(p): file_hash(Path(p)) for p in config.vectors},
        "prompt_files": {
            **({str(prompt_path): file_hash(prompt_path)} if prompt_path.is_file() else {}),
            **({system_file: file_hash(Path(system_file))} if system_file else {}),
        },
        "claims": prompts.describe(config.claims) if config.claims else None,
        "intervention": config.intervention,
        "requests_hash": _items_hash(items),
        "items": [i.id for i in items],
        "seeds": config.seeds,
        "run_seed": config.seed,
        "sampling_seeds": "per sample: sha256([run_seed, request id, sample seed]); shared by the arms, "
        "multipliers, claims and conditions of one request (a paired design); turn t > 0 derives its own",
        "backend": backend,
        "backend_identity": backend_identity(backend) if backend else None,
        "chat_date": config.chat_date,
        "versions": versions(),
        "git_commit": git_commit(),
        "n_rows": n_rows,
    }


def sample_seed(run_seed: int, item: str, seed: int) -> int:
    """The sampling seed of one sample: derived from (run seed, request id, sample seed).

    Different requests draw independent streams (a shared seed would make every request pick the
    same tokens wherever their distributions agree, correlating samples that the statistics treat
    as independent). Arms, multipliers, claims and conditions of one request share it on purpose:
    they differ only in the intervention, a paired design.
    """
    return derive_seed(run_seed, item, seed)


def turn_seed(seed: int, turn: int) -> int:
    """The seed of a sample's ``turn``-th turn (turn 0 keeps the sample's seed)."""
    return seed if turn == 0 else derive_seed(seed, turn)


def describe_backend(backend: Backend) -> dict[str, Any]:
    """The backend's description for the run header; a backend that gives none (a test double, a user's
    own) is recorded as undescribed, and resumes are then not checked against it."""
    describe = getattr(backend, "describe", None)
    return describe() if callable(describe) else {"backend": "undescribed"}


RESUME_KEYS = ("config_hash", "model", "vector_files", "requests_hash", "scenario", "claims", "backend_identity")


def check_config(config: SweepConfig, fingerprint: Fingerprint | None = None) -> list[Arm]:
    """Everything about ``config`` that can be checked without generating, before anything is written:
    sampling values, the scorer (importable and callable), the vector files, and the steered layers
    (against each vector's layers, and against the model's ``n_layers`` and ``d_model`` when its
    ``fingerprint`` is given). Returns the arms. ``run_sweep`` calls it; the CLI calls it once more
    before the model loads (``fingerprint=None``), so a bad option costs no model load."""
    Sampling(config.max_new_tokens, config.temperature, config.top_p).check()
    if config.scenario == "plain" and config.scorer is not None:
        scorer(config.scorer)
    if fingerprint is not None and config.layers is not None:
        n = fingerprint.n_layers
        bad = [layer for layer in config.layers if not 0 <= layer < n]
        if bad:
            raise ConfigError(f"layers: {bad[0]} is not a layer of the model, which has {n} (0..{n - 1})")
    arms = load_arms(config, fingerprint)
    for arm in arms:
        if fingerprint is not None and arm.bundle is not None and arm.bundle.vector.d_model != fingerprint.d_model:
            raise ConfigError(
                f"vector {arm.vector!r} has width {arm.bundle.vector.d_model}, but the model's d_model is "
                f"{fingerprint.d_model}; use a vector fitted on this model"
            )
    _settings(config, arms)  # the steered layers exist in every vector file
    return arms


def run_sweep(
    config: SweepConfig, backend: Backend, fingerprint: Fingerprint | None, progress: bool = True, chunk: int = 64,
    then: Callable[[Path], None] | None = None,
) -> Path:  # fmt: skip
    """Run (or resume) the rows of ``config`` into ``config.out``; returns the run directory.

    Everything is checked (:func:`check_config`, the run directory) before the directory is made;
    the run then holds the directory's lock (:func:`steerlab.harness.records.hold_run`) until it
    returns, ``then(run_dir)`` (judging, summaries) included, so no second process writes into it.

    Rows that need the same generation (every arm at multiplier 0 shares its unsteered
    generation) are collapsed into one *job* across the whole run before anything is generated;
    jobs then go to the backend ``chunk`` at a time, and each finished job writes all its rows.
    """
    run_dir = Path(config.out)
    arms = check_config(config, fingerprint)
    scenario = make_scenario(config)
    # prompt interventions: one scenario per claim (baseline included), differing in the system prompt
    scenarios: dict[str | None, Scenario] = (
        dict(prompts.claim_scenarios(scenario, config.claims)) if config.claims else {None: scenario}
    )
    items = load_requests(config.prompts, config.prompt_set, config.limit)
    rows = expand(config, arms, items, scenario.conditions(), list(scenarios))
    described = describe_backend(backend)
    if described.get("chat_date") not in (None, config.chat_date):
        raise ConfigError(
            f"the backend renders chats dated {described['chat_date']} but the run config says {config.chat_date}; "
            "build the backend with the config's chat_date"
        )
    header = build_header(config, scenario, items, fingerprint, len(rows), described)
    check_run(run_dir, header, RESUME_KEYS)  # before anything is written
    fits = getattr(backend, "check_fits", None)
    if callable(fits):  # a first-turn prompt that fills the model's context is refused before any work
        fits([
            Request(scenarios[claim].messages(item, cond), prefill=scenario.prefill_for(cond), id=item.id)
            for claim in scenarios for cond in scenario.conditions() for item in items
        ])  # fmt: skip
    with hold_run(run_dir):
        open_run(run_dir, header, RESUME_KEYS)  # again, under the lock
        _generate(config, backend, run_dir, scenario, scenarios, items, arms, rows, described, progress, chunk)
        if then is not None:
            then(run_dir)
    return run_dir


def _generate(
    config: SweepConfig, backend: Backend, run_dir: Path, scenario: Scenario, scenarios: dict[str | None, Scenario],
    items: Sequence[Item], arms: Sequence[Arm], rows: Sequence[Row], described: dict[str, Any], progress: bool,
    chunk: int,
) -> None:  # fmt: skip
    by_id = {i.id: i for i in items}
    backend_id = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:12]
    template_system = described.get("template_system")

    existing = read_samples(run_dir)
    done = {r["id"] for r in existing}
    todo = [r for r in rows if r.id not in done]
    # a job killed after some of its rows were written: its other rows reuse that generation (a
    # regenerated one could differ, e.g. on a GPU whose kernels depend on the batch shape)
    generated = {_generation_key(_row_of(s)): s for s in existing}
    settings = _settings(config, arms)
    jobs: dict[str, Job] = {}
    rows_of: dict[str, list[Row]] = defaultdict(list)
    reused: list[dict[str, Any]] = []
    for row in todo:  # one generation per distinct key, across the whole run
        key = _generation_key(row)
        if key in generated:
            shared = {k: v for k, v in generated[key].items() if k not in _ROW_FIELDS}
            reused.append({**_row_fields(row), "prompt": by_id[row.item].prompt, **shared})
            continue
        if key not in jobs:
            setting = None if row.multiplier == 0 else settings[(row.vector, row.arm, row.multiplier)]
            messages = scenarios[row.claim].messages(by_id[row.item], row.condition)
            seed = sample_seed(config.seed, row.item, row.seed)
            base = Sampling(config.max_new_tokens, config.temperature, config.top_p, seed, tuple(config.stop))
            jobs[key] = Job(
                key, messages, scenario.sampling(base), setting, scenario.prefill_for(row.condition), row.condition
            )
        rows_of[key].append(row)
    queue = list(jobs.values())
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), unit="sample", desc="run", disable=not progress)
    with open_append(run_dir / SAMPLES) as fh:
        for sample in reused:
            fh.write(json.dumps(sample, ensure_ascii=False) + "\n")
        fh.flush()
        bar.update(len(reused))
        for lo in range(0, len(queue), chunk):
            part = queue[lo : lo + chunk]
            started = time.perf_counter()
            turns = converse(scenario, backend, part)
            seconds = round((time.perf_counter() - started) / len(part), 4)
            written = 0
            for job in part:
                sample_turns = turns[job.key]
                shared = {
                    "messages": job.messages,
                    "prefill": job.prefill,
                    "system": next((m["content"] for m in job.messages if m["role"] == "system"), None),
                    "layers": list(job.setting.steered_layers()) if job.setting else [],
                    "scale": config.scale,
                    "sampling_seed": job.sampling.seed,
                    "turns": [t.__dict__ for t in sample_turns],
                    "text": transcript([t.text for t in sample_turns]),
                    "finish_reason": sample_turns[-1].finish_reason,
                    "n_new_tokens": sum(t.n_new_tokens for t in sample_turns),
                    "seconds": seconds,  # per generation (shared by the rows that reuse it)
                    "backend_id": backend_id,
                    **scenario.label(sample_turns, job.condition),
                }
                if shared["system"] is None:  # what the template shows instead of "no system prompt"
                    shared["template_system"] = template_system
                for row in rows_of[job.key]:
                    sample = {**_row_fields(row), "prompt": by_id[row.item].prompt, **shared}
                    fh.write(json.dumps(sample, ensure_ascii=False) + "\n")
                    written += 1
            fh.flush()
            bar.update(written)
    bar.close()


@dataclass
class Job:
    """One distinct generation (possibly several turns), shared by every row with its key."""

    key: str
    messages: list[dict[str, str]]
    sampling: Sampling
    setting: SteeringSetting | None
    prefill: str
    condition: str = ""


def converse(scenario: Scenario, backend: Backend, jobs: Sequence[Job]) -> dict[str, list[Turn]]:
    """Run each job's turns: all first turns in one backend call, then every continuation together."""
    convo = {j.key: list(j.messages) for j in jobs}
    turns: dict[str, list[Turn]] = {j.key: [] for j in jobs}
    active = list(jobs)
    for t in range(scenario.max_turns):
        requests = [
            Request(
                convo[j.key], replace(j.sampling, seed=turn_seed(j.sampling.seed, t)), j.setting, id=f"{j.key}#t{t}",
                prefill=j.prefill if t == 0 else "",
                context="".join(turn.text + "\n" for turn in turns[j.key]),
            )
            for j in active
        ]  # fmt: skip
        results = backend.generate(requests)
        following = []
        for job, res in zip(active, results, strict=True):
            text = res.lead + (job.prefill if t == 0 else "") + res.text
            turns[job.key].append(Turn(text, res.finish_reason, res.n_new_tokens))
            so_far = transcript([turn.text for turn in turns[job.key]])
            if t + 1 < scenario.max_turns and scenario.continues(so_far, res.finish_reason):
                convo[job.key] = next_turn_messages(convo[job.key], text)
                following.append(job)
        active = following
        if not active:
            break
    return turns


_ROW_FIELDS = ("id", "vector", "arm", "multiplier", "condition", "item", "seed", "claim", "prompt")


def _row_fields(row: Row) -> dict[str, Any]:
    return {k: v for k, v in row.__dict__.items() if v is not None or k != "claim"}


def _row_of(sample: dict[str, Any]) -> Row:
    return Row(sample["id"], sample["vector"], sample["arm"], sample["multiplier"], sample["condition"],
               sample["item"], sample["seed"], sample.get("claim"))  # fmt: skip


def _generation_key(row: Row) -> str:
    steer = "none" if row.multiplier == 0 else f"{row.vector}/{row.arm}|{row.multiplier:+g}"
    claim = f"{row.claim}|" if row.claim else ""
    return f"{steer}|{claim}{row.condition}|{row.item}|s{row.seed}"


def _settings(config: SweepConfig, arms: Sequence[Arm]) -> dict[tuple[str, str, float], SteeringSetting]:
    from steerlab.generate import settings_for

    out = {}
    for arm in arms:
        if arm.bundle is None:
            continue
        for setting in settings_for(arm.bundle, config.multipliers, config.layers, config.scale, arm.control):
            out[(arm.vector, arm.arm, setting.multiplier)] = setting
    return out


# ----------------------------------------------------------------------------- scoring


def scorer(spec: str) -> Callable[[str, dict[str, Any]], float]:
    """A regex (score 1 if it matches the output, else 0) or ``module:function(text, record)``."""
    if re.fullmatch(r"[\w.]+:\w+", spec):
        module, name = spec.split(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"scorer {spec!r} cannot be imported ({exc})") from None
        if not callable(fn):
            raise ConfigError(f"scorer {spec!r} is a {type(fn).__name__}, not a function (text, sample) -> float")
        return fn
    try:
        pattern = re.compile(spec)
    except re.error as exc:
        raise ConfigError(f"scorer {spec!r} is neither module:function nor a valid regex ({exc})") from None
    return lambda text, _record: float(bool(pattern.search(text)))


def summarise(
    records: Sequence[dict[str, Any]], score: Callable[[str, dict[str, Any]], float], seed: int = 0
) -> list[dict[str, Any]]:
    """Per (vector, multiplier, condition): the real vector's score against its controls' envelope.

    Every arm's score is the mean over requests of each request's mean score (:mod:`steerlab.stats`):
    the real vector's ``real_mean`` with its 95% cluster-bootstrap interval over requests
    (``real_ci_low``, ``real_ci_high``) and request-level s.e.m. (``real_sem``: the s.d. of the
    per-request means over sqrt ``n_requests``); each control's the same mean, summarised as the
    min-max and mean +- 2 s.d. across controls. ``z`` = (real - control mean) / control s.d. needs
    at least ``stats.MIN_CONTROLS_FOR_Z`` controls; otherwise it is None and ``z_note`` says why.
    """
    from steerlab import stats

    cells: dict[tuple[str, float, str], dict[str, list[tuple[str, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        key = (r["vector"], r["multiplier"], r["condition"])
        cells[key][r["arm"]].append((stats.request_of(r), score(r["text"], r)))
    out = []
    for (vector, mult, cond), arms in sorted(cells.items()):
        real = arms.get("real") or arms.get(NONE) or []
        per = list(stats.per_request(real).values())
        est = stats.mean_interval(per, seed=seed)
        ctrl_means = [statistics.fmean(stats.per_request(v).values()) for a, v in sorted(arms.items())
                      if a not in ("real", NONE)]  # fmt: skip
        entry: dict[str, Any] = {
            "vector": vector, "multiplier": mult, "condition": cond,
            "real_mean": est["value"], "real_sem": stats.mean_sem(per)[1] if per else float("nan"),
            "real_ci_low": est["ci_low"], "real_ci_high": est["ci_high"], "n": len(real), "n_requests": len(per),
            "n_controls": len(ctrl_means),
        }  # fmt: skip
        if ctrl_means:
            c_mean = statistics.fmean(ctrl_means)
            c_sd = statistics.stdev(ctrl_means) if len(ctrl_means) > 1 else 0.0
            z, note = stats.control_z(est["value"], ctrl_means)
            entry.update(
                control_min=min(ctrl_means), control_max=max(ctrl_means), control_mean=c_mean, control_sd=c_sd,
                control_lo=c_mean - 2 * c_sd, control_hi=c_mean + 2 * c_sd, z=z,
            )  # fmt: skip
            if note:
                entry["z_note"] = note
        out.append(entry)
    return out


def write_summary(run_dir: Path, spec: str) -> tuple[Path, list[dict[str, Any]]]:
    """Score a plain run's samples with ``spec`` and write summary.json (bootstrap seed: the run's first seed)."""
    from steerlab import stats

    records = read_samples(run_dir)
    if not records:
        raise ConfigError(f"{run_dir} has no samples to summarise")
    check_unique(records, Path(run_dir) / SAMPLES)
    seed = min(read_header(run_dir)["seeds"])
    summary = summarise(records, scorer(spec), seed=seed)
    path = Path(run_dir) / SUMMARY
    body = {"scorer": spec, "statistics": stats.describe(seed), "cells": summary}
    atomic_write_text(path, json.dumps(body, indent=1) + "\n")
    return path, summary


def figure(run_dir: Path, summary: Sequence[dict[str, Any]], scorer_name: str) -> Path:
    """Score vs signed multiplier per condition: real vector with error bars, controls shaded."""
    from steerlab import plots

    panels: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for cell in summary:
        series = panels[cell["condition"]][cell["vector"]]
        for key in ("multiplier", "real_mean", "real_sem", "control_min", "control_max", "control_lo", "control_hi"):
            series[key].append(cell.get(key, float("nan")))
    return plots.sweep(panels, scorer_name, Path(run_dir) / "sweep.png")


# ----------------------------------------------------------------------------- labelled runs


def write_label_summary(run_dir: Path) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """Statistics of a labelled (alignment-faking) run into summary.json (see harness.summary)."""
    from steerlab.harness.summary import summarise_labels

    header = read_header(run_dir)
    samples = read_samples(run_dir)
    if not samples:
        raise ConfigError(f"{run_dir} has no samples to summarise")
    check_unique(samples, Path(run_dir) / SAMPLES)
    if "label" not in samples[0]:
        raise ConfigError(f"{run_dir} is a {header['scenario']['name']} run: its samples carry no labels")
    if header.get("claims"):  # prompt interventions: per-claim gaps and the net scores
        claims = prompts.claims_of(header["claims"])
        summary = {"method": "prompt", "strength": header["claims"]["strength"],
                   **prompts.summarise_claims(samples, claims, seed=min(header["seeds"]))}  # fmt: skip
    else:
        summary = summarise_labels(samples, seed=min(header["seeds"]))
    path = Path(run_dir) / SUMMARY
    atomic_write_text(path, json.dumps({"scenario": header["scenario"]["name"], **summary}, indent=1) + "\n")
    return path, summary


def label_figure(run_dir: Path, summary: dict[str, list[dict[str, Any]]], concepts: dict[str, str]) -> Path | None:
    """Acceptance and judge decomposition vs multiplier per vector (None for an unsteered run)."""
    from steerlab import plots
    from steerlab.harness.summary import figure_panels

    panels = {v: p for v, p in figure_panels(summary["curves"]).items() if v != NONE}
    if not panels:
        return None
    return plots.af_sweep(panels, concepts, Path(run_dir) / "af_sweep.png")
