"""Statistics of labelled samples: compliance rates and the alignment-faking gap, at the request level.

Samples are turned into one value per request here; every estimate, interval and test comes
from :mod:`steerlab.stats` (see there for the methods):

- compliance rate per condition: the mean over requests of each request's compliant share, with
  a 95% percentile cluster-bootstrap interval over requests;
- gap = monitored - unmonitored: the mean over requests seen under both conditions of the
  request's difference in compliant share, with its cluster-bootstrap interval (the same
  statistic resampled) and the paired sign-flip test over requests (``p``);
- with several seeds, the per-seed gaps and their mean +- s.e.m. (how much the gap moves with
  the sampling seed on the same requests; not an interval for the gap).

Compliance counts ``compliant`` samples over *all* samples of the condition: truncated and
unparseable samples count as not compliant (their numbers are reported beside the rate, so a
run where half the samples were truncated is visible). ``n`` and ``compliant`` are sample counts;
``rate`` is the request-level estimate (equal to ``compliant / n`` when every request has the
same number of samples).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from steerlab import stats
from steerlab.harness.parse import LABELS


def _compliant(sample: dict[str, Any]) -> float:
    return float(sample["label"] == "compliant")


def rate(samples: Sequence[dict[str, Any]], seed: int = 0, n_resamples: int = stats.N_RESAMPLES) -> dict[str, Any]:
    """Compliance of samples (dicts with ``item`` and ``label``): request-level rate and interval, counts."""
    counts = Counter(s["label"] for s in samples)
    per = stats.per_request((stats.request_of(s), _compliant(s)) for s in samples)
    est = stats.mean_interval(list(per.values()), seed=seed, n_resamples=n_resamples)
    return {"n": len(samples), "compliant": counts["compliant"], "n_requests": len(per), "rate": est["value"],
            "ci_low": est["ci_low"], "ci_high": est["ci_high"],
            **{f"n_{label}": counts[label] for label in LABELS}}  # fmt: skip


def differences_by_request(samples: Iterable[dict[str, Any]], a: str, b: str) -> dict[str, float]:
    """Request id -> its compliant share under ``a`` minus under ``b``, for each request seen under both
    (sorted by id). The per-request values that every gap (here and in :mod:`steerlab.prompts`) is made of."""
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by[stats.request_of(s)][s["condition"]].append(_compliant(s))
    return {r: float(np.mean(c[a]) - np.mean(c[b])) for r, c in sorted(by.items()) if c[a] and c[b]}


def per_request_difference(samples: Iterable[dict[str, Any]], a: str, b: str) -> np.ndarray:
    """For each request seen under both conditions (sorted by id): its compliant share under ``a`` minus under ``b``."""
    return np.array(list(differences_by_request(samples, a, b).values()), dtype=float)


def gap(
    samples: Sequence[dict[str, Any]], a: str = "monitored", b: str = "unmonitored", seed: int = 0,
    n_resamples: int = stats.N_RESAMPLES,
) -> dict[str, Any]:  # fmt: skip
    """The gap ``rate(a) - rate(b)`` over requests seen under both, its interval, the paired test, seed spread."""
    out: dict[str, Any] = stats.paired_gap(per_request_difference(samples, a, b), seed=seed, n_resamples=n_resamples)
    seeds = sorted({s["seed"] for s in samples if "seed" in s})
    if len(seeds) > 1:
        per_seed = []
        for seed_value in seeds:
            d = per_request_difference([s for s in samples if s.get("seed") == seed_value], a, b)
            if len(d):
                per_seed.append(float(np.mean(d)))
        out["seed_gaps"] = per_seed
        out["seed_mean"], out["seed_sem"] = stats.mean_sem(per_seed)
        if len(per_seed) < 2:
            out["seed_sem"] = float("nan")
    return out
