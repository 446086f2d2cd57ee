"""The HF backend at scale: the prefill computes logits at the last position only (issue 17, item 3),
and the decode loop passes the KV cache under the name the model's forward declares (item 10)."""

import warnings
from types import SimpleNamespace

import pytest
import torch
from test_backend_hf import chat, vector

from steerlab.backends.base import Request, Sampling
from steerlab.backends.hf import HFBackend, forward_kwargs
from steerlab.models import prepare
from steerlab.steer import SteeringSetting

# Prompts of different lengths, so one batch is left-padded.
PROMPTS = ["Convert 12 kilometres to miles.", "Spell garden backwards please, and be quick about it.", "Hi", "Sort"]


def mixed_requests(loaded, max_new_tokens=10):
    """Unsteered rows and rows under two settings, in one left-padded batch."""
    v = vector(loaded)
    up, down = SteeringSetting(v, 1.0), SteeringSetting(v, -2.0)
    s = Sampling(max_new_tokens=max_new_tokens)
    steer = [None, up, down, up]
    return [Request(chat(p), s, steer[i], id=str(i)) for i, p in enumerate(PROMPTS)] + [
        Request(chat(p), s, id=f"plain{i}") for i, p in enumerate(PROMPTS)
    ]


def full_logits_backend(loaded, **kw):
    """The backend as it decoded before item 3: logits at every prompt position, the last one taken."""
    backend = HFBackend(loaded, **kw)
    backend._keep_kw = None
    return backend


def head_shapes(model):
    """A list that fills with the shape of every ``lm_head`` output, and the hook's handle."""
    shapes = []
    handle = model.lm_head.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    return shapes, handle


def big_vocab_model(vocab=50_000):
    from transformers import LlamaConfig, LlamaForCausalLM

    from steerlab.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return prepare(LlamaForCausalLM(config).eval(), tok, "tiny-llama-vocab50k")


# --- item 3: logits at the last prompt position only ---


def test_transformers_models_are_asked_for_the_last_position_and_the_current_cache_name(tiny):
    import transformers

    cache, keep = forward_kwargs(tiny.model)
    assert keep == "logits_to_keep"
    major = int(transformers.__version__.split(".")[0])
    assert cache == ("cache" if major >= 5 else "past_key_values")


def test_a_long_prompt_prefill_never_makes_logits_for_every_position():
    """vocab 50,000, a ~300-token prompt, batch 4: every lm_head output has sequence length 1, so the
    [4, 300, 50000] float32 tensor (240 MB) of the old prefill is never made. Prompts differ in length
    (left padding), and one row is steered."""
    big = big_vocab_model()
    v = vector(big, scale=0.5)
    base = "Later training and future updates change how the next version of the model behaves. "
    prompts = [base * 14, base * 12 + "Hi", base * 10, base * 13]
    requests = [
        Request(chat(p), Sampling(max_new_tokens=3), SteeringSetting(v, 1.0) if i == 1 else None, id=str(i))
        for i, p in enumerate(prompts)
    ]
    backend = HFBackend(big, batch_size=4)
    lengths = [len(s) for s in backend.prompt_ids(requests)]
    assert max(lengths) >= 300 and len(set(lengths)) == 4
    shapes, handle = head_shapes(big.model)
    try:
        results = backend.generate(requests)
    finally:
        handle.remove()
    assert shapes[0] == (4, 1, 50_000)  # the prefill
    assert all(shape[1] == 1 for shape in shapes)
    # what the full-logits path chose, token for token
    shapes_before, handle = head_shapes(big.model)
    try:
        before = full_logits_backend(big, batch_size=4).generate(requests)
    finally:
        handle.remove()
    assert shapes_before[0] == (4, max(lengths), 50_000)  # the test sees the difference
    assert [(r.text, r.n_new_tokens) for r in results] == [(r.text, r.n_new_tokens) for r in before]


@pytest.mark.parametrize("batch_size", [8, 3])
def test_greedy_tokens_equal_the_full_logits_path_steered_and_not(tiny, batch_size):
    requests = mixed_requests(tiny)
    now = HFBackend(tiny, batch_size=batch_size).generate(requests)
    before = full_logits_backend(tiny, batch_size=batch_size).generate(requests)
    assert [(r.id, r.text, r.n_new_tokens, r.finish_reason) for r in now] == [
        (r.id, r.text, r.n_new_tokens, r.finish_reason) for r in before
    ]
    assert len({r.text for r in now}) > 2  # steering changed something: the comparison has teeth


def test_unsteered_greedy_equals_transformers_generate(tiny):
    results = HFBackend(tiny, batch_size=4).generate([Request(chat(p), Sampling(max_new_tokens=10)) for p in PROMPTS])
    tok = tiny.tokenizer
    texts = [tok.apply_chat_template(chat(p), tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    batch = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    with torch.inference_mode():
        ref = tiny.model.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    for i, r in enumerate(results):
        new = ref[i, batch["input_ids"].shape[1] :].tolist()
        expected = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
        assert r.text == tok.decode(expected, skip_special_tokens=True)


# --- item 10: the cache argument ---


def test_the_decode_loop_raises_no_deprecation_warning(tiny):
    """With every warning an error, a steered and unsteered batch decodes (transformers 5 warns on
    ``past_key_values=``, in the forward and when an output's ``.past_key_values`` is read)."""
    requests = mixed_requests(tiny, max_new_tokens=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        warnings.filterwarnings("error", message=".*past_key_values.*")
        results = HFBackend(tiny, batch_size=8).generate(requests)
    assert all(r.n_new_tokens > 0 or r.finish_reason == "eos" for r in results)


def test_the_scripted_test_models_raise_no_deprecation_warning_either():
    from steerlab.testing import scripted_model

    loaded = scripted_model({"Alpha": ["one two three"], "Beta": ["four"]})
    requests = [Request(chat(f"{m} please"), Sampling(max_new_tokens=12)) for m in ("Alpha", "Beta")]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        results = HFBackend(loaded, batch_size=2).generate(requests)
    assert [r.text for r in results] == ["one two three", "four"]


class OldStyleLM(torch.nn.Module):
    """A CausalLM as transformers 4.57 shapes one: the cache goes in as ``past_key_values`` and comes
    back only under that name, and the forward takes ``**kwargs`` (which would swallow ``cache=``)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.model = inner, inner.model
        self.config, self.generation_config = inner.config, inner.generation_config
        self.calls: list[bool] = []  # whether each call got a cache

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                **kwargs):  # fmt: skip
        assert set(kwargs) <= {"logits_to_keep"}, kwargs
        self.calls.append(past_key_values is not None)
        cache_name = forward_kwargs(self.inner)[0]
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, **{cache_name: past_key_values})  # fmt: skip
        return SimpleNamespace(logits=out.logits, past_key_values=getattr(out, cache_name))


def test_a_model_that_takes_past_key_values_still_gets_its_cache(tiny):
    old = OldStyleLM(tiny.model)
    loaded = prepare(old, tiny.tokenizer, "old-style")
    assert forward_kwargs(old) == ("past_key_values", None)  # no logits_to_keep named: full logits, sliced
    requests = mixed_requests(tiny, max_new_tokens=6)
    requests = [Request(r.messages, r.sampling, None, id=r.id) for r in requests]  # steering vectors name tiny
    got = HFBackend(loaded, batch_size=8).generate(requests)
    want = HFBackend(tiny, batch_size=8).generate(requests)
    assert [r.text for r in got] == [r.text for r in want]
    assert old.calls[0] is False and all(old.calls[1:])  # every decode step reused the cache


def test_a_forward_naming_neither_gets_the_installed_transformers_name():
    class Wrapper(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            return None

    import transformers

    assert forward_kwargs(Wrapper()) == (
        "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values",
        None,
    )
