"""Issue 17 (leftover): ``sdf gen --generator hf|vllm`` takes the sharding and engine options of
``steerlab eval`` and hands them to the generator's backend (through make_backend); an option the
chosen generator does not take, or a bad value, is one line and exit status 2 before any model
loads, with nothing written."""

import pytest
from test_bad_input import snapshot
from test_scale_options import Recorder
from test_sdf import run_sdf

from steerlab.errors import ConfigError


@pytest.fixture
def recorded(monkeypatch):
    """The backends' constructors, recording their arguments and stopping the command: load_model and
    HFBackend (hf), VLLMBackend (vllm; not installed here)."""
    import steerlab.backends.hf
    import steerlab.backends.vllm
    import steerlab.models

    calls = {"load_model": [], "HFBackend": []}
    Recorder.calls = []

    def load_model(name, **kwargs):
        calls["load_model"].append((name, kwargs))
        return object()

    def hf_backend(loaded, **kwargs):
        calls["HFBackend"].append(kwargs)
        raise ConfigError("recorded")

    monkeypatch.setattr(steerlab.models, "load_model", load_model)
    monkeypatch.setattr(steerlab.backends.hf, "HFBackend", hf_backend)
    monkeypatch.setattr(steerlab.backends.vllm, "VLLMBackend", Recorder)
    calls["VLLMBackend"] = Recorder.calls
    return calls


def gen(tmp_path, *options):
    return ["gen", "--universe", "A1_plus", "--out", tmp_path / "out", "--cache", tmp_path / "cache.sqlite", *options]


def refused_sdf(args, says, root, capsys):
    """As test_bad_input.refused, for the sdf command: exit 2, one line that says ``says``, ``root``
    unchanged."""
    before = snapshot(root)
    code, out, err = run_sdf(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sdf: error: "), (args, out, err)
    assert "Traceback" not in err and says in lines[0], lines[0]
    assert snapshot(root) == before
    return lines[0]


def test_hf_generator_gets_the_sharding_options(recorded, tmp_path, capsys):
    refused_sdf(gen(tmp_path, "--generator", "hf", "--model", "m", "--device-map", "balanced",
                    "--max-memory", "0=70GiB,cpu=200MiB", "--no-compile"), "recorded", tmp_path, capsys)  # fmt: skip
    ((name, kwargs),) = recorded["load_model"]
    assert name == "m" and kwargs["device_map"] == "balanced"
    assert kwargs["max_memory"] == {0: 70 * 2**30, "cpu": 200 * 2**20}
    assert recorded["HFBackend"][0]["compile"] is False


def test_vllm_generator_gets_the_engine_options(recorded, tmp_path, capsys):
    refused_sdf(gen(tmp_path, "--generator", "vllm", "--model", "m", "--max-model-len", "8192",
                    "--gpu-memory-utilization", "0.9", "--enable-prefix-caching", "--vllm-arg", "swap_space=4",
                    "--tensor-parallel-size", "2"), "recorded", tmp_path, capsys)  # fmt: skip
    ((model, kwargs),) = recorded["VLLMBackend"]
    assert model == "m" and kwargs["max_model_len"] == 8192 and kwargs["gpu_memory_utilization"] == 0.9
    assert kwargs["enable_prefix_caching"] is True and kwargs["swap_space"] == 4
    assert kwargs["tensor_parallel_size"] == 2


@pytest.mark.parametrize(
    "options, says",
    [
        (["--generator", "hf", "--max-model-len", "8192"], "configure --generator vllm, not --generator hf"),
        (["--generator", "vllm", "--device-map", "auto"], "shard a model of --generator hf, not --generator vllm"),
        (["--generator", "vllm", "--no-compile"], "not --generator vllm's"),
        (["--compile"], "not --generator anthropic's"),
        (["--vllm-arg", "a=1", "--dry-run"], "configure --generator vllm, not --generator anthropic"),
        (["--max-memory", "0=1GiB"], "not --generator anthropic"),
        (["--generator", "hf", "--tensor-parallel-size", "2"], "--tensor-parallel-size shards a model of --generator"),
        (["--generator", "vllm", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization 1.5: give a fraction"),
        (["--generator", "vllm", "--vllm-arg", "novalue"], "--vllm-arg 'novalue': write KEY=VALUE"),
        (["--generator", "local", "--device-map", "auto"], "--generator 'local': use anthropic, hf or vllm"),
    ],
)
def test_an_option_the_generator_does_not_take_is_one_line(options, says, recorded, tmp_path, capsys):
    refused_sdf(gen(tmp_path, "--model", "m", *options), says, tmp_path, capsys)
    assert not any(recorded.values())  # refused before any model loads
