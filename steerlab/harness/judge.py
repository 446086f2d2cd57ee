"""The judge: rubric scores of each sample's reasoning on the two concepts (A and B).

The rubric (``configs/judge/rubric.yaml``) names the concepts, the integer scale and the prompt.
A judge backend turns prompts into replies:

- :class:`AnthropicJudge`: the official SDK, at temperature 0 by default. anthropic>=1.0 removed
  ``temperature`` from its Messages methods and API version 2026-10-21 rejects it with a 400, so
  a set temperature goes in the request body with ``anthropic-version: 2023-06-01`` (the version
  that still takes it); ``temperature=None`` sends no sampling parameter and the SDK's default
  API version. The SDK retries 429, 408/409, 5xx
  and timeouts with exponential backoff (and honours ``retry-after``); calls run ``concurrency``
  at a time; ``batch=True`` sends everything through the Message Batches API instead (half the
  price; the batch id is saved in the run directory so a killed job re-attaches rather than
  paying twice; the saved state is dropped only after the caller has stored the results, see
  :meth:`AnthropicText.release`). The key is read from ``ANTHROPIC_API_KEY`` only and never
  written anywhere.
- :class:`LocalJudge`: any chat model behind a steerlab generation backend (SmolLM2 in the demo:
  a weak judge, but it runs offline), greedy, with the reply's first characters prefilled: the
  JSON object up to the score of the rubric's first concept.

:func:`judge_samples` asks only for what the on-disk cache (:class:`JudgeCache`, SQLite, keyed by
a hash of model, rubric, input and parameters) does not hold, so a rerun costs nothing but one
probe call. The *model* in that key is the model that answers, not the name asked for: a name
such as ``claude-sonnet-4-5`` is an alias whose snapshot can change, so each run first asks the
API once which model the alias reaches now (:meth:`AnthropicText.resolve_model`: one call with
a one-token reply; the ``model`` field of the Messages response) and looks up the cache under
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
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from steerlab.config import load_yaml
from steerlab.errors import ConfigError, SteerlabError
from steerlab.fileio import atomic_write_text

API_KEY_ENV = "ANTHROPIC_API_KEY"
LEGACY_API_VERSION = "2023-06-01"  # the last API version that accepts temperature
RETRY_NOTE = (
    "\n\nYour previous reply could not be read. Reply with only the JSON object described above: "
    "integer scores in range and a justification for each concept."
)
# USD per million tokens (input, output) for the cost estimate; override with price_in/price_out.
PRICES = {
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-3-5-haiku-latest": (0.8, 4.0),
}
CHARS_PER_TOKEN = 3.5  # a conservative average for English prose (the estimate errs high)


class JudgeError(SteerlabError):
    """A judge that cannot run: no API key, a bad rubric, an unknown backend."""


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


class JudgeCache:
    """Judgements on disk (SQLite), keyed by a hash of (model, rubric, input, parameters)."""

    def __init__(self, path: Path, readonly: bool = False):
        """``readonly``: only look things up (a dry run); a missing file is an empty cache, and nothing
        is created."""
        self.path = Path(path)
        self._lock = threading.Lock()
        if readonly:
            try:
                if self.path.is_file():
                    uri = f"file:{self.path.resolve()}?mode=ro"
                    self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
                    self._db.execute("SELECT 1 FROM judgements LIMIT 1")
                else:
                    self._db = sqlite3.connect(":memory:", check_same_thread=False)
                    self._db.execute("CREATE TABLE judgements (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    self._db.execute("CREATE TABLE models (requested TEXT PRIMARY KEY, reported TEXT NOT NULL)")
            except sqlite3.Error as exc:
                raise JudgeError(
                    f"cannot read {self.path} as a reply cache ({exc}); move the damaged file away"
                ) from None
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS models (requested TEXT PRIMARY KEY, reported TEXT NOT NULL)")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise JudgeError(
                f"cannot use {self.path} as a reply cache ({reason}); pass --cache with a writable path, "
                "or move the damaged file away"
            ) from None

    @staticmethod
    def key(model: str, rubric_hash: str, text: str, params: dict[str, Any]) -> str:
        blob = json.dumps({"model": model, "rubric": rubric_hash, "input": text, "params": params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM judgements WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO judgements VALUES (?, ?)", (key, json.dumps(value)))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def note_model(self, requested: str, reported: str) -> None:
        """Remember the model that ``requested`` (an alias) reached when it was last resolved."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO models VALUES (?, ?)", (requested, reported))
            self._db.commit()

    def last_model(self, requested: str) -> str | None:
        """The model ``requested`` reached when last resolved (for estimates that make no call)."""
        with self._lock:
            row = self._db.execute("SELECT reported FROM models WHERE requested = ?", (requested,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self._db.close()


class JudgeBackend(Protocol):
    model: str  # the name asked for (for an API: possibly an alias)
    calls: int

    def params(self) -> dict[str, Any]: ...
    def resolve_model(self) -> str: ...  # the model that answers now (the snapshot behind an alias)
    def complete(self, prompts: Sequence[tuple[str, str]], ids: Sequence[str]) -> list[str | Exception]: ...
    def release(self) -> None: ...  # the last replies are stored: drop what would re-attach to them


class Reply(str):
    """A reply's text, carrying the model the API reports having answered it (``model``)."""

    model: str | None

    def __new__(cls, text: str, model: str | None = None) -> Reply:
        obj = super().__new__(cls, text)
        obj.model = model
        return obj


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
    return {"temperature": temperature, "max_tokens": max_tokens}


def require_api_key(use: str = "the anthropic judge", alternative: str = "use --judge local") -> str:
    """The API key from the environment, or one line saying who needs it and what else to do."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise JudgeError(f"{use} needs an API key: set {API_KEY_ENV} (or {alternative}, or --dry-run for the cost)")
    return key


class AnthropicText:
    """Claude through the official SDK: (system, user) prompts in, replies out. The judge's backend
    (:class:`AnthropicJudge`) and the SDF add-on's document generator; see the module docstring."""

    def __init__(
        self,
        model: str,
        max_tokens: int = 400,
        concurrency: int = 8,
        max_retries: int = 6,
        batch: bool = False,
        temperature: float | None = 0.0,
        client: Any = None,
        http_client: Any = None,
        batch_state: Path | None = None,
        poll_seconds: float = 30.0,
        needed_by: tuple[str, str] = ("the anthropic judge", "use --judge local"),
    ):
        import anthropic

        self.model, self.max_tokens, self.concurrency, self.batch = model, max_tokens, concurrency, batch
        self.temperature = temperature
        self.client = client or anthropic.Anthropic(
            api_key=require_api_key(*needed_by), max_retries=max_retries, http_client=http_client
        )
        self.batch_state, self.poll_seconds = batch_state, poll_seconds
        self.calls = 0
        self._resolved: str | None = None
        self._batch_id: str | None = None  # the batch whose replies the last complete() returned

    def params(self) -> dict[str, Any]:
        return judge_params("anthropic", self.max_tokens, self.temperature)

    def resolve_model(self) -> str:
        """The model the API answers as now: ``self.model`` may be an alias (``claude-sonnet-4-5``)
        whose snapshot changes. One call with a one-token reply, once per client; the answer is the
        ``model`` field of the Messages response."""
        import anthropic

        if self._resolved is None:
            try:
                self.calls += 1
                message = self.client.messages.create(
                    model=self.model, max_tokens=1, messages=[{"role": "user", "content": "Reply with OK."}],
                    **self._extra(),
                )  # fmt: skip
            except anthropic.APIError as exc:
                raise JudgeError(f"could not ask the API which model {self.model!r} is: {exc}") from None
            self._resolved = message.model or self.model
        return self._resolved

    def release(self) -> None:
        """The caller has stored the replies of the last batch: drop the saved batch state, so the
        next call sends a new batch. Until then a killed job re-attaches to the batch it paid for
        (its results stay on the API); :func:`judge_samples` calls this after writing its cache.
        A state file of another batch (a killed job's, not yet re-attached) is left alone."""
        if self.batch_state is not None and self._batch_id is not None and self.batch_state.is_file():
            if json.loads(self.batch_state.read_text()).get("batch_id") == self._batch_id:
                self.batch_state.unlink()  # only the state of a batch whose replies this client returned
        self._batch_id = None

    def _body(self, system: str, user: str) -> dict[str, Any]:
        body = {"model": self.model, "system": system, "messages": [{"role": "user", "content": user}],
                "max_tokens": self.max_tokens}  # fmt: skip
        return body if self.temperature is None else {**body, "temperature": self.temperature}

    def _extra(self) -> dict[str, Any]:
        if self.temperature is None:
            return {}
        return {"extra_headers": {"anthropic-version": LEGACY_API_VERSION},
                "extra_body": {"temperature": self.temperature}}  # fmt: skip

    def _request(self, system: str, user: str) -> dict[str, Any]:
        body = self._body(system, user)
        body.pop("temperature", None)
        return {**body, **self._extra()}

    def complete(self, prompts: Sequence[tuple[str, str]], ids: Sequence[str]) -> list[str | Exception]:
        if self.batch and prompts:
            return self._complete_batch(prompts, ids)

        def one(prompt: tuple[str, str]) -> str | Exception:
            import anthropic

            try:
                self.calls += 1
                message = self.client.messages.create(**self._request(*prompt))
                return Reply("".join(block.text for block in message.content if block.type == "text"), message.model)
            except anthropic.APIError as exc:  # retries are spent, or the request itself is bad
                return exc

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, prompts))

    def _complete_batch(self, prompts: Sequence[tuple[str, str]], ids: Sequence[str]) -> list[str | Exception]:
        custom = [hashlib.sha256(i.encode()).hexdigest()[:40] for i in ids]
        batch_id = None
        if self.batch_state is not None and self.batch_state.is_file():
            state = json.loads(self.batch_state.read_text())
            if state.get("custom_ids") == custom:  # a killed job: re-attach to the batch it paid for
                batch_id = state["batch_id"]
        if batch_id is None:
            self.calls += 1
            requests = [{"custom_id": c, "params": self._body(*p)} for c, p in zip(custom, prompts, strict=True)]
            headers = self._extra().get("extra_headers")
            batch_id = self.client.messages.batches.create(requests=requests, extra_headers=headers).id
            if self.batch_state is not None:
                atomic_write_text(self.batch_state, json.dumps({"batch_id": batch_id, "custom_ids": custom}))
        self._batch_id = batch_id
        while self.client.messages.batches.retrieve(batch_id).processing_status != "ended":
            time.sleep(self.poll_seconds)
        replies: dict[str, str | Exception] = {}
        for entry in self.client.messages.batches.results(batch_id):
            if entry.result.type == "succeeded":
                message = entry.result.message
                replies[entry.custom_id] = Reply("".join(b.text for b in message.content if b.type == "text"),
                                                 message.model)  # fmt: skip
            else:
                replies[entry.custom_id] = RuntimeError(f"batch request {entry.result.type}")
        # the batch state stays until the caller has stored these replies (release): a kill before
        # that re-attaches to this batch instead of paying for a new one
        return [replies.get(c, RuntimeError("missing from the batch results")) for c in custom]


AnthropicJudge = AnthropicText  # the judge calls it at temperature 0 (the default)


class LocalText:
    """A local chat model behind a steerlab generation backend: (system, user) prompts in, replies out.

    ``prefill`` starts every reply (and is part of it); with ``temperature > 0`` each prompt's
    sampling seed is derived from its id, so a rerun reproduces it.
    """

    def __init__(self, backend: Any, model: str, max_tokens: int = 200, temperature: float = 0.0, prefill: str = ""):
        self.backend, self.model, self.max_tokens, self.temperature = backend, model, max_tokens, temperature
        self.prefill = prefill
        self.calls = 0

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "prefill": self.prefill}

    def resolve_model(self) -> str:
        return self.model

    def release(self) -> None:
        pass

    def complete(self, prompts: Sequence[tuple[str, str]], ids: Sequence[str]) -> list[str | Exception]:
        from steerlab.backends.base import Request, Sampling

        requests = [
            Request(
                [{"role": "system", "content": s}, {"role": "user", "content": u}],
                Sampling(
                    max_new_tokens=self.max_tokens,
                    temperature=self.temperature,
                    seed=int(hashlib.sha256(i.encode()).hexdigest()[:8], 16),
                ),
                id=i,
                prefill=self.prefill,
            )  # fmt: skip
            for (s, u), i in zip(prompts, ids, strict=True)
        ]
        self.calls += len(requests)
        return [self.prefill + r.text for r in self.backend.generate(requests)]


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


def estimate_chars(prompt_chars: int, calls: int, model: str, max_tokens: int, batch: bool,
                   prices: tuple[float, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Upper-bound cost of ``calls`` judge calls whose prompts total ``prompt_chars`` characters."""
    tokens_in = prompt_chars / CHARS_PER_TOKEN
    tokens_out = calls * max_tokens
    price = prices or PRICES.get(model)
    out: dict[str, Any] = {"calls": calls, "input_tokens": int(tokens_in), "max_output_tokens": tokens_out}
    if price is None:
        out["usd"] = None
    else:
        out["usd"] = round((tokens_in * price[0] + tokens_out * price[1]) / 1e6 * (0.5 if batch else 1.0), 4)
    return out


def judge_samples(
    samples: Sequence[dict[str, Any]],
    judge: JudgeBackend,
    rubric: Rubric,
    cache: JudgeCache,
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
    key_of = {sid: JudgeCache.key(model, rubric_hash, text, params) for sid, text in texts.items()}
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
            cache.put(JudgeCache.key(reported, rubric_hash, text_of[key], params), value)
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


def judge_run(run_dir: Path, judge: JudgeBackend, rubric: Rubric, cache: JudgeCache, rubric_path: Path) -> JudgeReport:
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
