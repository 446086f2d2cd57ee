"""From an activation cache to a vector file: check, fit, diagnose, select layers, add controls.

:func:`fit_cache` is what ``steerlab fit`` and ``steerlab extract`` call; it writes three files
side by side: ``NAME.safetensors`` (vector, controls, metadata), ``NAME.diagnostics.json`` and
``NAME.diagnostics.png``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import steerlab
from steerlab import plots
from steerlab.cache import ActivationCache, refuse_non_finite
from steerlab.diagnostics import (
    RANK_BY,
    SELECT_RULES,
    VALIDATION_SPLITS,
    Diagnostics,
    candidate_pool,
    default_candidates,
    diagnose,
    select_layers,
    split_metrics,
)
from steerlab.errors import CacheError, ConfigError
from steerlab.fileio import atomic_write_text, file_hash
from steerlab.fit import DEFAULT_C, METHODS
from steerlab.generate import parse_layers
from steerlab.models import resolve_device
from steerlab.selectivity import selectivity
from steerlab.vectors import VectorBundle, control_seeds, controls_from_seeds, degenerate_rows, finite_json

MAX_CONTROLS = 1000  # each control is a full [n_layers, d_model] tensor in the file
VECTOR_FORMAT_VERSION = 2  # 2: token_norm / pooled_norm (was resid_norm), derived control seeds


@dataclass
class FitSettings:
    method: str = "logistic"
    c: float = DEFAULT_C
    folds: int = 5
    seed: int = 0
    select: str = "top-k"
    k: int = 3
    select_layers: list[int] | None = None
    controls: int = 5
    control_seed: int = 1000  # the run seed of the controls; each file's seeds derive from it and the vector's identity
    device: str = "auto"
    rank_by: str = "cv_dprime"
    candidate_layers: str = "middle"  # middle (default_candidates), all, or a layer list like 6-23
    orthogonalize_against: Path | None = None  # another vector file: fit in the complement of its direction

    def check(self) -> FitSettings:
        """Refuse settings that would fit nothing or numbers that are not numbers, before any data is read."""
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if not (isinstance(self.c, (int, float)) and math.isfinite(self.c) and self.c > 0):
            raise ConfigError(f"--C {self.c} must be a finite number above 0 (the inverse L2 strength; 1.0 is usual)")
        if self.folds < 2:
            raise ConfigError(f"--folds {self.folds} must be 2 or more (cross-validation needs a held-out fold)")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed {self.seed} must lie in 0..{2**32 - 1}")
        if self.select not in SELECT_RULES:
            raise ConfigError(f"unknown selection rule {self.select!r}; use one of {', '.join(SELECT_RULES)}")
        if self.select != "list" and self.k < 1:
            raise ConfigError(f"--k {self.k} must be 1 or more")
        if not 0 <= self.controls <= MAX_CONTROLS:
            raise ConfigError(f"--controls {self.controls} must lie in 0..{MAX_CONTROLS}")
        if self.rank_by not in RANK_BY:
            raise ConfigError(f"unknown --rank-by {self.rank_by!r}; use one of {', '.join(RANK_BY)}")
        if self.candidate_layers not in ("middle", "all"):
            parse_layers(self.candidate_layers, option="--candidate-layers")
        if self.orthogonalize_against is not None and not Path(self.orthogonalize_against).is_file():
            raise ConfigError(f"--orthogonalize-against {self.orthogonalize_against}: no such vector file")
        return self

    def preflight(self, n_layers: int, layers: list[int], model: dict[str, Any], concepts: list[str]) -> None:
        """What a fit of these ``layers`` of a model with ``n_layers`` blocks would refuse, checked before an
        extraction that can take hours (``steerlab extract``)."""
        if self.select == "list":
            missing = [layer for layer in self.select_layers or [] if layer not in layers]
            if missing:
                raise ConfigError(f"--select-layers {missing} are not among the layers to cache ({layers})")
        else:
            candidate_pool(layers, *self.candidates(n_layers), self.k)
        if self.orthogonalize_against is not None:
            other = VectorBundle.load(self.orthogonalize_against)
            if other.meta["model"] != model:
                raise ConfigError(f"--orthogonalize-against {self.orthogonalize_against} was fitted on another model")
            if other.meta.get("concept") in concepts:
                raise ConfigError(
                    f"--orthogonalize-against {self.orthogonalize_against} is a {other.meta.get('concept')!r} vector "
                    "and the pair file holds that concept; extract with --no-fit, then fit the other concepts with "
                    "steerlab fit --orthogonalize-against"
                )
            missing = [layer for layer in layers if layer not in other.meta["layers"]]
            if missing:
                raise ConfigError(
                    f"--orthogonalize-against {self.orthogonalize_against} has no direction at layer(s) {missing}"
                )

    def candidates(self, n_layers: int) -> tuple[list[int], str]:
        """The layers selection may choose from, and how they were set."""
        if self.candidate_layers == "middle":
            return default_candidates(n_layers), f"default: the middle of the model's {n_layers} layers"
        if self.candidate_layers == "all":
            return list(range(n_layers)), "all layers"
        return parse_layers(self.candidate_layers, n_layers, "--candidate-layers"), "--candidate-layers"


def model_tag(source: str) -> str:
    """A file-name-safe short name for a model source (``smollm2``, ``Llama-3.1-8B-Instruct``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.rstrip("/")).name or source).strip("-") or "model"


def resolve_concept(cache: ActivationCache, concept: str | None) -> str:
    """The concept to fit: the one named, or the cache's only one."""
    concepts = sorted(set(cache.concepts))
    if concept is None:
        if len(concepts) > 1:
            raise ConfigError(f"{cache.path} holds concepts {concepts}; choose one with --concept")
        return concepts[0]
    if concept not in concepts:
        raise ConfigError(f"concept {concept!r} is not in {cache.path} (it holds {concepts})")
    return concept


def control_identity(cache: ActivationCache, concept: str, settings: FitSettings) -> dict[str, Any]:
    """What names a vector file for its controls' seeds: a different concept, model, pair file, locus,
    layer set or estimator gives unrelated controls."""
    cm = cache.meta
    return {
        "concept": concept,
        "model": cm["model"],
        "pair_file_hash": cm["pair_file_hash"],
        "locus": cm["locus"],
        "layers": cache.layers,
        "method": settings.method,
        "C": settings.c if settings.method == "logistic" else None,
    }


def load_splits(cache: ActivationCache, concept: str | None, device: str) -> tuple[str, dict[str, torch.Tensor]]:
    """Read and check the train and validation splits of one concept."""
    concept = resolve_concept(cache, concept)
    splits: dict[str, torch.Tensor] = {}
    for split in ("train", *VALIDATION_SPLITS):
        data = cache.load(split, concept=concept)
        if len(data):
            splits[split] = data
    if "train" not in splits:
        raise ConfigError(f"{cache.path} has no train pairs for {concept!r}; the fit needs split: train")
    if "val" not in splits:
        raise ConfigError(
            f"the val split of {concept!r} in {cache.path} is empty; add pairs with split: val "
            "(the diagnostics need it)"
        )
    ids = np.array(cache.pair_ids, dtype=object)
    for split, data in splits.items():
        rows = ids[cache.rows(split, concept)]
        refuse_non_finite(
            data, rows, cache.layers, cache.path, "re-extract (float16 overflow? use --cache-dtype float32)"
        )
        same = np.all(data[:, 0] == data[:, 1], axis=(1, 2))
        if same.any():
            raise CacheError(
                f"pair(s) {list(rows[same][:5])} have identical activations on both sides; their texts "
                "do not differ inside the locus (check the pairs with `steerlab pairs validate`)"
            )
    dev = torch.device(resolve_device(device))
    return concept, {s: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev) for s, a in splits.items()}


def control_diagnostics(controls: torch.Tensor, splits: dict[str, torch.Tensor]) -> list[dict[str, list[float]]]:
    """Controls are not fitted, so they are scored directly: AUROC on every split present."""
    out = []
    for ctrl in controls.to(next(iter(splits.values())).device):
        entry = {}
        for split, data in splits.items():
            entry[f"{split}_auroc"] = split_metrics(data, ctrl)["auroc"].tolist()
        out.append(entry)
    return out


def fit_cache(
    cache_path: Path, settings: FitSettings, out: Path, concept: str | None = None, overwrite: bool = False
) -> tuple[VectorBundle, Path]:
    """Fit the vector bundle for one concept of a cache and write it with its report at ``out``."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"vector file {out} must end in .safetensors")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it")
    settings.check()
    cache = ActivationCache.open(cache_path)
    concept, splits = load_splits(cache, concept, settings.device)
    raw = dict(splits)
    against = None
    if settings.orthogonalize_against is not None:
        against = orthogonal_basis(settings.orthogonalize_against, cache, concept)
        splits = {split: project_out(data, against["unit"]) for split, data in splits.items()}
    token_norms = cache.load_token_norms("train", concept=concept)  # [n_train, 2, L]
    diag = diagnose(
        splits,
        cache.layers,
        method=settings.method,
        c=settings.c,
        folds=settings.folds,
        seed=settings.seed,
        token_norms=token_norms,
    )
    if against is not None:  # the fit saw only the complement; remove what feature scaling put back
        diag.directions = project_out(diag.directions, against["unit"])
        diag.per_layer["vector_norm"] = diag.directions.norm(dim=-1).double().cpu().tolist()
        for split in VALIDATION_SPLITS:  # the held-out numbers of the direction as saved, on the raw activations
            if split in raw:
                for name, values in split_metrics(raw[split], diag.directions).items():
                    diag.per_layer[f"{split}_{name}"] = values.tolist()
    bad = degenerate_rows(diag.directions)
    if bad:
        (row,), what = bad[0]
        raise ConfigError(
            f"the {settings.method} fit of {concept!r} gave a vector with {what} at layer {cache.layers[row]}"
            + (f" (with --C {settings.c})" if settings.method == "logistic" else "")
            + "; nothing written. Check the cache's activations at that layer, or try another --C or --method"
        )
    candidates, candidates_from = settings.candidates(cache.meta["model"]["n_layers"])
    selection = select_layers(
        diag.train_scores(), settings.select, settings.k, settings.select_layers,
        rank_by=settings.rank_by, candidates=candidates, candidates_from=candidates_from,
    )  # fmt: skip
    identity = control_identity(cache, concept, settings)
    if against is not None:
        identity["orthogonalized_against"] = against["record"]["file_hash"]
    seeds = control_seeds(settings.control_seed, identity, settings.controls)
    controls = controls_from_seeds(diag.directions.cpu(), seeds)
    if against is not None:  # the null of an orthogonalized vector lives in the same complement
        unit = against["unit"].cpu()
        controls = project_out(controls, unit)
        controls = controls * (diag.directions.cpu().norm(dim=-1) / controls.norm(dim=-1))[..., None]
    ctrl_diag = control_diagnostics(controls, raw)
    meta = bundle_meta(cache, concept, settings, diag, selection, ctrl_diag, identity, seeds)
    if against is not None:
        meta["orthogonalized_against"] = against["record"]
    if against is not None:
        meta["controls"]["kind"] += ", projected onto the complement of the --orthogonalize-against vector first"
    meta["selectivity"] = selectivity(out, meta, diag.directions.cpu(), raw["val"].cpu())
    bundle = VectorBundle.build(diag.directions.cpu(), controls, meta)
    bundle.save(out)
    keys = ("concept", "method", "locus", "layers", "selected_layers", "selection", "selectivity")
    report = {k: meta[k] for k in keys}
    if "orthogonalized_against" in meta:
        report["orthogonalized_against"] = meta["orthogonalized_against"]
    report.update(diagnostics=meta["diagnostics"], controls=meta["controls"], model=meta["model"])
    report_text = json.dumps(finite_json(report), indent=1, sort_keys=True, allow_nan=False)  # NaN -> null
    atomic_write_text(out.with_suffix(".diagnostics.json"), report_text + "\n")
    draw(meta, out.with_suffix(".diagnostics.png"))
    return bundle, out


def orthogonal_basis(path: Path, cache: ActivationCache, concept: str) -> dict[str, Any]:
    """The unit directions ``[L, D]`` of another vector file at the cache's layers, to project out."""
    other = VectorBundle.load(path)
    om = other.meta
    if om["model"] != cache.meta["model"]:
        raise ConfigError(f"--orthogonalize-against {path} was fitted on another model than {cache.path} holds")
    if om.get("concept") == concept:
        raise ConfigError(f"--orthogonalize-against {path} is a {concept!r} vector itself; name another concept's")
    missing = [layer for layer in cache.layers if layer not in om["layers"]]
    if missing:
        raise ConfigError(f"--orthogonalize-against {path} has no direction at layer(s) {missing}; refit it there")
    rows = torch.stack([other.vector.at(layer) for layer in cache.layers])
    unit = rows / rows.norm(dim=-1, keepdim=True)
    record = {"file": str(path), "file_hash": file_hash(path), "concept": om.get("concept")}
    return {"unit": unit, "record": record}


def project_out(x: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Remove the component along ``unit`` ``[L, D]`` from ``x`` ``[..., L, D]`` at each layer."""
    unit = unit.to(device=x.device, dtype=x.dtype)
    return x - (x * unit).sum(-1, keepdim=True) * unit


def bundle_meta(
    cache: ActivationCache,
    concept: str,
    settings: FitSettings,
    diag: Diagnostics,
    selection: dict[str, Any],
    ctrl_diag: list[dict[str, list[float]]],
    identity: dict[str, Any],
    seeds: list[int],
) -> dict[str, Any]:
    cm = cache.meta
    return {
        "format": "steerlab-vector",
        "format_version": VECTOR_FORMAT_VERSION,
        "steerlab_version": steerlab.__version__,
        "concept": concept,
        "method": settings.method,
        "C": settings.c if settings.method == "logistic" else None,
        "locus": cm["locus"],
        "layers": cache.layers,
        "selected_layers": selection["layers"],
        "selection": selection["rule"],
        "model": cm["model"],
        "model_source": cm["model_source"],
        "chat_template_hash": cm["chat_template_hash"],
        "pair_file": cm["pair_file"],
        "pair_file_hash": cm["pair_file_hash"],
        "cache_file": str(cache.path),
        "diagnostics": diag.to_dict(),
        "controls": {
            "n": settings.controls,
            "kind": "independent Gaussian per layer, rescaled to the real vector's norm at that layer",
            "source": concept,
            "run_seed": settings.control_seed,
            "identity": identity,
            "seeds": seeds,
            "seed_rule": "steerlab.vectors.control_seeds: sha256 of (run_seed, identity, control index), 63 bits",
            "diagnostics": ctrl_diag,
        },
    }


def draw(meta: dict[str, Any], path: Path) -> Path:
    per_layer = meta["diagnostics"]["per_layer"]
    curves = {"CV AUROC (train)": per_layer["cv_auroc"]}
    for split in VALIDATION_SPLITS:
        if f"{split}_auroc" in per_layer:
            curves[f"{split} AUROC"] = per_layer[f"{split}_auroc"]
    band = None
    ctrl = meta["controls"]["diagnostics"]
    if ctrl:
        vals = np.array([c["val_auroc"] for c in ctrl])
        band = (vals.min(0).tolist(), vals.max(0).tolist())
    title = f"{meta['concept']} | {meta['method']} | {meta['locus']} | {meta['model_source']}"
    norms = {"vector norm |v|": per_layer["vector_norm"]}
    if "token_norm" in per_layer:
        norms["mean per-token |h_t| (token_norm)"] = per_layer["token_norm"]
    norms["|locus-mean h| (pooled_norm)"] = per_layer["pooled_norm"]
    panels = {}
    for entry in meta.get("selectivity", []):
        other = entry["concept"]
        curves_ = {f"cos(v, {other})": entry["cosine"]}
        if entry.get("control_abs_cosine"):
            curves_[f"|cos(v, {other}'s controls)|"] = entry["control_abs_cosine"]
        if entry.get("auroc_on_other_val"):
            curves_[f"AUROC on {other} val"] = entry["auroc_on_other_val"]
        if entry.get("other_auroc_on_this_val"):
            curves_[f"{other} vector's AUROC on this val"] = entry["other_auroc_on_this_val"]
        panels[other] = curves_
    return plots.layer_diagnostics(
        meta["layers"], curves, norms, meta["selected_layers"], band, title, path, selectivity=panels
    )
