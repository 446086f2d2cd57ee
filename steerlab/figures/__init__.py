"""The paper's figures from run records: ``steerlab figure KIND RUN_DIR... --out DIR``.

One module per figure family: :mod:`~steerlab.figures.compliance` (screening, controls, raw) and
:mod:`~steerlab.figures.interventions` (strength, sdf, directness, naming). Each kind has a
``*_data`` function (runs -> plain dict of the numbers to plot, the same request-level statistics
the run summaries report) and a ``draw_*`` function (that dict -> a matplotlib figure, computing
nothing). :func:`make` reads, checks and prepares everything before it writes ``KIND.png`` and
``KIND.json``; :func:`make_all` draws every kind the runs support and says why it skipped the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from steerlab.errors import ConfigError, SteerlabError
from steerlab.figures import compliance, interventions
from steerlab.figures.runs import Run, load_runs, write_figure

KINDS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[[dict[str, Any]], Any]]] = {
    "screening": (compliance.screening_data, compliance.draw_screening),
    "controls": (compliance.controls_data, compliance.draw_controls),
    "raw": (compliance.raw_data, compliance.draw_raw),
    "strength": (interventions.strength_data, interventions.draw_strength),
    "sdf": (interventions.sdf_data, interventions.draw_sdf),
    "directness": (interventions.directness_data, interventions.draw_directness),
    "naming": (interventions.naming_data, interventions.draw_naming),
}

# The run kinds (Run.kind) a figure reads; absent: any run.
RUN_KINDS = {"controls": ("steering",), "raw": ("steering",), "strength": ("prompt",), "sdf": ("sdf",),
             "directness": ("sdf",)}  # fmt: skip


def prepare(kind: str, runs: Sequence[Run], seed: int = 0) -> dict[str, Any]:
    if kind not in KINDS:
        raise ConfigError(f"no figure kind {kind!r}; choose one of {', '.join(KINDS)} or all")
    return KINDS[kind][0](runs, seed=seed)


def make(kind: str, run_dirs: Sequence[Path], out_dir: Path, seed: int = 0) -> list[Path]:
    """Read the runs, prepare the figure's numbers (every refusal happens here), then write
    ``out_dir/KIND.png`` and ``out_dir/KIND.json``."""
    data = prepare(kind, load_runs(run_dirs), seed=seed)
    return write_figure(KINDS[kind][1](data), data, Path(out_dir), kind)


def make_all(run_dirs: Sequence[Path], out_dir: Path, seed: int = 0) -> tuple[list[Path], dict[str, str]]:
    """Every figure the runs support: (files written, kind -> why it was skipped). Refuses, writing
    nothing, when the runs support none."""
    runs = load_runs(run_dirs)
    ready, skipped = {}, {}
    for kind in KINDS:
        # Each kind draws from the runs of the kind it reads (a steered sweep's controls beside a prompt-eval run).
        usable = [r for r in runs if RUN_KINDS.get(kind) is None or r.kind in RUN_KINDS[kind]]
        if not usable:
            skipped[kind] = f"no {' or '.join(RUN_KINDS[kind])} run among the {len(runs)} given"
            continue
        try:
            ready[kind] = prepare(kind, usable, seed=seed)
        except SteerlabError as exc:
            skipped[kind] = str(exc)
    if not ready:
        raise ConfigError("the runs support no figure: " + "; ".join(f"{k}: {why}" for k, why in skipped.items()))
    written = []
    for kind, data in ready.items():
        written += write_figure(KINDS[kind][1](data), data, Path(out_dir), kind)
    return written, skipped
