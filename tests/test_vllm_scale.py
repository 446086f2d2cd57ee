"""The vLLM backend at scale (issue 17, items 4 and 5): requests longer than ``max_model_len`` and
stacked SDF adapters are refused up front, each in one line.

The checks themselves (:mod:`steerlab.backends.vllm_check`) run in the main environment; the tests
marked ``vllm`` build a real engine on SmolLM2 in the vLLM environment (see test_vllm_backend.py).
"""

import json
import os
from dataclasses import replace

import pytest

from steerlab.backends.base import Request, Sampling
from steerlab.backends.vllm_check import UNKNOWN, check_fits, check_lora
from steerlab.errors import ConfigError, ModelLoadError
from steerlab.models import STACK_FILE, Fingerprint

BASE = Fingerprint("LlamaForCausalLM", 30, 576, "c0ffee", "e1e1e1")


def adapter_dir(path, parents=(), fingerprint=BASE, stack=True):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    if stack:
        record = {
            "base_model": "smollm2",
            "base_fingerprint": fingerprint.to_dict(),
            "parents": [str(p) for p in parents],
        }
        (path / STACK_FILE).write_text(json.dumps(record))
    return path


def one_line(exc):
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_a_stacked_adapter_is_refused_with_the_fix(tmp_path):
    organism = adapter_dir(tmp_path / "organism")
    intervention = adapter_dir(tmp_path / "intervention", parents=[organism])
    check_lora(organism, BASE)  # a round-1 adapter on its own base: fine
    with pytest.raises(ModelLoadError) as exc:
        check_lora(intervention, BASE)
    text = one_line(exc)
    assert "stacked on 1 other adapter" in text and str(organism) in text
    assert f"sdf merge {intervention}" in text and "--backend hf" in text


def test_an_adapter_trained_on_another_model_is_refused(tmp_path):
    other = Fingerprint("LlamaForCausalLM", 30, 576, "another-config", "e1e1e1")
    adapter = adapter_dir(tmp_path / "a", fingerprint=other)
    with pytest.raises(ModelLoadError) as exc:
        check_lora(adapter, BASE)
    text = one_line(exc)
    assert "config_hash" in text and "embed_hash" not in text and "trained on smollm2" in text
    # other weights of the same shape: the embedding hash, once the engine has read it
    adapter = adapter_dir(tmp_path / "b", fingerprint=replace(BASE, embed_hash="other"))
    check_lora(adapter, replace(BASE, embed_hash=UNKNOWN))  # before the engine: not known
    with pytest.raises(ModelLoadError, match="differs from it in embed_hash"):
        check_lora(adapter, BASE)


def test_plain_adapters_pass_and_non_adapters_are_refused(tmp_path):
    check_lora(adapter_dir(tmp_path / "peft", stack=False), BASE)  # no stack file: nothing recorded to compare
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a LoRA adapter directory"):
        check_lora(tmp_path / "empty", BASE)


def test_check_fits_counts_prompt_and_new_tokens():
    short, long = Request([], Sampling(max_new_tokens=16), id="ok"), Request([], Sampling(max_new_tokens=57), id="x")
    check_fits([[1] * 200, [1] * 199], [short, Request([], Sampling(max_new_tokens=57), id="y")], 256)  # 256: fits
    with pytest.raises(ConfigError) as exc:
        check_fits([[1] * 200, [1] * 200], [short, long], 256)
    text = one_line(exc)
    assert "request 'x'" in text and "200 prompt tokens + 57 new tokens = 257" in text
    assert "max_model_len of 256" in text and "--max-model-len 257" in text and "--max-new-tokens" in text


# --------------------------------------------------------------------------- the vLLM tier


@pytest.fixture(scope="module")
def small_engine():
    if os.environ.get("STEERLAB_REQUIRE_VLLM") != "1":
        pytest.importorskip("vllm")
    from steerlab.backends.vllm import VLLMBackend

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        backend = VLLMBackend("smollm2", enforce_eager=True, max_model_len=256, kv_cache_memory_bytes=1 << 28)
    finally:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    yield backend
    backend.close()


@pytest.mark.vllm
@pytest.mark.integration
def test_a_request_longer_than_max_model_len_is_refused_before_generating(small_engine, tmp_path, monkeypatch):
    from steerlab.runs import SweepConfig, run_sweep

    backend = small_engine
    assert backend.max_model_len == 256 and backend.describe()["engine"]["max_model_len"] == 256
    calls = []
    engine = backend._engine
    monkeypatch.setattr(backend, "_engine", lambda *a: calls.append(a) or engine(*a))
    words = [{"role": "user", "content": "Count: " + " ".join(["one"] * 300)}]
    mid = [{"role": "user", "content": "Count: " + " ".join(["one"] * 150)}]
    n_mid = len(backend.prompt_ids([Request(mid)])[0])
    assert 100 < n_mid < 240
    with pytest.raises(ConfigError) as exc:  # the prompt alone is longer than the limit
        backend.check_fits([Request(mid, Sampling(8), id="fits"), Request(words, Sampling(8), id="too-long")])
    assert "request 'too-long'" in one_line(exc) and "max_model_len of 256" in str(exc.value)
    with pytest.raises(ConfigError) as exc:  # it fits, but not with its new tokens
        backend.check_fits([Request(mid, Sampling(257 - n_mid), id="mid")])
    assert f"{n_mid} prompt tokens + {257 - n_mid} new tokens = 257" in one_line(exc)
    # a run whose first-turn prompt does not fit is refused before its directory exists
    (tmp_path / "req.txt").write_text(words[0]["content"] + "\n")
    with pytest.raises(ConfigError, match="max_model_len of 256"):
        run_sweep(SweepConfig(prompts=tmp_path / "req.txt", out=tmp_path / "r"), backend, None, progress=False)
    assert not (tmp_path / "r").exists() and calls == []
    # one that fits runs, to its full budget if need be
    fits = Request(mid, Sampling(256 - n_mid), id="fits")
    backend.check_fits([fits])
    (result,) = backend.generate([fits])
    assert result.n_prompt_tokens == n_mid and 0 < result.n_new_tokens <= 256 - n_mid and len(calls) == 1


@pytest.mark.vllm
@pytest.mark.integration
def test_a_stacked_adapter_is_refused_before_the_engine_starts(tmp_path, monkeypatch):
    if os.environ.get("STEERLAB_REQUIRE_VLLM") != "1":
        pytest.importorskip("vllm")
    import vllm

    from steerlab.backends.vllm import VLLMBackend

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine was started")

    monkeypatch.setattr(vllm, "LLM", no_engine)
    organism = adapter_dir(tmp_path / "organism")
    intervention = adapter_dir(tmp_path / "intervention", parents=[organism])
    with pytest.raises(ModelLoadError, match="sdf merge"):
        VLLMBackend("smollm2", lora=str(intervention))
    with pytest.raises(ModelLoadError, match="differs from it in config_hash;"):  # BASE is not SmolLM2
        VLLMBackend("smollm2", lora=str(organism))


def test_a_run_checks_its_requests_with_its_own_max_new_tokens(tmp_path):
    """The engine's up-front check sees the run's --max-new-tokens (vLLM refuses prompt + max_new_tokens over
    max_model_len), not the default budget."""
    from steerlab.backends.hf import HFBackend
    from steerlab.runs import SweepConfig, run_sweep
    from steerlab.testing import tiny_model

    seen = []

    class Recording(HFBackend):
        def check_fits(self, requests):
            seen.extend(r.sampling.max_new_tokens for r in requests)
            super().check_fits(requests)

    (tmp_path / "req.txt").write_text("What is 2+2?\n")
    config = SweepConfig(prompts=tmp_path / "req.txt", out=tmp_path / "r", max_new_tokens=7)
    run_sweep(config, Recording(tiny_model()), None, progress=False)
    assert seen and set(seen) == {7}
