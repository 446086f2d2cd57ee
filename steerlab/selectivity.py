"""Selectivity: does a concept's vector track its concept, or what several concepts' pair sets share?

The paper compares family A (researcher expectations) with family B (retraining consequences); a
direction both vectors share (say, how both sets' negatives are written) would move both families
at once. For two vector files of the same model (fingerprint), locus and layers, per layer:

- ``cosine`` between the two vectors, beside ``control_abs_cosine``, the mean |cosine| between this
  vector and the other file's norm-matched random controls (the null: about 1/sqrt(d_model));
- ``auroc_on_other_val``: this vector's AUROC on the other concept's ``val`` pairs, and
  ``other_auroc_on_this_val``: the other vector's on this concept's ``val`` pairs. A selective vector
  scores near 0.5 on the other concept's pairs. The other concept's activations are read from the
  cache its file records (``cache_file``), if that cache still holds the pairs the file was fitted on.

:func:`sibling_files` finds the other concepts' files (``VECTORS_DIR/<concept>/*.safetensors``);
:func:`selectivity` compares one vector with each. Nothing here writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerlab.cache import ActivationCache
from steerlab.diagnostics import split_metrics
from steerlab.errors import SteerlabError
from steerlab.vectors import VectorBundle


def sibling_files(path: Path, meta: dict[str, Any]) -> list[tuple[Path, VectorBundle]]:
    """Other concepts' vector files beside ``path`` (``<root>/<concept>/<name>.safetensors``) for the same
    model fingerprint, locus and layers; of several files for one concept, those with ``path``'s name."""
    path = Path(path)
    root = path.parent.parent
    found: dict[str, list[tuple[Path, VectorBundle]]] = {}
    for candidate in sorted(root.glob("*/*.safetensors")):
        if candidate.resolve() == path.resolve():
            continue
        try:
            other = VectorBundle.load(candidate)
        except SteerlabError:
            continue  # not a vector file steerlab can read: nothing to compare with
        om = other.meta
        if (
            om.get("concept") != meta["concept"]
            and om.get("model") == meta["model"]
            and om.get("locus") == meta["locus"]
            and set(meta["layers"]) <= set(om["layers"])
        ):
            found.setdefault(om["concept"], []).append((candidate, other))
    chosen = []
    for files in found.values():
        same_name = [(p, b) for p, b in files if p.name == path.name]
        chosen.extend(same_name or files)
    return chosen


def find_cache(cache_file: str | None, near: Path | None) -> Path | None:
    """The cache a vector file names: as recorded (relative to the working directory of the fit, or
    absolute), else relative to one of the vector file's folders (a repository's ``vectors/<concept>/``
    names ``runs/...`` from the repository root). The caller checks it is the right cache."""
    if not cache_file:
        return None
    recorded = Path(cache_file)
    tries = [recorded] + ([] if recorded.is_absolute() or near is None else [d / recorded for d in Path(near).parents])
    return next((path for path in tries if path.is_file()), None)


def val_activations(
    meta: dict[str, Any], layers: list[int], near: Path | None = None
) -> tuple[torch.Tensor | None, str | None]:
    """The ``val`` activations ``[n, 2, len(layers), D]`` a vector file (at ``near``) was fitted beside, or
    (None, why)."""
    cache_file = meta.get("cache_file")
    found = find_cache(cache_file, near)
    if found is None:
        return None, f"its cache {cache_file} is gone"
    try:
        cache = ActivationCache.open(found)
    except SteerlabError as exc:
        return None, f"its cache cannot be read ({exc})"
    cm = cache.meta
    if cm.get("model") != meta["model"] or cm.get("locus") != meta["locus"]:
        return None, f"its cache {cache_file} now holds another model or locus"
    if cm.get("pair_file_hash") != meta.get("pair_file_hash"):
        return None, f"its cache {cache_file} now holds other pairs than the file was fitted on"
    if not set(layers) <= set(cache.layers) or not len(cache.rows("val", meta["concept"])):
        return None, f"its cache {cache_file} lacks the layers or the val pairs"
    acts = cache.load("val", layers=layers, concept=meta["concept"])
    return torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32)), None


def compare(
    directions: torch.Tensor,
    meta: dict[str, Any],
    this_val: torch.Tensor | None,
    other_path: Path,
    other: VectorBundle,
    this_why: str | None = None,
) -> dict[str, Any]:
    """One sibling's per-layer selectivity numbers (``directions`` ``[L, D]`` over ``meta['layers']``,
    ``this_val`` ``[n, 2, L, D]`` or None)."""
    layers = list(meta["layers"])
    a = directions.float().cpu()
    b = torch.stack([other.vector.at(layer) for layer in layers])  # [L, D]
    entry: dict[str, Any] = {
        "concept": other.meta["concept"],
        "file": str(other_path),
        "cosine": torch.nn.functional.cosine_similarity(a, b, dim=-1).double().tolist(),
    }
    if other.controls:
        ctrl = torch.stack([torch.stack([c.at(layer) for layer in layers]) for c in other.controls])  # [C, L, D]
        cos = torch.nn.functional.cosine_similarity(a[None], ctrl, dim=-1).abs().mean(0)
        entry["control_abs_cosine"] = cos.double().tolist()
    other_val, why = val_activations(other.meta, layers, other_path)
    entry["auroc_on_other_val"] = None if other_val is None else split_metrics(other_val, a)["auroc"].tolist()
    if why:
        entry["auroc_on_other_val_missing"] = why
    if this_val is not None:
        entry["other_auroc_on_this_val"] = split_metrics(this_val.float().cpu(), b)["auroc"].tolist()
    else:
        entry["other_auroc_on_this_val"] = None
        entry["other_auroc_on_this_val_missing"] = this_why or "this vector's val activations are not at hand"
    return entry


def selectivity(
    path: Path, meta: dict[str, Any], directions: torch.Tensor, this_val: torch.Tensor | None = None
) -> list[dict[str, Any]]:
    """Compare a vector (to be) written at ``path`` with every sibling file; ``this_val`` defaults to
    the ``val`` activations of the cache ``meta`` records."""
    siblings = sibling_files(path, meta)
    why = None
    if siblings and this_val is None:
        this_val, why = val_activations(meta, list(meta["layers"]), path)
    return [compare(directions, meta, this_val, p, b, why) for p, b in siblings]


def at_layers(entry: dict[str, Any], layers: list[int], selected: list[int], key: str) -> float | None:
    """Mean of one per-layer selectivity column over the ``selected`` layers (None when absent)."""
    values = entry.get(key)
    if values is None:
        return None
    return float(np.mean([values[layers.index(layer)] for layer in selected]))
