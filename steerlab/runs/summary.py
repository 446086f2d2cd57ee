"""Run summaries: plain runs scored by a user scorer, labelled runs through harness.summary.

The plain scenario scores every sample with a user scorer (a regex or a ``module:function``,
:func:`scorer`) and reports, per (vector, multiplier, condition), the real vector's mean score
against the envelope of its random controls (min-max, and mean +- 2 s.d. across controls) with
the real effect's z-score relative to the controls (:func:`summarise`, :func:`write_summary`).
The alignment-faking scenario's labels go through :mod:`steerlab.harness.summary`, a prompt
intervention's through :mod:`steerlab.prompts` (:func:`write_label_summary`).

In a dose run (``doses:``) the ``multiplier`` of every sample, and so of every cell, is the signed dose in KL
units, so a cell holds the real vector and its controls each at its own calibrated multiplier for that dose;
the cell records those multipliers (``real_steering_multiplier``, ``control_steering_multipliers``).
"""

from __future__ import annotations

import importlib
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from steerlab import prompts
from steerlab.errors import ConfigError
from steerlab.fileio import atomic_write_text
from steerlab.harness.records import SAMPLES, SUMMARY, check_unique, read_header, read_samples
from steerlab.runs.rows import NONE


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
    applied: dict[tuple[str, float, str], dict[str, set[float]]] = defaultdict(lambda: defaultdict(set))
    gated: set[tuple[str, float, str]] = set()  # cells the experimenter's gate (steer_only) left unsteered
    for r in records:
        if r.get("gated"):
            gated.add((r["vector"], r["multiplier"], r["condition"]))
        if "dose_kl" in r:  # a dose run: the multiplier each arm was steered by at this dose
            applied[(r["vector"], r["multiplier"], r["condition"])][r["arm"]].add(r["steering_multiplier"])
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
        if (vector, mult, cond) in gated:  # real and controls unsteered here by the run's design, not the vector
            entry["gated"] = "steer_only"
        if (vector, mult, cond) in applied:
            per_arm = {a: min(m) for a, m in sorted(applied[vector, mult, cond].items())}  # one per arm and dose
            entry.update(dose_kl=mult, real_steering_multiplier=per_arm.get("real"),
                         control_steering_multipliers=[v for a, v in per_arm.items() if a != "real"])  # fmt: skip
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
    header = read_header(run_dir)
    seed = min(header["seeds"])
    summary = summarise(records, scorer(spec), seed=seed)
    path = Path(run_dir) / SUMMARY
    body = {"scorer": spec, "statistics": stats.describe(seed), "cells": summary}
    if header.get("dose_file"):  # the cells' multipliers are signed doses (KL units)
        body["dose_file"] = header["dose_file"]
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
    dosed = any("dose_kl" in cell for cell in summary)  # a dose run: the x axis is the signed dose
    axis = "signed dose (KL, nats)" if dosed else "signed multiplier"
    return plots.sweep(panels, scorer_name, Path(run_dir) / "sweep.png", axis)


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
