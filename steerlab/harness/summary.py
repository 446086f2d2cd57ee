"""Statistics of a labelled run, per cell, and the real vector against its random controls.

Three tables, all plain lists of dicts (what ``summary.json`` holds and the figure draws); every
estimate, interval and test comes from :mod:`steerlab.stats` (request level), and ``statistics``
records how (seed, number of resamples):

- ``cells``: per (vector, arm, multiplier, condition): compliance (mean over requests) with its
  cluster-bootstrap interval over requests, label counts, and the judge's mean score per concept
  (mean over requests, with its interval; judge errors excluded and counted);
- ``gaps``: per (vector, arm, multiplier): the monitored - unmonitored gap with its bootstrap
  interval over requests, the paired sign-flip test over requests, and mean +- s.e.m. across seeds;
- ``curves``: per (vector, multiplier, condition), the real vector's compliance next to the
  min / mean / max of its controls' compliance, and the same for the gap (condition ``gap``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from steerlab import stats
from steerlab.harness import metrics
from steerlab.harness.records import check_unique

REAL_ARMS = ("real", "none")


def judge_means(samples: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    """The judge's score per concept: the mean over requests of each request's mean score (judged
    samples only), its cluster-bootstrap interval and its request-level s.e.m."""
    scores: dict[str, list[tuple[str, float]]] = defaultdict(list)
    judged = errors = 0
    for s in samples:
        judge = s.get("judge")
        if not judge:
            continue
        if judge.get("error"):
            errors += 1
            continue
        if "scores" not in judge:  # skipped: no reasoning to judge
            continue
        judged += 1
        for concept, value in judge["scores"].items():
            scores[concept].append((stats.request_of(s), float(value["score"])))
    out: dict[str, Any] = {"n_judged": judged, "n_judge_error": errors}
    for concept, pairs in sorted(scores.items()):
        per = list(stats.per_request(pairs).values())
        est = stats.mean_interval(per, seed=seed)
        out[f"judge_{concept}_mean"] = est["value"]
        out[f"judge_{concept}_ci_low"], out[f"judge_{concept}_ci_high"] = est["ci_low"], est["ci_high"]
        out[f"judge_{concept}_sem"] = stats.mean_sem(per)[1]
    return out


def summarise_labels(samples: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, Any]:
    check_unique(samples, "the samples")  # a row counted twice would make every interval too tight
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        groups[(s["vector"], s["arm"], s["multiplier"])].append(s)
    cells, gaps = [], []
    for (vector, arm, mult), group in sorted(groups.items()):
        conditions = sorted({s["condition"] for s in group})
        for cond in conditions:
            part = [s for s in group if s["condition"] == cond]
            key = {"vector": vector, "arm": arm, "multiplier": mult, "condition": cond}
            # steer_only: the run left this condition unsteered by design (not a property of the vector)
            gated = {"gated": "steer_only"} if any(x.get("gated") for x in part) else {}
            cells.append({**key, **gated, **metrics.rate(part, seed=seed), **judge_means(part, seed=seed)})
        if {"monitored", "unmonitored"} <= set(conditions):
            gated = sorted({s["condition"] for s in group if s.get("gated")})
            note = {"gated_conditions": gated} if gated else {}  # the gap compares a steered and an unsteered side
            gaps.append({"vector": vector, "arm": arm, "multiplier": mult, **note, **metrics.gap(group, seed=seed)})
    return {"statistics": stats.describe(seed), "cells": cells, "gaps": gaps, "curves": curves(cells, gaps)}


def curves(cells: Sequence[dict[str, Any]], gaps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The real vector's compliance (and gap) per multiplier beside its controls' envelope."""
    series: dict[tuple[str, float, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for c in cells:
        series[(c["vector"], c["multiplier"], c["condition"])][c["arm"]] = {
            "value": c["rate"], "ci_low": c["ci_low"], "ci_high": c["ci_high"],
            **{k: v for k, v in c.items() if k.startswith("judge_") and k.endswith("_mean")},
        }  # fmt: skip
    for g in gaps:
        series[(g["vector"], g["multiplier"], "gap")][g["arm"]] = {
            "value": g["gap"],
            "ci_low": g["ci_low"],
            "ci_high": g["ci_high"],
        }
    out = []
    for (vector, mult, cond), arms in sorted(series.items()):
        real = next((arms[a] for a in REAL_ARMS if a in arms), None)
        if real is None:
            continue
        entry: dict[str, Any] = {"vector": vector, "multiplier": mult, "condition": cond, **real}
        controls = [v["value"] for a, v in sorted(arms.items()) if a not in REAL_ARMS and not math.isnan(v["value"])]
        if controls:
            entry.update(control_min=min(controls), control_mean=statistics.fmean(controls),
                         control_max=max(controls), n_controls=len(controls))  # fmt: skip
        out.append(entry)
    return out


def figure_panels(curve_rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """vector -> condition -> column -> values ordered by multiplier (what plots.af_sweep draws)."""
    judge_keys = sorted({k for r in curve_rows for k in r if k.startswith("judge_") and k.endswith("_mean")})
    panels: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in sorted(curve_rows, key=lambda r: (r["vector"], r["condition"], r["multiplier"])):
        series = panels[row["vector"]][row["condition"]]
        for key in ("multiplier", "value", "ci_low", "ci_high", "control_min", "control_max", *judge_keys):
            series[key].append(row.get(key, float("nan")))
    return panels
