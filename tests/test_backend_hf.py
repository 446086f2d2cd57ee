import pytest
import torch

from steerlab.backends.base import Request, Sampling
from steerlab.backends.hf import HFBackend
from steerlab.errors import ConfigError
from steerlab.steer import SteeringSetting
from steerlab.vectors import SteeringVector

PROMPTS = ["Convert 12 kilometres to miles.", "Spell garden backwards please, and be quick about it.", "Hi"]


def chat(text):
    return [{"role": "user", "content": text}]


def vector(tiny, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    d = scale * torch.randn(tiny.n_layers, tiny.d_model, generator=g)
    return SteeringVector(d, tuple(range(tiny.n_layers)), (1, 2), tiny.fingerprint.to_dict(), "v")


def test_greedy_matches_transformers_generate(tiny):
    backend = HFBackend(tiny, batch_size=3)
    sampling = Sampling(max_new_tokens=10)
    results = backend.generate([Request(chat(p), sampling, id=str(i)) for i, p in enumerate(PROMPTS)])
    assert [r.id for r in results] == ["0", "1", "2"]  # request order, whatever the length bucketing did
    tok = tiny.tokenizer
    texts = [tok.apply_chat_template(chat(p), tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    batch = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    with torch.inference_mode():
        ref = tiny.model.generate(**batch, max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    for i, r in enumerate(results):
        new = ref[i, batch["input_ids"].shape[1] :].tolist()
        eos = tok.eos_token_id
        expected = new[: new.index(eos)] if eos in new else new
        assert r.text == tok.decode(expected, skip_special_tokens=True)
        assert r.n_new_tokens == len(expected) and r.n_prompt_tokens == int(batch["attention_mask"][i].sum())


def test_sampled_rows_do_not_depend_on_their_batch(tiny):
    backend = HFBackend(tiny, batch_size=4)
    s = Sampling(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    alone = backend.generate([Request(chat(PROMPTS[0]), s)])[0].text
    crowd = backend.generate(
        [Request(chat(p), Sampling(max_new_tokens=12, temperature=1.0, seed=k)) for k, p in enumerate(PROMPTS)]
        + [Request(chat(PROMPTS[0]), s)]
    )
    assert crowd[-1].text == alone
    other_seed = backend.generate([Request(chat(PROMPTS[0]), Sampling(max_new_tokens=12, temperature=1.0, seed=8))])
    assert other_seed[0].text != alone


def test_steering_rows_in_one_batch_equal_each_alone(tiny):
    v = vector(tiny)
    hooks_before = sum(len(b._forward_hooks) for b in tiny.blocks)
    up, down = SteeringSetting(v, 1.0), SteeringSetting(v, -1.0)
    s = Sampling(max_new_tokens=8)
    backend = HFBackend(tiny, batch_size=8)
    mixed = backend.generate([Request(chat(PROMPTS[0]), s, up), Request(chat(PROMPTS[1]), s),
                              Request(chat(PROMPTS[0]), s, down)])  # fmt: skip
    singles = (Request(chat(PROMPTS[0]), s, up), Request(chat(PROMPTS[1]), s), Request(chat(PROMPTS[0]), s, down))
    alone = [backend.generate([r])[0] for r in singles]
    assert [m.text for m in mixed] == [a.text for a in alone]
    assert mixed[0].text != mixed[2].text  # opposite multipliers steer apart
    zero = backend.generate([Request(chat(PROMPTS[0]), s, SteeringSetting(v, 0.0))])[0]
    plain = backend.generate([Request(chat(PROMPTS[0]), s)])[0]
    assert zero.text == plain.text
    assert sum(len(b._forward_hooks) for b in tiny.blocks) == hooks_before


def test_stop_strings_cut_and_report(tiny):
    backend = HFBackend(tiny)
    full = backend.generate([Request(chat(PROMPTS[0]), Sampling(max_new_tokens=16))])[0]
    assert full.finish_reason == "length" and len(full.text) > 6
    stop = full.text[3:6]
    cut = backend.generate([Request(chat(PROMPTS[0]), Sampling(max_new_tokens=16, stop=(stop,)))])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop) + len(stop)]


def test_bad_requests(tiny):
    backend = HFBackend(tiny)
    with pytest.raises(ConfigError, match="empty"):
        backend.generate([])
    with pytest.raises(ConfigError, match="empty prompt"):
        backend.generate([Request(chat("  "))])
    with pytest.raises(ConfigError, match="temperature"):
        backend.generate([Request(chat("x"), Sampling(temperature=float("nan")))])
    with pytest.raises(ConfigError, match="not a finite number"):
        backend.generate([Request(chat("x"), steering=SteeringSetting(vector(tiny), float("inf")))])
