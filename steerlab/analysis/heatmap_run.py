"""``steerlab heatmap`` as a function: check every input, load the run's model, compute the per-token values
(:mod:`steerlab.analysis.heatmap`), then write them and draw them (:mod:`steerlab.analysis.heatmap_draw`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerlab.analysis.heatmap import (
    Heatmaps,
    check_out,
    compute,
    parse_layer_choice,
    select_samples,
    vector_rows,
    write_h5,
)
from steerlab.analysis.heatmap_draw import write_html, write_pngs
from steerlab.errors import ConfigError
from steerlab.models import Fingerprint
from steerlab.vectors import VectorBundle


def run_heatmap(
    run_dir: Path,
    vector_files: Sequence[Path],
    out: Path,
    *,
    n_controls: int = 0,
    sample_ids: Sequence[str] | None = None,
    per_condition: int | None = None,
    layers: str = "top5",
    projection: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    device_map: Any = None,
    batch_size: int = 4,
    progress: bool = True,
) -> Heatmaps:
    """The command: check everything, load the run's model, compute, then write ``heatmap.h5``, a PNG
    per sample and ``heatmap.html`` under ``out``. Bad input is refused before anything is written."""
    from steerlab.harness.records import read_header, read_samples
    from steerlab.models import load_model

    run_dir, out = Path(run_dir), Path(out)
    check_out(out, overwrite)
    if not vector_files:
        raise ConfigError("give at least one --vector FILE")
    if n_controls < 0:
        raise ConfigError(f"--controls {n_controls}: give 0 or more")
    if batch_size < 1:  # here, before the model loads
        raise ConfigError(f"--batch-size {batch_size}: give at least 1")
    header = read_header(run_dir)
    if not isinstance(header.get("model"), dict):
        raise ConfigError(f"{run_dir} records no model fingerprint (an API model?); heatmaps need a local model")
    expect = Fingerprint.from_dict(header["model"])
    samples = read_samples(run_dir)
    if not samples:
        raise ConfigError(f"{run_dir} holds no finished samples")
    chosen = select_samples(samples, sample_ids, per_condition)
    choice = parse_layer_choice(layers, expect.n_layers)
    bundles = [(Path(p), VectorBundle.load(Path(p), expect=expect)) for p in vector_files]
    vector_rows(bundles, n_controls, choice)  # refuses --controls / --layers before the model loads
    config = header.get("config") or {}
    loaded = load_model(config.get("model"), device=device, dtype=dtype, device_map=device_map, lora=config.get("lora"))
    diff = expect.differences(loaded.fingerprint)
    if diff:
        raise ConfigError(f"the model loaded from {config.get('model')!r} is not the run's (fingerprint differs in "
                          f"{', '.join(diff)})")  # fmt: skip
    maps = compute(loaded, run_dir, header, chosen, bundles, n_controls, choice, projection, batch_size, progress)
    out.mkdir(parents=True, exist_ok=True)
    write_h5(out / "heatmap.h5", maps)
    kept = set(write_pngs(out, maps))
    for stale in out.glob("[0-9][0-9][0-9][0-9]_*.png"):  # an earlier --overwrite run's PNGs of other samples
        if stale not in kept:
            stale.unlink()
    write_html(out / "heatmap.html", maps)
    return maps
