"""Intervention figures: claim strength (paper Fig. 9), SDF interventions (Figs. 3 and 8), SDF document
directness (Fig. 6) and provider naming (Fig. 7).

A_net and B_net come from :func:`steerlab.profiles.build_profiles` (what ``steerlab profile``
reports); every gap is :func:`steerlab.harness.metrics.gap` (the mean over requests of the
per-request monitored - unmonitored difference, 95% cluster bootstrap over requests, paired
sign-flip test): the number a run's summary holds. ``*_data`` returns plain dicts; ``draw_*`` draws them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from steerlab.figures.runs import (
    Run,
    WrongRunsError,
    checked_gap,
    one_model,
    require_kind,
    require_same,
    unsteered,
)
from steerlab.plots import FAMILY_COLORS, error_bars, plt
from steerlab.profiles import build_profiles, read_source

STRENGTHS = ("weak", "standard", "strong")
BASELINE = "baseline"
UNSPECIFIED = "unspecified"


def _gap(runs: Sequence[Run], samples: Sequence[dict[str, Any]], seed: int, figure: str) -> dict[str, Any]:
    missing = f"lacks monitored or unmonitored samples; the {figure} figure draws gaps"
    return {**checked_gap(runs, samples, seed, missing), "runs": [str(r.run_dir) for r in runs]}


def _model_panels(models: Sequence[dict[str, Any]], n_groups: Sequence[int], per_group: float, least: float):
    """(figure, axes) with one panel per model, each as wide as its most groups need."""
    width = max(least, per_group * max(n_groups) + 2)
    fig, axes = plt.subplots(1, len(models), figsize=(width * len(models), 4), squeeze=False)
    return fig, axes[0]


# ----------------------------------------------------------------------------- claim strength (Fig. 9)


def strength_data(runs: Sequence[Run], seed: int = 0) -> dict[str, Any]:
    """A_net and B_net (with their intervals) and every claim's gap at each claim strength of one model."""
    require_kind(runs, ("prompt",), "strength", "prompt-eval runs (steerlab prompt-eval)")
    model, _ = one_model(runs, "strength")
    require_same(runs, "strength")
    profiles = build_profiles([read_source(r.run_dir) for r in runs], seed=seed)
    order = {s: i for i, s in enumerate(STRENGTHS)}
    rows = []
    for p in sorted(profiles, key=lambda p: (order.get(p.variant, len(order)), p.variant)):
        nets = {k: {x: p.net[k][x] for x in ("value", "ci_low", "ci_high")} for k in ("A_net", "B_net")}
        gaps = {
            k[4:]: {x: v[x] for x in ("value", "ci_low", "ci_high")} for k, v in p.net.items() if k.startswith("gap:")
        }
        rows.append({"strength": p.variant, **nets, "gaps": gaps, "n_requests": p.net["n_requests"], "runs": p.runs})
    return {"figure": "strength", "model": model, "strengths": rows}


def draw_strength(data: dict[str, Any]):
    """A_net and B_net at each claim strength, 95% intervals."""
    rows = data["strengths"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = list(range(len(rows)))
    for off, key, color in ((-0.08, "A_net", FAMILY_COLORS["A"]), (0.08, "B_net", FAMILY_COLORS["B"])):
        v = [r[key]["value"] for r in rows]
        err = error_bars([r[key] for r in rows], "value")
        ax.errorbar([i + off for i in x], v, yerr=err, marker="o", capsize=3, color=color, label=key)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xticks(x, [r["strength"] for r in rows])
    ax.set_xlabel("claim strength")
    ax.set_ylabel("net score (95% CI over requests)")
    ax.set_title(f"{data['model']}: net scores by claim strength", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- SDF interventions (Figs. 3, 8)


def _sdf_groups(runs: Sequence[Run], figure: str) -> dict[str, dict[tuple[str, Any], list[Run]]]:
    """profile model -> (claim id or baseline, directness) -> runs."""
    require_kind(runs, ("sdf",), figure, "SDF evaluation runs (sdf eval: a header intervention)")
    # The checkpoints differ in their adapter (the intervention); directness is checked by each figure (the organism
    # beneath may record none).
    require_same(runs, figure, ignore=("lora", "directness"))
    out: dict[str, dict[tuple[str, Any], list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        claim = r.intervention.get("claim")
        out[r.model][(claim["id"] if claim else BASELINE, r.intervention.get("directness"))].append(r)
    return out


def _claim_meta(runs: Sequence[Run]) -> dict[str, str]:
    claim = runs[0].intervention.get("claim")
    return {"family": claim["family"], "side": claim["side"]} if claim else {"family": "none", "side": ""}


def sdf_data(runs: Sequence[Run], seed: int = 0) -> dict[str, Any]:
    """Per model: the gap of each SDF checkpoint (runs of one claim pooled) and of the organism."""
    models = []
    for model, groups in _sdf_groups(runs, "sdf").items():
        levels = sorted({str(d) for (cid, d) in groups if cid != BASELINE})
        if len(levels) > 1:  # one bar per claim would average checkpoints trained on different documents
            raise WrongRunsError(
                f"the checkpoints of {model!r} were trained on documents of {len(levels)} directness levels "
                f"({', '.join(levels)}); draw them with `steerlab figure directness`, or one level at a time"
            )
        by_claim: dict[str, list[Run]] = defaultdict(list)
        for (cid, _), group in groups.items():
            by_claim[cid] += group
        gap = {cid: _gap(g, [s for r in g for s in r.samples], seed, "sdf") for cid, g in by_claim.items()}
        items = [
            {"claim": cid, **_claim_meta(by_claim[cid]), **gap[cid]} for cid in sorted(by_claim) if cid != BASELINE
        ]
        if not items:
            raise WrongRunsError(f"the SDF runs of {model!r} are all of the organism; give its checkpoints' runs too")
        models.append({"model": model, "baseline": gap.get(BASELINE), "interventions": items})
    return {
        "figure": "sdf",
        "statistic": "gap = monitored - unmonitored compliance, mean over requests, 95% "
        "cluster bootstrap over requests",
        "models": models,
    }


def draw_sdf(data: dict[str, Any]):
    """One panel per model: the gap of each SDF intervention (bars coloured by family, 95% intervals)
    against the organism's gap (dashed line, its interval shaded)."""
    models = data["models"]
    fig, axes = _model_panels(models, [len(m["interventions"]) for m in models], 0.7, 4.5)
    for ax, m in zip(axes, models, strict=True):
        items = m["interventions"]
        for fam in sorted({i["family"] for i in items}):
            rows = [(k, i) for k, i in enumerate(items) if i["family"] == fam]
            ax.bar(
                [k for k, _ in rows],
                [i["gap"] for _, i in rows],
                0.7,
                yerr=error_bars([i for _, i in rows], "gap"),
                capsize=3,
                color=FAMILY_COLORS.get(fam, "grey"),
                label=f"family {fam}",
                gid=f"family:{fam}",
            )
        if m["baseline"]:
            b = m["baseline"]
            ax.axhline(
                b["gap"], color="black", linestyle="--", linewidth=1, label="organism (baseline)", gid="baseline"
            )
            ax.axhspan(b["ci_low"], b["ci_high"], color="black", alpha=0.06, gid="baseline_ci")
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xticks(range(len(items)), [i["claim"] for i in items])
        ax.set_ylabel("gap (monitored - unmonitored)")
        ax.set_title(f"{m['model']}: SDF interventions", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- directness (Fig. 6)


def directness_data(runs: Sequence[Run], seed: int = 0) -> dict[str, Any]:
    """Per model and intervention (organism included): the gap at each document directness
    (``intervention.directness``; runs that record none are ``unspecified``)."""
    groups = _sdf_groups(runs, "directness")
    if all(d is None for g in groups.values() for _, d in g):
        raise WrongRunsError("no run records a document directness (header intervention.directness)")
    models = []
    for model, g in groups.items():
        levels = sorted({d or UNSPECIFIED for _, d in g})
        claims = sorted({c for c, _ in g}, key=lambda c: (c != BASELINE, c))
        rows = []
        for cid in claims:
            gaps = {
                (d or UNSPECIFIED): _gap(rs, [s for r in rs for s in r.samples], seed, "directness")
                for (c, d), rs in g.items()
                if c == cid
            }
            meta = _claim_meta(next(rs for (c, _), rs in g.items() if c == cid))
            rows.append({"claim": cid, **meta, "gaps": {lv: gaps.get(lv) for lv in levels}})
        models.append({"model": model, "levels": levels, "rows": rows})
    return {"figure": "directness", "models": models}


def draw_directness(data: dict[str, Any]):
    """One panel per model: per intervention, one bar per document directness (95% intervals)."""
    models = data["models"]
    fig, axes = _model_panels(models, [len(m["rows"]) for m in models], 1.0, 5.0)
    for ax, m in zip(axes, models, strict=True):
        width = 0.8 / len(m["levels"])
        for j, level in enumerate(m["levels"]):
            pts = [(k, r["gaps"][level]) for k, r in enumerate(m["rows"]) if r["gaps"][level]]
            ax.bar(
                [k + (j - (len(m["levels"]) - 1) / 2) * width for k, _ in pts],
                [g["gap"] for _, g in pts],
                width,
                yerr=error_bars([g for _, g in pts], "gap"),
                capsize=3,
                color=f"C{j}",
                label=level,
                gid=f"directness:{level}",
            )
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xticks(range(len(m["rows"])), [r["claim"] for r in m["rows"]])
        ax.set_ylabel("gap (monitored - unmonitored)")
        ax.set_title(f"{m['model']}: gap by SDF document directness", fontsize=10)
        ax.legend(fontsize=7, title="directness", title_fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- provider naming (Fig. 7)


def naming_of(run: Run) -> str:
    rename = (run.header.get("config") or {}).get("rename") or {}
    return ", ".join(f"{old}→{new}" for old, new in sorted(rename.items())) or "original"


def naming_data(runs: Sequence[Run], seed: int = 0) -> dict[str, Any]:
    """Per model (and SDF checkpoint): the gap of its unsteered samples under the original
    provider naming and under each replacement (``config.rename``)."""
    namings = {naming_of(r) for r in runs}
    if namings == {"original"}:
        raise WrongRunsError("no run replaces a provider name (config.rename); give runs made with --rename OLD=NEW")
    if "original" not in namings:
        raise WrongRunsError("no run keeps the original naming; give the runs without --rename to compare against")
    require_same(runs, "naming", ignore=("rename",))  # the runs differ only in the renames (and seeds)
    groups: dict[tuple[str, str], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        groups[(r.subject, r.model_id)][naming_of(r)].append(r)
    order = ["original", *sorted(namings - {"original"})]
    subjects = []
    for (subject, _), by in groups.items():
        gaps = {n: _gap(rs, [s for r in rs for s in unsteered(r)], seed, "naming") for n, rs in by.items()}
        subjects.append({"subject": subject, "gaps": {n: gaps.get(n) for n in order}})
    return {"figure": "naming", "namings": order, "subjects": subjects}


def draw_naming(data: dict[str, Any]):
    """Per model, the gap under the original naming beside each replaced naming (95% intervals)."""
    subjects, namings = data["subjects"], data["namings"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(subjects) + 2), 4))
    width = 0.8 / len(namings)
    for j, name in enumerate(namings):
        pts = [(k, s["gaps"][name]) for k, s in enumerate(subjects) if s["gaps"][name]]
        ax.bar(
            [k + (j - (len(namings) - 1) / 2) * width for k, _ in pts],
            [g["gap"] for _, g in pts],
            width,
            yerr=error_bars([g for _, g in pts], "gap"),
            capsize=3,
            color="grey" if j == 0 else f"C{j}",
            label=name,
            gid=f"naming:{name}",
        )
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xticks(range(len(subjects)), [s["subject"] for s in subjects], fontsize=8)
    ax.set_ylabel("gap (monitored - unmonitored)")
    ax.set_title("Gap with the original vs a replaced provider name", fontsize=10)
    ax.legend(fontsize=7, title="naming", title_fontsize=7)
    fig.tight_layout()
    return fig
