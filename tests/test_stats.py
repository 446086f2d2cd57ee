"""Request-level statistics (steerlab.stats): known answers, a clustered-null simulation, and one
function behind the harness summary, the claim scores and the sweep summary."""

import json
from fractions import Fraction
from itertools import product

import numpy as np
import pytest
import yaml
from conftest import run_cli
from scipy import stats as ss
from scipy.special import expit

from steerlab import stats
from steerlab.errors import ConfigError
from steerlab.harness import metrics
from steerlab.harness.summary import summarise_labels
from steerlab.prompts import Claim, load_registry, net_scores, summarise_claims
from steerlab.runs import summarise

# ----------------------------------------------------------------------------- known answers


def test_cluster_bootstrap_equals_independent_implementations():
    rng = np.random.default_rng(3)
    per_request = rng.beta(0.5, 0.5, size=37)  # one value per request
    got = stats.mean_interval(per_request, seed=11, n_resamples=4000)
    assert got["value"] == pytest.approx(per_request.mean(), abs=1e-12)
    # a brute-force loop over the same draws (default_rng(seed).integers(0, n, (B, n))): equal up to rounding
    idx = np.random.default_rng(11).integers(0, len(per_request), size=(4000, len(per_request)))
    loop = np.percentile([per_request[i].mean() for i in idx], [2.5, 97.5])
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(loop), abs=1e-12)
    # scipy.stats.bootstrap with its own, independent draws: equal within Monte Carlo error
    ref = ss.bootstrap((per_request,), np.mean, n_resamples=4000, method="percentile", rng=np.random.default_rng(99))
    assert got["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=0.015)
    assert got["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=0.015)
    assert stats.mean_interval(per_request, seed=11, n_resamples=4000) == got  # seeded


def test_joint_bootstrap_keeps_a_request_together_and_matches_one_row():
    rng = np.random.default_rng(5)
    a = rng.uniform(size=25)
    b = a + rng.normal(0, 0.05, size=25)  # strongly correlated with a across requests
    joint = stats.cluster_bootstrap(np.stack([a, b]), lambda m: {"diff": m[..., 0] - m[..., 1]}, seed=2)
    # resampling the per-request differences alone with the same seed draws the same requests
    alone = stats.mean_interval(a - b, seed=2)
    assert (joint["diff"]["ci_low"], joint["diff"]["ci_high"]) == pytest.approx(
        (alone["ci_low"], alone["ci_high"]), abs=1e-12
    )
    # had the rows been resampled independently, the interval of the difference would be far wider
    width = joint["diff"]["ci_high"] - joint["diff"]["ci_low"]
    ia, ib = stats.mean_interval(a, seed=2), stats.mean_interval(b, seed=3)
    assert width < 0.3 * ((ia["ci_high"] - ia["ci_low"]) + (ib["ci_high"] - ib["ci_low"])) / 2


def test_sign_flip_p_values_enumerated_by_hand():
    # d = (0.5, -0.25, 1): the 8 sign patterns give sums +-1.25, +-0.75, +-1.75, +-0.25; |T| >= 1.25 in 4 of 8
    out = stats.sign_flip_test([0.5, -0.25, 1.0])
    assert out == {"p": 0.5, "method": "exact", "n_patterns": 8, "n_nonzero": 3}
    assert stats.sign_flip_test([0.5, 0.0, -0.25, 1.0, 0.0])["p"] == 0.5  # zero differences cannot flip
    # four +-1: sums 4, 2, 0, -2, -4 with counts 1, 4, 6, 4, 1; observed |T| = 2: (1 + 4 + 4 + 1) / 16
    assert stats.sign_flip_test([1, 1, 1, -1])["p"] == 10 / 16
    assert stats.sign_flip_test([1.0] * 6)["p"] == 2 / 64  # six requests that all move: p cannot go lower
    assert stats.sign_flip_test([0.0, 0.0])["p"] == 1.0
    # ties computed in another summation order still count (0.1 + 0.2 != 0.3 in floating point):
    # the p-value equals an enumeration in exact rational arithmetic
    text = ["0.3", "-0.1", "-0.2", "0.05", "0.15", "0.1"]
    exact = [Fraction(x) for x in text]
    observed = abs(sum(exact))
    flips = [abs(sum(s * x for s, x in zip(signs, exact, strict=True))) for signs in product((1, -1), repeat=6)]
    want = sum(f >= observed for f in flips) / 64
    assert stats.sign_flip_test([float(x) for x in text])["p"] == want and want not in (1.0, 2 / 64)


def test_sign_flip_monte_carlo_agrees_with_exact_and_carries_the_plus_one():
    d = np.random.default_rng(8).normal(0.15, 1.0, size=18)
    exact = stats.sign_flip_test(d, max_exact=18)
    mc = stats.sign_flip_test(d, max_exact=0, n_flips=20_000, seed=4)
    assert exact["method"] == "exact" and exact["n_patterns"] == 2**18 and mc["method"] == "monte carlo"
    sd = np.sqrt(exact["p"] * (1 - exact["p"]) / 20_000)
    assert abs(mc["p"] - exact["p"]) < 4 * sd + 1e-4
    # every request moves the same way: no random pattern is as extreme, p = 1 / (1 + n_flips)
    assert stats.sign_flip_test([1.0] * 40, n_flips=999)["p"] == 1 / 1000


def unbalanced_samples():
    """10 heavy requests (20 samples per condition, half compliant in both: d = 0) and 10 light ones
    (1 sample per condition, compliant only when monitored: d = 1)."""
    samples = []
    for r in range(20):
        heavy = r < 10
        for cond in ("monitored", "unmonitored"):
            for j in range(20 if heavy else 1):
                comply = j % 2 == 0 if heavy else cond == "monitored"
                samples.append({"item": f"q{r:02d}", "condition": cond, "seed": j, "vector": "none", "arm": "none",
                                "multiplier": 0.0, "claim": "baseline", "text": "x",
                                "label": "compliant" if comply else "rejected"})  # fmt: skip
    return samples


def test_point_estimate_is_the_statistic_resampled_on_an_unbalanced_run():
    samples = unbalanced_samples()
    mon = [s for s in samples if s["condition"] == "monitored"]
    pooled_rate = sum(s["label"] == "compliant" for s in mon) / len(mon)  # 110 / 210
    pooled_gap = pooled_rate - 100 / 210
    r = metrics.rate(mon)
    assert (r["n"], r["compliant"], r["n_requests"]) == (210, 110, 20)
    # (10 x 0.5 + 10 x 1) / 20 requests, against the pooled 110 / 210
    assert r["rate"] == pytest.approx(0.75) and pooled_rate == pytest.approx(0.5238, abs=1e-4)
    g = metrics.gap(samples, n_resamples=4000)
    assert g["gap"] == pytest.approx(0.5) and g["n_requests"] == 20
    # the bootstrap resamples the same statistic: its draws centre on the point, not on the pooled gap
    d = metrics.per_request_difference(samples, "monitored", "unmonitored")
    counts = stats.resample_counts(len(d), 4000, seed=0)
    draws = counts @ d / len(d)
    assert draws.mean() == pytest.approx(g["gap"], abs=0.01)
    assert (g["ci_low"], g["ci_high"]) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])), abs=1e-12)
    assert g["ci_low"] < g["gap"] < g["ci_high"] and not g["ci_low"] < pooled_gap < g["ci_high"]
    # ten light requests each moved from 0 to 1, the heavy ones not at all: p = 2 / 2^10
    assert g["p"] == 2 / 2**10 and g["p_method"].startswith("sign-flip (exact")
    with pytest.raises(ConfigError, match="no request id"):
        metrics.rate([{"label": "compliant"}])


# ----------------------------------------------------------------------------- clustered null


def pooled_z_p(k1, n1, k2, n2):
    """The old per-sample test: pooled two-proportion z-test, two-sided (from the formula)."""
    p = (k1 + k2) / (n1 + n2)
    se = np.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    z = (k1 / n1 - k2 / n2) / se if se > 0 else 0.0
    return 2 * ss.norm.sf(abs(z))


def wilson(k, n, z=1.959963984540054):
    """The old per-sample interval (Wilson score), from the formula."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def simulate(runs, tier_effect_sd, n_requests=40, n_seeds=10, seed=1):
    """Clustered data with no true monitored - unmonitored difference on average.

    Request i's compliance propensity is expit(eta_i +- delta_i) (monitored +, unmonitored -),
    eta_i ~ N(0, 2^2) (a strong spread: most requests almost always or almost never comply) and
    delta_i ~ N(0, tier_effect_sd^2) a request-specific reaction to the tier tag, symmetric about
    0, so the population gap is exactly 0. ``n_seeds`` independent samples per request and condition.
    Returns rejection rates at 5% of the old pooled z-test and of the new paired test, and the
    coverage of the population's monitored compliance by the Wilson and the cluster-bootstrap intervals.
    """
    rng = np.random.default_rng(seed)
    big = np.random.default_rng(0).normal(0, 2, 400_000)
    truth = expit(big + np.random.default_rng(1).normal(0, tier_effect_sd, big.size)).mean()
    old = new = cover_old = cover_new = 0
    for run in range(runs):
        eta = rng.normal(0, 2.0, n_requests)
        delta = rng.normal(0, tier_effect_sd, n_requests)
        km = rng.binomial(n_seeds, expit(eta + delta))
        ku = rng.binomial(n_seeds, expit(eta - delta))
        n = n_requests * n_seeds
        old += pooled_z_p(km.sum(), n, ku.sum(), n) < 0.05
        new += stats.paired_gap(km / n_seeds - ku / n_seeds, seed=run, n_resamples=0)["p"] < 0.05
        lo, hi = wilson(km.sum(), n)
        cover_old += lo <= truth <= hi
        ci = stats.mean_interval(km / n_seeds, seed=run, n_resamples=1000)
        cover_new += ci["ci_low"] <= truth <= ci["ci_high"]
    return {"old_fpr": old / runs, "new_fpr": new / runs, "old_cover": cover_old / runs, "new_cover": cover_new / runs}


def band(p, runs, z=3.2905):  # two-sided 99.9% normal band of a binomial share
    half = z * np.sqrt(p * (1 - p) / runs)
    return p - half, p + half


RUNS = 1000


def test_clustered_null_old_test_rejects_too_often_new_test_holds_its_level():
    """Requests react to the tier tag in opposite directions (no effect on average): the pooled
    z-test counts 10 seeds of a request as 10 independent draws and rejects far more than 5%."""
    out = simulate(RUNS, tier_effect_sd=1.0)
    assert out["old_fpr"] > 0.10, out  # measured 0.218
    assert out["new_fpr"] <= band(0.05, RUNS)[1], out  # measured 0.044 (1000 runs, seed 1)
    assert band(0.95, RUNS)[0] <= out["new_cover"], out  # measured 0.942
    assert out["old_cover"] < 0.80, out  # measured 0.628


def test_shared_propensity_null_new_test_and_interval_hold():
    """Both conditions share the request's propensity. The request effect cancels in the paired
    difference (here the old pooled z-test happens to be conservative), but the per-sample Wilson
    interval of a condition's rate covers the population rate far less often than 95%."""
    out = simulate(RUNS, tier_effect_sd=0.0, seed=2)
    assert out["new_fpr"] <= band(0.05, RUNS)[1], out  # measured 0.038
    assert out["old_fpr"] < 0.05, out  # measured 0.011: the z-test is not what fails here; the interval is
    assert band(0.95, RUNS)[0] <= out["new_cover"] <= band(0.95, RUNS)[1], out  # measured 0.945
    assert out["old_cover"] < 0.80, out  # measured 0.648


# ----------------------------------------------------------------------------- one function, every summary


def scripted_run(n_requests=12, seeds=(0, 1, 2)):
    """A recorded-looking sample list: baseline and two claims (A1+ / A1-) on requests with their own
    propensities, three seeds, and an unbalanced corner (one request lost two baseline samples)."""
    rng = np.random.default_rng(7)
    propensity = rng.beta(0.4, 0.4, n_requests)
    lift = {"baseline": 0.15, "A1+": 0.35, "A1-": 0.0}
    samples = []
    for claim, up in lift.items():
        for r in range(n_requests):
            for cond in ("monitored", "unmonitored"):
                p = min(1.0, propensity[r] + (up if cond == "monitored" else 0.0))
                for seed in seeds:
                    if claim == "baseline" and r == 3 and cond == "monitored" and seed > 0:
                        continue  # a partial request: 1 monitored sample against 3 unmonitored
                    comply = rng.uniform() < p
                    samples.append({"item": f"q{r:02d}", "claim": claim, "condition": cond, "seed": seed,
                                    "vector": "none", "arm": "none", "multiplier": 0.0,
                                    "label": "compliant" if comply else "rejected",
                                    "text": "yes" if comply else "no"})  # fmt: skip
    return samples


def test_every_summary_reports_the_same_interval_from_the_same_function(monkeypatch):
    calls = []
    real = stats.cluster_bootstrap

    def spy(values, statistic=None, **kw):
        calls.append(np.asarray(values).shape)
        return real(values, statistic, **kw)

    monkeypatch.setattr(stats, "cluster_bootstrap", spy)
    samples = scripted_run()
    baseline = [s for s in samples if s["claim"] == "baseline"]
    claims = load_registry().select("A1+,A1-")

    harness = summarise_labels(baseline, seed=5)
    n_harness = len(calls)
    by_claim = summarise_claims(samples, claims, seed=5)
    n_claims = len(calls) - n_harness
    sweep_cells = summarise(baseline, lambda text, _r: float(text == "yes"), seed=5)
    n_sweep = len(calls) - n_harness - n_claims
    assert n_harness and n_claims and n_sweep  # each path went through stats.cluster_bootstrap

    (g,) = harness["gaps"]
    row = next(r for r in by_claim["claims"] if r["claim"] == "baseline")
    net = by_claim["net"]
    keys = ("gap", "ci_low", "ci_high")
    assert tuple(row[k] for k in keys) == tuple(g[k] for k in keys)
    net_gap = net["gap:baseline"]
    assert (net_gap["value"], net_gap["ci_low"], net_gap["ci_high"]) == pytest.approx(
        (g["gap"], g["ci_low"], g["ci_high"]), abs=1e-12
    )
    assert row["p"] == g["p"] and g["p_method"].startswith("sign-flip")
    # the gap is the mean over requests of per-request differences (request q03 counts once)
    d = metrics.per_request_difference(baseline, "monitored", "unmonitored")
    assert len(d) == 12 and g["gap"] == pytest.approx(d.mean(), abs=1e-12)
    assert (g["ci_low"], g["ci_high"]) == pytest.approx(
        tuple(np.percentile(stats.resample_counts(12, stats.N_RESAMPLES, 5) @ d / 12, [2.5, 97.5])), abs=1e-12
    )
    # per condition: the harness cell's rate and interval are the plain sweep summary's real_mean and interval
    cells = {c["condition"]: c for c in harness["cells"]}
    for cell in sweep_cells:
        c = cells[cell["condition"]]
        assert (cell["real_mean"], cell["real_ci_low"], cell["real_ci_high"]) == (c["rate"], c["ci_low"], c["ci_high"])
        assert cell["n_requests"] == c["n_requests"] == 12
    # the claim rows and the net scores record how they were computed
    assert harness["statistics"] == by_claim["statistics"] == stats.describe(5)
    assert net["statistics"]["n_resamples"] == stats.N_RESAMPLES and net["statistics"]["bootstrap_seed"] == 5


# ----------------------------------------------------------------------------- 14d: claims by their declared fields


CUSTOM = """
claims:
  - {id: hope_up, family: A, item: hope, side: "+", summary: s, text: {standard: "They hope to see it."}}
  - {id: hope_down, family: A, item: hope, side: "-", summary: s, text: {standard: "They hope not to."}}
  - {id: B1-, family: B, item: B1, side: "+", summary: named backwards on purpose, text: {standard: "x."}}
  - {id: B1+, family: B, item: B1, side: "-", summary: named backwards on purpose, text: {standard: "y."}}
"""


def known_gaps(gaps, n_requests=8, n_seeds=10, base=0.2):
    """Samples whose gap under claim c is exactly gaps[c] on every request."""
    samples = []
    for claim, gap in gaps.items():
        for r in range(n_requests):
            for cond, rate in (("monitored", base + gap), ("unmonitored", base)):
                for j in range(n_seeds):
                    samples.append({"claim": claim, "item": f"q{r}", "condition": cond, "seed": 0,
                                    "label": "compliant" if j < round(rate * n_seeds) else "rejected"})  # fmt: skip
    return samples


def test_net_scores_read_item_and_side_from_the_registry_not_the_id(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text(CUSTOM)
    claims = load_registry(path).claims
    out = net_scores(known_gaps({"hope_up": 0.5, "hope_down": 0.1, "B1-": 0.4, "B1+": 0.1}), claims, n_resamples=50)
    assert out["A_net"]["value"] == pytest.approx(0.4)  # gap(hope_up) - gap(hope_down)
    # B1- is declared side +: B_net = gap(B1-) - gap(B1+) = +0.3 (reading the id would give -0.3)
    assert out["B_net"]["value"] == pytest.approx(0.3) and out["A_minus_B"]["value"] == pytest.approx(0.1)
    assert out["gap:hope_up"]["value"] == pytest.approx(0.5) and out["families"] == ["A", "B"]
    twice = [*claims, Claim(id="hope_again", family="A", item="hope", side="+", summary="s", text={"standard": "z."})]
    with pytest.raises(ConfigError, match=r"item hope has two \+ claims \(hope_up, hope_again\)"):
        net_scores([], twice)


# ----------------------------------------------------------------------------- 14e: z needs 5 controls


def test_z_score_needs_five_controls():
    assert stats.control_z(0.9, [0.1, 0.3, 0.2, 0.2]) == (None, "n/a: fewer than 5 controls")
    controls = [0.1, 0.3, 0.2, 0.2, 0.2]  # mean 0.2, s.d. sqrt(0.02 / 4)
    z, note = stats.control_z(0.9, controls)
    assert note is None and z == pytest.approx(0.7 / np.sqrt(0.005))
    assert stats.control_z(0.9, [0.2] * 5) == (None, "n/a: the controls do not vary")
    records = [{"vector": "v", "arm": arm, "multiplier": 1.0, "condition": "c", "text": str(v), "item": f"q{p}"}
               for arm, v in [("real", 0.9)] + [(f"control{i}", c) for i, c in enumerate(controls)]
               for p in range(3)]  # fmt: skip
    (cell,) = summarise(records, lambda text, _r: float(text))
    assert cell["z"] == pytest.approx(z) and "z_note" not in cell and cell["n_controls"] == 5
    (cell,) = summarise([r for r in records if r["arm"] != "control4"], lambda text, _r: float(text))
    assert cell["z"] is None and cell["z_note"] == "n/a: fewer than 5 controls"


def test_sweep_command_prints_z_as_not_available(tiny_dir, tiny_vector, tmp_path, capsys, monkeypatch):
    from steerlab import cli

    cfg = tmp_path / "plain.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_dir), "vectors": [str(tiny_vector)], "controls": 2, "multipliers": [0, 4],
        "prompts": "configs/requests/benign.jsonl", "limit": 2, "max_new_tokens": 2, "scorer": ".",
        "out": str(tmp_path / "run"),
    }))  # fmt: skip
    monkeypatch.setattr(cli.out, "_width", 250)  # one table row per line
    code, out, err = run_cli(["sweep", "--config", cfg], capsys)
    assert code == 0, err
    assert out.count("n/a (fewer than 5 controls)") == 2  # one row per multiplier
    cells = json.loads((tmp_path / "run" / "summary.json").read_text())["cells"]
    assert all(c["z"] is None and c["z_note"] == "n/a: fewer than 5 controls" for c in cells)


def test_profile_gap_bars_find_claims_by_declared_item_and_side(tmp_path):
    """The profile figure's bars read each item's + and - claim by the registry's fields too."""
    from steerlab.profiles import Profile

    path = tmp_path / "custom.yaml"
    path.write_text(CUSTOM)
    claims = load_registry(path).claims
    net = net_scores(known_gaps({"hope_up": 0.5, "hope_down": 0.1, "B1-": 0.4, "B1+": 0.1}), claims, n_resamples=50)
    bars = Profile("m", "prompt", "", ["run"], claims, net).gap_bars()
    assert bars["items"] == ["hope", "B1"]
    assert bars["plus_value"] == pytest.approx([0.5, 0.4]) and bars["minus_value"] == pytest.approx([0.1, 0.1])
