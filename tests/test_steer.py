import pytest
import torch

from steerlab.errors import ConfigError
from steerlab.steer import Steerer, SteeringSetting, build_table, steerer_for
from steerlab.vectors import SteeringVector


def vector(tiny, seed, layers=(1, 2), scale=1.0):
    g = torch.Generator().manual_seed(seed)
    directions = scale * torch.randn(tiny.n_layers, tiny.d_model, generator=g)
    return SteeringVector(
        directions, tuple(range(tiny.n_layers)), tuple(layers), tiny.fingerprint.to_dict(), f"v{seed}"
    )


def left_padded(tiny, texts):
    return tiny.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)


def logits(tiny, batch):
    with torch.inference_mode():
        return tiny.model(**batch).logits


def hook_count(tiny):
    return sum(len(b._forward_hooks) for b in tiny.blocks)


TEXTS = ["The user asks for a short answer.", "Spell this backwards", "Convert 12 kilometres to miles, please."]


def test_zero_multiplier_and_zero_row_are_bit_identical(tiny):
    batch = left_padded(tiny, TEXTS)
    plain = logits(tiny, batch)
    before = hook_count(tiny)  # transformers may keep output-recording hooks of its own
    with steerer_for(tiny.blocks, [SteeringSetting(vector(tiny, 0), 0.0)], tiny.d_model) as steer:
        steer.set_rows([1, 1, 1])  # multiplier 0
        assert torch.equal(logits(tiny, batch), plain)
        steer.set_rows([0, 0, 0])  # the zero row
        assert torch.equal(logits(tiny, batch), plain)
    assert hook_count(tiny) == before


def test_hooks_are_removed_after_an_exception(tiny):
    steer = steerer_for(tiny.blocks, [SteeringSetting(vector(tiny, 0), 1.0)], tiny.d_model)
    before = hook_count(tiny)
    with pytest.raises(RuntimeError, match="boom"), steer:
        assert hook_count(tiny) == before + 2
        raise RuntimeError("boom")
    assert hook_count(tiny) == before


def test_per_row_batch_equals_each_setting_alone(tiny):
    a, b = vector(tiny, 1, layers=(1, 2)), vector(tiny, 2, layers=(0, 3))
    settings = [SteeringSetting(a, 0.5), SteeringSetting(a, -1.5), SteeringSetting(b, 2.0)]
    texts = [*TEXTS, TEXTS[0]]
    rows = [1, 0, 3, 2]  # a at +0.5, unsteered, b at +2, a at -1.5 (with left padding)
    batch = left_padded(tiny, texts)
    with steerer_for(tiny.blocks, settings, tiny.d_model) as steer:
        steer.set_rows(rows)
        mixed = logits(tiny, batch)
    for i, row in enumerate(rows):
        alone_batch = left_padded(tiny, [texts[i]])
        if row == 0:
            alone = logits(tiny, alone_batch)
        else:
            with steerer_for(tiny.blocks, [settings[row - 1]], tiny.d_model) as steer:
                steer.set_rows([1])
                alone = logits(tiny, alone_batch)
        n = alone.shape[1]
        assert (mixed[i, -n:] - alone[0]).abs().max() <= 1e-4
    # and the steering really did something
    assert (mixed[0] - logits(tiny, batch)[0]).abs().max() > 1e-2


def test_layer_placement_and_exact_addition(tiny):
    v = vector(tiny, 3, layers=(2,))
    batch = left_padded(tiny, TEXTS[:1])
    with torch.inference_mode():
        base = tiny.model(**batch, output_hidden_states=True).hidden_states
        with steerer_for(tiny.blocks, [SteeringSetting(v, 0.7)], tiny.d_model) as steer:
            steer.set_rows([1])
            steered = tiny.model(**batch, output_hidden_states=True).hidden_states
    for k in range(3):  # embeddings, block 0, block 1: untouched
        assert torch.equal(steered[k], base[k])
    torch.testing.assert_close(steered[3], base[3] + 0.7 * v.at(2), atol=1e-5, rtol=1e-5)  # block 2's output
    assert not torch.allclose(steered[4], base[4])


def test_relative_scale_uses_residual_norms(tiny):
    v = vector(tiny, 4, layers=(1,), scale=3.0)
    table, layers = build_table([SteeringSetting(v, 0.1, scale="relative", resid_norms={1: 50.0})], tiny.d_model)
    assert layers == [1]
    assert float(table[1, 0].norm()) == pytest.approx(5.0, rel=1e-5)
    assert torch.equal(table[0], torch.zeros_like(table[0]))


def test_positions_prompt_and_generation(tiny):
    v = vector(tiny, 5, layers=(1,))
    batch = left_padded(tiny, TEXTS[:1])
    plain = logits(tiny, batch)
    with steerer_for(tiny.blocks, [SteeringSetting(v, 1.0)], tiny.d_model, position="generation") as steer:
        steer.set_rows([1])
        assert torch.equal(logits(tiny, batch), plain)  # a prefill pass is not a generated position
    with steerer_for(tiny.blocks, [SteeringSetting(v, 1.0)], tiny.d_model, position="prompt") as steer:
        steer.set_rows([1])
        assert not torch.equal(logits(tiny, batch), plain)


def test_bad_settings(tiny):
    v = vector(tiny, 6)
    with pytest.raises(ConfigError, match="not a finite number"):
        build_table([SteeringSetting(v, float("nan"))], tiny.d_model)
    with pytest.raises(Exception, match="d_model"):
        build_table([SteeringSetting(v, 1.0)], tiny.d_model + 1)
    with pytest.raises(ConfigError, match="out of range"):
        Steerer(tiny.blocks, [9], torch.zeros(2, 1, tiny.d_model))
    with pytest.raises(ConfigError, match="position"):
        Steerer(tiny.blocks, [1], torch.zeros(2, 1, tiny.d_model), position="middle")
    steer = Steerer(tiny.blocks, [1], torch.zeros(2, 1, tiny.d_model), max_batch=2)
    with pytest.raises(ConfigError, match="exceeds max_batch"):
        steer.set_rows([0, 1, 1])
    with pytest.raises(ConfigError, match="table rows"):
        steer.set_rows([2])


def test_steered_greedy_generation_differs_only_with_a_multiplier(tiny):
    v = vector(tiny, 7, layers=(1, 2), scale=5.0)
    batch = left_padded(tiny, TEXTS[:2])
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tiny.tokenizer.pad_token_id)
    with torch.inference_mode():
        plain = tiny.model.generate(**batch, **kwargs)
        with steerer_for(tiny.blocks, [SteeringSetting(v, 0.0), SteeringSetting(v, 4.0)], tiny.d_model) as steer:
            steer.set_rows([1, 1])
            zero = tiny.model.generate(**batch, **kwargs)
            steer.set_rows([2, 2])
            strong = tiny.model.generate(**batch, **kwargs)
    assert torch.equal(zero, plain)
    assert not torch.equal(strong, plain)


def test_torch_compile_sees_the_hooks_and_new_rows_without_recompiling(tiny):
    v = vector(tiny, 8, layers=(1, 2))
    batch = left_padded(tiny, TEXTS[:2])
    plain = logits(tiny, batch)
    with steerer_for(tiny.blocks, [SteeringSetting(v, 1.0), SteeringSetting(v, -2.0)], tiny.d_model) as steer:
        compiled = torch.compile(tiny.model)
        for rows in ([1, 2], [2, 0]):  # the second set of rows reuses the compiled graph (static buffers)
            steer.set_rows(rows)
            with torch.inference_mode():
                eager, fast = tiny.model(**batch).logits, compiled(**batch).logits
            assert (fast - eager).abs().max() <= 1e-5
            for b, row in enumerate(rows):  # steered rows moved, the unsteered row did not
                assert torch.allclose(fast[b], plain[b], atol=1e-5) == (row == 0)
