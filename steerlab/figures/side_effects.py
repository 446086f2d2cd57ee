"""The side-effect figure of ``steerlab side-effects`` (issue 20, item 2), drawn from the ``figure`` block of
``side_effects.json`` (:mod:`steerlab.analysis.side_effects_report`); it computes nothing.

- The selectivity panel: one subplot per (steered concept, measured concept): the change of the measured concept's
  read-out (and, for a judged run, of its judge score) against the unsteered samples, per multiplier: the real
  vector with its 95% interval over requests, each random control as a grey point and the controls' min-max
  envelope as a grey band. The diagonal is "does A-steering move A"; off the diagonal, "does it move B".
- One row of divergence subplots per steered vector: the KL from unsteered and the perplexity ratio on the
  neutral texts, the real vector against its controls.
"""

from __future__ import annotations

import math
from typing import Any

from steerlab.plots import plt


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _envelope(ax: Any, mults: list[float], controls: list[list[Any]]) -> None:
    """Every control as a grey point, their min-max as a grey band."""
    lo, hi, xs = [], [], []
    for m, values in zip(mults, controls, strict=True):
        vals = _finite(values)
        ax.scatter([m] * len(vals), vals, s=12, color="grey", alpha=0.7, zorder=2)
        if vals:
            xs.append(m)
            lo.append(min(vals))
            hi.append(max(vals))
    if xs:
        ax.fill_between(xs, lo, hi, color="grey", alpha=0.2, lw=0, label="controls (min-max)", zorder=1)


def _real(ax: Any, mults: list[float], real: list[Any], low: list[Any] | None, high: list[Any] | None) -> None:
    pts = [(m, v, lo, hi) for m, v, lo, hi in zip(mults, real, low or real, high or real, strict=True)
           if v is not None and math.isfinite(float(v))]  # fmt: skip
    if not pts:
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    err = [[max(0.0, y - (lo if lo is not None and math.isfinite(lo) else y)) for _, y, lo, _ in pts],
           [max(0.0, (hi if hi is not None and math.isfinite(hi) else y) - y) for _, y, _, hi in pts]]  # fmt: skip
    ax.errorbar(xs, ys, yerr=err if low is not None else None, color="C0", marker="o", capsize=3, label="real vector",
                zorder=3)  # fmt: skip


def _panel_axes(fig: Any, grid: Any, panel: dict[str, Any], row0: int, what: str, xlabel: str) -> None:
    for i, steered in enumerate(panel["steered"]):
        for j, measured in enumerate(panel["measured"]):
            cell = panel["cells"][i][j]
            ax = fig.add_subplot(grid[row0 + i, j])
            _envelope(ax, cell["multipliers"], cell["controls"])
            _real(ax, cell["multipliers"], cell["real"], cell["ci_low"], cell["ci_high"])
            ax.axhline(0, color="black", lw=0.6)
            ax.set_title(f"steer {steered}\n{what} {measured}", fontsize=8)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(f"{what} change vs unsteered", fontsize=8)
            ax.tick_params(labelsize=7)
            if i == 0 and j == 0:
                ax.legend(fontsize=6)


def draw_side_effects(record: dict[str, Any]):
    """The figure (module docstring) from a side-effect record's ``figure`` block."""
    data = record["figure"]
    xlabel = "dose (signed KL)" if (record.get("settings") or {}).get("dose_file") else "multiplier"
    panels = [(p, what) for p, what in ((data["readout"], "read-out"), (data["judge"], "judge")) if p]
    n_cols = max([2, *(len(p["measured"]) for p, _ in panels)])
    n_rows = sum(len(p["steered"]) for p, _ in panels) + len(data["divergence"])
    fig = plt.figure(figsize=(3.2 * n_cols, 2.8 * n_rows))
    grid = fig.add_gridspec(n_rows, n_cols)
    row = 0
    for panel, what in panels:
        _panel_axes(fig, grid, panel, row, what, xlabel)
        row += len(panel["steered"])
    for vector, d in data["divergence"].items():
        for j, (key, label) in enumerate((("kl_mean", "mean KL from unsteered (nats)"),
                                          ("ppl_ratio", "perplexity ratio (steered / unsteered)"))):  # fmt: skip
            ax = fig.add_subplot(grid[row, j])
            _envelope(ax, d["multipliers"], d[f"{key}_controls"])
            _real(ax, d["multipliers"], d[key], None, None)
            ax.axhline(1.0 if key == "ppl_ratio" else 0.0, color="black", lw=0.6)
            ax.set_title(f"steer {vector}: neutral texts", fontsize=8)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
        row += 1
    fig.suptitle(f"side effects of {record['run_dir']} ({record['model_source']})", fontsize=9)
    fig.tight_layout()
    return fig
