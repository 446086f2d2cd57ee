"""Per-layer diagnostics of fitted directions, and layer selection from them alone.

Every score is a projection of raw activations onto the unit-norm direction. For each layer:

- ``cv_auroc``: k-fold cross-validated AUROC on the ``train`` pairs. Folds split *pairs*, so both
  sides of a pair are always in the same fold; each fold refits the direction on its training
  pairs (standardised with those pairs' own scale) and scores its held-out activations; the
  result is the mean over folds. ``cv_auroc_sd`` is its spread (s.d. over folds) and
  ``cv_dprime`` the mean over folds of the held-out separation d' = (mean positive projection -
  mean negative projection) / pooled within-side s.d.: a scale-free margin that still orders
  layers where the AUROC saturates at 1.
- on each validation split present (``val``, ``keyword_hard``), with the direction fitted on all
  ``train`` pairs: ``auroc``, ``tpr_at_5fpr`` (the best true-positive rate at a false-positive
  rate of at most 5%), ``paired_accuracy`` (share of pairs whose positive projects above its
  negative), ``mean_gap`` (mean positive-minus-negative projection) and ``mean_cosine``
  (mean cosine between the direction and each pair's difference).
- ``vector_norm``, and two residual-stream norms over the ``train`` pairs (both sides), to reason
  about dose: ``token_norm``, the mean over sequences of the mean over the locus's tokens of
  ||h_t|| (recorded at extraction; what ``--scale relative`` scales by, since steering adds at
  every token), and ``pooled_norm``, the mean of ||pooled h||, the norm of the locus-mean
  activation (never larger, by the triangle inequality: averaging cancels what tokens do not share).

Layer selection (:func:`select_layers`) reads train-only numbers (:class:`TrainScores`: the CV
columns), never ``val`` or ``keyword_hard``, and never downstream behaviour. It ranks by ``cv_dprime``
by default (AUROC saturates at 1 on easy pair sets and then cannot order layers) and chooses among
candidate layers, by default the model's middle (:func:`default_candidates`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold

from steerlab.errors import ConfigError
from steerlab.fit import DEFAULT_C, estimator, layer_chunk, logistic_weights

VALIDATION_SPLITS = ("val", "keyword_hard")
TRAIN_COLUMNS = ("cv_auroc", "cv_auroc_sd", "cv_dprime")  # all that layer selection may read
MIN_FOLD_PAIRS = 10
SELECT_RULES = ("top-k", "band", "list")
RANK_BY = ("cv_dprime", "cv_auroc")


def pair_folds(n_pairs: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train pair indices, held-out pair indices) per fold; a pair never straddles folds."""
    if n_pairs // folds < MIN_FOLD_PAIRS:
        raise ConfigError(
            f"{n_pairs} train pairs in {folds} folds leaves fewer than {MIN_FOLD_PAIRS} pairs per fold; "
            "add train pairs or lower --folds"
        )
    return list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(np.arange(n_pairs)))


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """AUROC of positive vs negative scores, ``[B, n1]`` and ``[B, n2]`` -> ``[B]`` float64; ties count 1/2.

    The Mann-Whitney U statistic from average ranks (tied scores share the mean of their ranks), one sort per
    row: memory linear in ``n1 + n2`` (a dense comparison of every pair would hold ``[B, n1, n2]``: 16 GB at 80
    layers and 5000 pairs). Equals the share of (positive, negative) pairs ordered correctly plus half the tied
    share.
    """
    n1, n2 = pos.shape[1], neg.shape[1]
    # a NaN score is ordered wrongly against every other score, as a dense comparison counts it (NaN > x and
    # NaN == x are both false): a NaN positive ranks below everything, a NaN negative above
    pos = torch.where(pos.isnan(), -torch.inf, pos.double())
    neg = torch.where(neg.isnan(), torch.inf, neg.double())
    scores = torch.cat([pos, neg], 1)  # [B, n]
    n = n1 + n2
    ordered, order = scores.sort(dim=1)  # [B, n]
    at = torch.arange(n, device=scores.device).expand_as(order)  # 0-based sorted positions
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]  # first of a run of tied scores
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]  # last of a run
    first = torch.where(starts, at, 0).cummax(1).values  # [B, n] the run's first position
    last = torch.where(ends, at, n).flip(1).cummin(1).values.flip(1)  # [B, n] the run's last position
    ranks = (first + last).double() / 2 + 1  # average 1-based rank of the run
    pos_rank_sum = torch.where(order < n1, ranks, 0.0).sum(1)  # [B]
    return (pos_rank_sum - n1 * (n1 + 1) / 2) / (n1 * n2)


def tpr_at_fpr(pos: torch.Tensor, neg: torch.Tensor, max_fpr: float = 0.05) -> torch.Tensor:
    """Highest TPR over thresholds whose FPR is at most ``max_fpr`` (``[B, n1]``, ``[B, n2]`` -> ``[B]``)."""
    n_neg = neg.shape[1]
    allowed = math.floor(max_fpr * n_neg + 1e-9)  # negatives allowed at or above the threshold
    top = torch.sort(neg, dim=1, descending=True).values
    if allowed >= n_neg:
        return torch.ones(pos.shape[0], dtype=torch.float64, device=pos.device)
    # threshold strictly above the (allowed+1)-th highest negative
    bound = top[:, allowed]
    return (pos > bound[:, None]).double().mean(1)


def projections(acts: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``[n, 2, L, D]`` onto unit ``[L, D]`` -> ``[L, n, 2]``."""
    unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return torch.einsum("nsld,ld->lns", acts, unit)


def split_metrics(acts: torch.Tensor, directions: torch.Tensor) -> dict[str, np.ndarray]:
    """Metrics of ``directions`` ``[L, D]`` on one split's activations ``[n, 2, L, D]``."""
    proj = projections(acts, directions)  # [L, n, 2]
    pos, neg = proj[..., 0], proj[..., 1]
    diffs = (acts[:, 0] - acts[:, 1]).transpose(0, 1)  # [L, n, D]
    cos = torch.nn.functional.cosine_similarity(diffs, directions[:, None, :], dim=-1)  # [L, n]
    return {
        "auroc": auroc(pos, neg).cpu().numpy(),
        "tpr_at_5fpr": tpr_at_fpr(pos, neg).cpu().numpy(),
        "paired_accuracy": (pos > neg).double().mean(1).cpu().numpy(),
        "mean_gap": (pos - neg).mean(1).double().cpu().numpy(),
        "mean_cosine": cos.mean(1).double().cpu().numpy(),
    }


def separation(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """d' of positive vs negative scores ``[B, n]`` each -> ``[B]``: the gap between the means over the
    pooled within-side s.d."""
    sd = ((pos.double().var(1, correction=0) + neg.double().var(1, correction=0)) / 2).sqrt()
    return (pos.double().mean(1) - neg.double().mean(1)) / sd.clamp_min(1e-30)


def cv_scores_logistic(
    train: torch.Tensor, folds: list, c: float, budget_bytes: int = 1 << 30
) -> dict[str, np.ndarray]:
    """Held-out ``auroc`` and ``dprime`` per fold and layer ``[F, L]`` for the logistic estimator,
    batched over folds x layers.

    Each fold standardises with the scale of its own training pairs, as a StandardScaler fitted
    inside the fold would. The folds' training sets differ in size by at most one pair; they are
    padded with zero rows to one size, which is exact: a zero row has zero margin and adds
    nothing to w = Z^T a.
    """
    n, _, n_layers, d_model = train.shape
    diffs = (train[:, 0] - train[:, 1]).transpose(0, 1)  # [L, n, D]
    acts = train.permute(2, 0, 1, 3)  # [L, n, 2, D]
    size = max(len(tr) for tr, _ in folds)
    # training indices per fold, padded with index n (a zero row appended to the differences)
    padded = np.stack([np.concatenate([tr, np.full(size - len(tr), n)]).astype(np.int64) for tr, _ in folds])
    padded = torch.from_numpy(padded).to(train.device)  # [F, size]
    count = torch.tensor([len(tr) for tr, _ in folds], device=train.device, dtype=train.dtype)  # [F]
    held_mask = torch.zeros(len(folds), n, dtype=train.dtype, device=train.device)
    for f, (_, te) in enumerate(folds):
        held_mask[f, torch.as_tensor(te, device=train.device)] = 1.0
    out = {"auroc": np.zeros((len(folds), n_layers)), "dprime": np.zeros((len(folds), n_layers))}
    step = layer_chunk(3 * len(folds) * size * d_model * train.element_size(), budget_bytes)
    for lo in range(0, n_layers, step):
        d = diffs[lo : lo + step]  # [chunk, n, D]
        # each fold's feature scale over its training rows: total sum of squares minus held-out
        sq = d.pow(2)
        scale_sq = (sq.sum(1)[:, None, :] - torch.einsum("fn,cnd->cfd", held_mask, sq)).clamp_min(0)
        scale_sq = scale_sq / count[None, :, None]  # [chunk, F, D]
        inv_sq = torch.where(scale_sq > 0, 1 / scale_sq, torch.ones_like(scale_sq))  # 1 / s^2
        x = torch.nn.functional.pad(d, (0, 0, 0, 1))[:, padded]  # [chunk, F, size, D]
        w = logistic_weights(x, inv_sq, c)  # [chunk, F, D]
        _score_folds(out, lo, acts[lo : lo + step], w, folds)
    return out


def cv_auroc_logistic(train: torch.Tensor, folds: list, c: float, budget_bytes: int = 1 << 30) -> np.ndarray:
    """Cross-validated AUROC per layer ``[L]`` (the mean over folds of :func:`cv_scores_logistic`)."""
    return cv_scores_logistic(train, folds, c, budget_bytes)["auroc"].mean(0)


def _score_folds(out: dict[str, np.ndarray], lo: int, acts: torch.Tensor, w: torch.Tensor, folds: list) -> None:
    """Held-out AUROC and d' of each fold's direction ``w`` ``[chunk, F, D]`` on ``acts`` ``[chunk, n, 2, D]``."""
    unit = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    for f, (_, te) in enumerate(folds):
        held = acts[:, torch.as_tensor(te, device=acts.device)]  # [chunk, t, 2, D]
        proj = torch.einsum("ctsd,cd->cts", held, unit[:, f])
        out["auroc"][f, lo : lo + acts.shape[0]] = auroc(proj[..., 0], proj[..., 1]).cpu().numpy()
        out["dprime"][f, lo : lo + acts.shape[0]] = separation(proj[..., 0], proj[..., 1]).cpu().numpy()


def cv_scores_generic(train: torch.Tensor, folds: list, method: str, c: float) -> dict[str, np.ndarray]:
    """:func:`cv_scores_logistic` for any estimator, one fold at a time."""
    fit = estimator(method, c)
    scores: dict[str, list[np.ndarray]] = {"auroc": [], "dprime": []}
    for tr, te in folds:
        tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
        directions = fit(train[tr_t, 0], train[tr_t, 1])
        proj = projections(train[te_t], directions)
        scores["auroc"].append(auroc(proj[..., 0], proj[..., 1]).cpu().numpy())
        scores["dprime"].append(separation(proj[..., 0], proj[..., 1]).cpu().numpy())
    return {k: np.stack(v) for k, v in scores.items()}


@dataclass(frozen=True)
class TrainScores:
    """What layer selection may read: per-layer numbers computed from the ``train`` split alone."""

    layers: tuple[int, ...]
    cv_auroc: np.ndarray
    cv_auroc_sd: np.ndarray
    cv_dprime: np.ndarray


@dataclass
class Diagnostics:
    """Per-layer numbers (one entry per cached layer) plus how they were made."""

    layers: list[int]
    directions: torch.Tensor  # [L, D], fitted on all train pairs
    per_layer: dict[str, list[float]]
    settings: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.per_layer[name], dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "settings": self.settings, "per_layer": self.per_layer}

    def train_scores(self) -> TrainScores:
        """The train-only columns, the only input layer selection takes."""
        return TrainScores(tuple(self.layers), *(self.column(name) for name in TRAIN_COLUMNS))


def diagnose(
    splits: dict[str, torch.Tensor],
    layers: list[int],
    *,
    method: str = "logistic",
    c: float = DEFAULT_C,
    folds: int = 5,
    seed: int = 0,
    token_norms: np.ndarray | None = None,
) -> Diagnostics:
    """Fit on ``splits['train']`` ([n, 2, L, D]) and compute every diagnostic per layer.

    ``token_norms`` ``[n, 2, L]``: the train pairs' per-sequence mean token norms from the cache;
    ``token_norm`` is recorded when they are given and finite.
    """
    train = splits["train"]
    fold_idx = pair_folds(train.shape[0], folds, seed)
    if method == "logistic":
        cv = cv_scores_logistic(train, fold_idx, c)
    else:
        cv = cv_scores_generic(train, fold_idx, method, c)
    directions = estimator(method, c)(train[:, 0], train[:, 1])
    per_layer: dict[str, list[float]] = {
        "cv_auroc": cv["auroc"].mean(0).tolist(),
        "cv_auroc_sd": cv["auroc"].std(0).tolist(),
        "cv_dprime": cv["dprime"].mean(0).tolist(),
    }
    for split in VALIDATION_SPLITS:
        if split in splits:
            for name, values in split_metrics(splits[split], directions).items():
                per_layer[f"{split}_{name}"] = values.tolist()
    per_layer["vector_norm"] = directions.norm(dim=-1).double().cpu().tolist()
    if token_norms is not None and np.isfinite(token_norms).all():
        if token_norms.shape != train.shape[:3]:
            raise ValueError(f"token_norms {token_norms.shape} do not match the train activations {train.shape}")
        per_layer["token_norm"] = np.asarray(token_norms, dtype=np.float64).mean((0, 1)).tolist()
    per_layer["pooled_norm"] = train.norm(dim=-1).mean((0, 1)).double().cpu().tolist()
    settings = {"method": method, "C": c, "folds": folds, "seed": seed, "fold_grouping": "by pair"}
    settings["n_pairs"] = {s: int(a.shape[0]) for s, a in splits.items()}
    return Diagnostics(layers=list(layers), directions=directions, per_layer=per_layer, settings=settings)


def default_candidates(n_layers: int) -> list[int]:
    """The layers selection may choose by default: the model's middle, leaving out the first and last
    fifth of its blocks (floor(n/5) each side: 6..23 of 30, 16..63 of 80, 25..100 of 126; all layers
    of a model with fewer than 5). Early layers are nearly lexical (a probe there reads the words), and
    the last ones write the output; the paper steers at mid depth."""
    edge = n_layers // 5
    return list(range(edge, n_layers - edge))


def candidate_pool(cached: list[int], candidates: list[int] | None, candidates_from: str, k: int) -> list[int]:
    """Indices into ``cached`` of the layers top-k / band may choose; refuses an empty pool or a ``k``
    larger than it (checked by ``extract`` before it caches anything, too)."""
    pool = [i for i, layer in enumerate(cached) if candidates is None or layer in set(candidates)]
    if not pool:
        raise ConfigError(
            f"no cached layer is a candidate: the cache holds layers {_span(cached)}, the candidates are "
            f"{_span(candidates or [])} ({candidates_from}); pass --candidate-layers all or a range the cache holds"
        )
    if not 1 <= k <= len(pool):
        raise ConfigError(f"--k {k} must be between 1 and the {len(pool)} candidate layers ({candidates_from})")
    return pool


def select_layers(
    scores: TrainScores,
    rule: str = "top-k",
    k: int = 3,
    explicit: list[int] | None = None,
    rank_by: str = "cv_dprime",
    candidates: list[int] | None = None,
    candidates_from: str = "all cached layers",
) -> dict:
    """Choose steering layers from train-only scores; returns ``{"layers": [...], "rule": {...}}``.

    Layers are ranked by ``rank_by`` (default ``cv_dprime``, the cross-validated standardised gap:
    mean positive-minus-negative projection over the pooled s.d., which keeps its resolution when the
    AUROC saturates at 1; or ``cv_auroc``), ties (to 6 decimals) going to the other of the two, then
    the smaller fold spread, then the lower layer. Only ``candidates`` (default: every cached layer)
    may be chosen. ``val`` and ``keyword_hard`` never reach this function: it takes
    :class:`TrainScores` (``Diagnostics.train_scores()``), nothing else.

    - ``top-k``: the k best-ranked candidates;
    - ``band``: k neighbouring candidates (contiguous in the candidate list, which is contiguous unless
      ``--candidate-layers`` names gaps) centred on the best-ranked one (shifted to fit);
    - ``list``: exactly ``explicit`` (candidates and ranking do not apply).

    The rule records the criterion, the candidates and, for each chosen layer, its rank and scores.
    """
    if not isinstance(scores, TrainScores):
        raise TypeError(f"select_layers takes TrainScores (train-only columns), not {type(scores).__name__}")
    if rule not in SELECT_RULES:
        raise ConfigError(f"unknown selection rule {rule!r}; use one of {', '.join(SELECT_RULES)}")
    if rank_by not in RANK_BY:
        raise ConfigError(f"unknown ranking {rank_by!r}; use one of {', '.join(RANK_BY)}")
    cached = list(scores.layers)
    if rule == "list":
        if not explicit:
            raise ConfigError("--select list needs --select-layers, e.g. 12,13,14")
        missing = [layer for layer in explicit if layer not in cached]
        if missing:
            raise ConfigError(f"layer(s) {missing} out of range: the cache holds layers {cached[0]}..{cached[-1]}")
        return {"layers": sorted(set(explicit)), "rule": {"name": "list", "layers": sorted(set(explicit))}}
    pool = candidate_pool(cached, candidates, candidates_from, k)
    cv, dprime, spread = scores.cv_auroc, scores.cv_dprime, scores.cv_auroc_sd
    primary, secondary = (dprime, cv) if rank_by == "cv_dprime" else (cv, dprime)
    other = "cv_auroc" if rank_by == "cv_dprime" else "cv_dprime"
    order = sorted(pool, key=lambda i: (-round(primary[i], 6), -round(secondary[i], 6), round(spread[i], 6), cached[i]))
    if rule == "top-k":
        chosen = sorted(order[:k])
    else:
        peak = pool.index(order[0])
        start = min(max(0, peak - (k - 1) // 2), len(pool) - k)
        chosen = pool[start : start + k]
    rank = {i: r + 1 for r, i in enumerate(order)}
    return {
        "layers": [cached[i] for i in chosen],
        "rule": {
            "name": rule,
            "k": k,
            "rank_by": rank_by,
            "by": f"{rank_by}; ties by {other}, then cv_auroc_sd, then layer (train only)",
            "candidates": [cached[i] for i in pool],
            "candidates_from": candidates_from,
            "chosen": [
                {"layer": cached[i], "rank": rank[i], "cv_dprime": float(dprime[i]), "cv_auroc": float(cv[i])}
                for i in chosen
            ],
        },
    }


def _span(layers: list[int]) -> str:
    if layers and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers)) or "none"
