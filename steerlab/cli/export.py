"""``steerlab export inspect RUN_DIR --out LOG``: a run as an inspect_ai evaluation log (issue 21)."""

from __future__ import annotations

from pathlib import Path

import typer

from steerlab.cli.app import app, out

export_app = typer.Typer(no_args_is_help=True, help="Runs in other tools' formats: inspect_ai evaluation logs.")
app.add_typer(export_app, name="export")


@export_app.command("inspect")
def inspect_log(
    run_dir: Path = typer.Argument(..., help="A run directory (steerlab eval / sweep / prompt-eval) with samples."),
    log: Path = typer.Option(..., "--out", help="The log to write: LOG.eval (inspect's default format) or LOG.json."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out (never a file inside RUN_DIR)."),
    scorer: str | None = typer.Option(
        None,
        "--scorer",
        help="Score every sample's text with this regex (1 if it matches, else 0) or module:function(text, sample) "
        "-> float, in place of the scorer the run names. A run's own files may name only a regex or a "
        "steerlab.scorers function; any other module:function is code, run only when named here.",
    ),
) -> None:
    """Write a run as an inspect_ai evaluation log (one sample per steerlab sample, the label and the judge's
    scores as scores) for `inspect view` and inspect's rescoring. Needs the inspect extra (the inspect_ai
    package)."""
    from steerlab.report.inspect_export import export_inspect

    done = export_inspect(run_dir, log, overwrite=overwrite, scorer=scorer)
    metrics = ", ".join(f"{name} {value:.4g}" for name, value in done.metrics.items())
    cells = f"{done.n_cells} cell" + ("s" if done.n_cells != 1 else "")
    pooled = f"; pooled over all {cells} (arms, multipliers, conditions together): {metrics}"
    out.print(f"wrote {done.path}: {done.n_samples} samples" + (pooled if metrics else ""), markup=False)
    if metrics:
        out.print("per-cell values: the log's grouped metrics (one per cell, named vector/arm|multiplier|condition)",
                  markup=False)  # fmt: skip
    if not done.listed:
        out.print("note: inspect lists a .json log in a folder (inspect view, list_eval_logs) only under a name that "
                  "starts with a time, e.g. 2026-01-31T12-00-00_run.json; it reads this one when given its path",
                  markup=False)  # fmt: skip
