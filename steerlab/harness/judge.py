"""The judge: rubric scores of each sample's reasoning on the two concepts (A and B).

The rubric (``configs/judge/rubric.yaml``) names the concepts, the integer scale and the prompt.
A judge is any text client (:class:`steerlab.clients.base.TextClient`: prompts in, replies out):

- :class:`AnthropicJudge`: the Messages-API client (:class:`steerlab.clients.anthropic.AnthropicText`:
  the official SDK, the API-version workaround for ``temperature``, retries, ``concurrency``
  calls at a time, ``batch=True`` for the Message Batches API with re-attach, the key from
  ``ANTHROPIC_API_KEY`` only) at temperature 0 by default; ``temperature=None`` sends no
  sampling parameter.
- :class:`LocalJudge`: any chat model behind a steerlab generation backend
  (:class:`steerlab.backends.text.LocalText`; SmolLM2 in the demo: a weak judge, but it runs
  offline), greedy, with the reply's first characters prefilled: the JSON object up to the score
  of the rubric's first concept.

:func:`judge_samples` asks only for what the on-disk cache (:class:`steerlab.clients.cache.ReplyCache`,
SQLite, keyed by a hash of model, rubric, input and parameters) does not hold, so a rerun costs
nothing but one probe call. The *model* in that key is the model that answers, not the name asked
for: a name such as ``claude-sonnet-4-5`` is an alias whose snapshot can change, so each run first
asks the API once which model the alias reaches now (:meth:`AnthropicText.resolve_model`: one call
with a one-token reply; the ``model`` field of the Messages response) and looks up the cache under
that snapshot. Every judgement is stored under the model its own response reports, and that
model is written into the sample's ``judge`` entry (``model``; ``requested_model`` is the name
asked for). A snapshot change behind the alias is therefore a cache miss, never a silent reuse.
A reply that does not parse is retried once with a reminder of the format; if it fails again
the sample gets ``{"error": ...}``: it is counted as a judge error and never scored 0. A call that
failed (connection error, timeout, 429/5xx once the SDK's retries are spent, a failed batch
request) is a judge error at once: retrying it is the SDK's business, and a format reminder would
not help. The command line exits with status 2 when any judgement failed, after writing the rest.
Samples without reasoning are marked ``{"skipped": ...}`` and not sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from steerlab.backends.text import LocalText
from steerlab.clients.anthropic import AnthropicText, cache_params, estimate_chars
from steerlab.clients.base import ClientError, TextClient
from steerlab.clients.cache import ReplyCache
from steerlab.config import load_yaml
from steerlab.errors import ConfigError
from steerlab.fileio import atomic_write_text

RETRY_NOTE = (
    "\n\nYour previous reply could not be read. Reply with only the JSON object described above: "
    "integer scores in range and a justification for each concept."
)
JudgeError = ClientError  # a judge that cannot run is a client that cannot run (no key, a bad cache)
JudgeBackend = TextClient  # a judge is any text client: prompts in, replies out


class Concept(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    title: str
    question: str
    anchors: dict[int, str] = Field(default_factory=dict)


class Rubric(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    version: int
    scale: dict[str, int]
    concepts: dict[str, Concept] = Field(min_length=1)
    system: str
    template: str

    @model_validator(mode="after")
    def _check(self) -> Rubric:
        if set(self.scale) != {"min", "max"} or self.scale["min"] >= self.scale["max"]:
            raise ValueError("scale must be {min: a, max: b} with a < b")
        if "{reasoning}" not in self.template:
            raise ValueError("template must contain {reasoning}")
        return self

    @classmethod
    def load(cls, path: Path, scale: tuple[int, int] | None = None) -> Rubric:
        """The rubric in ``path`` (default configs/judge/rubric.yaml), its scale replaced by ``scale``."""
        override = {"scale": {"min": scale[0], "max": scale[1]}} if scale is not None else None
        return load_yaml(path, cls, "rubric", override)

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:16]

    def prompt(self, reasoning: str) -> tuple[str, str]:
        """(system, user) for one trace."""
        blocks = []
        for key, c in self.concepts.items():
            anchors = "\n".join(f"  {score}: {text}" for score, text in sorted(c.anchors.items()))
            blocks.append(f"{key}. {c.title}\n{c.question}\nAnchors:\n{anchors}".rstrip())
        lo, hi = self.scale["min"], self.scale["max"]
        user = self.template.format(reasoning=reasoning, min=lo, max=hi, concepts="\n\n".join(blocks))
        return self.system, user

    def parse(self, reply: str) -> dict[str, dict[str, Any]]:
        """``{concept: {"score": int, "justification": str}}``; ValueError naming what is wrong."""
        match = re.search(r"\{.*\}", reply, re.S)
        if not match:
            raise ValueError("no JSON object in the reply")
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError as exc:
            raise ValueError(f"malformed JSON ({exc.msg})") from None
        out = {}
        lo, hi = self.scale["min"], self.scale["max"]
        for key in self.concepts:
            entry = data.get(key)
            if not isinstance(entry, dict) or "score" not in entry:
                raise ValueError(f"no score for concept {key}")
            score = entry["score"]
            if isinstance(score, bool) or not isinstance(score, int | float) or score != int(score):
                raise ValueError(f"score of {key} is not an integer ({score!r})")
            if not lo <= score <= hi:
                raise ValueError(f"score of {key} is {score}, outside {lo}-{hi}")
            out[key] = {"score": int(score), "justification": str(entry.get("justification", "")).strip()}
        return out


def local_prefill(rubric: Rubric | None) -> str:
    """What a local judge's reply starts with: the JSON object up to the rubric's first concept's score."""
    first = next(iter(rubric.concepts)) if rubric is not None else "A"
    return "{" + json.dumps(first) + ': {"score": '


def judge_params(
    backend: str, max_tokens: int, temperature: float | None = 0.0, rubric: Rubric | None = None
) -> dict[str, Any]:
    """The parameters that, with model, rubric and input, key a judgement in the cache (a local
    judge's prefill follows ``rubric``; without one, a rubric whose first concept is ``A``)."""
    if backend == "local":
        return {"temperature": 0.0, "max_tokens": max_tokens, "prefill": local_prefill(rubric)}
    return cache_params(max_tokens, temperature)  # what AnthropicText.params() gives


AnthropicJudge = AnthropicText  # the judge calls it at temperature 0 (the default)


class LocalJudge(LocalText):
    """A local chat model as the judge (greedy, the JSON reply's first characters prefilled up to the
    score of the rubric's first concept; :func:`judge_samples` sets the rubric it judges with)."""

    def __init__(self, backend: Any, model: str, max_tokens: int = 200, rubric: Rubric | None = None):
        super().__init__(backend, model, max_tokens, temperature=0.0)
        self.use_rubric(rubric)

    def use_rubric(self, rubric: Rubric | None) -> None:
        self.rubric = rubric
        self.prefill = local_prefill(rubric)

    def params(self) -> dict[str, Any]:
        return judge_params("local", self.max_tokens, rubric=self.rubric)


@dataclass
class JudgeReport:
    n: int  # samples with reasoning
    cached: int
    judged: int  # newly judged
    errors: int
    skipped: int  # samples without reasoning
    calls: int
    models: list[str] = field(default_factory=list)  # the models that made the judgements (as reported)
    first_error: str | None = None  # the first failed judgement's error (in sample order), for the one line


def estimate(rubric: Rubric, texts: Sequence[str], model: str, max_tokens: int, batch: bool,
             prices: tuple[float, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Upper-bound cost of judging ``texts`` (each reply assumed to use ``max_tokens``)."""
    prompt_chars = sum(len(s) + len(u) for s, u in (rubric.prompt(t) for t in texts))
    return estimate_chars(prompt_chars, len(texts), model, max_tokens, batch, prices)


def judge_samples(
    samples: Sequence[dict[str, Any]],
    judge: TextClient,
    rubric: Rubric,
    cache: ReplyCache,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], JudgeReport]:
    """Add ``judge`` to each sample (a copy): scores from the cache, or asked for now.

    The cache is read under the model the judge reaches now (:meth:`JudgeBackend.resolve_model`),
    and each new judgement is stored under the model its response reports, which the sample's
    entry records; see the module docstring."""
    if hasattr(judge, "use_rubric"):  # a local judge's prefill names the rubric's first concept
        judge.use_rubric(rubric)
    rubric_hash = rubric.hash()
    params = judge.params()
    texts = {s["id"]: s["reasoning"] for s in samples if s.get("reasoning")}
    model = judge.resolve_model() if texts else judge.model
    if texts and model != judge.model:
        cache.note_model(judge.model, model)
    key_of = {sid: ReplyCache.key(model, rubric_hash, text, params) for sid, text in texts.items()}
    results: dict[str, dict[str, Any]] = {}
    for key in set(key_of.values()):
        hit = cache.get(key)
        if hit is not None:
            results[key] = hit
    cached_keys = set(results)
    pending = sorted({k for k in key_of.values() if k not in results})
    text_of = {key_of[sid]: text for sid, text in texts.items()}
    errors: dict[str, str] = {}
    for attempt in range(2):  # a reply that does not parse is asked for once more
        if not pending:
            break
        prompts = []
        for key in pending:
            system, user = rubric.prompt(text_of[key])
            prompts.append((system, user + (RETRY_NOTE if attempt else "")))
        replies = judge.complete(prompts, [f"{k}-{attempt}" for k in pending])
        failed = []  # replies that did not parse: asked once more, with the format reminder
        for key, reply in zip(pending, replies, strict=True):
            if isinstance(reply, Exception):  # the call failed (the SDK already retried it): an error now
                errors[key] = f"{type(reply).__name__}: {reply}"
                continue
            try:
                scores = rubric.parse(reply)
            except ValueError as exc:
                errors[key] = f"unparseable reply ({exc}): {reply[:200]!r}"
                failed.append(key)
                continue
            reported = getattr(reply, "model", None) or model
            value = {"scores": scores, "model": reported, "requested_model": judge.model, "rubric": rubric_hash}
            # stored under the model that answered: if the alias moved during the run, this judgement
            # is filed under its new snapshot and a later run reaching the old one does not see it
            cache.put(ReplyCache.key(reported, rubric_hash, text_of[key], params), value)
            results[key] = value
            errors.pop(key, None)
        judge.release()  # every reply is in the cache: only now may a batch job forget its batch
        if progress:
            progress(sum(1 for key in pending if key in results))
        pending = failed
    out = []
    for s in samples:
        s = dict(s)
        key = key_of.get(s["id"])
        if key is None:
            s["judge"] = {"skipped": "no reasoning to judge"}
        elif key in results:
            s["judge"] = results[key]
        else:
            s["judge"] = {"error": errors[key], "model": model, "requested_model": judge.model, "rubric": rubric_hash}
        out.append(s)
    was_cached = sum(1 for k in key_of.values() if k in cached_keys)
    n_errors = sum(1 for s in out if "error" in s["judge"])
    report = JudgeReport(
        n=len(key_of), cached=was_cached, judged=len(key_of) - was_cached - n_errors, errors=n_errors,
        skipped=len(samples) - len(key_of), calls=judge.calls,
        models=sorted({r["model"] for r in results.values() if r.get("model")}),
        first_error=next((s["judge"]["error"] for s in out if "error" in s["judge"]), None),
    )  # fmt: skip
    return out, report


def judge_run(run_dir: Path, judge: TextClient, rubric: Rubric, cache: ReplyCache, rubric_path: Path) -> JudgeReport:
    """Judge every sample of a run directory and rewrite its samples with the scores (resumable:
    judgements land in the cache as they come, so a killed job asks only for the rest)."""
    from steerlab.harness.records import read_header, read_samples, rewrite_samples

    read_header(run_dir)
    samples = read_samples(run_dir)
    if not samples:
        raise ConfigError(f"{run_dir} has no samples to judge")
    judged, report = judge_samples(samples, judge, rubric, cache)
    rewrite_samples(run_dir, judged)
    info = {"backend": type(judge).__name__, "model": judge.model, "params": judge.params(),
            "rubric": str(rubric_path), "rubric_hash": rubric.hash(), "scale": rubric.scale,
            "concepts": {k: c.name for k, c in rubric.concepts.items()}, "report": report.__dict__}  # fmt: skip
    atomic_write_text(Path(run_dir) / "judge.json", json.dumps(info, indent=1, sort_keys=True) + "\n")
    return report
