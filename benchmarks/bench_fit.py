"""Fitting speed: steerlab's batched logistic fit with k-fold CV vs the per-layer scikit-learn loop.

    python benchmarks/bench_fit.py                         # SmolLM2 shape and 70B-like shape, CPU
    python benchmarks/bench_fit.py --shapes 70b --device cuda

Both sides do the same work on the same synthetic data and the same pair-grouped folds: for
every layer, 5 CV fits (standardise the symmetric differences of the training pairs, L2
logistic regression without intercept, score the held-out pairs' activations by projection,
AUROC) plus one fit on all pairs. The scikit-learn side is ``StandardScaler`` +
``LogisticRegression(fit_intercept=False, C=1, max_iter=1000)`` per layer and fold, the loop a
user would write. At the 70B-like shape that loop takes hours, so it runs on
``--sklearn-layers`` layers only and the per-layer times are compared (and labelled so); the
AUROC agreement is reported on those layers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from record import write_record  # benchmarks/record.py
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from steerlab.diagnostics import cv_auroc_logistic, pair_folds
from steerlab.fit import logistic

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"smollm2": (30, 576, 128), "70b": (80, 8192, 1000)}  # layers, d_model, pairs


def synthetic(n_layers: int, d_model: int, n_pairs: int, seed: int = 0) -> torch.Tensor:
    """[n, 2, L, D]: a shared per-pair base, a planted unit direction per layer, and noise sized so
    that held-out AUROC is informative (neither 0.5 nor 1)."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(n_layers, d_model, generator=g)
    direction /= direction.norm(dim=-1, keepdim=True)
    acts = torch.empty(n_pairs, 2, n_layers, d_model)
    for lo in range(0, n_pairs, 100):  # in blocks, to keep the peak memory near the result's size
        hi = min(lo + 100, n_pairs)
        base = torch.randn(hi - lo, n_layers, d_model, generator=g) * 0.5
        noise = 2.0 / d_model**0.5
        acts[lo:hi, 0] = base + direction + noise * torch.randn(hi - lo, n_layers, d_model, generator=g)
        acts[lo:hi, 1] = base + noise * torch.randn(hi - lo, n_layers, d_model, generator=g)
    return acts


def sklearn_layer(acts: np.ndarray, folds: list, c: float) -> tuple[float, np.ndarray]:
    """CV AUROC and the full-data direction for one layer, the scikit-learn way. ``acts`` [n, 2, D]."""
    scores = []
    for tr, te in [*folds, (np.arange(len(acts)), None)]:
        d = acts[tr, 0] - acts[tr, 1]
        x, y = np.r_[d, -d], np.r_[np.ones(len(d)), np.zeros(len(d))]
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(fit_intercept=False, C=c, tol=1e-6, max_iter=10000).fit(scaler.transform(x), y)
        v = clf.coef_[0] / scaler.scale_
        if te is None:
            return float(np.mean(scores)), v
        held = acts[te] @ v
        scores.append(roc_auc_score(np.r_[np.ones(len(te)), np.zeros(len(te))], np.r_[held[:, 0], held[:, 1]]))
    raise AssertionError("unreachable")


def run(shape: str, args: argparse.Namespace) -> dict:
    n_layers, d_model, n_pairs = SHAPES[shape]
    acts = synthetic(n_layers, d_model, n_pairs)
    folds = pair_folds(n_pairs, args.folds, seed=0)
    device = torch.device(args.device)

    def ours() -> tuple[np.ndarray, torch.Tensor]:
        data = acts.to(device)
        cv = cv_auroc_logistic(data, folds, c=args.C)
        directions = logistic(data[:, 0], data[:, 1], c=args.C)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return cv, directions

    sk_layers = list(range(n_layers)) if shape == "smollm2" else list(range(min(args.sklearn_layers, n_layers)))
    np_acts = acts.numpy()

    def sklearn() -> tuple[list[float], list[np.ndarray]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            results = [sklearn_layer(np_acts[:, :, layer].astype(np.float64), folds, args.C) for layer in sk_layers]
        return [cv for cv, _ in results], [v for _, v in results]

    repeats = args.repeats if shape == "smollm2" else 1
    if repeats > 1:
        ours()  # warm-up where it is cheap
    times: dict[str, list[float]] = {"steerlab": [], "sklearn": []}
    for _ in range(repeats):  # alternate, so drift of the shared machine hits both
        t0 = time.perf_counter()
        cv_ours, directions = ours()
        times["steerlab"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cv_sk, sk_dirs = sklearn()
        times["sklearn"].append(time.perf_counter() - t0)
    ours_s, sk_s = statistics.median(times["steerlab"]), statistics.median(times["sklearn"])
    cos = []
    for layer, v in zip(sk_layers, sk_dirs, strict=True):
        ours_v = directions[layer].double().cpu().numpy()
        cos.append(float(ours_v @ v / np.linalg.norm(ours_v) / np.linalg.norm(v)))
    per_layer_ours, per_layer_sk = ours_s / n_layers, sk_s / len(sk_layers)
    diff = np.abs(np.array(cv_sk) - cv_ours[sk_layers])
    return {
        "shape": shape,
        "n_layers": n_layers,
        "d_model": d_model,
        "n_pairs": n_pairs,
        "folds": args.folds,
        "repeats": repeats,
        "raw_s": times,
        "steerlab_s_all_layers": round(ours_s, 3),
        "sklearn_layers_timed": len(sk_layers),
        "sklearn_s_timed_layers": round(sk_s, 3),
        "sklearn_s_all_layers": round(per_layer_sk * n_layers, 1),
        "sklearn_all_layers_is_extrapolated": len(sk_layers) < n_layers,
        "speedup_per_layer": round(per_layer_sk / per_layer_ours, 1),
        "cv_auroc_steerlab_mean": round(float(cv_ours[sk_layers].mean()), 4),
        "cv_auroc_sklearn_mean": round(float(np.mean(cv_sk)), 4),
        "cv_auroc_max_abs_diff": round(float(diff.max()), 5),
        "direction_cosine_min": round(min(cos), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="smollm2,70b")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--sklearn-layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/fit_speed_cpu.json")
    args = parser.parse_args()
    results = []
    for shape in args.shapes.split(","):
        result = run(shape, args)
        print(json.dumps(result))
        results.append(result)
    write_record(
        args.out,
        "fit_speed",
        ">= 10x faster than the per-layer scikit-learn loop on CPU at equal AUROC (GPU: 100x)",
        args,
        results,
    )


if __name__ == "__main__":
    main()
