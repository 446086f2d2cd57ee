"""Every interval and test steerlab reports, at the level of the request.

The unit of independence is the *request*: the samples of one request (its seeds, its
conditions, its claims or arms) share the request's propensity to comply, so they are not
independent draws. Every statistic here is therefore built from one value per request:

- **Estimator.** A rate, a mean score or a gap is the *mean over requests of a per-request
  value*, each request weighted equally whatever its number of samples: the rate of a condition
  is ``mean_i (k_i / n_i)`` over the requests seen under it; the gap between conditions ``a`` and
  ``b`` is ``mean_i [rate_i(a) - rate_i(b)]`` over the requests seen under both. In a balanced
  run (every request has the same number of samples) this equals the pooled ``k / n``; in an
  unbalanced one (a partial or pooled run) it does not, and this is the number reported.
- **Interval.** A percentile *cluster bootstrap* over requests: draw ``n`` requests with
  replacement (``numpy.random.default_rng(seed).integers``, one ``[n_resamples, n]`` draw),
  recompute *the same statistic* from the drawn requests' values, and take the 2.5 and 97.5
  percentiles of the ``n_resamples`` draws (``numpy.percentile``, linear interpolation). The
  point estimate is that statistic on the requests as they are (every request drawn once), so
  the point and its interval can never disagree about what is being estimated. Rows of one
  request (for example its gap under every claim) are resampled together, so joint statistics
  (differences of gaps, net scores) keep their correlation. The seed and the number of
  resamples are recorded beside the interval (:func:`describe`).
- **Test.** For a gap, a paired *sign-flip* test over requests of the null that a request's
  samples under ``a`` and ``b`` are exchangeable (no effect of the condition): the statistic is
  ``|sum_i d_i|`` of the per-request differences; each ``d_i`` keeps or flips its sign. With at
  most :data:`MAX_EXACT` non-zero differences every one of the ``2^m`` sign patterns is
  enumerated and ``p`` is the exact share at least as extreme (the observed pattern included);
  beyond that ``n_flips`` random patterns (seeded) give ``p = (1 + #extreme) / (1 + n_flips)``.
  Two-sided. With few requests ``p`` cannot be small: 6 requests that all move give ``p = 2/64``.

Per-sample intervals and tests (Wilson, the pooled two-proportion z-test, Fisher's exact test)
treat seeds x requests as independent draws and are too narrow whenever a request has several
samples; steerlab reports none of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from steerlab.errors import ConfigError

CONFIDENCE = 0.95
N_RESAMPLES = 2000  # bootstrap draws per interval
N_FLIPS = 10_000  # random sign patterns of the Monte Carlo sign-flip test
MAX_EXACT = 16  # up to this many non-zero per-request differences the sign-flip test is exact (2^16 patterns)
MIN_CONTROLS_FOR_Z = 5  # below this a control envelope's s.d. is too noisy for a z-score to mean anything

INTERVAL = "percentile cluster bootstrap over requests"
ESTIMATOR = "mean over requests of per-request values (each request weighted equally)"
TEST = "paired sign-flip test over requests (two-sided)"

Statistic = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def describe(seed: int, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """What a summary records about how its intervals and tests were computed."""
    return {"estimator": ESTIMATOR, "interval": INTERVAL, "confidence": confidence, "n_resamples": n_resamples,
            "bootstrap_seed": seed, "test": TEST, "max_exact": MAX_EXACT, "n_flips": N_FLIPS}  # fmt: skip


# ----------------------------------------------------------------------------- per-request values


def request_of(sample: Mapping[str, Any]) -> str:
    """The request a sample belongs to (its ``item``), the unit every statistic resamples."""
    try:
        return sample["item"]
    except KeyError:
        raise ConfigError(
            f"a sample has no request id ('item'; keys: {', '.join(sorted(sample))}): statistics are over "
            "requests, so every sample needs the id of its request"
        ) from None


def per_request(pairs: Iterable[tuple[Hashable, float]]) -> dict[Hashable, float]:
    """``(request, value)`` pairs -> request -> mean of its values, requests in sorted order."""
    acc: dict[Hashable, list[float]] = defaultdict(list)
    for request, value in pairs:
        acc[request].append(float(value))
    return {r: float(np.mean(acc[r])) for r in sorted(acc)}


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (s.d. with ddof 1 over sqrt n) of values that are independent units.

    Use it on per-request values (a request-level s.e.m.) or per-seed values (their spread), never
    on samples; nan for no values, s.e.m. 0 for one value.
    """
    if len(values) == 0:
        return float("nan"), float("nan")
    arr = np.asarray(values, dtype=float)
    sem = float(np.std(arr, ddof=1) / np.sqrt(len(arr))) if len(arr) > 1 else 0.0
    return float(np.mean(arr)), sem


# ----------------------------------------------------------------------------- cluster bootstrap


def resample_counts(n_requests: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each request is drawn in each resample: ``[n_resamples, n_requests]`` (rows sum to n)."""
    idx = np.random.default_rng(seed).integers(0, n_requests, size=(n_resamples, n_requests))  # [B, n]
    idx += np.arange(n_resamples)[:, None] * n_requests  # in place: one [B, n] array at a time
    return np.bincount(idx.ravel(), minlength=n_resamples * n_requests).reshape(n_resamples, n_requests)


def _weighted_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per row of ``values`` [k, n] (NaN: absent), its mean over requests weighted by ``counts`` [B, n]: [B, k]."""
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    out = np.empty((counts.shape[0], values.shape[0]))
    block = max(1, 4_000_000 // max(1, values.shape[1]))  # bound the float copy of counts
    with np.errstate(invalid="ignore", divide="ignore"):
        for lo in range(0, counts.shape[0], block):
            c = counts[lo : lo + block].astype(float)
            out[lo : lo + block] = (c @ filled.T) / (c @ present.T.astype(float))
    return out


def _row_means(means: np.ndarray) -> dict[str, np.ndarray]:
    return {str(i): means[..., i] for i in range(means.shape[-1])}


def cluster_bootstrap(
    values: np.ndarray | Sequence[float] | Sequence[Sequence[float]],
    statistic: Statistic | None = None,
    *,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> dict[str, dict[str, float]]:
    """Point estimates and percentile intervals of statistics of per-request values, resampling requests.

    ``values``: ``[k, n_requests]`` (or ``[n_requests]``), one row per quantity (a condition's
    per-request rate, a claim's per-request gap), one column per request, NaN where a request
    has no value for that row. ``statistic`` maps the rows' means over requests, an array
    ``[..., k]``, to named arrays ``[...]`` (default: each row's mean, named ``"0"``, ``"1"``, ...).
    The point estimate is ``statistic`` of the means over every request once; each bootstrap draw
    is ``statistic`` of the means over ``n`` requests drawn with replacement (a column keeps its
    rows together). Draws where a statistic is undefined (NaN: a row none of whose requests was
    drawn) are left out of its percentiles. ``n_resamples=0``: point estimates only (NaN bounds).
    """
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"values must be [k, n_requests], got shape {arr.shape}")
    statistic = statistic or _row_means
    n = arr.shape[1]
    if n == 0:
        nan = np.full(arr.shape[0], np.nan)
        return {k: {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
                for k in statistic(nan)}  # fmt: skip
    point = statistic(_weighted_means(arr, np.ones((1, n), dtype=np.int64))[0])
    if n_resamples > 0:
        draws = statistic(_weighted_means(arr, resample_counts(n, n_resamples, seed)))
    alpha = 100 * (1 - confidence) / 2
    out = {}
    for key, value in point.items():
        low = high = float("nan")
        if n_resamples > 0:
            d = np.asarray(draws[key], dtype=float)
            d = d[~np.isnan(d)]
            if d.size:
                low, high = (float(x) for x in np.percentile(d, [alpha, 100 - alpha]))
        out[key] = {"value": float(value), "ci_low": low, "ci_high": high}
    return out


def mean_interval(
    values: Sequence[float] | np.ndarray, *, seed: int = 0, n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> dict[str, float]:  # fmt: skip
    """The mean over requests of one value per request, with its cluster-bootstrap interval."""
    return cluster_bootstrap(np.asarray(values, dtype=float), seed=seed, n_resamples=n_resamples,
                             confidence=confidence)["0"]  # fmt: skip


# ----------------------------------------------------------------------------- paired test


def sign_flip_test(
    differences: Sequence[float] | np.ndarray, *, seed: int = 0, n_flips: int = N_FLIPS, max_exact: int = MAX_EXACT
) -> dict[str, Any]:
    """Two-sided paired sign-flip test that the per-request differences are symmetric about 0.

    Statistic ``|sum_i d_i|``. Zero differences cannot change under a flip and are dropped. With
    ``m <= max_exact`` non-zero differences all ``2^m`` sign patterns are enumerated (exact ``p``,
    the observed pattern counted); otherwise ``n_flips`` random patterns (independent fair bits
    from ``default_rng(seed)``) give ``p = (1 + #{|T*| >= |T|}) / (1 + n_flips)``. Returns ``p``, the
    ``method`` (``exact`` or ``monte carlo``), the number of patterns and of non-zero differences.
    """
    d = np.asarray(differences, dtype=float)
    if np.isnan(d).any():
        raise ValueError("sign_flip_test got NaN differences")
    d = d[d != 0]
    m = len(d)
    if m == 0:
        return {"p": 1.0, "method": "exact", "n_patterns": 1, "n_nonzero": 0}
    observed = abs(float(d.sum()))
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))  # equal sums computed in another order still count as ties
    extreme = 0
    if m <= max_exact:
        total = 1 << m
        bits = np.arange(m)
        block = 1 << 14
        for lo in range(0, total, block):
            patterns = np.arange(lo, min(total, lo + block))[:, None]
            signs = 1.0 - 2.0 * ((patterns >> bits) & 1)  # [block, m]
            extreme += int(np.count_nonzero(np.abs(signs @ d) >= observed - tol))
        return {"p": extreme / total, "method": "exact", "n_patterns": total, "n_nonzero": m}
    rng = np.random.default_rng(seed)
    block = max(1, 2_000_000 // m)
    total = float(d.sum())
    for lo in range(0, n_flips, block):
        # one random bit per difference (bit 1: flip it); sum_i s_i d_i = sum d - 2 * (flipped part)
        raw = rng.integers(0, 256, size=(min(block, n_flips - lo), (m + 7) // 8), dtype=np.uint8)
        flipped = np.unpackbits(raw, axis=1, count=m).astype(np.float64)  # [block, m]
        extreme += int(np.count_nonzero(np.abs(total - 2.0 * (flipped @ d)) >= observed - tol))
    return {"p": (1 + extreme) / (1 + n_flips), "method": "monte carlo", "n_patterns": n_flips, "n_nonzero": m}


def paired_gap(
    differences: Sequence[float] | np.ndarray, *, seed: int = 0, n_resamples: int = N_RESAMPLES,
    n_flips: int = N_FLIPS,
) -> dict[str, Any]:  # fmt: skip
    """A gap from per-request differences ``d_i = rate_i(a) - rate_i(b)``: the mean over requests,
    its cluster-bootstrap interval and the paired sign-flip test (keys ``gap``, ``ci_low``,
    ``ci_high``, ``p``, ``p_method``, ``n_requests``)."""
    d = np.asarray(differences, dtype=float)
    est = mean_interval(d, seed=seed, n_resamples=n_resamples)
    if len(d):
        test = sign_flip_test(d, seed=seed, n_flips=n_flips)
        p, method = test["p"], f"sign-flip ({test['method']}, {test['n_patterns']} patterns)"
    else:
        p, method = float("nan"), "no request under both conditions"
    return {"gap": est["value"], "ci_low": est["ci_low"], "ci_high": est["ci_high"], "p": p, "p_method": method,
            "n_requests": int(len(d))}  # fmt: skip


# ----------------------------------------------------------------------------- controls


def control_z(real: float, controls: Sequence[float]) -> tuple[float | None, str | None]:
    """The real effect's z-score against its controls' spread, ``(real - mean) / s.d.``, or
    ``(None, reason)`` where it means nothing: fewer than :data:`MIN_CONTROLS_FOR_Z` controls, or
    controls that do not vary."""
    if len(controls) < MIN_CONTROLS_FOR_Z:
        return None, f"n/a: fewer than {MIN_CONTROLS_FOR_Z} controls"
    sd = float(np.std(np.asarray(controls, dtype=float), ddof=1))
    if not sd > 0 or np.isnan(real):
        return None, "n/a: the controls do not vary" if not sd > 0 else "n/a: no real value"
    return (float(real) - float(np.mean(controls))) / sd, None
