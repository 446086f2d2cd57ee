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
) -> Path:
    """AUROC curves by layer (top) and vector / residual norms by layer (bottom), selected layers marked.

    ``control_band`` is (min, max) of the random controls' validation AUROC per layer.
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 2])
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
    bottom.set_xlabel("layer")
    bottom.legend(loc="upper left", fontsize=8)
    for ax in (top, bottom):
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
) -> Path:
    """One panel per condition: score vs signed multiplier, per vector the real vector as a line
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
        ax.set_xlabel("signed multiplier")
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
