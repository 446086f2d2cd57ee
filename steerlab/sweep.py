"""Sweeps: (vectors + their random controls) x signed multipliers x conditions x prompts x seeds.

Every combination is a *row*. Rows run through a backend in full batches with per-row
steering, and each finished row is one JSON line in ``RUN_DIR/records.jsonl`` (every input,
the full output, the steering setting, timing). ``RUN_DIR/header.json`` records the config,
model fingerprint, vector-file hashes and package versions. A killed sweep resumes: finished
rows are read back and skipped, and a torn last line is dropped.

Rows at multiplier 0 are the same generation whatever the vector, so they are generated once
per (condition, prompt, seed) and shared.

:func:`summarise` scores every record with a user scorer (a regex or a ``module:function``)
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from tqdm.auto import tqdm

import steerlab
from steerlab.backends.base import Backend, Request, Sampling
from steerlab.config import load_yaml
from steerlab.errors import ConfigError
from steerlab.fileio import atomic_write_text, file_hash
from steerlab.generate import Messages, load_prompts
from steerlab.models import Fingerprint
from steerlab.steer import Scale, SteeringSetting
from steerlab.vectors import VectorBundle

HEADER, RECORDS, SUMMARY = "header.json", "records.jsonl", "summary.json"


class SweepConfig(BaseModel):
    """A sweep; YAML files under configs/ validate through this model."""

    model_config = ConfigDict(extra="forbid")
    model: str = "smollm2"
    vectors: list[Path] = Field(min_length=1)
    controls: int = Field(default=2, ge=0)
    multipliers: list[float] = Field(min_length=1)
    scale: Scale = "absolute"  # absolute or relative, as in steerlab.steer
    layers: list[int] | None = None
    conditions: dict[str, str | None] = Field(default_factory=lambda: {"default": None})  # name -> system prompt
    prompts: Path
    seeds: list[int] = Field(default_factory=lambda: [0])
    max_new_tokens: int = 40
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = Field(default_factory=list)
    batch_size: int = 16
    scorer: str | None = None  # a regex, or "module:function" taking (text, record) -> float
    out: Path = Path("runs/sweep")

    @field_validator("multipliers")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise ValueError(f"multiplier {bad[0]} is not a finite number")
        return values


def load_config(path: Path, **overrides: Any) -> SweepConfig:
    return load_yaml(path, SweepConfig, "sweep config", overrides)


@dataclass(frozen=True)
class Row:
    id: str
    vector: str  # the real vector's name (its concept)
    arm: str  # "real" or "control<i>"
    multiplier: float
    condition: str
    prompt_index: int
    seed: int


@dataclass
class Arm:
    vector: str
    arm: str
    bundle: VectorBundle
    control: int | None


def load_arms(config: SweepConfig, fingerprint: Fingerprint | None) -> list[Arm]:
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


def expand(config: SweepConfig, arms: Sequence[Arm], n_prompts: int) -> list[Row]:
    rows = []
    for arm in arms:
        for m in config.multipliers:
            for cond in config.conditions:
                for p in range(n_prompts):
                    for seed in config.seeds:
                        rid = f"{arm.vector}/{arm.arm}|{m:+g}|{cond}|p{p}|s{seed}"
                        rows.append(Row(rid, arm.vector, arm.arm, m, cond, p, seed))
    return rows


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"steerlab": steerlab.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def config_hash(config: SweepConfig) -> str:
    data = config.model_dump(mode="json", exclude={"out", "batch_size", "scorer"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Finished records; a torn last line (a kill mid-write) is dropped and cut from the file."""
    path = Path(run_dir) / RECORDS
    if not path.exists():
        return []
    raw = path.read_bytes()
    keep, records = 0, []
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        keep += len(line)
    if keep != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return records


def run_sweep(
    config: SweepConfig, backend: Backend, fingerprint: Fingerprint | None, progress: bool = True, chunk: int = 64
) -> Path:
    """Run (or resume) the sweep into ``config.out``; returns the run directory."""
    run_dir = Path(config.out)
    prompts = load_prompts(config.prompts)
    arms = load_arms(config, fingerprint)
    rows = expand(config, arms, len(prompts))
    header = {
        "kind": "steerlab-sweep",
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
        "model": fingerprint.to_dict() if fingerprint else None,
        "vector_files": {str(p): file_hash(Path(p)) for p in config.vectors},
        "prompts_hash": file_hash(config.prompts),
        "versions": _versions(),
        "n_rows": len(rows),
    }
    header_path = run_dir / HEADER
    if header_path.exists():
        old = json.loads(header_path.read_text())
        for key in ("config_hash", "model", "vector_files", "prompts_hash"):
            if old.get(key) != header[key]:
                raise ConfigError(
                    f"{run_dir} holds a sweep with another {key.replace('_', ' ')}; choose a new --out "
                    "or delete the directory"
                )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(header_path, json.dumps(header, indent=1, sort_keys=True) + "\n")

    done = {r["id"] for r in read_records(run_dir)}
    todo = [r for r in rows if r.id not in done]
    settings = _settings(config, arms)
    sampling = {
        s: Sampling(config.max_new_tokens, config.temperature, config.top_p, s, tuple(config.stop))
        for s in config.seeds
    }
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), unit="row", desc="sweep", disable=not progress)
    with open(run_dir / RECORDS, "a", encoding="utf-8") as fh:
        for lo in range(0, len(todo), chunk):
            part = todo[lo : lo + chunk]
            # one request per distinct generation: multiplier 0 is the same for every arm
            keys = [_generation_key(r) for r in part]
            unique = list(dict.fromkeys(keys))
            requests = []
            for key in unique:
                row = part[keys.index(key)]
                messages = _messages(prompts[row.prompt_index], config.conditions[row.condition])
                setting = None if row.multiplier == 0 else settings[(row.vector, row.arm, row.multiplier)]
                requests.append(Request(messages, sampling[row.seed], setting, id=key))
            started = time.perf_counter()
            results = dict(zip(unique, backend.generate(requests), strict=True))
            elapsed = time.perf_counter() - started
            for row, key in zip(part, keys, strict=True):
                res = results[key]
                record = {
                    **row.__dict__,
                    "prompt": prompts[row.prompt_index],
                    "system": config.conditions[row.condition],
                    "layers": list(settings[(row.vector, row.arm, row.multiplier)].steered_layers())
                    if row.multiplier
                    else [],
                    "scale": config.scale,
                    "text": res.text,
                    "finish_reason": res.finish_reason,
                    "n_new_tokens": res.n_new_tokens,
                    "seconds": round(elapsed / len(part), 4),
                }
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            bar.update(len(part))
    bar.close()
    return run_dir


def _generation_key(row: Row) -> str:
    steer = "none" if row.multiplier == 0 else f"{row.vector}/{row.arm}|{row.multiplier:+g}"
    return f"{steer}|{row.condition}|p{row.prompt_index}|s{row.seed}"


def _messages(prompt: Messages, system: str | None) -> Messages:
    user = [m for m in prompt if m["role"] != "system"]
    return ([{"role": "system", "content": system}] if system else []) + user


def _settings(config: SweepConfig, arms: Sequence[Arm]) -> dict[tuple[str, str, float], SteeringSetting]:
    from steerlab.generate import settings_for

    out = {}
    for arm in arms:
        for setting in settings_for(arm.bundle, config.multipliers, config.layers, config.scale, arm.control):
            out[(arm.vector, arm.arm, setting.multiplier)] = setting
    return out


# ----------------------------------------------------------------------------- scoring


def scorer(spec: str) -> Callable[[str, dict[str, Any]], float]:
    """A regex (score 1 if it matches the output, else 0) or ``module:function(text, record)``."""
    if re.fullmatch(r"[\w.]+:\w+", spec):
        module, name = spec.split(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"scorer {spec!r} cannot be imported ({exc})") from None
    try:
        pattern = re.compile(spec)
    except re.error as exc:
        raise ConfigError(f"scorer {spec!r} is neither module:function nor a valid regex ({exc})") from None
    return lambda text, _record: float(bool(pattern.search(text)))


def _mean_sem(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return mean, sem


def summarise(records: Sequence[dict[str, Any]], score: Callable[[str, dict[str, Any]], float]) -> list[dict[str, Any]]:
    """Per (vector, multiplier, condition): the real vector's score against its controls' envelope."""
    cells: dict[tuple[str, float, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        cells[(r["vector"], r["multiplier"], r["condition"])][r["arm"]].append(score(r["text"], r))
    out = []
    for (vector, mult, cond), arms in sorted(cells.items()):
        real_mean, real_sem = _mean_sem(arms["real"]) if arms.get("real") else (float("nan"), float("nan"))
        ctrl_means = [statistics.fmean(v) for a, v in sorted(arms.items()) if a != "real"]
        entry: dict[str, Any] = {
            "vector": vector, "multiplier": mult, "condition": cond,
            "real_mean": real_mean, "real_sem": real_sem, "n": len(arms.get("real", [])),
            "n_controls": len(ctrl_means),
        }  # fmt: skip
        if ctrl_means:
            c_mean = statistics.fmean(ctrl_means)
            c_sd = statistics.stdev(ctrl_means) if len(ctrl_means) > 1 else 0.0
            entry.update(
                control_min=min(ctrl_means), control_max=max(ctrl_means), control_mean=c_mean, control_sd=c_sd,
                control_lo=c_mean - 2 * c_sd, control_hi=c_mean + 2 * c_sd,
                z=(real_mean - c_mean) / c_sd if c_sd > 0 else None,
            )  # fmt: skip
        out.append(entry)
    return out


def write_summary(run_dir: Path, spec: str) -> tuple[Path, list[dict[str, Any]]]:
    records = read_records(run_dir)
    if not records:
        raise ConfigError(f"{run_dir} has no records to summarise")
    summary = summarise(records, scorer(spec))
    path = Path(run_dir) / SUMMARY
    atomic_write_text(path, json.dumps({"scorer": spec, "cells": summary}, indent=1) + "\n")
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
