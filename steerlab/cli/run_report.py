"""``steerlab report RUN_DIR [--out FILE.html]``: one self-contained HTML report of a run;
``steerlab report --compare RUN_A RUN_B``: the same requests of two runs side by side (issue 21)."""

from __future__ import annotations

from pathlib import Path

import typer

from steerlab.cli.app import app, out


@app.command("report")
def report(
    run_dir: Path | None = typer.Argument(None, help="A run directory (steerlab eval / sweep / prompt-eval)."),
    out_file: Path | None = typer.Option(
        None, "--out", help="The HTML file to write (default: RUN_DIR-report.html beside the run, never inside it)."
    ),
    heatmap: Path | None = typer.Option(
        None,
        "--heatmap",
        help="A steerlab heatmap --out folder to colour tokens by (default: a sibling folder "
        "whose heatmap.h5 was computed for this run, if any).",
    ),  # fmt: skip
    compare: tuple[Path, Path] | None = typer.Option(
        None, "--compare", help="Two run directories: the same requests side by side (instead of RUN_DIR)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Write one self-contained HTML file (works offline, from a file:// URL): the run's header, summary
    tables with intervals, figures, and every sample with filters, search and permalinks."""
    from steerlab.report.html import write_report

    path = write_report(run_dir, out_file, heatmap=heatmap, compare=list(compare) if compare else None,
                        overwrite=overwrite)  # fmt: skip
    out.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB); open it in a browser: {path.resolve().as_uri()}")
