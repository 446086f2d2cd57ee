"""Compliance figures: screening (paper Fig. 2), random controls (Fig. 10) and the raw condition (Fig. 14).

Every rate is :func:`steerlab.harness.metrics.rate` (the mean over requests of each request's
compliant share, with its 95% cluster-bootstrap interval over requests) and every gap
:func:`steerlab.harness.metrics.gap` (paired over requests): the numbers a run's summary holds.
``*_data`` functions turn runs into plain dicts; ``draw_*`` functions draw them and compute nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from steerlab.errors import ConfigError
from steerlab.figures.runs import (
    AF_CONDITIONS,
    Run,
    WrongRunsError,
    checked_gap,
    one_model,
    require_kind,
    require_same,
    setting,
    tagged,
    unsteered,
)
from steerlab.harness import metrics
from steerlab.plots import CONDITION_COLORS, error_bars, plt

ORDER = ("monitored", "unmonitored", "raw")
CI_KEYS = ("rate", "ci_low", "ci_high", "n_requests", "n")


def _rate(samples: Sequence[dict[str, Any]], seed: int) -> dict[str, Any]:
    r = metrics.rate(samples, seed=seed)
    return {k: r[k] for k in CI_KEYS}


# ----------------------------------------------------------------------------- screening (Fig. 2)


def _variant(st: dict[str, Any]) -> list[str]:
    """What sets a bar apart beyond the model: its document directness and its provider renames."""
    renames = ", ".join(f"{a}→{b}" for a, b in sorted(st["rename"].items()))
    return [st["directness"] or "", renames]


def screening_data(runs: Sequence[Run], seed: int = 0) -> dict[str, Any]:
    """Per model (runs pooled by fingerprint and what was evaluated): monitored and unmonitored
    compliance of its unsteered samples with intervals, each seed's rate, and the gap."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in runs:  # one bar per model and what was evaluated, under one naming and directness
        st = setting(r)
        subject = r.subject + "".join(f" ({part})" for part in _variant(st) if part)
        groups[(subject, r.model_id)].append(r)
    names = [s for s, _ in groups]
    models = []
    for (subject, model_id), group in groups.items():
        require_same(group, "screening")  # a bar's runs differ only in seed
        samples = [s for r in group for s in unsteered(r)]
        gap = checked_gap(group, samples, seed, "has no unsteered samples under both monitored and unmonitored; "
                          "the screening figure needs alignment-faking runs with both conditions")  # fmt: skip
        label = subject if names.count(subject) == 1 else f"{subject} [{model_id[-8:]}]"
        entry: dict[str, Any] = {"model": label, "model_id": model_id, "runs": [str(r.run_dir) for r in group]}
        for cond in AF_CONDITIONS:
            part = [s for s in samples if s["condition"] == cond]
            seeds = sorted({s.get("seed", 0) for s in part})
            per_seed = {
                str(v): metrics.rate([s for s in part if s.get("seed", 0) == v], n_resamples=0)["rate"] for v in seeds
            }
            entry[cond] = {**_rate(part, seed), "seeds": per_seed}
        entry["gap"] = gap
        models.append(entry)
    return {
        "figure": "screening",
        "statistic": "compliance: mean over requests, 95% cluster bootstrap over requests",
        "models": models,
    }


def draw_screening(data: dict[str, Any]):
    """Bars: monitored and unmonitored compliance per model with 95% intervals; dots: each seed's
    rate; the gap (monitored - unmonitored, with its interval) written above each model."""
    models = data["models"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(models) + 1.5), 4.2))
    width = 0.38
    for k, cond in enumerate(AF_CONDITIONS):
        xs = [i + (k - 0.5) * width for i in range(len(models))]
        v = [m[cond]["rate"] for m in models]
        err = error_bars([m[cond] for m in models], "rate")
        ax.bar(xs, v, width, yerr=err, capsize=3, color=CONDITION_COLORS[cond], alpha=0.75, label=cond, gid=cond)
        sx = [x for x, m in zip(xs, models, strict=True) for _ in m[cond]["seeds"]]
        sy = [r for m in models for r in m[cond]["seeds"].values()]
        ax.scatter(sx, sy, color="black", s=12, zorder=3, gid=f"seeds:{cond}")
    for i, m in enumerate(models):
        g = m["gap"]
        top = max(
            [m[c]["ci_high"] for c in AF_CONDITIONS if m[c]["ci_high"] == m[c]["ci_high"]]
            or [m[c]["rate"] for c in AF_CONDITIONS]
        )
        ax.text(
            i,
            min(1.0, top) + 0.04,
            f"gap {g['gap']:+.2f}\n[{g['ci_low']:+.2f}, {g['ci_high']:+.2f}]",
            ha="center",
            va="bottom",
            fontsize=8,
            gid=f"gap:{m['model']}",
        )
    ax.set_xticks(range(len(models)), [m["model"] for m in models], fontsize=8)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("compliance (95% CI over requests)")
    ax.set_title("Alignment-faking screening: monitored vs unmonitored", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- controls (Fig. 10)


def _steered(runs: Sequence[Run], figure: str) -> tuple[str, list[dict[str, Any]]]:
    require_kind(runs, ("steering",), figure, "steered sweep runs (steerlab sweep with vectors)")
    model, _ = one_model(runs, figure)
    require_same(runs, figure)
    return model, tagged(runs)


def controls_data(runs: Sequence[Run], seed: int = 0) -> dict[str, Any]:
    """Per vector and condition: at each non-zero multiplier the real vector's compliance (with its
    interval) and every random control's; the unsteered rate (multiplier 0) as the baseline."""
    model, samples = _steered(runs, "controls")
    if not any(s["arm"].startswith("control") for s in samples):
        raise WrongRunsError("the runs have no random controls; sweep with --controls N (N >= 1)")
    cells: dict[tuple[str, str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        cells[(s["vector"], s["condition"], s["arm"], s["multiplier"])].append(s)
    panels = []
    for vector in sorted({s["vector"] for s in samples}):
        present = {k[1] for k in cells if k[0] == vector}
        for cond in sorted(present, key=lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c)):
            mults = sorted({k[3] for k in cells if k[0] == vector and k[1] == cond and k[3] != 0})
            arms = sorted({k[2] for k in cells if k[0] == vector and k[1] == cond and k[2].startswith("control")})
            real = [_rate(cells[(vector, cond, "real", m)], seed) for m in mults]
            controls = {
                a: [
                    metrics.rate(cells[(vector, cond, a, m)], n_resamples=0)["rate"]
                    if cells.get((vector, cond, a, m))
                    else None
                    for m in mults
                ]
                for a in arms
            }
            base = cells.get((vector, cond, "real", 0.0))
            panels.append(
                {
                    "vector": vector,
                    "condition": cond,
                    "multipliers": mults,
                    "real": real,
                    "controls": controls,
                    "baseline": _rate(base, seed) if base else None,
                }
            )
    return {
        "figure": "controls",
        "model": model,
        "statistic": "compliance: mean over requests, 95% cluster "
        "bootstrap over requests (real vector and baseline); controls: point estimates",
        "panels": panels,
    }


def draw_controls(data: dict[str, Any]):
    """One panel per vector and condition: grey dots, every random control at each multiplier;
    coloured bars, the real vector beside them (95% intervals); dashed line, the unsteered rate."""
    panels = data["panels"]
    vectors = list(dict.fromkeys(p["vector"] for p in panels))
    conds = list(dict.fromkeys(p["condition"] for p in panels))
    fig, axes = plt.subplots(len(vectors), len(conds), figsize=(4.5 * len(conds), 3.6 * len(vectors)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for p in panels:
        ax = axes[vectors.index(p["vector"])][conds.index(p["condition"])]
        ax.set_visible(True)
        mults = p["multipliers"]
        step = min([b - a for a, b in zip(mults, mults[1:], strict=False)] or [1.0])
        off = 0.12 * step
        for arm, values in p["controls"].items():
            pts = [(m - off, v) for m, v in zip(mults, values, strict=True) if v is not None]
            ax.scatter(
                [x for x, _ in pts],
                [y for _, y in pts],
                color="grey",
                s=14,
                alpha=0.7,
                gid=f"control:{arm}",
                label="random controls" if arm == next(iter(p["controls"])) else None,
            )
        v = [r["rate"] for r in p["real"]]
        ax.errorbar(
            [m + off for m in mults],
            v,
            yerr=error_bars(p["real"], "rate"),
            fmt="o",
            capsize=3,
            color=CONDITION_COLORS.get(p["condition"], "black"),
            label=f"{p['vector']} (real)",
        )
        if p["baseline"]:
            b = p["baseline"]
            ax.axhline(b["rate"], color="black", linestyle="--", linewidth=1, label="unsteered", gid="baseline")
            ax.axhspan(b["ci_low"], b["ci_high"], color="black", alpha=0.06, gid="baseline_ci")
        ax.set_title(f"{p['vector']} · {p['condition']}", fontsize=9)
        ax.set_xticks(mults)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("multiplier")
        ax.set_ylabel("compliance")
        ax.legend(fontsize=7)
    fig.suptitle(f"{data['model']}: real vectors against random controls", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- raw condition (Fig. 14)


def raw_data(runs: Sequence[Run], seed: int = 0) -> dict[str, Any]:
    """Compliance in the raw condition (no system prompt) per vector and non-zero multiplier, the
    real vector's, against the unsteered floor (multiplier 0)."""
    model, samples = _steered(runs, "raw")
    raw = [s for s in samples if s["condition"] == "raw" and s["arm"] == "real"]
    if not raw:
        raise WrongRunsError("the runs have no raw-condition samples; sweep with the raw condition among --conditions")
    floor_rows = [s for s in raw if s["multiplier"] == 0]
    if not floor_rows:
        raise ConfigError("the runs have no unsteered raw samples (multiplier 0); the raw figure needs the floor")
    # multiplier 0 is the same generation for every vector: the floor is the first vector's rows
    first = min(s["vector"] for s in floor_rows)
    vectors = []
    for vector in sorted({s["vector"] for s in raw}):
        mults = sorted({s["multiplier"] for s in raw if s["vector"] == vector and s["multiplier"] != 0})
        cells = [_rate([s for s in raw if s["vector"] == vector and s["multiplier"] == m], seed) for m in mults]
        vectors.append({"vector": vector, "multipliers": mults, "cells": cells})
    return {
        "figure": "raw",
        "model": model,
        "condition": "raw",
        "floor": _rate([s for s in floor_rows if s["vector"] == first], seed),
        "vectors": vectors,
    }


def draw_raw(data: dict[str, Any]):
    """Raw-condition compliance against the multiplier, one line per vector (95% intervals), and
    the unsteered floor as a dashed line with its interval shaded."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, v in enumerate(data["vectors"]):
        y = [c["rate"] for c in v["cells"]]
        ax.errorbar(
            v["multipliers"],
            y,
            yerr=error_bars(v["cells"], "rate"),
            marker="o",
            capsize=3,
            color=f"C{i}",
            label=v["vector"],
        )
    f = data["floor"]
    ax.axhline(f["rate"], color="black", linestyle="--", linewidth=1, label="unsteered floor", gid="floor")
    ax.axhspan(f["ci_low"], f["ci_high"], color="black", alpha=0.08, gid="floor_ci")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("multiplier")
    ax.set_ylabel("compliance, raw (no system prompt)")
    ax.set_title(f"{data['model']}: raw condition", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
