"""The ``steerlab`` command line: parse, call one library function, print.

Errors a user can cause (:class:`~steerlab.errors.SteerlabError`) print one line and exit 2.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated

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
vectors_app = typer.Typer(no_args_is_help=True, help="Vector files: inspect, score on other pairs.")


@app.callback()
def _root(
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Load model folders that hold only pickled weights (pytorch_model.bin)."
    ),
) -> None:
    """Activation steering: contrastive pairs -> activation cache -> steering vectors -> experiments."""
    if allow_pickle:  # read by steerlab.models wherever a model folder is resolved (vLLM workers too)
        os.environ["STEERLAB_ALLOW_PICKLE"] = "1"


app.add_typer(pairs_app, name="pairs")
app.add_typer(cache_app, name="cache")
app.add_typer(model_app, name="model")
app.add_typer(vectors_app, name="vectors")

# Options shared by `extract` (which fits after caching) and `fit`: declared once.
VectorsDir = Annotated[Path, typer.Option(help="Vector files go to VECTORS_DIR/<concept>/NAME.safetensors.")]


def _vector_name(name: str | None) -> str | None:
    """A vector file's name is a file name: no folders, so ``--name ../../x`` cannot write elsewhere."""
    if name is not None and (not re.fullmatch(r"[A-Za-z0-9._-]+", name) or set(name) == {"."}):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (no folders)")
    return name


VectorName = Annotated[
    str | None, typer.Option(help="Vector file name (default: the model's short name).", callback=_vector_name)
]
Method = Annotated[str, typer.Option(help="logistic, mean_diff or pca.")]
InverseL2 = Annotated[float, typer.Option("--C", help="Inverse L2 strength of the logistic fit (scikit-learn's C).")]
Folds = Annotated[int, typer.Option(help="Cross-validation folds (split by pair).")]
FoldSeed = Annotated[int, typer.Option(help="Seed of the fold split.")]
Select = Annotated[str, typer.Option(help="Layer selection: top-k, band or list.")]
TopK = Annotated[int, typer.Option(help="Layers chosen by top-k or band.")]
SelectLayers = Annotated[str | None, typer.Option(help="Layers for --select list, e.g. 12,13,14.")]
RankBy = Annotated[str, typer.Option(
    help="Rank layers by cv_dprime (train CV standardised gap; keeps its resolution when AUROC saturates) "
    "or cv_auroc.")]  # fmt: skip
CandidateLayers = Annotated[str, typer.Option(
    help="Layers top-k/band may choose: middle (default: leaves out the first and last fifth of the model's "
    "layers), all, or a list like 6-23.")]  # fmt: skip
OrthogonalizeAgainst = Annotated[Path | None, typer.Option(
    help="Another concept's vector file: fit in the complement of its direction at each layer.")]  # fmt: skip
Controls = Annotated[int, typer.Option(help="Norm-matched random controls per vector.")]
# Options of every command that generates: declared once.
BackendKind = Annotated[str, typer.Option("--backend", help="hf (transformers), vllm, or anthropic (no steering).")]
TensorParallel = Annotated[int, typer.Option(help="vLLM: GPUs per model (tensor parallel).")]
Lora = Annotated[str | None, typer.Option(help="A LoRA adapter directory (peft) applied to every request.")]
ControlSeed = Annotated[int, typer.Option(
    help="Run seed of the random controls; each file's control seeds derive from it and the vector's identity "
    "(concept, model, pair file, locus, method), recorded in the header.")]  # fmt: skip


out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def parse_layers(spec: str | None, n_layers: int | None = None, option: str = "--layers") -> list[int] | None:
    """``"3,5,10-12"`` -> ``[3, 5, 10, 11, 12]``; ``None`` -> every layer (:func:`steerlab.generate.parse_layers`)."""
    from steerlab.generate import parse_layers as parse

    return parse(spec, n_layers, option)


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
    show: int = typer.Option(20, min=0, help="How many rejected pairs to list."),
    audit: bool = typer.Option(
        True, help="Run the shortcut audit (a surface classifier on the spans); --no-audit: the per-pair filters only."
    ),
    against: list[Path] = typer.Option(
        [], "--against", help="Another concept's pair set: report how well the audit tells its negatives from FILE's."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the validation and audit report as JSON."),
) -> None:
    """Apply every filter and the shortcut audit to a pair set; exit 2 if any pair fails or the audit
    flags a split (unless --drop-invalid, which keeps the valid pairs)."""
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
    others = [p for other in against for p in load_pairs(other)]
    if {p.concept for p in others} & {p.concept for p in pairs}:
        raise ConfigError("--against names a pair set of a concept FILE also holds; give another concept's set")
    report = validate(pairs, cfg)
    shortcut = _shortcut_audit(report.valid, others, cfg) if audit else None
    if as_json:
        typer.echo(json.dumps(_validation_json(file, config, report, shortcut), indent=1))
    else:
        _print_validation(file, config, report, shortcut, show)
    if drop_invalid is not None:
        if not report.valid:
            raise ConfigError(f"no pair in {file} passes validation; nothing to write")
        if shortcut is not None and not shortcut.ok:
            raise ConfigError(_audit_failure(shortcut, "the valid pairs; nothing written"))
        write_pairs(report.valid, drop_invalid)
        out.print(f"wrote {len(report.valid)} valid pairs to {drop_invalid}")
        return
    if report.problems:
        err.print(
            f"steerlab: error: {len(report.problems)} of {len(pairs)} pairs fail validation; fix them, "
            "or pass --drop-invalid NEW_FILE to keep the valid ones"
        )
        raise typer.Exit(2)
    if shortcut is not None and not shortcut.ok:
        raise ConfigError(_audit_failure(shortcut, str(file)))
    if not as_json:
        out.print(f"all {len(pairs)} pairs pass" + (" and the shortcut audit" if shortcut is not None else ""))


def _shortcut_audit(valid, others, cfg):
    from steerlab.audit import shortcut_audit

    concepts = sorted({p.concept for p in valid})
    return shortcut_audit([*valid, *others], cfg.shortcut_audit, concepts=concepts, keywords=cfg.keywords)


def _audit_failure(shortcut, what: str) -> str:
    first = shortcut.flagged[0]
    more = f" and {len(shortcut.flagged) - 1} more split(s)" if len(shortcut.flagged) > 1 else ""
    return (
        f"the shortcut audit tells positive from negative spans by their surface in {what}: {first.label} "
        f"AUROC {first.auroc:.2f} > {first.max_auroc} ({first.top(3)}){more}; rewrite the spans so no word, "
        "punctuation or length marks a side, or raise shortcut_audit.max_auroc in the validation config"
    )


def _validation_json(file, config, report, shortcut) -> dict:
    return {
        "file": str(file),
        "config": str(config) if config else None,
        "pairs": len(report.pairs),
        "counts": [{"concept": c, "split": s, "pairs": n, "valid": k} for (c, s), (n, k) in report.counts().items()],
        "problems": {
            pid: [{"check": p.check, "message": p.message} for p in probs] for pid, probs in report.problems.items()
        },
        "shortcut_audit": None if shortcut is None else shortcut.to_dict(),
    }


def _print_validation(file, config, report, shortcut, show: int) -> None:

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
    if shortcut is None:
        return
    out.print("shortcut audit (a surface classifier on the valid pairs' spans; chance is 0.5):")
    for a in shortcut.splits:
        auroc = "n/a (too few pairs)" if a.auroc is None else f"{a.auroc:.2f} +/- {a.auroc_sd:.2f}"
        verdict = "FLAGGED" if a.flagged else "ok" if a.max_auroc is not None else "report only"
        moved = "" if a.transfer_auroc is None else f"; fitted on train: {a.transfer_auroc:.2f}"
        out.print(f"  {a.label}: AUROC {auroc} (max {a.max_auroc}) {verdict}{moved}; top: {a.top(3)}", markup=False)
    for a in shortcut.cross_concept:
        out.print(f"  {a.summary(3)}", markup=False)


# ----------------------------------------------------------------------------- extract


@app.command()
def extract(
    pairs: Path = typer.Option(..., help="Pair set (JSONL)."),
    out_path: Path = typer.Option(..., "--cache", "--out", help="Activation cache to write or reuse (HDF5)."),
    model: str = typer.Option("smollm2", help="Hub id, local directory, .gguf file, or smollm2 (embedded)."),
    locus: Locus = typer.Option(Locus.scratchpad_mean, help="Token positions to pool over."),
    layers: str | None = typer.Option(None, help="Layers to cache, e.g. 3,5,10-12 (default: all)."),
    cache_dtype: str = typer.Option("float32", help="float32 or float16."),
    batch_size: int = typer.Option(8, help="Pairs per forward batch (2 sequences each)."),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, float16, bfloat16."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu, cuda, cuda:1, ..."),
    device_map: str | None = typer.Option(None, help="'auto' to spread a large model over all GPUs."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub."),
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
    overwrite_vectors: bool = typer.Option(False, help="Replace existing vector files."),
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
    loaded = load_model(model, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code)
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
        del loaded
        for concept in sorted(set(cache.concepts)):
            _fit_and_report(path, settings, vectors_dir, name, concept, overwrite_vectors)


# ----------------------------------------------------------------------------- fit


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


def print_diagnostics(meta: dict) -> None:
    """The per-layer diagnostics table of a vector file, and its controls' summary."""
    import numpy as np

    per_layer = meta["diagnostics"]["per_layer"]
    selected = set(meta["selected_layers"])
    columns = [("cv_auroc", "CV AUROC"), ("cv_dprime", "CV d'"), ("val_auroc", "val AUROC"),
               ("keyword_hard_auroc", "kw-hard AUROC"),
               ("val_tpr_at_5fpr", "val TPR@5%"), ("val_paired_accuracy", "val paired acc"),
               ("vector_norm", "|v|"), ("token_norm", "mean |h_t|")]  # fmt: skip
    columns = [(key, label) for key, label in columns if key in per_layer]
    table = Table(title=f"{meta['concept']}: {meta['method']} on {meta['locus']} ({meta['model_source']})")
    table.add_column("layer", justify="right")
    for _, label in columns:
        table.add_column(label, justify="right")
    for i, layer in enumerate(meta["layers"]):
        mark = f"*{layer}" if layer in selected else str(layer)
        table.add_row(mark, *(f"{per_layer[key][i]:.3f}" for key, _ in columns))
    out.print(table)
    out.print(selection_text(meta), markup=False)
    ctrl = meta["controls"]["diagnostics"]
    if ctrl:
        idx = [meta["layers"].index(layer) for layer in meta["selected_layers"]]
        vals = np.array([[c["val_auroc"][i] for i in idx] for c in ctrl])
        real = np.mean([per_layer["val_auroc"][i] for i in idx])
        out.print(
            f"{len(ctrl)} random controls, val AUROC at the selected layers: mean {vals.mean():.3f} "
            f"(min {vals.min():.3f}, max {vals.max():.3f}); the real vector: {real:.3f}"
        )


def selection_text(meta: dict) -> str:
    """How the layers were chosen: the rule, the criterion, the candidates, and each chosen layer's rank."""
    rule = meta["selection"]
    text = f"selected layers {meta['selected_layers']} (marked *) by {rule['name']}"
    if "k" in rule:
        text += f" (k={rule['k']})"
    if "rank_by" in rule:  # files fitted before the criterion was recorded lack these
        cands = rule["candidates"]
        span = f"{cands[0]}-{cands[-1]}" if cands == list(range(cands[0], cands[-1] + 1)) else str(cands)
        chosen = ", ".join(
            f"{c['layer']} (rank {c['rank']}, d' {c['cv_dprime']:.2f}, AUROC {c['cv_auroc']:.3f})"
            for c in rule["chosen"]
        )
        text += f", ranked by {rule['by']}, among layers {span} ({rule['candidates_from']}): {chosen}"
    elif "by" in rule:
        text += f", ranked by {rule['by']}"
    return text


def print_selectivity(meta: dict, entries: list[dict], full: bool = False) -> None:
    """Each other concept's cosine and cross-concept AUROCs: at the selected layers, or (``full``) per layer."""
    from steerlab.selectivity import at_layers

    layers, selected = meta["layers"], meta["selected_layers"]
    if not entries:
        out.print("selectivity: no other concept's vector file for this model, locus and layers beside this one")
    for entry in entries:
        parts = [f"cos {at_layers(entry, layers, selected, 'cosine'):.3f}"]
        if entry.get("control_abs_cosine"):
            parts.append(f"controls' |cos| {at_layers(entry, layers, selected, 'control_abs_cosine'):.3f}")
        if entry.get("auroc_on_other_val") is not None:
            parts.append(f"AUROC on its val {at_layers(entry, layers, selected, 'auroc_on_other_val'):.3f}")
        else:
            parts.append(f"AUROC on its val n/a ({entry.get('auroc_on_other_val_missing')})")
        if entry.get("other_auroc_on_this_val") is not None:
            parts.append(f"its AUROC on this val {at_layers(entry, layers, selected, 'other_auroc_on_this_val'):.3f}")
        else:
            parts.append(f"its AUROC on this val n/a ({entry.get('other_auroc_on_this_val_missing')})")
        head = f"selectivity vs {entry['concept']} ({entry['file']}), mean at the selected layers: "
        tail = " (selective: cos near the controls', AUROCs near 0.5)"
        out.print(head + "; ".join(parts) + tail, markup=False)
        if not full:
            continue
        table = Table(title=f"selectivity vs {entry['concept']}")
        cols = [("cosine", "cos"), ("control_abs_cosine", "controls' |cos|"),
                ("auroc_on_other_val", "AUROC on its val"),
                ("other_auroc_on_this_val", "its AUROC on this val")]  # fmt: skip
        cols = [(key, label) for key, label in cols if entry.get(key) is not None]
        table.add_column("layer", justify="right")
        for _, label in cols:
            table.add_column(label, justify="right")
        for i, layer in enumerate(layers):
            mark = f"*{layer}" if layer in selected else str(layer)
            table.add_row(mark, *(f"{entry[key][i]:.3f}" for key, _ in cols))
        out.print(table)


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
    overwrite: bool = typer.Option(False, help="Replace existing vector files."),
) -> None:
    """Fit one direction per layer from a cache, with CV diagnostics, layer selection and random controls."""
    settings = _fit_settings(
        method=method, c=c, folds=folds, seed=seed, select=select, k=k, select_layers=select_layers,
        rank_by=rank_by, candidate_layers=candidate_layers, orthogonalize_against=orthogonalize_against,
        controls=controls, control_seed=control_seed, device=device,
    )  # fmt: skip
    _fit_and_report(cache, settings, vectors_dir, name, concept, overwrite)


# ----------------------------------------------------------------------------- steer


@app.command()
def steer(
    vector: Path = typer.Option(..., help="Vector file (.safetensors) fitted on this model."),
    alpha: str = typer.Option(..., help="Multiplier(s), comma-separated: 0.03, or -4,0,4."),
    prompt: str | None = typer.Option(None, help="One user prompt."),
    prompts: Path | None = typer.Option(None, help="Prompt file: .txt (one per line) or .jsonl (prompt/messages)."),
    chat: bool = typer.Option(False, help="Interactive chat on stdin (one --alpha); an empty line ends it."),
    model: str = typer.Option("smollm2", help="Hub id, local directory, .gguf file, or smollm2."),
    layers: str | None = typer.Option(None, help="Steer these layers instead of the file's selection, e.g. 14-16."),
    scale: str = typer.Option("absolute", help="absolute: alpha x saved vector; relative: alpha x layer's mean |h|."),
    position: str = typer.Option("all", help="all, prompt or generation."),
    control: int | None = typer.Option(None, help="Steer with the file's random control i instead."),
    compare: bool = typer.Option(False, help="Also show the unsteered completion."),
    system: str | None = typer.Option(None, help="System prompt."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate."),
    temperature: float = typer.Option(0.0, help="0 is greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    seed: int = typer.Option(0, help="Sampling seed (per request)."),
    batch_size: int = typer.Option(16, help="Rows per generation batch."),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, float16, bfloat16."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu, cuda."),
    force: bool = typer.Option(False, help="Use a vector fitted on a model with another fingerprint."),
    backend_kind: BackendKind = "hf",
    tensor_parallel_size: TensorParallel = 1,
    lora: Lora = None,
) -> None:
    """Generate with a steering vector added to the residual stream (and, with --compare, without)."""
    from steerlab.backends import make_backend
    from steerlab.backends.base import Sampling
    from steerlab.generate import as_chat, completions, load_prompts, parse_multipliers, settings_for
    from steerlab.steer import build_table
    from steerlab.vectors import VectorBundle

    multipliers = parse_multipliers(alpha)
    if [prompt is not None, prompts is not None, chat].count(True) != 1:
        raise ConfigError("give exactly one of --prompt, --prompts or --chat")
    if chat and len(multipliers) != 1:
        raise ConfigError("--chat takes a single --alpha")
    chats = load_prompts(prompts, system) if prompts else [as_chat(prompt, system)] if prompt else []
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    sampling.check()
    # A bad file, layer list, control or multiplier fails before the model loads.
    first = VectorBundle.load(vector)
    n_layers = first.meta["model"].get("n_layers") if isinstance(first.meta["model"], dict) else None
    layer_list = parse_layers(layers, n_layers if isinstance(n_layers, int) else None)
    build_table(settings_for(first, multipliers, layer_list, scale, control), first.vector.d_model)  # type: ignore[arg-type]
    backend, fingerprint, _ = make_backend(
        backend_kind, model, batch_size=batch_size, dtype=dtype, device=device, position=position,
        tensor_parallel_size=tensor_parallel_size, lora=lora,
    )  # fmt: skip
    bundle = VectorBundle.load(vector, expect=fingerprint, force=force)
    settings = settings_for(bundle, multipliers, layer_list, scale, control)  # type: ignore[arg-type]
    if not chat:
        for i, group in enumerate(completions(backend, chats, settings, sampling, compare)):
            typer.echo(f"=== prompt {i}: {group[0].prompt[-1]['content']}")
            for c in group:  # completions are printed raw: no markup, no tab expansion
                typer.echo(f"--- {c.label} ({c.finish_reason})\n{c.text}")
        return
    history: list[dict[str, str]] = as_chat("", system)[:-1]
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        except UnicodeDecodeError:
            raise ConfigError("the chat input is not UTF-8 text; set your terminal to UTF-8") from None
        if not line.strip():
            break
        history.append({"role": "user", "content": line})
        group = completions(backend, [history], settings, sampling, compare)[0]
        for c in group:
            typer.echo(f"{c.label}> {c.text}")
        history.append({"role": "assistant", "content": group[-1].text})


# ----------------------------------------------------------------------------- sweep


@app.command()
def sweep(
    config: Path = typer.Option(..., help="Sweep config (YAML), e.g. configs/sweep_demo.yaml."),
    vectors: str | None = typer.Option(None, help="Override: vector files, comma-separated."),
    multipliers: str | None = typer.Option(None, help="Override: signed multipliers, e.g. -0.03,-0.015,0,0.015,0.03."),
    controls: int | None = typer.Option(None, help="Override: random controls per vector."),
    out_dir: Path | None = typer.Option(None, "--out", help="Override: run directory."),
    scorer: str | None = typer.Option(None, help="Override: regex or module:function scoring each output."),
    scenario: str | None = typer.Option(None, help="Override: plain or alignment_faking."),
    dry_run_flag: bool = typer.Option(False, "--dry-run", help="Print the run's size (and judge cost) only."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu, cuda."),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, float16, bfloat16."),
    backend_kind: BackendKind = "hf",
    tensor_parallel_size: TensorParallel = 1,
    lora: Lora = None,
) -> None:
    """Run (or resume) a sweep of vectors and their random controls over signed multipliers, then summarise it.

    With `scenario: alignment_faking` in the config the run is labelled, judged (with `judge:`)
    and summarised as acceptance, gap and judge scores per (vector, multiplier, condition).
    """
    from steerlab.cli_harness import run_config
    from steerlab.generate import parse_multipliers
    from steerlab.sweep import figure, load_config, write_summary

    cfg = load_config(
        config,
        vectors=vectors.split(",") if vectors else None,
        multipliers=parse_multipliers(multipliers, "--multipliers") if multipliers is not None else None,
        controls=controls,
        out=out_dir,
        scorer=scorer,
        scenario=scenario,
        lora=lora,
    )

    def summarise(run_dir: Path) -> None:  # a plain run's summary, written while the run is still locked
        if cfg.scenario == "alignment_faking":  # labelled and summarised already
            return
        if cfg.scorer is None:
            out.print("no scorer in the config: records only (set scorer: to summarise)")
            return
        path, cells = write_summary(run_dir, cfg.scorer)
        table = Table(title=f"{run_dir}: score = {cfg.scorer}")
        for col in ("vector", "condition", "multiplier", "real (95% over requests)", "controls min-max", "z"):
            table.add_column(col)
        for c in cells:
            z = c.get("z")
            table.add_row(
                c["vector"], c["condition"], f"{c['multiplier']:+g}",
                f"{c['real_mean']:.3f} [{c['real_ci_low']:.3f}, {c['real_ci_high']:.3f}]",
                f"{c['control_min']:.3f}-{c['control_max']:.3f}" if "control_min" in c else "-",
                f"{z:+.2f}" if z is not None else f"n/a ({c['z_note'].removeprefix('n/a: ')})" if "z_note" in c
                else "-",
            )  # fmt: skip
        out.print(table)
        out.print(f"wrote {path} and {figure(run_dir, cells, cfg.scorer)}")

    run_config(
        cfg, device=device, dtype=dtype, dry=dry_run_flag, backend=backend_kind,
        tensor_parallel_size=tensor_parallel_size, then=summarise,
    )  # fmt: skip


# ----------------------------------------------------------------------------- inspect


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


def _register_harness() -> None:
    from steerlab.cli_harness import register

    register(app, pairs_app)
    from steerlab.cli_prompts import register as register_prompts

    register_prompts(app)
    from steerlab.cli_pairgen import register as register_pairgen

    register_pairgen(pairs_app)
    from steerlab.cli_vectors import register as register_vectors

    register_vectors(vectors_app)


_register_harness()


def run_app(typer_app: typer.Typer, argv: list[str] | None, prog_name: str) -> None:
    """Run a command line: a SteerlabError prints one line on stderr and exits with status 2.

    Usage errors (unknown option, missing argument) are typer's own and also exit 2.
    """
    try:
        typer_app(args=argv, prog_name=prog_name)
    except SteerlabError as exc:
        err.print(f"{prog_name}: error: {exc}", markup=False)
        sys.exit(2)
    except SystemExit as exc:  # typer turns Ctrl-C into exit status 130: say how to go on
        command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), "")
        hint = RESUME_HINTS.get((prog_name, command))
        if exc.code == 130 and hint:
            err.print(f"{prog_name}: interrupted; {hint}", markup=False)
        raise


# What a command that was stopped with Ctrl-C keeps, and how to go on (extract says it itself).
_RERUN = "rerun the same command to resume: finished samples in the run directory are kept"
RESUME_HINTS = {
    **{("steerlab", c): _RERUN for c in ("sweep", "eval", "prompt-eval", "calibrate")},
    ("steerlab", "judge"): "rerun the same command: judgements already made are in the judge cache",
    ("sdf", "train"): "rerun the same command to resume from the last checkpoint in OUT/checkpoints",
    ("sdf", "gen"): "rerun the same command to resume: finished stages and documents are kept",
    ("sdf", "eval"): _RERUN,
}


def main(argv: list[str] | None = None) -> None:
    """The ``steerlab`` entry point (see :func:`run_app`)."""
    run_app(app, argv, "steerlab")


if __name__ == "__main__":
    main()
