"""The run engine: rows -> requests -> backend -> samples, for every kind of run.

A scenario (:mod:`steerlab.harness.scenario`) turns a row's request and condition into chat
messages; rows run through a backend in full batches with per-row steering (a turn that needs
continuing, as in the alignment-faking protocol, is sent again with the next batch of turns), and
each finished row is one *sample*, a JSON line of ``RUN_DIR/samples.jsonl`` (see
:mod:`steerlab.harness.records`). A killed run resumes: finished samples are read back and
skipped, and a torn last line is dropped. With a backend that reports errors per request
(``generate_each``, the API backend), a request that still fails after the backend's retries
stops only its own job: the chunk's finished jobs are written, then one
:class:`ChunkGenerationError` says how many failed (a rerun sends only those again). Every
option is checked before the run directory is made (:func:`check_config`), and one process writes
a run at a time (the directory's lock, :func:`steerlab.harness.records.hold_run`), ``then=``
callbacks (judging, summaries) included.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from steerlab import prompts
from steerlab.backends.anthropic import GenerationError
from steerlab.backends.base import Backend, Request, Sampling, derive_seed
from steerlab.errors import ConfigError
from steerlab.fileio import open_append
from steerlab.harness.datasets import Item, load_requests
from steerlab.harness.records import SAMPLES, check_run, hold_run, open_run, read_samples
from steerlab.harness.scenario import Scenario, Turn, next_turn_messages, transcript
from steerlab.models import Fingerprint
from steerlab.runs.config import SweepConfig, make_scenario
from steerlab.runs.header import RESUME_KEYS, build_header, describe_backend
from steerlab.runs.rows import (
    ROW_FIELDS,
    Arm,
    Row,
    dose_file,
    expand,
    gated,
    generation_key,
    load_arms,
    row_fields,
    row_of,
    steering_settings,
    steers,
)
from steerlab.runs.summary import scorer
from steerlab.steer import SteeringSetting


def sample_seed(run_seed: int, item: str, seed: int) -> int:
    """The sampling seed of one sample: derived from (run seed, request id, sample seed).

    Different requests draw independent streams (a shared seed would make every request pick the
    same tokens wherever their distributions agree, correlating samples that the statistics treat
    as independent). Arms, multipliers, claims and conditions of one request share it on purpose:
    they differ only in the intervention, a paired design.
    """
    return derive_seed(run_seed, item, seed)


class ChunkGenerationError(GenerationError):
    """Generations of one chunk that failed after the backend's retries, raised once the chunk's
    finished jobs are written. ``failures``: each failed job's key and its error (the first first)."""

    def __init__(self, failures: dict[str, Exception], n_jobs: int):
        key, first = next(iter(failures.items()))
        reason = " ".join(str(first).split())  # one line, whatever the API's message holds
        n = len(failures)
        written = f"the {n_jobs - n} finished were written; " if n < n_jobs else ""
        super().__init__(
            f"{n} of {n_jobs} generation{'s' if n_jobs != 1 else ''} in a chunk failed (the first: {reason}); "
            f"{written}rerun the same command to resume: finished samples are kept, only the failed generations "
            "are sent again",
            getattr(first, "request_id", key),
            all(getattr(e, "retryable", True) for e in failures.values()),
        )
        self.failures = failures


def turn_seed(seed: int, turn: int) -> int:
    """The seed of a sample's ``turn``-th turn (turn 0 keeps the sample's seed)."""
    return seed if turn == 0 else derive_seed(seed, turn)


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
    table = dose_file(config)
    if table is not None:  # the doses' model: the vectors' before the model loads, the model's once it has
        if fingerprint is not None:
            table.check_model(fingerprint)
        for arm in arms:
            if arm.bundle is not None and arm.control is None:
                table.check_model(Fingerprint.from_dict(arm.bundle.meta["model"]), f"vector file {arm.path}")
    if config.steer_if is not None:  # the condition's model: the vectors' before the model loads, the model's after
        from steerlab.conditions import load_condition

        cond = load_condition(config.steer_if)
        models = [fingerprint] if fingerprint is not None else [
            Fingerprint.from_dict(a.bundle.meta["model"]) for a in arms if a.bundle is not None and a.control is None
        ]  # fmt: skip
        for model in models:
            cond.check_model(model)
    steering_settings(config, arms)  # the steered layers exist in every vector file (and every arm has its dose)
    return arms


def claim_scenarios(config: SweepConfig, scenario: Scenario) -> dict[str | None, Scenario]:
    """The run's scenarios by claim: one per claim (baseline included) for a prompt-intervention run, differing in
    the system prompt; else ``{None: scenario}``."""
    return dict(prompts.claim_scenarios(scenario, config.claims)) if config.claims else {None: scenario}


def check_condition_prompts(config: SweepConfig, scenarios: dict[str | None, Scenario], items: Sequence[Item]) -> None:
    """A ``steer_if`` condition fitted on prompts with other system prompts than the run sends is refused."""
    if config.steer_if is None or not items:
        return
    from steerlab.conditions import check_rendering

    systems = [
        (cond, next((m["content"] for m in sc.messages(items[0], cond) if m["role"] == "system"), None))
        for sc in scenarios.values() for cond in sc.conditions()
    ]  # fmt: skip
    check_rendering(config.steer_if, systems)


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
    scenarios = claim_scenarios(config, scenario)
    items = load_requests(config.prompts, config.prompt_set, config.limit)
    rows = expand(config, arms, items, scenario.conditions(), list(scenarios))
    described = describe_backend(backend)
    if described.get("chat_date") not in (None, config.chat_date):
        raise ConfigError(
            f"the backend renders chats dated {described['chat_date']} but the run config says {config.chat_date}; "
            "build the backend with the config's chat_date"
        )
    check_condition_prompts(config, scenarios, items)
    header = build_header(config, scenario, items, fingerprint, len(rows), described)
    check_run(run_dir, header, RESUME_KEYS)  # before anything is written
    fits = getattr(backend, "check_fits", None)
    if callable(fits):  # a first-turn prompt that fills the model's context is refused before any work
        budget = scenario.sampling(Sampling(config.max_new_tokens, config.temperature, config.top_p))
        fits([  # with the run's max_new_tokens: the vLLM backend refuses prompt + max_new_tokens > max_model_len
            Request(scenarios[claim].messages(item, cond), budget, prefill=scenario.prefill_for(cond), id=item.id)
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
    generated = {generation_key(row_of(s), config): s for s in existing}
    settings = steering_settings(config, arms)
    jobs: dict[str, Job] = {}
    rows_of: dict[str, list[Row]] = defaultdict(list)
    reused: list[dict[str, Any]] = []
    for row in todo:  # one generation per distinct key, across the whole run
        key = generation_key(row, config)
        if key in generated:
            shared = {k: v for k, v in generated[key].items() if k not in ROW_FIELDS}
            reused.append({**row_fields(row), "prompt": by_id[row.item].prompt, **shared, **gated(row, config),
                           **doses(config, settings, row)})  # fmt: skip
            continue
        if key not in jobs:
            setting = settings[(row.vector, row.arm, row.multiplier)] if steers(row, config) else None
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
            failures: dict[str, Exception] = {}
            decided: dict[str, list[dict[str, Any]]] = {}
            turns = converse(scenario, backend, part, failures, decided)
            seconds = round((time.perf_counter() - started) / len(part), 4)
            written = 0
            for job in part:
                if job.key in failures:  # nothing of it is written: a sample is a whole conversation
                    continue
                sample_turns = turns[job.key]
                shared = {
                    "messages": job.messages,
                    "prefill": job.prefill,
                    "system": next((m["content"] for m in job.messages if m["role"] == "system"), None),
                    "layers": list(job.setting.steered_layers()) if job.setting else [],
                    "scale": config.scale,
                    **(
                        {"steer_if": decided.get(job.key, [])}
                        if job.setting is not None and job.setting.condition
                        else {}
                    ),
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
                    sample = {**row_fields(row), "prompt": by_id[row.item].prompt, **shared, **gated(row, config),
                              **doses(config, settings, row)}  # fmt: skip
                    fh.write(json.dumps(sample, ensure_ascii=False) + "\n")
                    written += 1
            fh.flush()
            bar.update(written)
            if failures:
                bar.close()
                raise ChunkGenerationError(failures, len(part))
    bar.close()


def doses(config: SweepConfig, settings: dict[tuple[str, str, float], SteeringSetting], row: Row) -> dict[str, Any]:
    """A dose run's sample fields, per row: the signed dose (KL units, also the row's ``multiplier``) and the
    multiplier applied to its generation (the arm's calibrated one; 0 where the row is unsteered: multiplier 0,
    or gated off by ``steer_only``). Nothing without a dose file."""
    if config.doses is None:
        return {}
    applied = settings[(row.vector, row.arm, row.multiplier)].multiplier if steers(row, config) else 0.0
    return {"dose_kl": row.multiplier, "steering_multiplier": applied}


@dataclass
class Job:
    """One distinct generation (possibly several turns), shared by every row with its key."""

    key: str
    messages: list[dict[str, str]]
    sampling: Sampling
    setting: SteeringSetting | None
    prefill: str
    condition: str = ""


def converse(
    scenario: Scenario,
    backend: Backend,
    jobs: Sequence[Job],
    failures: dict[str, Exception] | None = None,
    decided: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, list[Turn]]:
    """Run each job's turns: all first turns in one backend call, then every continuation together.

    With ``failures`` given and a backend that reports errors per request (``generate_each``), a job
    whose request fails (at any turn) stops there: it maps to its error in ``failures`` and is left
    out of the result, and the other jobs go on. Otherwise the backend's ``generate`` raises as is.
    ``decided`` (given) collects, per job whose setting has a condition, each turn's ``{"met", "score"}``.
    """
    each = getattr(backend, "generate_each", None) if failures is not None else None
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
        results = each(requests) if callable(each) else backend.generate(requests)
        following = []
        for job, res in zip(active, results, strict=True):
            if isinstance(res, Exception):  # failed after the backend's retries: the job ends here
                failures[job.key] = res  # type: ignore[index]
                del turns[job.key]
                continue
            text = res.lead + (job.prefill if t == 0 else "") + res.text
            turns[job.key].append(Turn(text, res.finish_reason, res.n_new_tokens))
            if decided is not None and getattr(res, "condition_met", None) is not None:
                decided.setdefault(job.key, []).append({"met": res.condition_met, "score": res.condition_score})
            so_far = transcript([turn.text for turn in turns[job.key]])
            if t + 1 < scenario.max_turns and scenario.continues(so_far, res.finish_reason):
                convo[job.key] = next_turn_messages(convo[job.key], text)
                following.append(job)
        active = following
        if not active:
            break
    return turns
