"""``steerlab heatmap RUN_DIR --vector FILE``: per-token activation cosines with steering vectors (issue 18)."""

from __future__ import annotations

from pathlib import Path

import typer

from steerlab.cli.app import app, out
from steerlab.cli.options import Device, DeviceMap, DType, parse_device_map


@app.command("heatmap")
def heatmap(
    run_dir: Path = typer.Argument(..., help="A run directory (steerlab eval / sweep) with finished samples."),
    vector: list[Path] = typer.Option(..., "--vector", help="A vector file (repeatable)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for heatmap.h5, one PNG per sample, heatmap.html."),
    controls: int = typer.Option(0, help="Also show each vector's first N random controls."),
    samples: str | None = typer.Option(None, help="Samples by row id or item, comma-separated."),
    per_condition: int | None = typer.Option(None, help="The first K samples of each condition (default 1)."),
    layers: str = typer.Option(
        "top5", help="topK: each vector's K best layers by validation diagnostic; or a list like 3,5,10-12."
    ),
    projection: bool = typer.Option(False, "--projection", help="Dot product with the unit vector, not cosine."),
    overwrite: bool = typer.Option(False, help="Write into a non-empty --out."),
    batch_size: int = typer.Option(4, help="Samples per forward pass."),
    device: Device = "auto",
    dtype: DType = "auto",
    device_map: DeviceMap = None,
) -> None:
    """Colour every token of chosen samples by its residual activation's cosine with steering vectors
    (averaged over each vector's layers), beside its random controls."""
    from steerlab.analysis.heatmap_run import run_heatmap

    ids = [s.strip() for s in samples.split(",") if s.strip()] if samples is not None else None
    maps = run_heatmap(
        run_dir, vector, out_dir, n_controls=controls, sample_ids=ids, per_condition=per_condition, layers=layers,
        projection=projection, overwrite=overwrite, device=device, dtype=dtype,
        device_map=parse_device_map(device_map), batch_size=batch_size,
    )  # fmt: skip
    out.print(f"wrote {out_dir}/heatmap.h5, heatmap.html and {len(maps.samples)} PNG(s): {len(maps.rows)} rows "
              f"({maps.mode}), layers {maps.layers}")  # fmt: skip
