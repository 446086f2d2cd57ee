"""``steerlab calibrate-dose VECTOR... --target-kl 0.5 --texts FILE``: matched doses (issue 20, item 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from steerlab.cli.app import app, out
from steerlab.cli.options import Device, DType


@app.command("calibrate-dose")
def calibrate_dose(
    vectors: list[Path] = typer.Argument(..., help="Vector files (.safetensors); each one's random controls too."),
    target_kl: list[float] = typer.Option(
        ..., "--target-kl", help="Target KL(unsteered || steered) in nats; repeat for doses at several targets."
    ),
    texts: Path = typer.Option(
        ..., help="Neutral texts, paragraphs separated by blank lines (steerlab ships configs/texts/neutral.txt)."
    ),
    statistic: str = typer.Option("mean", help="mean or p95 of the per-token KL over all tokens of all texts."),
    model: str = typer.Option("smollm2", help="Hub id, local directory, .gguf file, or smollm2."),
    out_file: Path | None = typer.Option(None, "--out", help="Write the doses to this JSON file."),
    max_multiplier: float = typer.Option(64.0, help="Largest |multiplier| tried while bracketing by doubling."),
    start: float = typer.Option(1.0, help="First |multiplier| tried."),
    rtol: float = typer.Option(0.05, help="Stop when the KL is within this fraction of the target."),
    max_iter: int = typer.Option(30, help="Most evaluations per vector and sign."),
    controls: int | None = typer.Option(None, help="Calibrate only each file's first N controls (default all)."),
    max_tokens: int = typer.Option(64, help="Tokens per text (longer texts are cut)."),
    batch_size: int = typer.Option(32, help="Rows (setting x text) per forward batch."),
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """Find, for each vector and each of its random controls, the multiplier of each sign whose steering
    reaches --target-kl from the unsteered model on a neutral text set (bisection, one pass per step).
    The --out file is what `sweep --dose-file` and `eval --dose-file` read (multipliers in KL units)."""
    from steerlab.analysis.doses import run_calibration

    doses, record = run_calibration(
        vectors, texts, target_kl, statistic=statistic, model=model, out=out_file, max_multiplier=max_multiplier,
        start=start, rtol=rtol, max_iter=max_iter, n_controls=controls, max_tokens=max_tokens, batch_size=batch_size,
        device=device, dtype=dtype,
    )  # fmt: skip
    out.print(dose_table(record))
    if out_file is not None:
        out.print(f"wrote {out_file}")


def dose_table(record: dict[str, Any]) -> Table:
    """The doses of a calibration record (what ``--out`` writes) as a table."""
    t = record["texts"]
    targets = record.get("targets") or [record["target_kl"]]  # format 1 wrote one target_kl
    title = (
        f"doses at {record['statistic']} KL = {', '.join(f'{x:g}' for x in targets)} on {t['file']} "
        f"({t['n_texts']} texts, {t['n_tokens']} tokens), {record['model_source']}"
    )
    table = Table(title=escape(title))
    table.add_column("vector", no_wrap=True)
    several = len(targets) > 1
    for column in ("target KL",) * several + ("control", "sign", "multiplier", "KL mean", "KL p95", "iterations"):
        table.add_column(column, justify="right", no_wrap=True)
    for d in record["doses"]:
        control = "-" if d["control"] is None else str(d["control"])
        iterations = f"{d['iterations']}" + ("" if d["converged"] else " (not converged)")
        multiplier, kl_mean, kl_p95 = f"{d['multiplier']:+.4g}", f"{d['kl_mean']:.4f}", f"{d['kl_p95']:.4f}"
        target = (f"{d.get('target_kl', targets[0]):g}",) * several
        table.add_row(escape(d["vector"]), *target, control, d["sign"], multiplier, kl_mean, kl_p95, iterations)
    return table
