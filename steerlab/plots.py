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
