"""The ``steerlab`` command line: parse, call one library function, print.

Errors a user can cause (:class:`~steerlab.errors.SteerlabError`) print one line and exit 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from steerlab.errors import ConfigError, SteerlabError
from steerlab.loci import Locus

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Activation steering: contrastive pairs -> activation cache -> steering vectors -> experiments.",
)
pairs_app = typer.Typer(no_args_is_help=True, help="Contrastive pair sets: validate and clean.")
cache_app = typer.Typer(no_args_is_help=True, help="Activation caches: inspect.")
model_app = typer.Typer(no_args_is_help=True, help="Models: inspect what steerlab sees.")
app.add_typer(pairs_app, name="pairs")
app.add_typer(cache_app, name="cache")
app.add_typer(model_app, name="model")

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def parse_layers(spec: str | None) -> list[int] | None:
    """``"3,5,10-12"`` -> ``[3, 5, 10, 11, 12]``; ``None`` -> every layer."""
    if spec is None:
        return None
    layers: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                layers.extend(range(lo, hi + 1))
            elif part:
                layers.append(int(part))
    except ValueError:
        raise ConfigError(f"--layers {spec!r} is not a list like 3,5,10-12") from None
    return layers


# ----------------------------------------------------------------------------- pairs


@pairs_app.command("validate")
def pairs_validate(
    file: Path = typer.Argument(..., help="Pair set (JSONL)."),
    config: Path | None = typer.Option(
        None, help="Validation config (YAML). Default: validate.yaml beside FILE if present, else built-in defaults."
    ),
    drop_invalid: Path | None = typer.Option(
        None, "--drop-invalid", help="Write the valid pairs to this new file and exit 0."
    ),
    show: int = typer.Option(20, help="How many rejected pairs to list."),
) -> None:
    """Apply every filter to a pair set; exit 2 if any pair fails (unless --drop-invalid)."""
    from steerlab.pairs import load_pairs, load_validation_config, validate, write_pairs

    if config is None and (file.parent / "validate.yaml").is_file():
        config = file.parent / "validate.yaml"
    if drop_invalid is not None:
        if drop_invalid.resolve() == file.resolve():
            raise ConfigError("--drop-invalid must name a new file, not the pair file itself")
        if drop_invalid.exists():
            raise ConfigError(f"{drop_invalid} already exists; name a new file for --drop-invalid")
    cfg = load_validation_config(config)
    pairs = load_pairs(file)
    report = validate(pairs, cfg)

    table = Table(title=f"{file}  (config: {config or 'built-in defaults'})")
    for col in ("concept", "split", "pairs", "valid", "rejected"):
        table.add_column(col, justify="left" if col in ("concept", "split") else "right")
    for (concept, split), (total, good) in report.counts().items():
        table.add_row(concept, split, str(total), str(good), str(total - good))
    out.print(table)
    if report.problems:
        checks = ", ".join(f"{k}: {v}" for k, v in report.failures_by_check().most_common())
        out.print(f"rejected by check: {checks}")
        for pair in report.invalid[:show]:
            for problem in report.problems[pair.id]:
                out.print(f"  {pair.id}: [{problem.check}] {problem.message}", markup=False)
        if len(report.invalid) > show:
            out.print(f"  ... and {len(report.invalid) - show} more (use --show)")
    if drop_invalid is not None:
        if not report.valid:
            raise ConfigError(f"no pair in {file} passes validation; nothing to write")
        write_pairs(report.valid, drop_invalid)
        out.print(f"wrote {len(report.valid)} valid pairs to {drop_invalid}")
        return
    if report.problems:
        err.print(
            f"steerlab: error: {len(report.problems)} of {len(pairs)} pairs fail validation; fix them, "
            "or pass --drop-invalid NEW_FILE to keep the valid ones"
        )
        raise typer.Exit(2)
    out.print(f"all {len(pairs)} pairs pass")


# ----------------------------------------------------------------------------- extract


@app.command()
def extract(
    pairs: Path = typer.Option(..., help="Pair set (JSONL)."),
    out_path: Path = typer.Option(..., "--out", help="Activation cache to write (HDF5)."),
    model: str = typer.Option("smollm2", help="Hub id, local directory, .gguf file, or smollm2 (embedded)."),
    locus: Locus = typer.Option(Locus.scratchpad_mean, help="Token positions to pool over."),
    layers: str | None = typer.Option(None, help="Layers to cache, e.g. 3,5,10-12 (default: all)."),
    cache_dtype: str = typer.Option("float32", help="float32 or float16."),
    batch_size: int = typer.Option(8, help="Pairs per forward batch (2 sequences each)."),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, float16, bfloat16."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu, cuda, cuda:1, ..."),
    device_map: str | None = typer.Option(None, help="'auto' to spread a large model over all GPUs."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub."),
    resume: bool = typer.Option(False, help="Continue an interrupted run (or reuse a finished matching cache)."),
    overwrite: bool = typer.Option(
        False, help="Replace an existing cache (the old one stays until the new one is done)."
    ),
) -> None:
    """Run a model over both sides of every pair and cache pooled residual activations."""
    from steerlab.cache import ActivationCache
    from steerlab.extract import extract as run_extract
    from steerlab.extract import preflight
    from steerlab.fileio import file_hash
    from steerlab.models import load_model
    from steerlab.pairs import load_pairs

    layer_list = parse_layers(layers)
    pair_list = load_pairs(pairs)
    preflight(out_path, resume=resume, overwrite=overwrite)
    started = time.perf_counter()
    loaded = load_model(model, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code)
    try:
        path = run_extract(
            loaded,
            pair_list,
            out_path,
            locus=locus,
            dtype=cache_dtype,
            layers=layer_list,
            batch_size=batch_size,
            resume=resume,
            overwrite=overwrite,
            pair_file=pairs,
            pair_file_hash=file_hash(pairs),
        )
    except KeyboardInterrupt:
        err.print(f"interrupted; rerun the same command with --resume to continue {out_path}")
        raise typer.Exit(130) from None
    cache = ActivationCache.open(path)
    out.print(
        f"cache {path}: {len(cache.pair_ids)} pairs x 2 sides x {len(cache.layers)} layers x "
        f"{cache.meta['d_model']} ({cache.meta['dtype']}), locus {cache.meta['locus']}, "
        f"{time.perf_counter() - started:.1f}s"
    )


# ----------------------------------------------------------------------------- inspect


@cache_app.command("inspect")
def cache_inspect(file: Path = typer.Argument(..., help="Activation cache (HDF5).")) -> None:
    """Print a cache's metadata header and split counts."""
    from steerlab.cache import ActivationCache

    cache = ActivationCache.open(file)
    out.print_json(json.dumps(cache.meta, sort_keys=True))


@model_app.command("info")
def model_info(
    model: str = typer.Argument("smollm2", help="Hub id, local directory, .gguf file, or smollm2."),
    device: str = typer.Option("cpu", help="Device to load on."),
) -> None:
    """Load a model and print its fingerprint, block count and chat-template hash."""
    from steerlab.models import chat_template_hash, load_model

    loaded = load_model(model, device=device)
    info = {
        "source": loaded.source,
        "class": type(loaded.model).__name__,
        "fingerprint": loaded.fingerprint.to_dict(),
        "chat_template_hash": chat_template_hash(loaded.chat_template),
    }
    out.print_json(json.dumps(info))


def main(argv: list[str] | None = None) -> None:
    """Entry point: a SteerlabError prints one line on stderr and exits with status 2.

    Usage errors (unknown option, missing argument) are typer's own and also exit 2.
    """
    try:
        app(args=argv, prog_name="steerlab")
    except SteerlabError as exc:
        err.print(f"steerlab: error: {exc}", markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
