"""``steerlab condition fit``: choose a condition's layer and threshold from two prompt sets (issue 20, item 3).

Given prompts for which a condition is true and prompts for which it is false, this finds, among candidate layers,
the direction, comparator and threshold that best separate them by the statistic the steering hook computes (the
mean over the prompt's tokens of the cosine, or projection, of the block output with a unit direction; see
:mod:`steerlab.conditions`). The prompts are rendered and tokenised exactly as the HF backend sends them.

The statistic is linear in the direction ``w``: ``mean_t h_t.w/|h_t| = (mean_t h_t/|h_t|).w``. So one forward pass
per prompt keeps, per layer, the mean of the normalised (cosine) or raw (projection) hidden states ``[n, L, d]``,
and every direction is then scored without the model.

Per layer, on training prompts only: the direction is the condition file's vector at that layer (``--vector``), or
the difference of the two sets' mean features (unit length); the comparator is the side the true prompts lie on;
the threshold maximises F1 (the true prompts as the positive class) over the midpoints between sorted scores (of
equally good thresholds, the middle one). Layers are compared by stratified k-fold cross-validated F1 (each fold's
direction and threshold fitted on the other folds). The chosen layer's direction and threshold are then fitted on
all prompts. Because choosing the best of many layers by their cross-validated F1 reads every fold, that F1 is
optimistic; ``nested_f1`` is the honest estimate of the whole procedure (outer folds held out from the layer choice
too) and is what to quote. Ties between layers go to the earlier layer (cheaper: decided in the prefill pass
before more steered layers).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from steerlab.conditions import Condition, ConditionError
from steerlab.fileio import atomic_write_text, file_hash
from steerlab.models import LoadedModel


@dataclass
class LayerFit:
    """One layer's direction, comparator and threshold (fitted on some prompts) and its F1 on others."""

    layer: int
    direction: np.ndarray  # [d_model], unit
    comparator: str
    threshold: float
    train_f1: float


def f1(pred: np.ndarray, labels: np.ndarray) -> float:
    tp = float(np.sum(pred & labels))
    fp, fn = float(np.sum(pred & ~labels)), float(np.sum(~pred & labels))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[str, float, float]:
    """(comparator, threshold, F1) maximising F1 of ``scores comparator threshold`` for the true prompts."""
    order = np.unique(scores)
    cuts = np.concatenate([[order[0] - 1.0], (order[:-1] + order[1:]) / 2, [order[-1] + 1.0]])
    best: tuple[float, str, list[float]] = (-1.0, ">", [])
    for comparator in (">", "<"):
        for cut in cuts:
            pred = scores > cut if comparator == ">" else scores < cut
            value = f1(pred, labels)
            if value > best[0] + 1e-12:
                best = (value, comparator, [float(cut)])
            elif abs(value - best[0]) <= 1e-12 and comparator == best[1]:
                best[2].append(float(cut))
    value, comparator, tied = best
    return comparator, tied[len(tied) // 2], value


def fit_layer(features: np.ndarray, labels: np.ndarray, layer: int, direction: np.ndarray | None) -> LayerFit:
    """Fit one layer on ``features`` ``[n, d]`` (a layer's mean features) and ``labels`` ``[n]`` bool."""
    if direction is None:
        direction = features[labels].mean(0) - features[~labels].mean(0)
    norm = float(np.linalg.norm(direction))
    if not norm > 0:
        raise ConditionError(
            f"layer {layer}: the two prompt sets have the same mean there, so no direction separates them"
        )
    direction = direction / norm
    comparator, threshold, value = best_threshold(features @ direction, labels)
    return LayerFit(layer, direction, comparator, threshold, value)


def held_out_f1(fit: LayerFit, features: np.ndarray, labels: np.ndarray) -> float:
    scores = features @ fit.direction
    pred = scores > fit.threshold if fit.comparator == ">" else scores < fit.threshold
    return f1(pred, labels)


def cv_f1(features: np.ndarray, labels: np.ndarray, layers: Sequence[int], directions: dict[int, np.ndarray] | None,
          folds: int, seed: int) -> np.ndarray:  # fmt: skip
    """``[len(layers), folds]`` held-out F1 of each layer (``features`` ``[n, len(layers), d]``)."""
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    out = np.zeros((len(layers), folds))
    for k, (train, test) in enumerate(split.split(np.zeros(len(labels)), labels)):
        for j, layer in enumerate(layers):
            fixed = directions[layer] if directions else None
            fit = fit_layer(features[train, j], labels[train], layer, fixed)
            out[j, k] = held_out_f1(fit, features[test, j], labels[test])
    return out


def choose(scores: np.ndarray) -> int:
    """Index of the layer with the highest mean CV F1 (ties: the earliest)."""
    means = scores.mean(1)
    return int(np.flatnonzero(means >= means.max() - 1e-12)[0])


def search(
    features: np.ndarray, labels: np.ndarray, layers: Sequence[int], directions: dict[int, np.ndarray] | None = None,
    folds: int = 5, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """The layer choice and its honest estimate. ``features`` ``[n, len(layers), d_model]``, ``labels`` ``[n]``."""
    labels = np.asarray(labels, dtype=bool)
    n_true, n_false = int(labels.sum()), int((~labels).sum())
    if min(n_true, n_false) < folds:
        raise ConditionError(
            f"{n_true} true and {n_false} false prompts: each set needs at least --folds {folds} prompts"
        )
    per_layer = cv_f1(features, labels, layers, directions, folds, seed)
    j = choose(per_layer)
    final = fit_layer(features[:, j], labels, layers[j], directions[layers[j]] if directions else None)
    # nested: the layer chosen inside each outer training set, scored on the outer test fold
    outer = StratifiedKFold(folds, shuffle=True, random_state=seed + 1)
    nested = []
    inner_folds = max(2, min(folds, int(min(n_true, n_false) * (folds - 1) / folds)))
    for train, test in outer.split(np.zeros(len(labels)), labels):
        inner = cv_f1(features[train], labels[train], layers, directions, inner_folds, seed)
        k = choose(inner)
        fit = fit_layer(features[train, k], labels[train], layers[k], directions[layers[k]] if directions else None)
        nested.append(held_out_f1(fit, features[test, k], labels[test]))
    return {
        "fit": final, "layer": layers[j], "cv_f1": float(per_layer[j].mean()), "nested_f1": float(np.mean(nested)),
        "per_layer": [{"layer": layer, "cv_f1": float(per_layer[i].mean()), "cv_f1_std": float(per_layer[i].std())}
                      for i, layer in enumerate(layers)],
        "n_true": n_true, "n_false": n_false, "folds": folds, "seed": seed,
    }  # fmt: skip


@torch.inference_mode()
def prompt_features(
    loaded: LoadedModel, prompts: Sequence[Any], layers: Sequence[int], statistic: str = "cosine", batch_size: int = 16
) -> np.ndarray:
    """Per prompt (chat messages) and layer, the mean over its tokens of the block output, normalised per token for
    ``cosine``: ``[n, len(layers), d_model]`` float32. Prompts are rendered as the HF backend renders them."""
    from steerlab.backends.base import Request
    from steerlab.backends.hf import HFBackend, left_pad

    ids = HFBackend(loaded).prompt_ids([Request(p, id=str(i)) for i, p in enumerate(prompts)])
    out = np.zeros((len(ids), len(layers), loaded.d_model), dtype=np.float32)
    seen: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(_m: Any, _a: Any, output: Any) -> None:
            seen[layer] = (output[0] if isinstance(output, tuple) else output).float()  # [batch, seq, d_model]

        return hook

    handles = [loaded.blocks[layer].register_forward_hook(keep(layer)) for layer in layers]
    try:
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for lo in range(0, len(order), batch_size):
            batch = order[lo : lo + batch_size]
            padded = left_pad([ids[i] for i in batch], loaded.tokenizer.pad_token_id)
            input_ids, mask, positions = (t.to(loaded.device) for t in padded)
            loaded.model(input_ids=input_ids, attention_mask=mask, position_ids=positions)
            m = mask.float()[..., None]  # [batch, seq, 1]
            for j, layer in enumerate(layers):
                h = seen[layer]
                if statistic == "cosine":
                    h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-30)
                h = torch.where(m > 0, h, torch.zeros_like(h))  # padding never enters, even as NaN
                out[batch, j] = (h.sum(1) / m.sum(1).clamp_min(1.0)).cpu().numpy()
    finally:
        for h in handles:
            h.remove()
    return out


def fit_condition(
    loaded: LoadedModel, true_prompts: Sequence[Any], false_prompts: Sequence[Any], layers: Sequence[int],
    statistic: str = "cosine", directions: dict[int, np.ndarray] | None = None, folds: int = 5, seed: int = 0,
    batch_size: int = 16, name: str = "condition",
) -> tuple[Condition, dict[str, Any]]:  # fmt: skip
    """The fitted condition and the search's report (per-layer CV F1, nested F1)."""
    if statistic not in ("cosine", "projection"):
        raise ConditionError(f"--statistic {statistic!r}: use cosine or projection")
    features = prompt_features(loaded, [*true_prompts, *false_prompts], layers, statistic, batch_size)
    labels = np.array([True] * len(true_prompts) + [False] * len(false_prompts))
    report = search(features, labels, layers, directions, folds, seed)
    fit: LayerFit = report.pop("fit")
    cond = Condition(torch.from_numpy(fit.direction.astype(np.float32)), fit.layer, fit.threshold,
                     fit.comparator, statistic, name, loaded.fingerprint.to_dict())  # type: ignore[arg-type]  # fmt: skip
    report["train_f1"] = fit.train_f1
    return cond, report


def write_condition(path: Path, cond: Condition, report: dict[str, Any], sources: dict[str, Path]) -> None:
    """The condition file: what :func:`steerlab.conditions.load_condition` reads, plus the fit's report."""
    record = cond.record()
    record["fit"] = {**report, "direction_from": "vector" if report.get("vector") else "mean difference",
                     "inputs": {k: {"file": str(p), "hash": file_hash(p)} for k, p in sources.items()}}  # fmt: skip
    atomic_write_text(Path(path), json.dumps(record, indent=1) + "\n")
