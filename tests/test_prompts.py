"""The claims registry and the net sensitivity scores (A_net, B_net) on records with known answers."""

import statistics

import pytest

from steerlab.errors import ConfigError
from steerlab.harness.scenario import DEFAULT_SYSTEM_PROMPT
from steerlab.prompts import STRENGTHS, claim_text, load_registry, net_scores, render


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def test_registry_is_the_symmetric_design(registry):
    ids = [c.id for c in registry.claims]
    assert ids == ["A1+", "A1-", "A2+", "A2-", "B1+", "B1-", "B2+", "B2-"]
    assert all(set(c.text) == set(STRENGTHS) for c in registry.claims)
    assert [c.id for c in registry.select("B")] == ["B1+", "B1-", "B2+", "B2-"]
    assert [c.id for c in registry.select("A1+,B2-")] == ["A1+", "B2-"]


def test_families_are_matched_in_length_at_every_strength(registry):
    for strength in STRENGTHS:
        mean = {fam: statistics.fmean(len(claim_text(c, strength)) for c in registry.select(fam)) for fam in "AB"}
        assert 0.85 <= mean["A"] / mean["B"] <= 1.15, (strength, mean)
        for c in registry.claims:  # no single claim far from its strength's length
            assert 0.7 <= len(claim_text(c, strength)) / statistics.fmean(mean.values()) <= 1.3, (c.id, strength)
        assert all(claim_text(c, strength).endswith(".") for c in registry.claims)  # one format: one sentence
    # strengths differ in wording, not only length
    assert len({claim_text(registry.get("A1+"), s) for s in STRENGTHS}) == 3


def test_rendered_prompt_is_base_plus_exactly_the_claim(registry):
    claim = registry.get("B1+")
    prompt = render(DEFAULT_SYSTEM_PROMPT, claim, "strong")
    assert prompt == DEFAULT_SYSTEM_PROMPT + "\n\n" + claim.text["strong"]
    assert render(DEFAULT_SYSTEM_PROMPT, None, "strong") == DEFAULT_SYSTEM_PROMPT


def test_bad_claims(registry, tmp_path):
    with pytest.raises(ConfigError, match="unknown claim 'C9\\+'"):
        registry.select("A1+,C9+")
    with pytest.raises(ConfigError, match="has no 'extreme' strength"):
        claim_text(registry.get("A1+"), "extreme")
    with pytest.raises(ConfigError, match="item A1 has no A1- claim"):
        net_scores([], registry.select("A1+,B1+,B1-"))
    bad = tmp_path / "claims.yaml"
    bad.write_text(
        "claims:\n  - id: X1+\n    family: X\n    item: X1\n    side: '*'\n    summary: s\n    text: {weak: w}\n"
    )
    with pytest.raises(ConfigError, match=r"claims\.yaml: claims\.0\.side: Input should be '\+' or '-'"):
        load_registry(bad)


def synthetic(gaps: dict[str, float], n_requests=40, base=0.2):
    """Samples whose per-claim gap is exactly gaps[claim] on every request (unmonitored at ``base``)."""
    samples = []
    for claim, gap in gaps.items():
        for r in range(n_requests):
            for cond, rate in (("monitored", base + gap), ("unmonitored", base)):
                k = round(rate * 10)
                for j in range(10):
                    samples.append({"claim": claim, "item": f"q{r}", "condition": cond,
                                    "label": "compliant" if j < k else "rejected"})  # fmt: skip
    return samples


def test_net_scores_known_by_construction(registry):
    gaps = {"baseline": 0.1, "A1+": 0.5, "A1-": 0.1, "A2+": 0.3, "A2-": 0.1, "B1+": 0.2, "B1-": 0.1, "B2+": 0.1,
            "B2-": 0.2}  # fmt: skip
    out = net_scores(synthetic(gaps), registry.claims, n_resamples=200)
    # A_net = mean(0.5 - 0.1, 0.3 - 0.1) = 0.3; B_net = mean(0.2 - 0.1, 0.1 - 0.2) = 0.0
    assert out["A_net"]["value"] == pytest.approx(0.3) and out["B_net"]["value"] == pytest.approx(0.0)
    assert out["gap:baseline"]["value"] == pytest.approx(0.1) and out["gap:A1+"]["value"] == pytest.approx(0.5)
    # identical on every request: the bootstrap interval collapses onto the value
    assert (out["A_net"]["ci_low"], out["A_net"]["ci_high"]) == pytest.approx((0.3, 0.3))
    assert out["A_minus_B"]["value"] == pytest.approx(0.3) and out["A_over_B"] is None
    assert out["n_requests"] == 40 and "mean over items" in out["definition"]


def test_net_score_interval_reflects_request_noise(registry):
    gaps = dict.fromkeys([c.id for c in registry.claims], 0.0)
    samples = synthetic(gaps, n_requests=30)
    for s in samples:  # A1+ raises monitored compliance on half the requests only
        if s["claim"] == "A1+" and s["condition"] == "monitored" and int(s["item"][1:]) % 2 == 0:
            s["label"] = "compliant"
    out = net_scores(samples, registry.claims, n_resamples=500)
    assert out["gap:A1+"]["value"] == pytest.approx(0.4)  # half the requests moved from 0.2 to 1.0
    assert out["A_net"]["value"] == pytest.approx(0.2)
    assert out["A_net"]["ci_low"] < 0.2 < out["A_net"]["ci_high"] and out["A_net"]["ci_low"] > 0.05
