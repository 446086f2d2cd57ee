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
    table, layers = build_table([SteeringSetting(v, 0.1, scale="relative", token_norms={1: 50.0})], tiny.d_model)
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


# ----------------------------------------------------------------------------- issue 13: what --scale relative adds


@pytest.fixture(scope="module")
def fitted_tiny_vector(tiny, tmp_path_factory):
    """A vector file fitted on the tiny model the way users make one: extract -> cache -> fit."""
    from conftest import make_pair

    from steerlab.directions import FitSettings, fit_cache
    from steerlab.extract import extract

    tmp = tmp_path_factory.mktemp("fitted")
    pairs = [make_pair(i, split="train" if i < 24 else "val") for i in range(30)]
    cache = extract(tiny, pairs, tmp / "c.h5", progress=False)
    return fit_cache(cache, FitSettings(folds=2, controls=1), tmp / "toy" / "tiny.safetensors")[1]


def block_inputs(tiny, layer, backend, request):
    """The residual stream entering block ``layer`` during one generate call: one tensor per forward."""
    seen = []

    def pre_hook(_module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handle = tiny.blocks[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        backend.generate([request])
    finally:
        handle.remove()
    return seen


def test_relative_alpha_adds_that_fraction_of_the_mean_token_norm(tiny, fitted_tiny_vector):
    from steerlab.backends.base import Request, Sampling
    from steerlab.backends.hf import HFBackend
    from steerlab.generate import as_chat, settings_for
    from steerlab.vectors import VectorBundle

    bundle = VectorBundle.load(fitted_tiny_vector, expect=tiny.fingerprint)
    per_layer = bundle.meta["diagnostics"]["per_layer"]
    token_norm = dict(zip(bundle.meta["layers"], per_layer["token_norm"], strict=True))
    assert per_layer["pooled_norm"][1] < 0.9 * token_norm[1]  # the two norms really differ here
    (setting,) = settings_for(bundle, [0.1], layers=[1], scale="relative")
    backend = HFBackend(tiny)
    prompt, sampling = as_chat("The user asks for a short answer."), Sampling(max_new_tokens=1)
    (plain,) = block_inputs(tiny, 2, backend, Request(prompt, sampling))  # the prefill pass
    (steered,) = block_inputs(tiny, 2, backend, Request(prompt, sampling, setting))
    delta = (steered - plain)[0]  # [seq, d_model]: what the hook on block 1 added, at every prompt token
    assert delta.shape[0] > 5
    want = torch.full((delta.shape[0],), 0.1 * token_norm[1])
    torch.testing.assert_close(delta.norm(dim=-1), want, rtol=1e-4, atol=0)
    unit = bundle.vector.at(1) / bundle.vector.at(1).norm()
    assert float(torch.nn.functional.cosine_similarity(delta, unit[None], dim=-1).min()) > 0.9999


def test_relative_scale_refuses_a_file_without_token_norms(tiny, tmp_path):
    from steerlab.generate import settings_for
    from steerlab.vectors import VectorBundle, random_controls

    directions = torch.randn(tiny.n_layers, tiny.d_model, generator=torch.Generator().manual_seed(0))
    meta = {
        "concept": "toy",
        "layers": list(range(tiny.n_layers)),
        "selected_layers": [1],
        "model": tiny.fingerprint.to_dict(),
        "diagnostics": {"per_layer": {"resid_norm": [10.0] * tiny.n_layers}},
    }
    path = VectorBundle.build(directions, random_controls(directions, 1, seed=1), meta).save(tmp_path / "v.safetensors")
    old = VectorBundle.load(path)  # only the pooled-mean norm, under its old name
    assert settings_for(old, [2.0])[0].multiplier == 2.0  # absolute scale needs no norm
    with pytest.raises(ConfigError, match=r"token_norm.*refit") as info:
        settings_for(old, [0.1], scale="relative")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- issue 14.2: numbers that break the model


def uniform(tiny, value, layers=(1, 2), name="u", dtype_model=None):
    """A vector of equal entries ``value`` at every layer (its norm is value * sqrt(d_model))."""
    fp = (dtype_model or tiny).fingerprint.to_dict()
    return SteeringVector(torch.full((tiny.n_layers, tiny.d_model), float(value)), tuple(range(tiny.n_layers)),
                          tuple(layers), fp, name)  # fmt: skip


def test_a_multiplier_whose_vector_overflows_float32_is_refused_when_the_table_is_built(tiny):
    v = vector(tiny, 9, scale=4.0)
    with pytest.raises(ConfigError, match=r"alpha=\+1e\+38 x v9 at layers \[1, 2\]: the added vector at layer 1 "
                                          r"has norm .*overflows float32"):  # fmt: skip
        build_table([SteeringSetting(v, 1e38)], tiny.d_model)
    # finite entries, but a norm whose square (what every RMS norm sums) overflows float32
    with pytest.raises(ConfigError, match="overflows float32"):
        build_table([SteeringSetting(uniform(tiny, 1.0), 2.5e18)], tiny.d_model)  # norm 2e19
    assert torch.isfinite(build_table([SteeringSetting(uniform(tiny, 1.0), 2e18)], tiny.d_model)[0]).all()


def test_a_zero_or_nan_token_norm_is_refused_for_relative_scale(tiny):
    from steerlab.vectors import VectorError

    v = vector(tiny, 10)
    for bad in (0.0, float("nan"), float("inf")):
        norms = {0: 1.0, 1: bad, 2: 1.0, 3: 1.0}
        with pytest.raises(VectorError, match=f"token_norm of layer 1 is {bad}"):
            build_table([SteeringSetting(v, 0.5, scale="relative", token_norms=norms)], tiny.d_model)


def half_tiny():
    """A float16 copy of the tiny model (a fresh one: the session's tiny stays float32)."""
    from steerlab.models import prepare
    from steerlab.testing import tiny_model

    t = tiny_model()
    return prepare(t.model.to(torch.float16), t.tokenizer, "tiny-half")


def test_a_table_that_overflows_the_model_dtype_is_refused_when_the_steerer_is_built():
    half = half_tiny()
    v = uniform(half, 1.0, name="ones")
    with pytest.raises(ConfigError, match=r"alpha=\+100000 x ones at layers \[1, 2\]: the added vector at layer 1 "
                                          r"overflows the model's float16"):  # fmt: skip
        steerer_for(half.blocks, [SteeringSetting(v, 1.0), SteeringSetting(v, 1e5)], half.d_model)
    assert all(not b._forward_hooks for b in half.blocks)  # nothing was installed


@pytest.mark.parametrize("position, where", [("all", "the prefill pass"), ("generation", "the first decode step")])
def test_non_finite_hidden_states_stop_generation_at_the_first_step(position, where):
    """A table that fits float16 (40000 per entry) but whose sum over two layers (80000) does not: the hidden
    state of the steered row becomes inf inside the model. HFBackend.generate stops with one line naming the
    request and the setting, instead of returning an empty or garbage completion; the hooks are removed."""
    from steerlab.backends.base import Request, Sampling
    from steerlab.backends.hf import HFBackend
    from steerlab.generate import as_chat

    half = half_tiny()
    v = uniform(half, 1.0, name="ones")
    backend = HFBackend(half, batch_size=4, position=position)
    prompt, sampling = as_chat("Spell garden backwards"), Sampling(max_new_tokens=4)
    fine = [Request(prompt, sampling, None, id="plain"), Request(prompt, sampling, SteeringSetting(v, 2.0), id="ok")]
    before = backend.generate(fine)
    assert all(r.n_new_tokens > 0 for r in before)
    requests = [*fine, Request(prompt, sampling, SteeringSetting(v, 40000.0), id="big")]
    with pytest.raises(ConfigError) as info:
        backend.generate(requests)
    message = str(info.value)
    assert message.startswith("request 'big': alpha=+40000 x ones at layers [1, 2]: after steering, its hidden "
                              "state at layer 2 is non-finite") and where in message  # fmt: skip
    assert "\n" not in message
    assert all(not b._forward_hooks for b in half.blocks)
    assert [r.text for r in backend.generate(fine)] == [r.text for r in before]  # still usable afterwards


def test_float32_hidden_states_whose_norm_overflows_are_caught_too(tiny):
    """Each layer's vector is below float32's limit, but the two layers' sum is not: without the check the RMS
    norms return zeros and the model emits garbage with exit 0."""
    from steerlab.backends.base import Request, Sampling
    from steerlab.backends.hf import HFBackend
    from steerlab.generate import as_chat

    v = uniform(tiny, 1.5e19 / tiny.d_model**0.5, name="big")  # norm 1.5e19 per layer, 3e19 after layer 2
    request = Request(as_chat("Hi"), Sampling(max_new_tokens=3), SteeringSetting(v, 1.0), id="r")
    with pytest.raises(ConfigError, match=r"request 'r': .* its hidden state at layer 2 is non-finite or too large"):
        HFBackend(tiny).generate([request])


def test_watching_costs_nothing_when_nothing_is_steered(tiny):
    """Unsteered rows are never reported, and a steerer that is not watching records nothing."""
    v = vector(tiny, 11)
    batch = left_padded(tiny, TEXTS[:2])
    with steerer_for(tiny.blocks, [SteeringSetting(v, 1.0)], tiny.d_model) as steer:
        steer.set_rows([0, 1])
        logits(tiny, batch)
        assert steer._watch is None
        steer.watch()
        logits(tiny, batch)
        assert len(steer._watch) == 2 and steer.watched() == [] and steer._watch is None


def test_a_batch_that_ends_after_its_prefill_pass_leaves_no_watch_armed(tiny):
    """Otherwise the next, unsteered batch of the same call would record a flag per layer and token."""
    from steerlab.backends.base import Request, Sampling
    from steerlab.backends.hf import HFBackend

    backend = HFBackend(tiny)
    ids = backend.prompt_ids([Request([{"role": "user", "content": "Hi"}], Sampling(max_new_tokens=1))])
    with steerer_for(tiny.blocks, [SteeringSetting(vector(tiny, 12), 1.0)], tiny.d_model) as steer:
        steer.set_rows([1])
        (out,) = backend._decode(ids, [Sampling(max_new_tokens=1)], [""], steer, ["request 'r': a setting"])
        assert out[1] == 1 and steer._watch is None
