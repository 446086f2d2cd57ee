"""Conditional steering (steerlab.conditions): decided per row on the prompt, kept for decoding."""

import pytest
import torch

from steerlab.backends.base import Request, Sampling
from steerlab.backends.hf import HFBackend, left_pad
from steerlab.conditions import Condition, ConditionError, load_condition, prompt_scores
from steerlab.steer import SteeringSetting, steerer_for
from steerlab.vectors import SteeringVector

TEXTS = ["The user asks for a short answer.", "Spell this backwards", "Convert 12 kilometres to miles, please.",
         "Tell me about the weather today in a few words."]  # fmt: skip


def vector(tiny, seed, layers=(2,), scale=1.0):
    g = torch.Generator().manual_seed(seed)
    directions = scale * torch.randn(tiny.n_layers, tiny.d_model, generator=g)
    return SteeringVector(
        directions, tuple(range(tiny.n_layers)), tuple(layers), tiny.fingerprint.to_dict(), f"v{seed}"
    )


def direction(tiny, seed):
    return torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(seed))


def reference_scores(tiny, prompts, layer, w, statistic="cosine"):
    """Each prompt alone (no padding), its block ``layer`` output by output_hidden_states: mean cosine with w."""
    u = w / w.norm()
    out = []
    for ids in prompts:
        with torch.inference_mode():
            h = tiny.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer + 1][0]  # [seq, d]
        per = h @ u / h.norm(dim=-1) if statistic == "cosine" else h @ u
        out.append(float(per.mean()))
    return out


def midpoint(scores):
    ordered = sorted(scores)
    return (ordered[1] + ordered[2]) / 2


def requests(texts, setting, n=10):
    s = Sampling(max_new_tokens=n)
    return [Request([{"role": "user", "content": t}], s, setting, id=f"r{i}") for i, t in enumerate(texts)]


@pytest.mark.parametrize("cond_layer", [1, 3])  # before the steered layer (same pass), after it (a pre-pass)
def test_rows_above_and_below_threshold_in_one_batch(tiny, cond_layer):
    backend = HFBackend(tiny, batch_size=8)
    prompts = backend.prompt_ids(requests(TEXTS, None))
    w = direction(tiny, 11)
    scores = reference_scores(tiny, prompts, cond_layer, w)
    threshold = midpoint(scores)  # two prompts above, two below
    cond = Condition(w, cond_layer, threshold, ">", name="planted")
    v = vector(tiny, 1, layers=(2,), scale=3.0)
    conditional = backend.generate(requests(TEXTS, SteeringSetting(v, 1.0, condition=cond)))
    always = backend.generate(requests(TEXTS, SteeringSetting(v, 1.0)))
    never = backend.generate(requests(TEXTS, None))
    for i, r in enumerate(conditional):
        above = scores[i] > threshold
        assert r.condition_met is above
        assert r.condition_score == pytest.approx(scores[i], abs=1e-5)  # padding excluded: equals the prompt alone
        assert r.text == (always if above else never)[i].text
    assert any(always[i].text != never[i].text for i in range(4) if scores[i] > threshold)
    assert never[0].condition_met is None and always[0].condition_met is None


def test_untouched_rows_have_bit_identical_logits(tiny):
    backend = HFBackend(tiny)
    prompts = backend.prompt_ids(requests(TEXTS, None))
    ids, mask, positions = left_pad(prompts, tiny.tokenizer.pad_token_id)
    w = direction(tiny, 12)
    scores = reference_scores(tiny, prompts, 0, w, "projection")
    cond = Condition(w, 0, midpoint(scores), "<", statistic="projection")
    v = vector(tiny, 2, layers=(1, 2))
    settings = [SteeringSetting(v, 2.0, condition=cond), SteeringSetting(v, 2.0)]

    def run(rows):
        with steerer_for(tiny.blocks, settings, tiny.d_model) as steer, torch.inference_mode():
            steer.set_rows(rows)
            steer.start_batch(mask)
            logits = tiny.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            return logits, steer.decisions()

    gated, decided = run([1, 1, 1, 1])
    plain, _ = run([0, 0, 0, 0])
    steered, undecided = run([2, 2, 2, 2])
    assert undecided == [(None, None)] * 4
    below = [s < cond.threshold for s in scores]
    assert [d[0] for d in decided] == below and any(below) and not all(below)
    for b in range(4):
        assert torch.equal(gated[b], steered[b] if below[b] else plain[b])


def test_prompt_scores_match_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    hidden, w = torch.randn(2, 5, 8, generator=g), torch.randn(2, 8, generator=g)
    w = w / w.norm(dim=-1, keepdim=True)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got = prompt_scores(hidden, mask, w, torch.tensor([True, False]))
    import numpy as np

    h = hidden.numpy()
    cos0 = np.mean([h[0, t] @ w[0].numpy() / np.linalg.norm(h[0, t]) for t in (2, 3, 4)])
    proj1 = np.mean([h[1, t] @ w[1].numpy() for t in range(5)])
    np.testing.assert_allclose(got.numpy(), [cos0, proj1], rtol=1e-5)


def test_condition_file_round_trip_and_refusals(tiny, tmp_path):
    import json

    cond = Condition(direction(tiny, 3), 2, 0.25, "<", "projection", "toy", tiny.fingerprint.to_dict())
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cond.record()))
    back = load_condition(path, expect=tiny.fingerprint)
    assert (back.layer, back.threshold, back.comparator, back.statistic) == (2, 0.25, "<", "projection")
    torch.testing.assert_close(back.direction, cond.direction)
    other = dict(cond.record(), model=dict(tiny.fingerprint.to_dict(), embed_hash="0" * 16))
    path.write_text(json.dumps(other))
    with pytest.raises(ConditionError, match="fitted on another model"):
        load_condition(path, expect=tiny.fingerprint)
    path.write_text(json.dumps(dict(cond.record(), layer=99)))
    with pytest.raises(ConditionError, match="reads layer 99"):
        load_condition(path, expect=tiny.fingerprint)
    with pytest.raises(ConditionError, match="comparator"):
        Condition(direction(tiny, 3), 0, 0.0, ">=")  # type: ignore[arg-type]


def test_compiled_decode_path_matches_eager_with_operators_and_conditions(tiny):
    """The compiled path (static buffers, one graph) writes the eager path's tokens and decisions for a call that
    mixes addition, ablation, clamping and conditions read before and after the steered layer."""
    from torch._dynamo.testing import CompileCounterWithBackend

    eager = HFBackend(tiny, batch_size=3, compile=False)
    compiled = HFBackend(tiny, batch_size=3, compile=True, compiler=CompileCounterWithBackend("inductor"))
    prompts = eager.prompt_ids(requests(TEXTS, None))
    w = direction(tiny, 21)
    early = Condition(w, 1, midpoint(reference_scores(tiny, prompts, 1, w)), ">")
    late = Condition(w, 3, midpoint(reference_scores(tiny, prompts, 3, w)), "<")
    v = vector(tiny, 4, layers=(2,), scale=3.0)
    settings = [SteeringSetting(v, 1.0, condition=early), SteeringSetting(v, 0.0, operator="ablate"),
                SteeringSetting(v, 0.5, operator="clamp", bounds=(-0.2, 0.2), condition=late),
                SteeringSetting(v, -1.0)]  # fmt: skip
    reqs = [r for s in settings for r in requests(TEXTS, s, n=8)]
    reqs = [Request(r.messages, r.sampling, r.steering, id=f"q{i}") for i, r in enumerate(reqs)]
    want = [(r.text, r.condition_met, r.condition_score) for r in eager.generate(reqs)]
    got = [(r.text, r.condition_met, r.condition_score) for r in compiled.generate(reqs)]
    assert [g[:2] for g in got] == [w_[:2] for w_ in want]
    assert [g[2] for g in got] == pytest.approx([w_[2] for w_ in want], abs=1e-6, nan_ok=True)
    assert {m for _, m, _ in want} == {True, False, None}


def test_nnsight_backend_matches_hf_with_operators_and_conditions(tiny):
    """The nnsight trace body (one batched intervention per layer and step) applies the same operators and conditions
    as the HF hooks: same tokens, same decisions and scores."""
    pytest.importorskip("nnsight")
    from steerlab.backends.nnsight import NNsightBackend
    from steerlab.errors import ConfigError
    from steerlab.nnsight_model import wrap_local

    hf = HFBackend(tiny, batch_size=4)
    nn = NNsightBackend(wrap_local(tiny), batch_size=4)
    prompts = hf.prompt_ids(requests(TEXTS, None))
    w = direction(tiny, 31)
    cond = Condition(w, 1, midpoint(reference_scores(tiny, prompts, 1, w)), ">")
    v = vector(tiny, 5, layers=(1, 2), scale=3.0)
    settings = [SteeringSetting(v, 1.0, condition=cond), SteeringSetting(v, 0.0, operator="ablate"),
                SteeringSetting(v, 0.5, operator="clamp", bounds=(-0.2, 0.2), condition=cond)]  # fmt: skip
    reqs = [r for s in settings for r in requests(TEXTS, s, n=6)]
    reqs = [Request(r.messages, r.sampling, r.steering, id=f"q{i}") for i, r in enumerate(reqs)]
    want = hf.generate(reqs)
    got = nn.generate(reqs)
    assert [(r.text, r.condition_met) for r in got] == [(r.text, r.condition_met) for r in want]
    assert [r.condition_score for r in got] == pytest.approx([r.condition_score for r in want], abs=1e-5)
    assert {r.condition_met for r in want} == {True, False, None}
    late = Condition(w, 3, 0.0, ">")
    with pytest.raises(ConfigError, match="at or before the first steered layer"):
        nn.generate(requests(TEXTS[:1], SteeringSetting(v, 1.0, condition=late)))


def test_conditions_at_different_layers_in_one_call_gate_each_row_before_its_first_steered_layer(tiny):
    """Setting A's condition reads layer 0 and A steers from layer 0; setting B's reads layer 2. A row of A whose
    condition fails must be unsteered from layer 0 on, whatever B's rows in the batch do (review finding F2)."""
    backend = HFBackend(tiny, batch_size=8)
    prompts = backend.prompt_ids(requests(TEXTS, None))
    w = direction(tiny, 41)
    a_cond = Condition(w, 0, max(reference_scores(tiny, prompts, 0, w)) + 1.0, ">")  # fails for every prompt
    b_cond = Condition(w, 2, min(reference_scores(tiny, prompts, 2, w)) - 1.0, ">")  # passes for every prompt
    v = vector(tiny, 6, layers=(0, 1, 2, 3), scale=3.0)
    a, b = (
        SteeringSetting(v, 1.0, condition=a_cond),
        SteeringSetting(vector(tiny, 7, layers=(3,)), 1.0, condition=b_cond),
    )
    alone = backend.generate(requests(TEXTS[:3], a))
    mixed = backend.generate([*requests(TEXTS[:3], a), Request([{"role": "user", "content": TEXTS[3]}],
                                                               Sampling(max_new_tokens=10), b, id="b")])  # fmt: skip
    never = backend.generate(requests(TEXTS[:3], None))
    assert [r.text for r in mixed[:3]] == [r.text for r in alone] == [r.text for r in never]
    assert [r.condition_met for r in mixed] == [False, False, False, True]


def test_a_projecting_call_then_a_plain_call_on_the_compiled_path(tiny):
    """The static steerer keeps its projection buffers after an ablating call; a later adding or unsteered call must
    run (review finding F1) and write the eager tokens."""
    from torch._dynamo.testing import CompileCounterWithBackend

    compiled = HFBackend(tiny, batch_size=3, compile=True, compiler=CompileCounterWithBackend("inductor"))
    eager = HFBackend(tiny, batch_size=3, compile=False)
    v = vector(tiny, 8, layers=(1, 2))
    for setting in (SteeringSetting(v, 0.0, operator="ablate"), SteeringSetting(v, 1.0), None,
                    SteeringSetting(v, 0.5, operator="clamp", bounds=(-1, 1))):  # fmt: skip
        reqs = requests(TEXTS, setting, n=5)
        assert [r.text for r in compiled.generate(reqs)] == [r.text for r in eager.generate(reqs)]
