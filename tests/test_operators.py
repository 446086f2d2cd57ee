"""Ablation and clamping beside addition (steerlab.steer operators): known answers on the tiny model."""

import math

import pytest
import torch

from steerlab.backends.base import Request, Sampling
from steerlab.backends.hf import HFBackend
from steerlab.errors import ConfigError
from steerlab.steer import SteeringSetting, steerer_for
from steerlab.vectors import SteeringVector


def vector(tiny, seed, layers=(1,), scale=1.0):
    g = torch.Generator().manual_seed(seed)
    directions = scale * torch.randn(tiny.n_layers, tiny.d_model, generator=g)
    return SteeringVector(
        directions, tuple(range(tiny.n_layers)), tuple(layers), tiny.fingerprint.to_dict(), f"v{seed}"
    )


TEXTS = ["The user asks for a short answer.", "Spell this backwards", "Convert 12 kilometres to miles, please."]


def batch_of(tiny, texts):
    return tiny.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)


def around(tiny, layer, settings, rows, texts=TEXTS):
    """(block output before steering, after steering, logits) at ``layer`` for ``rows``."""
    seen = {}

    def before(_m, _a, out):
        seen["before"] = out[0].clone() if isinstance(out, tuple) else out.clone()

    def after(_m, _a, out):
        seen["after"] = out[0].clone() if isinstance(out, tuple) else out.clone()

    h0 = tiny.blocks[layer].register_forward_hook(before)  # runs before the steerer's hook
    steer = steerer_for(tiny.blocks, settings, tiny.d_model).install()
    h1 = tiny.blocks[layer].register_forward_hook(after)  # and this one after it
    try:
        steer.set_rows(rows)
        with torch.inference_mode():
            logits = tiny.model(**batch_of(tiny, texts)).logits
    finally:
        h0.remove(), h1.remove(), steer.remove()
    return seen["before"], seen["after"], logits


def test_ablation_zeroes_the_projection_and_moves_nothing_else(tiny):
    v = vector(tiny, 1)
    u = v.at(1) / v.at(1).norm()
    pre, post, _ = around(tiny, 1, [SteeringSetting(v, 0.0, operator="ablate")], [1, 1, 0])
    proj = post @ u  # [batch, seq]
    scale = pre.norm(dim=-1).max()
    assert proj[:2].abs().max() <= 1e-5 * scale  # 0 to float precision on the ablated rows, every position
    assert (pre[:2] @ u).abs().max() > 1e-2 * scale  # and it was not 0 before
    expected = pre - (pre @ u)[..., None] * u  # Arditi et al.'s h - (h.u)u, computed independently
    torch.testing.assert_close(post[:2], expected[:2], atol=1e-5 * float(scale), rtol=0)
    assert torch.equal(post[2], pre[2])  # the unsteered row is untouched, bit for bit


def test_ablate_then_add_sets_the_projection_to_alpha_times_the_norm(tiny):
    v = vector(tiny, 2, scale=0.3)
    u, size = v.at(1) / v.at(1).norm(), float(v.at(1).norm())
    _, post, _ = around(tiny, 1, [SteeringSetting(v, 2.5, operator="ablate")], [1, 1, 1])
    torch.testing.assert_close(post @ u, torch.full(post.shape[:2], 2.5 * size), atol=1e-4, rtol=1e-5)


def test_clamp_holds_the_projection_at_the_bounds_and_leaves_inside_values(tiny):
    v = vector(tiny, 3)
    u, size = v.at(1) / v.at(1).norm(), float(v.at(1).norm())
    pre, _, _ = around(tiny, 1, [SteeringSetting(v, 0.0)], [0, 0, 0])
    q = pre @ u  # [batch, seq] the projections before
    lo, hi = float(q.quantile(0.3)) / size, float(q.quantile(0.7)) / size  # some positions below, inside, above
    _, post, _ = around(tiny, 1, [SteeringSetting(v, 0.0, operator="clamp", bounds=(lo, hi))], [1, 1, 1])
    p = post @ u
    assert p.min() >= lo * size - 1e-4 and p.max() <= hi * size + 1e-4
    below, above = q < lo * size, q > hi * size
    assert below.any() and above.any()
    torch.testing.assert_close(p[below], torch.full_like(p[below], lo * size), atol=1e-4, rtol=0)
    torch.testing.assert_close(p[above], torch.full_like(p[above], hi * size), atol=1e-4, rtol=0)
    inside = ~(below | above)
    torch.testing.assert_close(post[inside], pre[inside], atol=1e-5, rtol=0)  # untouched where already inside


def test_clamp_after_adding_and_one_sided_bounds(tiny):
    v = vector(tiny, 4, scale=0.2)
    u, size = v.at(1) / v.at(1).norm(), float(v.at(1).norm())
    pre, _, _ = around(tiny, 1, [SteeringSetting(v, 0.0)], [0, 0, 0])
    setting = SteeringSetting(v, 3.0, operator="clamp", bounds=(-math.inf, 1.0))  # add 3 v, then at most 1 |v|
    _, post, _ = around(tiny, 1, [setting], [1, 1, 1])
    expected = torch.minimum(pre @ u + 3.0 * size, torch.tensor(1.0 * size))
    torch.testing.assert_close(post @ u, expected, atol=1e-4, rtol=1e-5)


def test_adding_rows_are_bit_identical_beside_projecting_rows(tiny):
    a, b = vector(tiny, 5, layers=(1, 2)), vector(tiny, 6, layers=(1, 2))
    plain = around(tiny, 2, [SteeringSetting(a, 1.5)], [1, 0, 1])[2]
    mixed = around(tiny, 2, [SteeringSetting(a, 1.5), SteeringSetting(b, 0.0, operator="ablate")], [1, 0, 2])[2]
    assert torch.equal(mixed[:2], plain[:2])  # the adding row and the unsteered row: same bits as without ablation
    assert not torch.allclose(mixed[2], plain[2])


def test_generation_with_ablation_equals_an_independent_hook(tiny):
    """Through the HF backend's real decode loop (prefill, cache, decode steps): the tokens equal those of a model
    whose block carries a hand-written ablation hook."""
    v = vector(tiny, 7, layers=(1, 2))
    setting = SteeringSetting(v, 0.0, operator="ablate")
    sampling = Sampling(max_new_tokens=12)
    reqs = [Request([{"role": "user", "content": t}], sampling, setting, id=f"r{i}") for i, t in enumerate(TEXTS)]
    reqs.append(Request([{"role": "user", "content": TEXTS[0]}], sampling, None, id="plain"))
    got = HFBackend(tiny, batch_size=4).generate(reqs)

    def ablate(layer):
        u = v.at(layer) / v.at(layer).norm()

        def hook(_m, _a, out):
            h = out[0] if isinstance(out, tuple) else out
            h.sub_((h @ u)[..., None] * u)

        return hook

    handles = [tiny.blocks[i].register_forward_hook(ablate(i)) for i in (1, 2)]
    try:
        want = HFBackend(tiny, batch_size=4).generate([Request(r.messages, sampling, None, id=r.id) for r in reqs[:3]])
    finally:
        for h in handles:
            h.remove()
    plain = HFBackend(tiny, batch_size=4).generate([Request(reqs[3].messages, sampling, None, id="p")])
    assert [r.text for r in got[:3]] == [r.text for r in want]
    assert got[3].text == plain[0].text
    assert got[0].text != plain[0].text  # the ablation changed something, so the comparison means something


def test_describe_and_refusals(tiny):
    v = vector(tiny, 8)
    assert SteeringSetting(v, 0.0, operator="ablate").describe().startswith("ablate, alpha=+0 x v8")
    assert "clamp to [-1, 2]" in SteeringSetting(v, 0.0, operator="clamp", bounds=(-1, 2)).describe()
    with pytest.raises(ConfigError, match="unknown operator 'scale'"):
        steerer_for(tiny.blocks, [SteeringSetting(v, 1.0, operator="scale")], tiny.d_model)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs bounds"):
        steerer_for(tiny.blocks, [SteeringSetting(v, 1.0, operator="clamp")], tiny.d_model)
    with pytest.raises(ConfigError, match="LO <= HI"):
        steerer_for(tiny.blocks, [SteeringSetting(v, 1.0, operator="clamp", bounds=(2, 1))], tiny.d_model)
    with pytest.raises(ConfigError, match="bounds are for operator clamp"):
        steerer_for(tiny.blocks, [SteeringSetting(v, 1.0, bounds=(0, 1))], tiny.d_model)
    with pytest.raises(ConfigError, match="overflows float32"):
        steerer_for(tiny.blocks, [SteeringSetting(v, 0.0, operator="clamp", bounds=(1e30, 1e31))], tiny.d_model)
    zero = SteeringVector(torch.zeros(tiny.n_layers, tiny.d_model), tuple(range(tiny.n_layers)), (1,),
                          tiny.fingerprint.to_dict(), "zero")  # fmt: skip
    with pytest.raises(Exception, match="is zero, so it has no direction"):
        steerer_for(tiny.blocks, [SteeringSetting(zero, 0.0, operator="ablate")], tiny.d_model)
