"""The direction commands: ``extract``, ``fit``, ``vectors inspect``, ``vectors score``,
``cache inspect`` and ``model info``.

Thin: parse, call the library (:mod:`steerlab.extract`, :mod:`steerlab.directions`,
:mod:`steerlab.scoring`), print.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from steerlab.cli.app import app, cache_app, err, model_app, out, vectors_app
from steerlab.cli.common import parse_layers
from steerlab.cli.options import (
    CandidateLayers,
    Controls,
    ControlSeed,
    DeviceIndexed,
    DType,
    Folds,
    FoldSeed,
    InverseL2,
    Method,
    OrthogonalizeAgainst,
    RankBy,
    Remote,
    ReplaceVectors,
    Select,
    SelectLayers,
    TopK,
    TrustRemoteCode,
    VectorName,
    VectorsDir,
)
from steerlab.cli.report import print_diagnostics, print_score, print_selectivity
from steerlab.errors import ConfigError
from steerlab.loci import Locus


@app.command()
def extract(
    pairs: Path = typer.Option(..., help="Pair set (JSONL)."),
    out_path: Path = typer.Option(..., "--cache", "--out", help="Activation cache to write or reuse (HDF5)."),
    model: str = typer.Option("smollm2", help="Hub id, local directory, .gguf file, or smollm2 (embedded)."),
    locus: Locus = typer.Option(Locus.scratchpad_mean, help="Token positions to pool over."),
    layers: str | None = typer.Option(None, help="Layers to cache, e.g. 3,5,10-12 (default: all)."),
    cache_dtype: str = typer.Option("float32", help="float32 or float16."),
    batch_size: int = typer.Option(8, help="Pairs per forward batch (2 sequences each)."),
    dtype: DType = "auto",
    device: DeviceIndexed = "auto",
    device_map: str | None = typer.Option(None, help="'auto' to spread a large model over all GPUs."),
    trust_remote_code: TrustRemoteCode = False,
    engine: str = typer.Option(
        "hf", help="hf (steerlab's hooks) or nnsight (an nnsight trace, pooled inside it; on NDIF with --remote)."
    ),
    remote: Remote = False,
    resume: bool = typer.Option(False, help="Continue an interrupted run."),
    overwrite: bool = typer.Option(False, help="Replace an existing cache (the old one stays until the new is done)."),
    fit: bool = typer.Option(
        True, help="After caching, fit vectors with diagnostics and controls (--no-fit: cache only)."
    ),
    vectors_dir: VectorsDir = Path("vectors"),
    name: VectorName = None,
    method: Method = "logistic",
    c: InverseL2 = 1.0,
    folds: Folds = 5,
    seed: FoldSeed = 0,
    select: Select = "top-k",
    k: TopK = 3,
    select_layers: SelectLayers = None,
    rank_by: RankBy = "cv_dprime",
    candidate_layers: CandidateLayers = "middle",
    orthogonalize_against: OrthogonalizeAgainst = None,
    controls: Controls = 5,
    control_seed: ControlSeed = 1000,
    overwrite_vectors: ReplaceVectors = False,
) -> None:
    """Cache pooled residual activations for a pair set, then fit vectors with diagnostics and controls.

    A finished cache that matches the run is reused; an interrupted one continues with --resume.
    """
    from steerlab.cache import ActivationCache
    from steerlab.extract import extract as run_extract
    from steerlab.extract import preflight
    from steerlab.fileio import file_hash
    from steerlab.models import load_model
    from steerlab.pairs import load_pairs

    if engine not in ("hf", "nnsight"):
        raise ConfigError(f"--engine {engine!r}: use hf or nnsight")
    if remote:
        from steerlab.nnsight_model import api_key, check_remote_options

        if engine != "nnsight":
            raise ConfigError("--remote runs the nnsight engine on NDIF; add --engine nnsight")
        check_remote_options(device_map=device_map, dtype=dtype, device=device)
        api_key()
    layer_list = parse_layers(layers)
    settings = _fit_settings(
        method=method, c=c, folds=folds, seed=seed, select=select, k=k, select_layers=select_layers,
        rank_by=rank_by, candidate_layers=candidate_layers, orthogonalize_against=orthogonalize_against,
        controls=controls, control_seed=control_seed, device=device,
    )  # fmt: skip
    pair_list = load_pairs(pairs)
    pair_hash = file_hash(pairs)
    expect = {"locus": locus.value, "dtype": cache_dtype, "pair_file_hash": pair_hash}
    if layer_list is not None:
        expect["layers"] = sorted(layer_list)
    preflight(out_path, resume=resume, overwrite=overwrite, expect=expect)
    started = time.perf_counter()
    nn = None
    if engine == "nnsight":
        from steerlab.nnsight_model import open_model

        nn = open_model(model, remote=remote, dtype=dtype, device=device, device_map=device_map,
                        trust_remote_code=trust_remote_code)  # fmt: skip
        loaded = nn.loaded
    else:
        loaded = load_model(
            model, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code
        )
    if fit:  # what the fit after caching would refuse, before the caching
        cached = sorted(layer_list) if layer_list is not None else list(range(loaded.n_layers))
        concepts = sorted({p.concept for p in pair_list})
        settings.preflight(loaded.n_layers, cached, loaded.fingerprint.to_dict(), concepts)
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
            pair_file_hash=pair_hash,
            nnsight=nn,
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
    if fit:
        del loaded, nn
        for concept in sorted(set(cache.concepts)):
            _fit_and_report(path, settings, vectors_dir, name, concept, overwrite_vectors)


def _fit_settings(select_layers: str | None, **settings):
    from steerlab.directions import FitSettings

    return FitSettings(select_layers=parse_layers(select_layers, option="--select-layers"), **settings).check()


def _fit_and_report(cache_path, settings, vectors_dir, name, concept, overwrite) -> None:
    from steerlab.cache import ActivationCache
    from steerlab.directions import fit_cache, model_tag, resolve_concept

    cache = ActivationCache.open(cache_path)
    concept = resolve_concept(cache, concept)
    target = Path(vectors_dir) / concept / f"{name or model_tag(cache.meta['model_source'])}.safetensors"
    bundle, path = fit_cache(cache_path, settings, target, concept=concept, overwrite=overwrite)
    print_diagnostics(bundle.meta)
    print_selectivity(bundle.meta, bundle.meta["selectivity"])
    if "orthogonalized_against" in bundle.meta:
        against = bundle.meta["orthogonalized_against"]
        out.print(f"fitted orthogonal to {against['concept']} ({against['file']}, sha256 {against['file_hash']})")
    out.print(f"wrote {path} (+ .diagnostics.json, .diagnostics.png)")


@app.command("fit")
def fit_command(
    cache: Path = typer.Option(..., help="Activation cache (HDF5) written by steerlab extract."),
    vectors_dir: VectorsDir = Path("vectors"),
    name: VectorName = None,
    concept: str | None = typer.Option(None, help="Concept to fit when the cache holds several."),
    method: Method = "logistic",
    c: InverseL2 = 1.0,
    folds: Folds = 5,
    seed: FoldSeed = 0,
    select: Select = "top-k",
    k: TopK = 3,
    select_layers: SelectLayers = None,
    rank_by: RankBy = "cv_dprime",
    candidate_layers: CandidateLayers = "middle",
    orthogonalize_against: OrthogonalizeAgainst = None,
    controls: Controls = 5,
    control_seed: ControlSeed = 1000,
    device: str = typer.Option("auto", help="Where to fit: auto (cuda if available), cpu, cuda."),
    overwrite: ReplaceVectors = False,
) -> None:
    """Fit one direction per layer from a cache, with CV diagnostics, layer selection and random controls."""
    settings = _fit_settings(
        method=method, c=c, folds=folds, seed=seed, select=select, k=k, select_layers=select_layers,
        rank_by=rank_by, candidate_layers=candidate_layers, orthogonalize_against=orthogonalize_against,
        controls=controls, control_seed=control_seed, device=device,
    )  # fmt: skip
    _fit_and_report(cache, settings, vectors_dir, name, concept, overwrite)


@cache_app.command("inspect")
def cache_inspect(file: Path = typer.Argument(..., help="Activation cache (HDF5).")) -> None:
    """Print a cache's metadata header and split counts."""
    from steerlab.cache import ActivationCache

    cache = ActivationCache.open(file)
    out.print_json(json.dumps(cache.meta, sort_keys=True))


@vectors_app.command("inspect")
def vectors_inspect(
    file: Path = typer.Argument(..., help="Vector file (.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole metadata header as JSON."),
) -> None:
    """Print a vector file's metadata and per-layer diagnostics."""
    from steerlab.vectors import VectorBundle, finite_json

    bundle = VectorBundle.load(file)
    meta = bundle.meta
    if as_json:  # standard JSON: a NaN or infinite diagnostic is null
        typer.echo(json.dumps(finite_json(meta), sort_keys=True, indent=2, allow_nan=False))
        return
    for key in ("concept", "method", "C", "locus", "model_source", "pair_file", "pair_file_hash", "steerlab_version"):
        out.print(f"{key}: {meta.get(key)}")
    fp = meta["model"]
    out.print(f"model: {fp['architecture']}, {fp['n_layers']} layers x {fp['d_model']} (config {fp['config_hash']})")
    out.print(f"controls: {meta['controls']['n']} (seeds {meta['controls']['seeds']})")
    if "orthogonalized_against" in meta:
        out.print(f"orthogonalized against: {meta['orthogonalized_against']}")
    print_diagnostics(meta)
    from steerlab.selectivity import selectivity

    # computed now, against the sibling files as they are (the header holds those present at fit time)
    print_selectivity(meta, selectivity(file, meta, bundle.vector.directions), full=True)


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


@vectors_app.command("score")
def score(
    vector: Path = typer.Argument(..., help="Vector file (.safetensors) to score."),
    pairs: Path = typer.Option(..., help="Pair set (JSONL) to score it on; every concept and split in it is scored."),
    cache: Path | None = typer.Option(
        None,
        help="Activation cache of the pairs to write or reuse (HDF5). Default: "
        "runs/score/<pairs stem>.<pairs hash>.<model tag>.<locus>.h5 in the working directory.",
    ),
    model: str | None = typer.Option(
        None, help="Model that writes the cache (default: the vector's model_source); must match its fingerprint."
    ),
    layers: str | None = typer.Option(None, help="Score these of the vector's layers, e.g. 14-18 (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON (and nothing else on stdout)."),
    out_path: Path | None = typer.Option(None, "--out", help="Also write the report (JSON) to this new file."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    batch_size: int = typer.Option(8, help="Pairs per forward batch when the cache is written (2 sequences each)."),
    dtype: DType = "auto",
    device: DeviceIndexed = "auto",
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Score a vector file on any pair set: AUROC, TPR at 5% FPR, paired accuracy per layer, and its controls'.

    The pair file counts as held out whatever its split labels say; a vector scored on another
    concept's pairs is the cross-concept (selectivity) check. The pairs' activation cache is
    reused when it matches the vector (model, locus, pair file, layers), continued when an earlier
    run was interrupted, and written otherwise.
    """
    from steerlab.models import load_model
    from steerlab.scoring import ensure_cache, plan, score_vector, write_report

    checked = plan(
        vector, pairs, cache=cache, layers=parse_layers(layers), out=out_path, overwrite=overwrite,
        batch_size=batch_size,
    )  # fmt: skip
    info = err if as_json else out
    if checked.cache_ready:
        info.print(f"reusing the cache {checked.cache}", markup=False)

    def loader(name: str):
        return load_model(name, dtype=dtype, device=device, trust_remote_code=trust_remote_code)

    try:
        path = ensure_cache(checked, loader, model, batch_size=batch_size)
    except KeyboardInterrupt:
        err.print(f"interrupted; rerun the same command to continue the cache {checked.cache}", markup=False)
        raise typer.Exit(130) from None
    if not checked.cache_ready:
        info.print(f"wrote the cache {path}", markup=False)
    report = score_vector(checked, path, reused=checked.cache_ready)
    if out_path is not None:
        write_report(report, out_path)
    if as_json:
        from steerlab.scoring import report_json

        typer.echo(report_json(report))
        return
    print_score(report)
    if out_path is not None:
        out.print(f"wrote {out_path}", markup=False)
