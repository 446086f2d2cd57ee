"""Issue 17, items 1 and 4 (command-line half): every generating command shards an HF model with
``--device-map``/``--max-memory``, and configures the vLLM engine with ``--max-model-len``,
``--gpu-memory-utilization``, ``--enable-prefix-caching`` and ``--vllm-arg``; an option the backend
does not take, or a bad value, is one line and exit status 2."""

import json

import pytest
from conftest import run_cli
from test_bad_input import BENIGN, refused

from steerlab.errors import ConfigError


def _split_map(n_layers: int) -> dict[str, str]:
    """An explicit map that puts the blocks in two groups (one device here: what matters is that
    accelerate's dispatch hooks sit on every block, as under a real multi-GPU map)."""
    first = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu"}
    blocks = {f"model.layers.{i}": "cpu" for i in range(n_layers)}
    return {**first, **blocks, "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture
def map_file(tmp_path, tiny):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(_split_map(tiny.n_layers)))
    return path


def test_sharded_model_generates_the_same_greedy_tokens_steered_and_not(tiny_dir, tiny_vector, map_file,
                                                                        monkeypatch):  # fmt: skip
    import steerlab.backends.hf as hf
    from steerlab.backends import make_backend
    from steerlab.backends.base import Request, Sampling
    from steerlab.cli.options import parse_device_map
    from steerlab.generate import settings_for
    from steerlab.vectors import VectorBundle

    steerers = []

    def recording(*args, **kwargs):
        steerer = real(*args, **kwargs)
        steerers.append(steerer)
        return steerer

    real = hf.steerer_for
    monkeypatch.setattr(hf, "steerer_for", recording)
    plain, _, plain_loaded = make_backend("hf", str(tiny_dir), device="cpu")
    sharded, fingerprint, loaded = make_backend(
        "hf", str(tiny_dir), device="cpu", device_map=parse_device_map(str(map_file))
    )
    assert fingerprint == plain_loaded.fingerprint
    assert all(hasattr(block, "_hf_hook") for block in loaded.blocks)  # dispatched by accelerate
    assert not any(hasattr(block, "_hf_hook") for block in plain_loaded.blocks)
    setting = settings_for(VectorBundle.load(tiny_vector), [4.0])[0]
    sampling = Sampling(max_new_tokens=8, temperature=0.0)
    requests = [
        Request([{"role": "user", "content": text}], sampling, steering, id=f"{text}{i}")
        for text in ("Spell garden backwards", "Sort these")
        for i, steering in enumerate((None, setting))
    ]
    ours, theirs = sharded.generate(requests), plain.generate(requests)
    assert [(r.text, r.n_new_tokens) for r in ours] == [(r.text, r.n_new_tokens) for r in theirs]
    assert ours[0].text != ours[1].text  # the steering did something
    steerer = steerers[0]  # the sharded backend's (plain's came second)
    for j, layer in enumerate(steerer.layers):
        block_device = next(loaded.blocks[layer].parameters()).device
        assert steerer._tables[j].device == block_device and steerer._per_row[j].device == block_device


def test_steer_with_a_device_map_file_prints_what_unsharded_prints(tiny_dir, tiny_vector, map_file, capsys):
    args = ["steer", "--model", tiny_dir, "--vector", tiny_vector, "--alpha", "0,4", "--prompt", "Spell garden",
            "--compare", "--max-new-tokens", "6", "--device", "cpu"]  # fmt: skip
    code, plain, err = run_cli(args, capsys)
    assert code == 0, err
    code, sharded, err = run_cli([*args, "--device-map", map_file], capsys)
    assert code == 0, err
    assert sharded == plain and "alpha=+4" in sharded


def test_device_map_and_max_memory_reach_load_model(monkeypatch, tiny_vector, capsys):
    seen = {}

    def load_model(name, **kwargs):
        seen.update(kwargs)
        raise ConfigError("recorded")

    monkeypatch.setattr("steerlab.models.load_model", load_model)
    code, _, err = run_cli(["steer", "--model", "m", "--vector", tiny_vector, "--alpha", "1", "--prompt", "x",
                            "--device-map", "balanced", "--max-memory", "0=70GiB, 1=1.5GB,cpu=200MiB"],
                           capsys)  # fmt: skip
    assert code == 2 and "recorded" in err
    assert seen["device_map"] == "balanced"
    assert seen["max_memory"] == {0: 70 * 2**30, 1: 1_500_000_000, "cpu": 200 * 2**20}


def test_parsers():
    from steerlab.cli.options import engine_options, parse_device_map, parse_max_memory, parse_vllm_args

    assert [parse_device_map(x) for x in ("auto", "sequential", "cpu", "cuda:1", "0")] == [
        "auto", "sequential", "cpu", "cuda:1", 0]  # fmt: skip
    assert parse_max_memory("cuda:1=1KiB,disk=2") == {1: 1024, "disk": 2}
    assert parse_vllm_args(["enforce_eager=true", "kv_cache_dtype=fp8", "swap_space=4", "x={\"a\": [1]}", "e="]) == {
        "enforce_eager": True, "kv_cache_dtype": "fp8", "swap_space": 4, "x": {"a": [1]}, "e": ""}  # fmt: skip
    assert engine_options() == {}


class Recorder:
    """Stands in for VLLMBackend (vLLM is not installed here): records its arguments, then stops the command."""

    calls: list = []

    def __init__(self, model, **kwargs):
        Recorder.calls.append((model, kwargs))
        raise ConfigError("recorded")


@pytest.fixture
def recorder(monkeypatch):
    import steerlab.backends.vllm

    Recorder.calls = []
    monkeypatch.setattr(steerlab.backends.vllm, "VLLMBackend", Recorder)
    return Recorder.calls


def test_make_backend_passes_the_engine_options_to_vllm(recorder):
    from steerlab.backends import make_backend

    with pytest.raises(ConfigError):
        make_backend("vllm", "m", tensor_parallel_size=8)
    model, kwargs = recorder[-1]
    assert model == "m" and kwargs["tensor_parallel_size"] == 8
    assert not {"max_model_len", "gpu_memory_utilization", "enable_prefix_caching"} & set(kwargs)  # their defaults
    with pytest.raises(ConfigError):
        make_backend("vllm", "m", max_model_len=131072, gpu_memory_utilization=0.85, enable_prefix_caching=False,
                     vllm_args={"enforce_eager": True, "kv_cache_dtype": "fp8"})  # fmt: skip
    _, kwargs = recorder[-1]
    assert kwargs["max_model_len"] == 131072 and kwargs["gpu_memory_utilization"] == 0.85
    assert kwargs["enable_prefix_caching"] is False
    assert kwargs["enforce_eager"] is True and kwargs["kv_cache_dtype"] == "fp8"
    with pytest.raises(ConfigError, match="set it with its own option"):
        make_backend("vllm", "m", vllm_args={"max_model_len": 5})


VLLM_OPTIONS = ["--backend", "vllm", "--max-model-len", "8192", "--gpu-memory-utilization", "0.9",
                "--enable-prefix-caching", "--vllm-arg", "swap_space=4", "--vllm-arg", "quantization=fp8"]  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        ["steer", "--alpha", "1", "--prompt", "x", "--model", "m"],
        ["eval", "--model", "m", "--dataset", BENIGN, "--out", "run"],
        ["prompt-eval", "--model", "m", "--dataset", BENIGN, "--out", "run"],
        ["sweep", "--config", "sweep.yaml"],
        ["pairs", "generate", "researcher_expectations", "--out", "p.jsonl", "--model", "m"],
    ],
    ids=["steer", "eval", "prompt-eval", "sweep", "pairs-generate"],
)
def test_every_generating_command_passes_the_vllm_options(command, recorder, tiny_vector, tmp_path, monkeypatch,
                                                           capsys):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text(f"model: m\nprompts: {BENIGN}\nout: run\n")
    if command[0] == "steer":
        command = [*command, "--vector", tiny_vector]
    code, _, err = run_cli([*command, *VLLM_OPTIONS], capsys)
    assert code == 2 and "recorded" in err, err
    _, kwargs = recorder[-1]
    assert kwargs["max_model_len"] == 8192 and kwargs["gpu_memory_utilization"] == 0.9
    assert kwargs["enable_prefix_caching"] is True and kwargs["swap_space"] == 4 and kwargs["quantization"] == "fp8"


STEER = ["steer", "--model", "no/such-model", "--alpha", "1", "--prompt", "x", "--vector", "v.safetensors"]
SWEEP = ["sweep", "--config", "sweep.yaml"]
EVAL = ["eval", "--model", "no/such-model", "--dataset", BENIGN, "--out", "run"]
PAIRS = ["pairs", "generate", "researcher_expectations", "--out", "p.jsonl", "--model", "no/such-model"]
ROWS = [
    (STEER + ["--device-map", "everywhere"], "--device-map 'everywhere': not a strategy, a device or a file"),
    (STEER + ["--device-map", "notjson.json"], "--device-map notjson.json: not a JSON file"),
    (STEER + ["--device-map", "list.json"], "give a JSON object mapping module names to devices"),
    (STEER + ["--device-map", "badmap.json"], "module 'model.layers.0' maps to 'gpu7'"),
    (STEER + ["--max-memory", "0=lots"], "--max-memory '0=lots': write DEVICE=SIZE pairs"),
    (STEER + ["--max-memory", "0=1GiB,0=2GiB"], "0 is given twice"),
    (EVAL + ["--max-memory", "gpu=1GiB"], "--max-memory 'gpu=1GiB'"),
    (EVAL + ["--device-map", "auto", "--backend", "vllm"], "vLLM shards with --tensor-parallel-size"),
    (SWEEP + ["--max-memory", "0=1GiB", "--backend", "anthropic"], "not --backend anthropic"),
    (STEER + ["--device-map", "auto", "--backend", "anthropic"], "not --backend anthropic"),
    (PAIRS + ["--device-map", "auto", "--backend", "vllm"], "vLLM shards with --tensor-parallel-size"),
    (STEER + ["--vllm-arg", "novalue"], "--vllm-arg 'novalue': write KEY=VALUE"),
    (PAIRS + ["--backend", "vllm", "--vllm-arg", "novalue"], "--vllm-arg 'novalue': write KEY=VALUE"),
    (EVAL + ["--backend", "vllm", "--vllm-arg", "a=1", "--vllm-arg", "a=2"], "--vllm-arg a: given twice"),
    (EVAL + ["--backend", "vllm", "--max-model-len", "0"], "--max-model-len 0: give a positive number"),
    (SWEEP + ["--backend", "vllm", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization 1.5: give a fraction"),
    (STEER + ["--max-model-len", "8192"], "configure --backend vllm, not --backend hf"),
    (EVAL + ["--no-enable-prefix-caching"], "configure --backend vllm, not --backend hf"),
    (PAIRS + ["--gpu-memory-utilization", "0.5", "--backend", "anthropic"], "not --backend anthropic"),
    (["calibrate", "cal.yaml", "--out", "cal", "--max-model-len", "4"], "configure --backend vllm, not --backend hf"),
]


@pytest.mark.parametrize("args,says", ROWS, ids=[f"{i}:{r[1][:30]}" for i, r in enumerate(ROWS)])
def test_bad_scale_options(args, says, tiny_vector, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text(f"model: no/such-model\nprompts: {BENIGN}\nout: run\n")
    (tmp_path / "notjson.json").write_text("{")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "badmap.json").write_text(json.dumps({"model.layers.0": "gpu7"}))
    refused(args, says, tmp_path, capsys)
