"""Score an existing vector file on any pair set: held-out generalisation as a first-class check.

:func:`score_vector` is what ``steerlab vectors score VECTOR --pairs FILE`` calls. Every pair of
every concept and split in FILE is scored: the file is held out for this vector whatever its
split labels say (unless it is the very file the vector was fitted on, which the report says).

The activations come from an activation cache for FILE, written by :func:`steerlab.extract.extract`
at the vector's locus for the vector's layers, or reused:

- a finished cache that matches (the vector's model fingerprint, locus and chat template, FILE's
  hash, the layers to score) is read as it is, without loading any model;
- an interrupted one (``.partial``) that matches continues where it stopped;
- one written for another model, locus, chat template or pair file is refused before anything
  loads, with one line: name another ``--cache``, or delete it.

The default cache is ``runs/score/<FILE stem>.<FILE hash, 8 hex>.<model tag>.<locus>.h5`` under
the working directory (:func:`default_cache_path`): never beside an input, shared by every vector
of that model and locus scored on FILE, and a new file when FILE changes.

Per layer, for all pairs together, per split and (when FILE holds several) per concept, the
report gives the vector's ``auroc``, ``tpr_at_5fpr``, ``paired_accuracy`` and ``mean_gap``
(:func:`steerlab.diagnostics.split_metrics`: one definition of each number) and the same numbers
for each of the vector file's random controls, with their mean, min and max over controls.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

import steerlab
from steerlab.cache import FORMAT_VERSION, META_ATTR, ActivationCache, partial_path, refuse_non_finite
from steerlab.diagnostics import split_metrics
from steerlab.errors import CacheError, ConfigError, PairFileError
from steerlab.fileio import atomic_write_text, file_hash
from steerlab.models import Fingerprint, LoadedModel, chat_template_hash
from steerlab.pairs import Pair, load_pairs, structure_problems
from steerlab.vectors import VectorBundle, VectorError, finite_json

REPORT_FORMAT = "steerlab-score"
REPORT_FORMAT_VERSION = 1
METRICS = ("auroc", "tpr_at_5fpr", "paired_accuracy", "mean_gap")
SPLIT_ORDER = ("train", "val", "keyword_hard")
DEFAULT_CACHE_DIR = Path("runs") / "score"
CACHE_DTYPE = "float32"


def default_cache_path(pairs_path: Path, pair_hash: str, model_source: str, locus: str) -> Path:
    """``runs/score/<stem>.<pair hash, 8 hex>.<model tag>.<locus>.h5`` (relative to the working directory)."""
    from steerlab.directions import model_tag

    return DEFAULT_CACHE_DIR / f"{Path(pairs_path).stem}.{pair_hash[:8]}.{model_tag(model_source)}.{locus}.h5"


@dataclass
class Plan:
    """Everything checked before any model loads or anything is written."""

    vector_path: Path
    vector_hash: str
    bundle: VectorBundle
    pairs_path: Path
    pair_hash: str
    pairs: list[Pair]
    layers: list[int]  # the layers scored
    cache: Path
    cache_ready: bool  # a finished, matching cache is there: no model needed

    @property
    def meta(self) -> dict[str, Any]:
        return self.bundle.meta


def _span(layers: list[int]) -> str:
    """``[0, 1, 2, 3]`` -> ``0-3``; a list with gaps as it is."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers))


def check_out(out: Path | None, overwrite: bool) -> None:
    """Refuse a report path that is a folder, exists (without ``overwrite``) or cannot be written."""
    if out is None:
        return
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; name the report file to write (e.g. score.json)")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it, or name a new file")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write the report {out}: {folder} is not a folder this user can write")


def _mismatch(meta: dict[str, Any], plan_meta: dict[str, Any], pairs_path: Path, pair_hash: str) -> str | None:
    """What makes a cache's ``meta`` unusable for this vector and pair file (None when nothing)."""
    try:
        diff = Fingerprint.from_dict(meta["model"]).differences(Fingerprint.from_dict(plan_meta["model"]))
    except (KeyError, TypeError):
        return "a model without a fingerprint"
    if diff:
        return f"another model than the vector (fingerprint differs in {', '.join(diff)})"
    if meta.get("locus") != plan_meta["locus"]:
        return f"locus {meta.get('locus')!r}, the vector's locus is {plan_meta['locus']!r}"
    if meta.get("pair_file_hash") != pair_hash:
        old = f"{meta.get('pair_file')}, hash {meta.get('pair_file_hash')}"
        return f"another pair file ({old}; {pairs_path} has hash {pair_hash})"
    want, have = plan_meta.get("chat_template_hash"), meta.get("chat_template_hash")
    if want and have and want != have:
        return f"another chat template (hash {have}; the vector's is {want})"
    return None


def check_cache(path: Path, vector_meta: dict[str, Any], pairs_path: Path, pair_hash: str, layers: list[int]) -> bool:
    """True when a finished cache at ``path`` matches and holds ``layers`` (reuse it); False when it must be
    written (nothing there, or a matching interrupted one to continue). Anything else is refused; nothing
    is created or changed."""
    from steerlab.extract import preflight

    path = Path(path)
    fix = f"name another --cache, or delete {path}"
    if path.is_dir():
        raise CacheError(f"--cache {path} is a directory; name the cache file (.h5)")
    if path.exists():
        cache = ActivationCache.open(path)
        why = _mismatch(cache.meta, vector_meta, pairs_path, pair_hash)
        if why:
            raise CacheError(f"the cache {path} was written for {why}; {fix}")
        missing = [layer for layer in layers if layer not in cache.layers]
        if missing:
            raise CacheError(f"the cache {path} lacks layer(s) {missing} (it holds {cache.layers}); {fix}")
        return True
    part = partial_path(path)
    if part.exists():
        try:
            with h5py.File(part, "r") as f:
                meta = json.loads(f.attrs[META_ATTR])
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise CacheError(
                f"the interrupted cache {part} cannot be read ({exc}); delete it, or name another --cache"
            ) from None
        why = _mismatch(meta, vector_meta, pairs_path, pair_hash)
        if why is None and meta.get("format_version") != FORMAT_VERSION:
            why = f"cache format {meta.get('format_version')} (this steerlab writes {FORMAT_VERSION})"
        if why is None and (meta.get("layers") != list(vector_meta["layers"]) or meta.get("dtype") != CACHE_DTYPE):
            why = f"layers {meta.get('layers')} in {meta.get('dtype')} (scoring writes all the vector's layers)"
        if why:
            raise CacheError(f"the interrupted cache {part} was written for {why}; delete it, or name another --cache")
    preflight(path, resume=True, overwrite=False)  # writable, no live writer, a sane progress file
    return False


def plan(
    vector: Path,
    pairs: Path,
    *,
    cache: Path | None = None,
    layers: Sequence[int] | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    batch_size: int = 8,
) -> Plan:
    """Read and check every input that needs no model; refuse bad input with one line, writing nothing."""
    vector, pairs = Path(vector), Path(pairs)
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be at least 1")
    check_out(out, overwrite)
    bundle = VectorBundle.load(vector)
    meta = bundle.meta
    if not isinstance(meta.get("locus"), str):
        raise VectorError(f"{vector}: the header names no locus; refit the file (steerlab fit)")
    available = list(meta["layers"])
    if layers is None:
        chosen = available
    else:
        chosen = sorted(set(layers))
        missing = [layer for layer in chosen if layer not in available]
        if not chosen or missing:
            raise ConfigError(f"--layers: layer(s) {missing} are not in {vector} (it has layers {_span(available)})")
    pair_list = load_pairs(pairs)
    for pair in pair_list:
        problems = structure_problems(pair)
        if problems:
            raise PairFileError(f"pair {pair.id!r}: {problems[0].message} (run `steerlab pairs validate`)")
    pair_hash = file_hash(pairs)
    if cache is None:
        cache = default_cache_path(pairs, pair_hash, str(meta.get("model_source") or "model"), meta["locus"])
    for name, other in (("the vector file", vector), ("the pair file", pairs), ("the cache", Path(cache))):
        if out is not None and Path(out).resolve() == other.resolve():
            raise ConfigError(f"--out {out} names {name}; name a new report file")
        if name != "the cache" and Path(cache).resolve() == other.resolve():
            raise ConfigError(f"--cache {cache} names {name}; name the activation cache file (.h5)")
    ready = check_cache(Path(cache), meta, pairs, pair_hash, chosen)
    return Plan(vector, file_hash(vector), bundle, pairs, pair_hash, pair_list, chosen, Path(cache), ready)


def check_model(loaded: LoadedModel, plan: Plan) -> None:
    """Refuse a model that is not the one the vector was fitted on (fingerprint or chat template)."""
    diff = Fingerprint.from_dict(plan.meta["model"]).differences(loaded.fingerprint)
    if diff:
        raise VectorError(
            f"the model {loaded.source!r} is not the one {plan.vector_path} was fitted on (fingerprint differs in "
            f"{', '.join(diff)}); pass --model with that model (the vector names {plan.meta.get('model_source')!r})"
        )
    want, have = plan.meta.get("chat_template_hash"), chat_template_hash(loaded.chat_template)
    if want and want != have:
        raise VectorError(
            f"the model {loaded.source!r} renders chats with another template (hash {have}) than {plan.vector_path} "
            f"was fitted with ({want}); pass --model with the vector's model"
        )


def ensure_cache(plan: Plan, loader: Callable[[str], LoadedModel], model: str | None, *, batch_size: int = 8,
                 progress: bool = True) -> Path:  # fmt: skip
    """The cache of ``plan``: reused when ready, else written (or continued) with the model ``loader`` loads."""
    from steerlab.extract import extract

    if plan.cache_ready:
        return plan.cache
    loaded = loader(model or str(plan.meta.get("model_source") or ""))
    check_model(loaded, plan)
    return extract(
        loaded, plan.pairs, plan.cache, locus=plan.meta["locus"], dtype=CACHE_DTYPE, layers=list(plan.meta["layers"]),
        batch_size=batch_size, resume=True, pair_file=plan.pairs_path, pair_file_hash=plan.pair_hash,
        progress=progress,
    )  # fmt: skip


def _rows(values: np.ndarray) -> list[Any]:
    return [float(v) for v in values]


def group_scores(acts: torch.Tensor, vector: torch.Tensor, controls: list[torch.Tensor]) -> dict[str, Any]:
    """The vector's and each control's metrics on ``acts`` ``[n, 2, L, D]``; ``vector`` and each control ``[L, D]``."""
    real = split_metrics(acts, vector)
    entry: dict[str, Any] = {"n_pairs": int(acts.shape[0]), "vector": {m: _rows(real[m]) for m in METRICS}}
    per_ctrl = [split_metrics(acts, c) for c in controls]
    ctrl: dict[str, Any] = {"n": len(controls)}
    for m in METRICS:
        values = np.array([c[m] for c in per_ctrl], dtype=np.float64).reshape(len(controls), acts.shape[2])
        ctrl[m] = [_rows(v) for v in values]
        for name, reduce in (("mean", np.mean), ("min", np.min), ("max", np.max)):
            ctrl[f"{m}_{name}"] = _rows(reduce(values, axis=0)) if len(controls) else [math.nan] * acts.shape[2]
    entry["controls"] = ctrl
    return entry


def score_cache(cache: ActivationCache, bundle: VectorBundle, layers: list[int]) -> dict[str, Any]:
    """Scores of ``bundle`` on every pair of ``cache`` at ``layers``: all pairs, per split, per concept."""
    data = cache.load(layers=layers)  # [n, 2, L, D]
    refuse_non_finite(
        data, cache.pair_ids, layers, cache.path, "delete the cache and score again (it is rewritten in float32)"
    )
    acts = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    vector = torch.stack([bundle.vector.at(layer) for layer in layers]).float()  # [L, D]
    controls = [torch.stack([c.at(layer) for layer in layers]).float() for c in bundle.controls]
    result: dict[str, Any] = {"all": group_scores(acts, vector, controls), "splits": {}, "concepts": {}}
    for split in [s for s in SPLIT_ORDER if s in cache.splits] + sorted(set(cache.splits) - set(SPLIT_ORDER)):
        result["splits"][split] = group_scores(acts[cache.rows(split=split)], vector, controls)
    concepts = sorted(set(cache.concepts))
    if len(concepts) > 1:
        for concept in concepts:
            result["concepts"][concept] = group_scores(acts[cache.rows(concept=concept)], vector, controls)
    return result


def summarise(scores: dict[str, Any], layers: list[int], selected: list[int]) -> dict[str, Any]:
    """All pairs' numbers at the vector's selected layers (or every scored layer when none is scored)."""
    at = [layer for layer in selected if layer in layers]
    of = "selected" if at else "scored"
    at = at or layers
    idx = [layers.index(layer) for layer in at]
    group = scores["all"]
    out: dict[str, Any] = {"layers": at, "of": of}
    for m in ("auroc", "tpr_at_5fpr", "paired_accuracy"):
        out[f"{m}_mean"] = float(np.mean([group["vector"][m][i] for i in idx]))
    ctrl = np.array([[c[i] for i in idx] for c in group["controls"]["auroc"]], dtype=np.float64)
    out["controls_n"] = group["controls"]["n"]
    for name, reduce in (("mean", np.mean), ("min", np.min), ("max", np.max)):
        out[f"controls_auroc_{name}"] = float(reduce(ctrl)) if ctrl.size else math.nan
    return out


def score_vector(plan: Plan, cache_path: Path, reused: bool) -> dict[str, Any]:
    """The whole report of ``plan`` from the finished cache at ``cache_path``."""
    cache = ActivationCache.open(cache_path)
    why = _mismatch(cache.meta, plan.meta, plan.pairs_path, plan.pair_hash)
    if why:  # the cache changed under us (another process); never score the wrong activations
        raise CacheError(f"the cache {cache_path} was written for {why}; name another --cache, or delete it")
    meta = plan.meta
    concepts = sorted(set(cache.concepts))
    split_counts = {s: len(cache.rows(split=s)) for s in SPLIT_ORDER if s in cache.splits}
    scores = score_cache(cache, plan.bundle, plan.layers)
    selected = [layer for layer in meta["selected_layers"] if layer in plan.layers]
    return {
        "format": REPORT_FORMAT,
        "format_version": REPORT_FORMAT_VERSION,
        "steerlab_version": steerlab.__version__,
        "vector": {
            "file": str(plan.vector_path),
            "hash": plan.vector_hash,
            "concept": meta.get("concept"),
            "method": meta.get("method"),
            "layers": list(meta["layers"]),
            "selected_layers": list(meta["selected_layers"]),
            "pair_file": meta.get("pair_file"),
            "pair_file_hash": meta.get("pair_file_hash"),
            "model_source": meta.get("model_source"),
            "n_controls": len(plan.bundle.controls),
        },  # fmt: skip
        "pairs": {
            "file": str(plan.pairs_path),
            "hash": plan.pair_hash,
            "concepts": concepts,
            "n_pairs": {"all": len(cache.pair_ids), **split_counts},
        },  # fmt: skip
        "same_concept": concepts == [meta.get("concept")],
        "fitted_on_this_file": meta.get("pair_file_hash") == plan.pair_hash,
        "cache": {"path": str(cache_path), "reused": reused, "dtype": cache.meta.get("dtype")},
        "model": {"source": cache.meta.get("model_source"), "fingerprint": cache.meta["model"]},
        "locus": cache.meta["locus"],
        "chat_template_hash": cache.meta.get("chat_template_hash"),
        "layers": plan.layers,
        "selected_layers": selected,
        "metrics": list(METRICS),
        "scores": scores,
        "summary": summarise(scores, plan.layers, list(meta["selected_layers"])),
    }


def report_json(report: dict[str, Any]) -> str:
    """Standard JSON (NaN and infinities as null)."""
    return json.dumps(finite_json(report), indent=1, sort_keys=True, allow_nan=False)


def write_report(report: dict[str, Any], out: Path) -> Path:
    atomic_write_text(Path(out), report_json(report) + "\n")
    return Path(out)
