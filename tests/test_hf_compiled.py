"""Issue 17, speed: the HF backend's compiled decode path (static KV cache, ``torch.compile``d step, steering in
the graph). On CPU it is optional; these tests turn it on and check, through ``HFBackend.generate`` itself, that
it writes the eager path's tokens (greedy and sampled, steered and not, stop strings, a partial last batch), that
new steering rows, new settings and new batches never recompile, that the steering checks still fire, and that
the command line turns it on and off."""

from dataclasses import replace

import pytest
import torch
from conftest import run_cli
from torch._dynamo.testing import CompileCounterWithBackend

from steerlab.backends.base import Request, Sampling
from steerlab.backends.hf import HFBackend
from steerlab.backends.hf_compiled import MIN_LENGTH, cache_length, compile_blocker
from steerlab.errors import ConfigError
from steerlab.steer import SteeringSetting
from steerlab.vectors import SteeringVector

WORDS = "the cat sat on a mat while graders watched the next update of readers here and wrote notes".split()


def vec(loaded, seed: int, layers, scale: float = 1.0) -> SteeringVector:
    d = scale * torch.randn(loaded.n_layers, loaded.d_model, generator=torch.Generator().manual_seed(seed))
    return SteeringVector(d, tuple(range(loaded.n_layers)), tuple(layers), loaded.fingerprint.to_dict(), f"v{seed}")


def requests_for(loaded, settings, n: int = 10, new_tokens: int = 12, offset: int = 0, stop=()) -> list[Request]:
    """``n`` requests of varied lengths: every fourth unsteered, the rest cycling through ``settings``; every
    third sampled (its own seed), the rest greedy."""
    out = []
    for i in range(n):
        length = 3 + (i * 7 + offset) % 13
        text = " ".join(WORDS[(i + k + offset) % len(WORDS)] for k in range(length))
        steering = None if i % 4 == 0 or not settings else settings[i % len(settings)]
        sampling = Sampling(max_new_tokens=new_tokens, temperature=0.8 if i % 3 == 0 else 0.0, seed=100 + i,
                            stop=stop)  # fmt: skip
        out.append(Request([{"role": "user", "content": text}], sampling, steering, id=f"r{i}"))
    return out


def steering_hooks(loaded) -> list:
    """steerlab's hooks on the blocks (transformers installs hooks of its own once hidden states are asked for)."""
    return [h for b in loaded.blocks for h in b._forward_hooks.values() if "Steerer" in h.__qualname__]


def outputs(results):
    return [(r.id, r.text, r.n_new_tokens, r.finish_reason) for r in results]


def test_cache_length():
    assert cache_length(1, None) == MIN_LENGTH and cache_length(MIN_LENGTH, None) == MIN_LENGTH
    assert cache_length(MIN_LENGTH + 1, None) == 2 * MIN_LENGTH
    assert cache_length(1000, None) == 1024 and cache_length(1024, 2048) == 1024
    assert cache_length(1500, 1800) == 1800  # not past the model's context
    assert cache_length(3000, 2048) == 3000  # unless the call needs more (its prompts were checked against it)


def test_compiled_path_writes_the_eager_tokens_and_never_recompiles_across_batches_and_calls(tiny):
    counter = CompileCounterWithBackend("inductor")
    eager = HFBackend(tiny, batch_size=4, compile=False)
    compiled = HFBackend(tiny, batch_size=4, compile=True, compiler=counter)
    assert compiled.compiled and not eager.compiled and compiled.describe()["compiled"] is True
    assert compiled.describe()["engine"] == {"compiled": True} and eager.describe()["engine"] == {}
    first = [SteeringSetting(vec(tiny, 0, [1, 2], 0.01), 2.0), SteeringSetting(vec(tiny, 1, [0], 0.01), -3.0),
             SteeringSetting(vec(tiny, 2, [3], 0.01), 1.5)]  # fmt: skip
    requests = requests_for(tiny, first)  # 10 requests at batch 4: the last batch is filled up to 4 rows
    want = outputs(eager.generate(requests))
    assert outputs(compiled.generate(requests)) == want
    assert counter.frame_count == 1
    assert len({text for _, text, _, _ in want}) == len(want)  # the settings and seeds made different texts
    assert sum(len(set(text)) > 3 for _, text, _, _ in want) >= 8  # and few rows repeat one token
    # New settings at other layers, another order, other rows per batch: same graph, eager tokens.
    second = [SteeringSetting(vec(tiny, 7, [2]), -2.5), SteeringSetting(vec(tiny, 8, [0, 1, 2, 3]), 0.7)]
    more = requests_for(tiny, second, n=7, offset=3)[::-1]
    assert outputs(compiled.generate(more)) == outputs(eager.generate(more))
    unsteered = requests_for(tiny, [], n=5, offset=1)
    assert outputs(compiled.generate(unsteered)) == outputs(eager.generate(unsteered))
    assert counter.frame_count == 1
    assert not steering_hooks(tiny)  # the steering hooks are off the model between calls


def test_a_call_that_needs_a_longer_cache_compiles_once_more_and_still_matches(tiny):
    counter = CompileCounterWithBackend("inductor")
    eager = HFBackend(tiny, batch_size=2, compile=False)
    compiled = HFBackend(tiny, batch_size=2, compile=True, compiler=counter)
    short = requests_for(tiny, [], n=2, new_tokens=4)
    assert outputs(compiled.generate(short)) == outputs(eager.generate(short))
    assert compiled._static.length == MIN_LENGTH
    long = requests_for(tiny, [SteeringSetting(vec(tiny, 3, [1]), 2.0)], n=3, new_tokens=MIN_LENGTH)
    assert outputs(compiled.generate(long)) == outputs(eager.generate(long))
    assert compiled._static.length == 2 * MIN_LENGTH and counter.frame_count == 2
    assert outputs(compiled.generate(short)) == outputs(eager.generate(short))  # the longer cache serves it too
    assert counter.frame_count == 2


@pytest.mark.parametrize("position", ["prompt", "generation"])
def test_positions_and_stop_strings_match_the_eager_path(tiny, position):
    eager = HFBackend(tiny, batch_size=3, compile=False, position=position)
    compiled = HFBackend(
        tiny, batch_size=3, compile=True, compiler=CompileCounterWithBackend("inductor"), position=position
    )
    settings = [SteeringSetting(vec(tiny, 5, [1, 2]), 3.0)]
    plain = requests_for(tiny, settings, n=5, new_tokens=10)
    want = eager.generate(plain)
    # A stop string taken from an eager text's middle: that row must end there on both paths.
    text = next(r.text for r in want if len(r.text) > 6)
    stopped = requests_for(tiny, settings, n=5, new_tokens=10, stop=(text[3:6],))
    expected = outputs(eager.generate(stopped))
    assert "stop" in [reason for *_, reason in expected]
    assert outputs(compiled.generate(stopped)) == expected
    assert outputs(compiled.generate(plain)) == outputs(want)


def test_steering_checks_still_stop_a_broken_setting_under_the_compiled_path():
    """The prefill and the first decode step run eagerly and watched, as on the eager path: a float16 model whose
    steered row overflows stops with the same one line naming the request."""
    from test_steer import half_tiny, uniform

    from steerlab.generate import as_chat

    half = half_tiny()
    v = uniform(half, 1.0, name="ones")
    backend = HFBackend(half, batch_size=4, compile=True, compiler=CompileCounterWithBackend("inductor"))
    prompt, sampling = as_chat("Spell garden backwards"), Sampling(max_new_tokens=4)
    fine = [Request(prompt, sampling, None, id="plain"), Request(prompt, sampling, SteeringSetting(v, 2.0), id="ok")]
    before = backend.generate(fine)
    assert outputs(before) == outputs(HFBackend(half, batch_size=4, compile=False).generate(fine))
    with pytest.raises(ConfigError) as info:
        backend.generate([*fine, Request(prompt, sampling, SteeringSetting(v, 40000.0), id="big")])
    assert str(info.value).startswith(
        "request 'big': alpha=+40000 x ones at layers [1, 2]: after steering, its hidden state at layer 2 is non-finite"
    )
    assert not steering_hooks(half)
    assert outputs(backend.generate(fine)) == outputs(before)  # still usable, and the same


def test_a_compiler_failure_decodes_on_eagerly_and_says_so_once(tiny, capsys):
    def broken(graph, example_inputs):
        raise RuntimeError("no compiler here")

    backend = HFBackend(tiny, batch_size=4, compile=True, compiler=broken)
    requests = requests_for(tiny, [SteeringSetting(vec(tiny, 0, [1]), 2.0)], n=6)
    got = outputs(backend.generate(requests))
    assert got == outputs(HFBackend(tiny, batch_size=4, compile=False).generate(requests))
    err = capsys.readouterr().err
    assert err.count("compiled decoding failed") == 1 and "no compiler here" in err
    assert not backend.compiled and backend.describe()["compiled"] is False


def test_compile_is_off_by_default_on_cpu_and_refused_where_the_model_cannot_take_it(tiny):
    from steerlab.testing import scripted_model

    assert not HFBackend(tiny).compiled  # auto: on only on a CUDA device
    assert compile_blocker(tiny) is None
    scripted = scripted_model({"x": ["y"]})
    assert "static-cache" in compile_blocker(scripted)
    with pytest.raises(ConfigError, match=r"--compile: ScriptedLM does not declare static-cache support.*--no-compile"):
        HFBackend(scripted, compile=True)
    assert not HFBackend(scripted).compiled


def test_sliding_window_models_stay_eager():
    """transformers' static sliding-window layer keeps its length as a Python int, so a compiled step would recompile
    every step (and fall back to eager after 8): such a model is refused under --compile and left eager by default."""
    from transformers import MistralConfig, MistralForCausalLM

    from steerlab.models import prepare
    from steerlab.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    config = MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    loaded = prepare(MistralForCausalLM(config).eval(), tok, "tiny-sliding")
    assert "StaticSlidingWindowLayer layers (sliding-window attention)" in compile_blocker(loaded)
    with pytest.raises(ConfigError, match="--compile: its static cache has StaticSlidingWindowLayer"):
        HFBackend(loaded, compile=True)


def test_steer_compile_prints_what_eager_prints(tiny_dir, tiny_vector, capsys):
    args = ["steer", "--model", tiny_dir, "--vector", tiny_vector, "--alpha", "0,4", "--prompt", "Spell garden",
            "--prompt", "Sort these words", "--compare", "--max-new-tokens", "6", "--device", "cpu"]  # fmt: skip
    code, eager, err = run_cli([*args, "--no-compile"], capsys)
    assert code == 0, err
    code, compiled, err = run_cli([*args, "--compile"], capsys)
    assert code == 0, err
    assert compiled == eager and "alpha=+4" in eager


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--model", "M", "--dataset", "B", "--out", "run"],
        ["prompt-eval", "--model", "M", "--dataset", "B", "--out", "run"],
        ["sweep", "--config", "sweep.yaml"],
        ["pairs", "generate", "researcher_expectations", "--out", "p.jsonl", "--model", "M"],
    ],
    ids=["eval", "prompt-eval", "sweep", "pairs-generate"],
)
@pytest.mark.parametrize("flag, value", [("--compile", True), ("--no-compile", False)])
def test_every_generating_command_passes_compile_to_the_hf_backend(command, flag, value, tiny_dir, tmp_path,
                                                                   monkeypatch, capsys):  # fmt: skip
    from test_bad_input import BENIGN

    import steerlab.backends.hf as hf

    seen = []

    class Recorder:
        def __init__(self, loaded, **kwargs):
            seen.append(kwargs)
            raise ConfigError("recorded")

    monkeypatch.setattr(hf, "HFBackend", Recorder)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text(f"model: {tiny_dir}\nprompts: {BENIGN}\nout: run\n")
    command = [str(tiny_dir) if a == "M" else BENIGN if a == "B" else a for a in command]
    code, _, err = run_cli([*command, flag], capsys)
    assert code == 2 and "recorded" in err, err
    assert seen[-1]["compile"] is value


@pytest.mark.parametrize("backend", ["vllm", "anthropic"])
def test_compile_on_another_backend_is_one_line(backend, tmp_path, monkeypatch, capsys):
    from test_bad_input import refused

    monkeypatch.chdir(tmp_path)
    args = ["eval", "--model", "no/such-model", "--dataset", "x.jsonl", "--out", "run", "--backend", backend,
            "--no-compile"]  # fmt: skip
    line = refused(args, "--compile/--no-compile choose the HF backend's decode path", tmp_path, capsys)
    assert (backend == "vllm") == ("enforce_eager" in line)


def test_rows_that_end_early_and_budgets_clamped_by_the_context_match_the_eager_path(tiny, monkeypatch):
    """Rows of one batch with different budgets, a prompt that nearly fills the context (its budget clamped) beside a
    short one, and rows ending on EOS: every row of a batch writes at the batch's widest prompt + step, so the static
    cache must hold the worst batch (it was sized by the longest single row and overflowed)."""
    import collections

    eager = HFBackend(tiny, batch_size=2, compile=False)
    compiled = HFBackend(tiny, batch_size=2, compile=True, compiler=CompileCounterWithBackend("inductor"))
    mixed = requests_for(tiny, [], n=4, new_tokens=60)
    mixed[1] = Request(mixed[1].messages, Sampling(max_new_tokens=1), id="one")  # beside a budget of 60
    assert outputs(compiled.generate(mixed)) == outputs(eager.generate(mixed))
    monkeypatch.setattr(tiny.model.config, "max_position_embeddings", 200)  # the model's context
    long = " ".join((WORDS * 4)[:60])  # 175 tokens with the template: 25 left of the context's 200
    near = [Request([{"role": "user", "content": long}], Sampling(max_new_tokens=100), id="near"),
            Request([{"role": "user", "content": "the cat"}], Sampling(max_new_tokens=100), id="short")]  # fmt: skip
    want = outputs(eager.generate(near))
    assert 0 < want[0][2] < 100 and want[1][2] == 100  # the long row's budget was clamped to the context's room
    assert outputs(compiled.generate(near)) == want and compiled.compiled
    # EOS: the tokens the eager path picks most often end rows early on both paths.
    picked = collections.Counter()
    real = HFBackend._pick

    def recording(*args):
        out = real(*args)
        picked.update(out.tolist())
        return out

    monkeypatch.setattr(HFBackend, "_pick", staticmethod(recording))
    eager.generate(mixed)
    monkeypatch.setattr(HFBackend, "_pick", staticmethod(real))
    for backend in (eager, compiled):
        backend.eos_ids = backend.eos_ids | {t for t, _ in picked.most_common(2)}
    want = outputs(eager.generate(mixed))
    assert "eos" in [reason for *_, reason in want]
    assert outputs(compiled.generate(mixed)) == want


def test_bfloat16_compiled_steps_round_as_eager_does():
    """Inductor keeps a fused chain of bf16 ops in float32 unless told to emulate eager's casts; without that, 2 of
    the 6 unsteered greedy rows of the third call below diverge from the eager path. A seeded fuzz: four calls of
    4-8 rows, mixed settings (absolute and relative), sampled and greedy rows, extra EOS tokens and a stop string."""
    import collections
    import random

    from steerlab.testing import tiny_model

    half = tiny_model()
    half.model.to(torch.bfloat16)
    rng = random.Random(0)
    eager = HFBackend(half, batch_size=3, compile=False)
    counter = CompileCounterWithBackend("inductor")
    compiled = HFBackend(half, batch_size=3, compile=True, compiler=counter)

    def call(k: int) -> list[Request]:
        settings = [
            SteeringSetting(vec(half, rng.randrange(100), rng.sample(range(4), rng.randint(1, 3)), 0.3),
                            rng.choice([-2.0, 1.0, 3.0]))
            for _ in range(2)
        ]  # fmt: skip
        settings.append(SteeringSetting(vec(half, rng.randrange(100), [1, 2]), 0.2, scale="relative",
                                        token_norms={1: 3.0, 2: 5.0}))  # fmt: skip
        out = []
        for i in range(rng.randint(4, 8)):
            steering = rng.choice([None, *settings]) if k != 2 else None
            n, temperature = rng.randint(1, 30), rng.choice([0.0, 0.0, 0.9])
            seed, offset = rng.randrange(1000), rng.randrange(20)
            text = " ".join(WORDS[(j + offset) % len(WORDS)] for j in range(n))
            sampling = Sampling(max_new_tokens=16, temperature=temperature, seed=seed)
            out.append(Request([{"role": "user", "content": text}], sampling, steering, id=f"c{k}r{i}"))
        return out

    calls = [call(k) for k in range(4)]
    counts = collections.Counter()
    for r in eager.generate(calls[0]):
        counts.update(half.tokenizer(r.text, add_special_tokens=False)["input_ids"])
    for backend in (eager, compiled):
        backend.eos_ids = backend.eos_ids | {t for t, _ in counts.most_common(3)}
    stop = (half.tokenizer.decode([counts.most_common(6)[4][0]]),)
    calls[1] = [Request(r.messages, replace(r.sampling, stop=stop), r.steering, id=r.id) for r in calls[1]]
    reasons = set()
    for requests in calls:
        want = outputs(eager.generate(requests))
        assert outputs(compiled.generate(requests)) == want
        reasons |= {reason for *_, reason in want}
    assert reasons == {"eos", "stop", "length"} and counter.frame_count == 1


def test_an_error_mid_call_leaves_the_backend_as_it_was(tiny, monkeypatch):
    """An exception between the steering checks (here: sampling raises) must not leave the long-lived steerer
    watching: its hooks would record every later pass and the compiled step would recompile until dynamo gives up."""
    counter = CompileCounterWithBackend("inductor")
    eager = HFBackend(tiny, batch_size=4, compile=False)
    compiled = HFBackend(tiny, batch_size=4, compile=True, compiler=counter)
    requests = requests_for(tiny, [SteeringSetting(vec(tiny, 6, [1], 0.01), 2.0)], n=6)
    real = HFBackend._pick

    def failing(*args):
        raise RuntimeError("probability tensor contains either inf, nan or element < 0")

    monkeypatch.setattr(HFBackend, "_pick", staticmethod(failing))
    with pytest.raises(RuntimeError, match="probability tensor"):
        compiled.generate(requests)
    monkeypatch.setattr(HFBackend, "_pick", staticmethod(real))
    assert compiled._static.steerer._watch is None and not steering_hooks(tiny)
    for _ in range(2):
        assert outputs(compiled.generate(requests)) == outputs(eager.generate(requests))
    assert counter.frame_count == 1 and compiled.compiled


def test_a_setting_with_no_layer_is_refused_as_on_the_eager_path(tiny):
    empty = SteeringSetting(vec(tiny, 0, [1]), 1.0, layers=())
    request = requests_for(tiny, [empty], n=2)
    for compile in (False, True):
        with pytest.raises(ConfigError, match="no layer to steer"):
            HFBackend(tiny, batch_size=2, compile=compile, compiler=CompileCounterWithBackend("inductor")).generate(
                request
            )


def test_resuming_a_run_with_the_other_decode_path_is_one_line(tiny_dir, tmp_path, monkeypatch, capsys):
    from test_bad_input import BENIGN, refused

    monkeypatch.chdir(tmp_path)
    args = ["eval", "--model", str(tiny_dir), "--dataset", BENIGN, "--limit", "1", "--conditions", "monitored",
            "--max-new-tokens", "2", "--out", "run", "--device", "cpu"]  # fmt: skip
    code, _, err = run_cli([*args, "--no-compile"], capsys)
    assert code == 0, err
    line = refused([*args, "--compile"], "holds a run with another backend identity", tmp_path, capsys,
                   loading_bar=True)  # fmt: skip
    assert "engine: {} there, {'compiled': True} now" in line
