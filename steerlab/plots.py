"""Every matplotlib figure of steerlab. Functions draw what they are handed and compute nothing."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from steerlab.fileio import atomic_path  # noqa: E402


def layer_diagnostics(
    layers: list[int],
    curves: dict[str, list[float]],
    norms: dict[str, list[float]],
    selected: list[int],
    control_band: tuple[list[float], list[float]] | None,
    title: str,
    path: Path,
    selectivity: dict[str, dict[str, list[float]]] | None = None,
) -> Path:
    """AUROC curves by layer (top), vector / residual norms by layer (middle) and, when given, one
    selectivity panel per other concept (cosine with its vector, cross-concept AUROCs), selected layers
    marked.

    ``control_band`` is (min, max) of the random controls' validation AUROC per layer.
    """
    selectivity = selectivity or {}
    rows = 2 + len(selectivity)
    fig, axes = plt.subplots(
        rows, 1, figsize=(8, 6 + 2.5 * len(selectivity)), sharex=True, height_ratios=[3, 2] + [2] * len(selectivity)
    )
    top, bottom = axes[0], axes[1]
    for ax, (other, curves_) in zip(axes[2:], selectivity.items(), strict=True):
        for label, values in curves_.items():
            ax.plot(layers, values, marker="o", markersize=3, label=label)
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_ylabel(f"vs {other}", fontsize=8)
        ax.legend(loc="best", fontsize=7, framealpha=0.6)
    for label, values in curves.items():
        top.plot(layers, values, marker="o", markersize=3, label=label)
    if control_band is not None:
        top.fill_between(layers, *control_band, color="grey", alpha=0.3, label="random controls (val, min-max)")
    top.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    top.set_ylabel("AUROC")
    low = min([0.3, *(control_band[0] if control_band else [])])
    top.set_ylim(low - 0.02, 1.02)
    top.legend(loc="lower right", fontsize=8)
    top.set_title(title, fontsize=10)
    for label, values in norms.items():
        bottom.plot(layers, values, marker="o", markersize=3, label=label)
    bottom.set_yscale("log")
    bottom.set_ylabel("norm")
    axes[-1].set_xlabel("layer")
    bottom.legend(loc="upper left", fontsize=8)
    for ax in axes:
        for layer in selected:
            ax.axvline(layer, color="tab:red", alpha=0.25, linewidth=3)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


def sweep(
    panels: dict[str, dict[str, dict[str, list[float]]]],
    score_label: str,
    path: Path,
    axis: str = "signed multiplier",
) -> Path:
    """One panel per condition: score vs signed multiplier (``axis``: its label; a dose run's is the signed dose),
    per vector the real vector as a line
    with s.e.m. error bars and its random controls as a shaded min-max band (dotted: mean +- 2 s.d.).

    ``panels[condition][vector]`` holds lists keyed multiplier, real_mean, real_sem, control_min,
    control_max, control_lo, control_hi (one entry per multiplier, in order).
    """
    conditions = list(panels)
    fig, axes = plt.subplots(1, len(conditions), figsize=(5 * len(conditions), 4), sharey=True, squeeze=False)
    for ax, condition in zip(axes[0], conditions, strict=True):
        for i, (vector, s) in enumerate(panels[condition].items()):
            color = f"C{i}"
            ax.errorbar(s["multiplier"], s["real_mean"], yerr=s["real_sem"], color=color, marker="o", capsize=3,
                        label=vector)  # fmt: skip
            ax.fill_between(s["multiplier"], s["control_min"], s["control_max"], color=color, alpha=0.15,
                            label=f"{vector}: random controls")  # fmt: skip
            ax.plot(s["multiplier"], s["control_lo"], color=color, linestyle=":", linewidth=1)
            ax.plot(s["multiplier"], s["control_hi"], color=color, linestyle=":", linewidth=1)
        ax.axvline(0, color="grey", linewidth=0.8)
        ax.set_title(condition)
        ax.set_xlabel(axis)
    axes[0][0].set_ylabel(score_label)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


CONDITION_COLORS = {"monitored": "tab:red", "unmonitored": "tab:blue", "raw": "tab:grey"}


def af_sweep(panels: dict[str, dict[str, dict[str, list[float]]]], concepts: dict[str, str], path: Path) -> Path:
    """The paper's steering figure, one column per vector.

    Top: acceptance (compliance) vs signed multiplier for each condition, the real vector with
    Wilson 95% error bars and its random controls' min-max band shaded in the condition's colour.
    Bottom: the judge's mean score per concept vs multiplier (solid: monitored, dashed: others).

    ``panels[vector][condition]`` holds lists keyed multiplier, value, ci_low, ci_high,
    control_min, control_max and ``judge_<concept>_mean``; ``concepts`` maps concept key -> label.
    """
    vectors = list(panels)
    fig, axes = plt.subplots(2, len(vectors), figsize=(5 * len(vectors), 7), sharex="col", squeeze=False)
    for col, vector in enumerate(vectors):
        top, bottom = axes[0][col], axes[1][col]
        for condition, s in panels[vector].items():
            if condition == "gap":
                continue
            color = CONDITION_COLORS.get(condition, "black")
            x = s["multiplier"]
            err = [[v - lo for v, lo in zip(s["value"], s["ci_low"], strict=True)],
                   [hi - v for v, hi in zip(s["value"], s["ci_high"], strict=True)]]  # fmt: skip
            top.errorbar(x, s["value"], yerr=err, color=color, marker="o", capsize=3, label=condition)
            top.fill_between(x, s["control_min"], s["control_max"], color=color, alpha=0.15,
                             label=f"{condition}: random controls")  # fmt: skip
            style = "-" if condition == "monitored" else "--"
            for j, (key, label) in enumerate(concepts.items()):
                values = s.get(f"judge_{key}_mean")
                if values:
                    bottom.plot(x, values, color=f"C{j + 2}", linestyle=style, marker="o", markersize=3,
                                label=f"{label} ({condition})")  # fmt: skip
        top.set_title(vector)
        top.set_ylim(-0.03, 1.03)
        top.set_ylabel("acceptance")
        bottom.set_ylabel("judge score (mean)")
        bottom.set_xlabel("signed multiplier")
        for ax in (top, bottom):
            ax.axvline(0, color="grey", linewidth=0.8)
        top.legend(fontsize=7)
        if bottom.get_legend_handles_labels()[0]:
            bottom.legend(fontsize=7)
        else:
            bottom.text(0.5, 0.5, "no judge scores (run steerlab judge RUN_DIR)", ha="center", va="center",
                        transform=bottom.transAxes, color="grey")  # fmt: skip
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


def save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


METHOD_MARKERS = {"prompt": "o", "steering": "s", "sdf": "^"}
FAMILY_COLORS = {"A": "C0", "B": "C3", "none": "grey"}


def error_bars(cells: list[dict], key: str) -> list[list[float]]:
    """Matplotlib's ``yerr`` ``[below, above]`` of ``cells``, each holding ``key`` and its ``ci_low``/``ci_high``."""
    return [[c[key] - c["ci_low"] for c in cells], [c["ci_high"] - c[key] for c in cells]]


def profiles(points: list[dict], lines: list[dict]):
    """The comparison figure: A_net (x) against B_net (y), one marker per model and method.

    ``points``: dicts with label, model, method, A, A_lo, A_hi, B, B_lo, B_hi (95% intervals
    drawn as bars) and optionally ``known`` (a calibration checkpoint's family: sets the colour);
    ``lines``: dicts with x and y pairs joining a model's prompt and SDF profiles. The diagonal
    A_net = B_net is drawn: below it a model is expectation-sensitive, above it consequence-sensitive.
    """
    fig, ax = plt.subplots(figsize=(6.5, 6))
    models = list(dict.fromkeys(p["model"] for p in points))
    for line in lines:
        ax.plot(line["x"], line["y"], color="grey", linewidth=1, zorder=1, gid=f"join:{line['model']}")
    for p in points:
        color = FAMILY_COLORS[p["known"]] if p.get("known") else f"C{models.index(p['model']) % 10}"
        ax.errorbar(
            [p["A"]], [p["B"]], xerr=[[p["A"] - p["A_lo"]], [p["A_hi"] - p["A"]]],
            yerr=[[p["B"] - p["B_lo"]], [p["B_hi"] - p["B"]]], fmt=METHOD_MARKERS.get(p["method"], "D"),
            color=color, capsize=3, markersize=7, label=p["label"] + (f" [{p['known']}]" if p.get("known") else ""),
            zorder=2,
        )  # fmt: skip
    values = [v for p in points for v in (p["A_lo"], p["A_hi"], p["B_lo"], p["B_hi"]) if v == v] or [0.0]
    lo, hi = min(*values, 0.0) - 0.05, max(*values, 0.0) + 0.05
    ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=0.8, gid="diagonal")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("A_net (researcher-expectation interventions)")
    ax.set_ylabel("B_net (retraining-consequence interventions)")
    ax.text(0.97, 0.03, "expectation-sensitive", transform=ax.transAxes, ha="right", color="grey", fontsize=8)
    ax.text(0.03, 0.97, "consequence-sensitive", transform=ax.transAxes, va="top", color="grey", fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def intervention_gaps(panels: list[dict]):
    """The sensitivity profile: the gap under each intervention, amplify (+) beside suppress (-),
    with 95% intervals and the baseline gap as a horizontal line; one panel per model and method.

    Each panel: label, items, plus_value/plus_ci_low/plus_ci_high, minus_* likewise, baseline.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.5, 1.1 * len(panels[0]["items"]) + 2) * len(panels), 4),
                             squeeze=False)  # fmt: skip
    width = 0.38
    for ax, panel in zip(axes[0], panels, strict=True):
        x = list(range(len(panel["items"])))
        for offset, side, color, name in ((-width / 2, "plus", "C1", "amplify (+)"),
                                          (width / 2, "minus", "C2", "suppress (-)")):  # fmt: skip
            v = panel[f"{side}_value"]
            err = [[a - lo for a, lo in zip(v, panel[f"{side}_ci_low"], strict=True)],
                   [hi - a for a, hi in zip(v, panel[f"{side}_ci_high"], strict=True)]]  # fmt: skip
            ax.bar([i + offset for i in x], v, width, yerr=err, color=color, capsize=3, label=name, gid=side)
        if panel["baseline"] is not None:
            ax.axhline(panel["baseline"], color="black", linestyle="--", linewidth=1, label="baseline", gid="baseline")
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_xticks(x, panel["items"])
        ax.set_title(panel["label"], fontsize=9)
        ax.set_ylabel("gap (monitored - unmonitored)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def histogram(values: list[float], xlabel: str, title: str, bins: int = 30):
    """A plain histogram (the SDF corpus report's document lengths)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=bins, color="C0")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
