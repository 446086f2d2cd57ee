"""The nnsight engine: extraction and steered generation through nnsight, locally and "on NDIF".

Local runs must equal steerlab's own hooks and decode loop (extraction to float32 rounding, generation token for
token, sampled rows included). Remote runs are tested without a network against an emulated NDIF (:class:`Server`):
the client holds the model on the meta device (config and tokenizer only, as for a real remote model), nnsight's
real RemoteBackend builds the request (model key, API key, environment) and serializes the trace body; the
emulated server deserializes it against its own copy of the weights, runs it, and returns exactly the values the
body saved, which nnsight pushes back into the caller as it does with NDIF's answer. Only the transport is faked.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("STEERLAB_REQUIRE_NNSIGHT") != "1":
    pytest.importorskip("nnsight", reason="nnsight is an optional extra (make test installs it)")

from conftest import REPO, make_pair, run_cli  # noqa: E402
from test_bad_input import refused  # noqa: E402

from steerlab.backends.base import Request, Sampling  # noqa: E402
from steerlab.backends.hf import HFBackend  # noqa: E402
from steerlab.backends.nnsight import NNsightBackend  # noqa: E402
from steerlab.cache import ActivationCache  # noqa: E402
from steerlab.extract import extract  # noqa: E402
from steerlab.loci import Locus  # noqa: E402
from steerlab.nnsight_model import NDIFError, open_model, wrap_local  # noqa: E402
from steerlab.steer import SteeringSetting  # noqa: E402
from steerlab.vectors import SteeringVector  # noqa: E402

KEY = "ndif-test-key-7f3a9c"
REPO_ID = "steerlab-test/tiny-llama"
BENIGN = str(REPO / "configs" / "requests" / "benign.jsonl")


def _vector(loaded, seed: int, layers: tuple[int, ...], scale: float = 1.0) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(loaded.n_layers, loaded.d_model, generator=g) * scale
    return SteeringVector(d, tuple(range(loaded.n_layers)), layers, loaded.fingerprint.to_dict(), f"v{seed}")


def _mixed_requests(loaded, n: int = 10, temperature: float = 0.0, scale: float = 1.0, layers=((1, 2), (2, 3))):
    """Unsteered rows, two vectors, two signs each, prompts of three lengths, budgets that differ per row."""
    v1, v2 = _vector(loaded, 1, layers[0], scale), _vector(loaded, 2, layers[1], scale)
    settings = [None, SteeringSetting(v1, 2.0), SteeringSetting(v1, -2.0), SteeringSetting(v2, 3.0),
                SteeringSetting(v2, -3.0)]  # fmt: skip
    return [
        Request(
            [{"role": "user", "content": "Convert 12 kilometres to miles. " * (1 + i % 3)}],
            Sampling(max_new_tokens=8 + i, temperature=temperature, seed=100 + i),
            steering=settings[i % 5],
            id=f"r{i}",
        )  # fmt: skip
        for i in range(n)
    ]


def _vector_file(path: Path, loaded, seed: int) -> Path:
    from steerlab.vectors import VectorBundle, random_controls

    directions = 4.0 * torch.randn(loaded.n_layers, loaded.d_model, generator=torch.Generator().manual_seed(seed))
    per_layer = {"token_norm": [10.0] * loaded.n_layers}
    meta = {"concept": "toy", "layers": list(range(loaded.n_layers)), "selected_layers": [1, 2],
            "model": loaded.fingerprint.to_dict(), "diagnostics": {"per_layer": per_layer}}  # fmt: skip
    return VectorBundle.build(directions, random_controls(directions, 1, seed=1), meta).save(path)


def _same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x.id, x.text, x.n_new_tokens, x.finish_reason, x.n_prompt_tokens) == (
            y.id, y.text, y.n_new_tokens, y.finish_reason, y.n_prompt_tokens)  # fmt: skip


def _read(path: Path) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("activations", "token_norms")}


# ------------------------------------------------------------------------------------------------ local: extraction
@pytest.mark.parametrize("locus", [locus.value for locus in Locus])
def test_local_extraction_equals_the_hooks_at_every_locus(tiny, locus, tmp_path):
    pairs = [make_pair(i) for i in range(7)]  # batches of 3: a short last batch, padding inside each
    extract(tiny, pairs, tmp_path / "hf.h5", locus=locus, batch_size=3, progress=False)
    extract(tiny, pairs, tmp_path / "nn.h5", locus=locus, batch_size=3, progress=False, nnsight=wrap_local(tiny))
    a, b = _read(tmp_path / "hf.h5"), _read(tmp_path / "nn.h5")
    assert np.abs(a["activations"]).max() > 0.02  # the comparison is not between zeros (tiny-model scale)
    assert np.abs(a["activations"] - b["activations"]).max() <= 1e-5
    assert np.abs(a["token_norms"] - b["token_norms"]).max() <= 1e-5
    meta = ActivationCache.open(tmp_path / "nn.h5").meta
    assert meta["engine"]["engine"] == "nnsight" and meta["engine"]["remote"] is False
    assert ActivationCache.open(tmp_path / "hf.h5").meta["engine"] == {"engine": "hf"}


# ------------------------------------------------------------------------------------------------ local: generation
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_local_steered_generation_equals_the_hf_backend_token_for_token(tiny, temperature):
    requests = _mixed_requests(tiny, temperature=temperature)
    hf = HFBackend(tiny, batch_size=4).generate(requests)
    nn = NNsightBackend(wrap_local(tiny), batch_size=4).generate(requests)
    _same(hf, nn)
    unsteered = HFBackend(tiny, batch_size=4).generate([Request(r.messages, r.sampling, id=r.id) for r in requests])
    changed = [a.text != b.text for a, b, r in zip(hf, unsteered, requests, strict=True) if r.steering is not None]
    assert sum(changed) >= 6  # steering changed what most steered rows wrote: the vectors reached the model


@pytest.mark.parametrize("position", ["prompt", "generation"])
def test_local_positions_equal_the_hf_backend(tiny, position):
    requests = _mixed_requests(tiny, n=5)
    _same(HFBackend(tiny, batch_size=5, position=position).generate(requests),
          NNsightBackend(wrap_local(tiny), batch_size=5, position=position).generate(requests))  # fmt: skip


def test_the_scratchpad_protocol_through_the_nnsight_backend(tmp_path):
    """Stop strings, their rules, end of sequence and continued turns, through the sweep engine: the nnsight
    backend decodes past a stop and cuts afterwards, and must end every turn where the HF backend ends it."""
    from steerlab.harness.records import read_samples
    from steerlab.runs import SweepConfig, run_sweep
    from steerlab.testing import PROTOCOL_SCRIPTS, check_protocol_samples, scripted_llama

    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"prompt": m}) + "\n" for m in PROTOCOL_SCRIPTS))
    runs = {}
    for kind in ("hf", "nnsight"):
        cfg = SweepConfig(scenario="alignment_faking", prompts=requests, conditions=["monitored"], max_new_tokens=120,
                          alignment_faking={"prefill": "<SCRATCHPAD_REASONING>", "max_turns": 2},
                          out=tmp_path / kind)  # fmt: skip
        loaded = scripted_llama(PROTOCOL_SCRIPTS)
        backend = HFBackend(loaded, batch_size=4) if kind == "hf" else NNsightBackend(wrap_local(loaded), batch_size=4)
        run_sweep(cfg, backend, None, progress=False)
        runs[kind] = {s["prompt"]: s for s in read_samples(tmp_path / kind)}
    check_protocol_samples(runs["nnsight"])
    keys = ("text", "label", "output", "finish_reason")
    for prompt, sample in runs["hf"].items():
        assert {k: sample[k] for k in keys} == {k: runs["nnsight"][prompt][k] for k in keys}
        assert [t["n_new_tokens"] for t in sample["turns"]] == [
            t["n_new_tokens"] for t in runs["nnsight"][prompt]["turns"]
        ]


@pytest.mark.parametrize("position, where", [("all", "the prefill pass"), ("generation", "the first decode step")])
def test_a_steered_row_whose_hidden_state_overflows_is_the_hf_backends_one_line(position, where):
    """float16 entries that fit (40000) but whose sum over two layers does not: the same one line as the HF backend
    (tests/test_steer.py), naming the request, the setting, the layer and the step."""
    from test_steer import half_tiny, uniform

    from steerlab.errors import ConfigError
    from steerlab.generate import as_chat

    half = half_tiny()
    v = uniform(half, 1.0, name="ones")
    prompt, sampling = as_chat("Spell garden backwards"), Sampling(max_new_tokens=4)
    requests = [
        Request(prompt, sampling, None, id="plain"),
        Request(prompt, sampling, SteeringSetting(v, 2.0), id="ok"),
    ]
    requests.append(Request(prompt, sampling, SteeringSetting(v, 40000.0), id="big"))
    messages = []
    for backend in (HFBackend(half, batch_size=4, position=position),
                    NNsightBackend(wrap_local(half), batch_size=4, position=position)):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            backend.generate(requests)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and where in messages[1]
    assert messages[1].startswith("request 'big': alpha=+40000 x ones at layers [1, 2]: after steering, its hidden "
                                  "state at layer 2 is non-finite")  # fmt: skip


def test_a_vector_that_overflows_the_models_dtype_is_refused_before_the_batch(tiny):
    """As the HF backend's Steerer refuses it: the same line, before anything is generated."""
    from test_steer import half_tiny, uniform

    from steerlab.errors import ConfigError
    from steerlab.generate import as_chat

    half = half_tiny()
    ones = uniform(half, 1.0, name="ones")
    requests = [Request(as_chat("Hi"), Sampling(max_new_tokens=3), SteeringSetting(ones, 1e5))]
    messages = []
    for backend in (HFBackend(half), NNsightBackend(wrap_local(half))):
        with pytest.raises(ConfigError) as info:
            backend.generate(requests)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "overflows the model's float16" in messages[1]


# --------------------------------------------------------------------------------------------- SmolLM2 (integration)
@pytest.mark.integration
def test_smollm2_extraction_and_steered_generation_equal_the_hf_path(smollm2, tmp_path):
    from steerlab.pairs import load_pairs

    pairs = load_pairs(REPO / "configs" / "pairs" / "researcher_expectations.jsonl")[:4]
    nn = wrap_local(smollm2)
    for locus in (Locus.scratchpad_mean, Locus.last):
        extract(smollm2, pairs, tmp_path / f"hf-{locus.value}.h5", locus=locus, batch_size=2, progress=False)
        extract(smollm2, pairs, tmp_path / f"nn-{locus.value}.h5", locus=locus, batch_size=2, progress=False,
                nnsight=nn)  # fmt: skip
        a, b = _read(tmp_path / f"hf-{locus.value}.h5"), _read(tmp_path / f"nn-{locus.value}.h5")
        assert np.abs(a["activations"] - b["activations"]).max() <= 1e-5
        assert np.abs(a["token_norms"] - b["token_norms"]).max() <= 1e-5
    requests = _mixed_requests(smollm2, n=5, scale=0.5, layers=((10, 14), (12, 16)))
    hf = HFBackend(smollm2, batch_size=5).generate(requests)
    _same(hf, NNsightBackend(nn, batch_size=5).generate(requests))
    assert len({r.text for r in hf}) >= 4  # the settings wrote different texts


# ---------------------------------------------------------------------------------------------- remote (emulated)
class Server:
    """An emulated NDIF: serves the model saved at ``path`` and answers nnsight's RemoteBackend.request."""

    def __init__(self, path: Path):
        from nnsight.modeling.transformers import TransformersModel

        self.model = TransformersModel(str(path), task="text-generation", dispatch=True)
        self.requests: list[dict] = []  # what each request carried and what came back
        self.fail: list[BaseException] = []  # raised, in order, by the next requests

    def __call__(self, backend, request, tracer):
        import nnsight.tracing.tracer as nntracer
        from nnsight.schema.request import RequestModel

        blob = backend._serialize(tracer)  # the payload nnsight would send
        record = {"model_key": request.model_key, "api_key": backend.api_key, "env": dict(request.env),
                  "host": backend.host, "payload_bytes": len(blob)}  # fmt: skip
        self.requests.append(record)
        raw = blob
        if backend.compress:
            import zstandard

            raw = zstandard.ZstdDecompressor().decompress(blob)
        # NDIF rebuilds the body from its source without steerlab installed: nothing may refer to a steerlab module
        assert not re.search(rb"steerlab\.[A-Za-z_]", raw), "the trace body refers to steerlab"
        if self.fail:
            raise self.fail.pop(0)
        restored = RequestModel.deserialize(
            blob, self.model._remoteable_persistent_objects(), compress=backend.compress
        )
        returned: dict = {}
        push = nntracer.push
        nntracer.push = lambda _frame, variables: returned.update(variables)  # what the server would send back
        try:
            restored.execute(restored.info.code)
        finally:
            nntracer.push = push
        record["returned"] = {
            k: tuple(v.shape) if hasattr(v, "shape") else type(v).__name__ for k, v in returned.items()
        }
        return returned


@pytest.fixture
def ndif(tiny_dir, monkeypatch):
    import nnsight.modeling.huggingface as nnhf
    from nnsight.intervention.backends.remote import RemoteBackend

    server = Server(tiny_dir)
    monkeypatch.setitem(nnhf._ID_CACHE, str(tiny_dir), REPO_ID)  # the hub's canonical id (no network)
    monkeypatch.setattr(RemoteBackend, "request", lambda self, request, tracer: server(self, request, tracer))
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    monkeypatch.setattr("steerlab.nnsight_model.BACKOFF_S", 0.0)
    return server


def _remote_error(cause: BaseException, message: str) -> BaseException:
    """nnsight's RemoteError as RemoteBackend raises it: ``raise RemoteError(...) from cause``."""
    from nnsight.intervention.backends.remote import RemoteError

    error = RemoteError(message)
    error.__cause__ = cause
    return error


def _connection_refused() -> BaseException:
    import httpx

    cause = httpx.ConnectError("[Errno 111] Connection refused")
    return _remote_error(cause, f"Failed to send request: {cause}")


def test_remote_model_holds_no_weights_and_its_fingerprint_matches_the_local_one(ndif, tiny, tiny_dir):
    model = open_model(str(tiny_dir), remote=True)
    assert next(model.loaded.model.parameters()).is_meta
    assert model.loaded.fingerprint == tiny.fingerprint  # the embedding rows were read remotely
    (first,) = ndif.requests
    assert first["api_key"] == KEY and REPO_ID in first["model_key"] and "text-generation" in first["model_key"]
    assert first["returned"] == {"rows": (8, tiny.d_model)}


def test_remote_extraction_equals_local_and_only_pooled_rows_come_back(ndif, tiny, tiny_dir, tmp_path):
    pairs = [make_pair(i) for i in range(5)]
    model = open_model(str(tiny_dir), remote=True)
    extract(tiny, pairs, tmp_path / "local.h5", batch_size=2, progress=False)
    extract(model.loaded, pairs, tmp_path / "remote.h5", batch_size=2, progress=False, nnsight=model)
    a, b = _read(tmp_path / "local.h5"), _read(tmp_path / "remote.h5")
    assert np.abs(a["activations"] - b["activations"]).max() <= 1e-5
    layers, d = tiny.n_layers, tiny.d_model
    assert [r["returned"] for r in ndif.requests[1:]] == [
        {"pooled": (4, layers, d), "norms": (4, layers)}, {"pooled": (4, layers, d), "norms": (4, layers)},
        {"pooled": (2, layers, d), "norms": (2, layers)},
    ]  # fmt: skip
    meta = ActivationCache.open(tmp_path / "remote.h5").meta
    assert meta["engine"]["remote"] is True and meta["engine"]["ndif_model"] == str(tiny_dir)
    assert meta["model"] == ActivationCache.open(tmp_path / "local.h5").meta["model"]  # the two caches may mix


def test_remote_extraction_killed_midway_resumes_to_the_same_cache(ndif, tiny_dir, tmp_path):
    pairs = [make_pair(i) for i in range(6)]
    model = open_model(str(tiny_dir), remote=True)
    extract(model.loaded, pairs, tmp_path / "whole.h5", batch_size=2, progress=False, nnsight=model)

    calls = {"n": 0}
    real = model.run

    def killed_on_second_batch(what, fn):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(what, fn)

    model.run = killed_on_second_batch
    with pytest.raises(KeyboardInterrupt):
        extract(model.loaded, pairs, tmp_path / "killed.h5", batch_size=2, progress=False, nnsight=model)
    model.run = real
    assert not (tmp_path / "killed.h5").exists()
    ndif.requests.clear()
    extract(model.loaded, pairs, tmp_path / "killed.h5", batch_size=2, progress=False, nnsight=model, resume=True)
    assert len(ndif.requests) == 2  # the first batch was kept; only batches 2 and 3 were sent again
    a, b = _read(tmp_path / "whole.h5"), _read(tmp_path / "killed.h5")
    assert np.array_equal(a["activations"], b["activations"]) and np.array_equal(a["token_norms"], b["token_norms"])


def test_remote_connection_errors_are_retried_then_one_line(ndif, tiny_dir, tmp_path):
    model = open_model(str(tiny_dir), remote=True)
    pairs = [make_pair(i) for i in range(2)]
    ndif.fail = [_connection_refused(), _connection_refused()]
    extract(model.loaded, pairs, tmp_path / "a.h5", batch_size=2, progress=False, nnsight=model)
    assert len(ndif.requests) == 1 + 3  # fingerprint, then two refused tries and the one that got through
    ndif.fail = [_connection_refused() for _ in range(5)]
    with pytest.raises(
        NDIFError, match=r"could not be reached .*5 tries.*Connection refused.*rerun \(an extraction with --resume"
    ):
        extract(model.loaded, pairs, tmp_path / "b.h5", batch_size=2, progress=False, nnsight=model)


def test_remote_steered_generation_equals_local_hf(ndif, tiny, tiny_dir):
    model = open_model(str(tiny_dir), remote=True)
    backend = NNsightBackend(model, batch_size=4)
    for temperature in (0.0, 0.9):  # the emulated server runs on the CPU: its draws equal the local ones
        requests = _mixed_requests(tiny, temperature=temperature)
        _same(HFBackend(tiny, batch_size=4).generate(requests), backend.generate(requests))
    sent = ndif.requests[-1]
    # per-step tokens, checks, condition decisions (none here)
    assert sent["api_key"] == KEY and set(sent["returned"]) == {"picks", "fed", "flags", "decided"}
    info = backend.describe()
    assert info["engine"] == {"remote": True, "ndif_model": str(tiny_dir)} and info["device_type"] == "ndif"


def test_remote_ablation_clamping_and_conditions_equal_local_hf(ndif, tiny, tiny_dir):
    """The trace body with operators and a condition serializes and runs on the (emulated) server as the HF hooks."""
    from steerlab.conditions import Condition

    backend = NNsightBackend(open_model(str(tiny_dir), remote=True), batch_size=4)
    hf = HFBackend(tiny, batch_size=4)
    base = _mixed_requests(tiny, temperature=0.0)
    v = SteeringVector(torch.randn(tiny.n_layers, tiny.d_model, generator=torch.Generator().manual_seed(3)),
                       tuple(range(tiny.n_layers)), (2,), tiny.fingerprint.to_dict(), "op")  # fmt: skip
    w = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(4))
    settings = [SteeringSetting(v, 0.0, operator="ablate"),
                SteeringSetting(v, 1.0, operator="clamp", bounds=(-0.5, 0.5)),
                SteeringSetting(v, 2.0, condition=Condition(w, 1, 0.0, ">"))]  # fmt: skip
    requests = [Request(r.messages, r.sampling, settings[i % 3], id=r.id) for i, r in enumerate(base)]
    want, got = hf.generate(requests), backend.generate(requests)
    _same(want, got)
    assert [r.condition_met for r in got] == [r.condition_met for r in want]
    assert any(r.condition_met is not None for r in want)


def test_the_key_is_in_no_file_written(ndif, tiny_dir, tmp_path, capsys, monkeypatch):
    """A remote extraction, fit and steered evaluation through the CLI: the key reaches the requests, and no file
    steerlab wrote (cache, vectors, run records, logs) nor nnsight's config files hold it."""
    import nnsight

    monkeypatch.chdir(tmp_path)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(make_pair(i, split="train" if i < 20 else "val").model_dump_json() + "\n"
                             for i in range(24)))  # fmt: skip
    code, out, err = run_cli(["extract", "--pairs", pairs, "--model", tiny_dir, "--engine", "nnsight", "--remote",
                              "--cache", "cache.h5", "--vectors-dir", "vectors", "--name", "tiny", "--controls", "1",
                              "--folds", "2", "--select-layers", "1,2"], capsys)  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(["eval", "--model", tiny_dir, "--backend", "nnsight", "--remote", "--dataset", BENIGN,
                              "--limit", "2", "--conditions", "monitored", "--max-new-tokens", "4", "--max-turns", "1",
                              "--vector", "vectors/toy/tiny.safetensors", "--alpha", "-1,1", "--out", "run"],
                             capsys)  # fmt: skip
    assert code == 0, err
    assert all(r["api_key"] == KEY for r in ndif.requests) and len(ndif.requests) >= 4
    config_files = [Path(nnsight.__file__).parent / "config.yaml", Path.home() / ".config" / "nnsight" / "config.yaml"]
    written = [p for p in tmp_path.rglob("*") if p.is_file()] + [p for p in config_files if p.is_file()]
    assert any(p.suffix == ".h5" for p in written) and any(p.name == "samples.jsonl" for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    header = json.loads((tmp_path / "run" / "header.json").read_text())
    assert header["backend"]["backend"] == "nnsight" and header["backend"]["engine"]["remote"] is True


# ------------------------------------------------------------------------------------------------------ bad input
def _pairs(root: Path) -> None:
    (root / "pairs.jsonl").write_text("".join(make_pair(i).model_dump_json() + "\n" for i in range(4)))


EXTRACT = ["extract", "--pairs", "pairs.jsonl", "--cache", "c.h5", "--model", "meta-llama/Llama-3.1-70B-Instruct"]
STEER = ["steer", "--vector", "v.safetensors", "--alpha", "1", "--prompt", "hi", "--model", "x/y"]
BAD = [
    ([*EXTRACT, "--engine", "nnsight", "--remote"], "needs an API key in NDIF_API_KEY", False),
    ([*EXTRACT, "--remote"], "add --engine nnsight", True),
    ([*EXTRACT, "--engine", "nnsight", "--remote", "--device-map", "auto"], "NDIF places the model itself", True),
    ([*EXTRACT, "--engine", "jax"], "use hf or nnsight", True),
    ([*STEER, "--backend", "nnsight", "--remote"], "needs an API key in NDIF_API_KEY", False),
    ([*STEER, "--backend", "hf", "--remote"], "use --backend nnsight, not hf", True),
    ([*STEER, "--backend", "nnsight", "--remote", "--lora", "adapter"], "NDIF serves its own weights", True),
    ([*STEER, "--backend", "nnsight", "--compile"], "not --backend nnsight's", True),
    ([*STEER, "--backend", "vllm", "--remote"], "use --backend nnsight, not vllm", False),
    ([*STEER, "--backend", "nnsight", "--remote", "--max-memory", "0=70GiB"], "NDIF places the model itself", True),
    ([*EXTRACT, "--engine", "nnsight", "--remote", "--dtype", "float16"], "NDIF runs the model in its own dtype", True),
    (
        [
            "eval",
            "--model",
            "x/y",
            "--dataset",
            BENIGN,
            "--out",
            "run",
            "--backend",
            "nnsight",
            "--remote",
            "--device-map",
            "auto",
        ],
        "NDIF places the model itself",
        True,
    ),  # fmt: skip
]


@pytest.mark.parametrize("args, says, key", BAD, ids=[f"{a[0]} {' '.join(a[-2:])} [{i}]" for i, (a, _, _) in
                                                        enumerate(BAD)])  # fmt: skip
def test_bad_nnsight_input_is_one_line_exit_2_and_writes_nothing(args, says, key, tmp_path, capsys, monkeypatch):
    _pairs(tmp_path)
    (tmp_path / "v.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    if key:
        monkeypatch.setenv("NDIF_API_KEY", KEY)
    refused(args, says, tmp_path, capsys)


def test_a_model_ndif_does_not_host_is_the_services_answer_in_one_line(ndif, tiny_dir, tmp_path, capsys, monkeypatch):
    from nnsight.intervention.backends.remote import RemoteError

    _pairs(tmp_path)
    monkeypatch.chdir(tmp_path)
    ndif.fail = [RemoteError(f"Failed to send request: Model {REPO_ID} is not deployed on NDIF")]
    line = refused([*EXTRACT[:-1], str(tiny_dir), "--engine", "nnsight", "--remote"], "is not deployed on NDIF",
                   tmp_path, capsys)  # fmt: skip
    assert "NDIF answered the fingerprint request" in line and len(ndif.requests) == 1


def test_a_vector_fitted_on_another_model_is_refused_by_the_nnsight_backend(tiny_dir, tmp_path, capsys, monkeypatch):
    from steerlab.testing import tiny_model

    _vector_file(tmp_path / "v.safetensors", tiny_model(seed=5), 1)
    monkeypatch.chdir(tmp_path)
    refused(["steer", "--vector", "v.safetensors", "--alpha", "1", "--prompt", "hi", "--model", tiny_dir,
             "--backend", "nnsight", "--device", "cpu"], "fingerprint", tmp_path, capsys, loading_bar=True)  # fmt: skip


def test_cli_local_nnsight_extract_and_steer_equal_hf(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _pairs(tmp_path)
    outs = {}
    for engine in ("hf", "nnsight"):
        code, _, err = run_cli(["extract", "--pairs", "pairs.jsonl", "--model", tiny_dir, "--device", "cpu",
                                "--engine", engine, "--cache", f"{engine}.h5", "--no-fit"], capsys)  # fmt: skip
        assert code == 0, err
    a, b = _read(tmp_path / "hf.h5"), _read(tmp_path / "nnsight.h5")
    assert np.abs(a["activations"] - b["activations"]).max() <= 1e-5
    from steerlab.models import load_model

    _vector_file(tmp_path / "v.safetensors", load_model(str(tiny_dir), device="cpu"), 3)
    for backend in ("hf", "nnsight"):
        code, out, err = run_cli(["steer", "--vector", "v.safetensors", "--alpha", "-2,2", "--prompt", "Sort words",
                                  "--model", tiny_dir, "--device", "cpu", "--backend", backend, "--compare",
                                  "--max-new-tokens", "12"], capsys)  # fmt: skip
        assert code == 0, err
        outs[backend] = out
    assert outs["hf"] == outs["nnsight"] and outs["hf"].count("---") == 3
    assert re.search(r"alpha=\+2", outs["hf"])


def test_a_remote_run_does_not_mix_with_a_cache_of_another_model(ndif, tiny_dir, tmp_path):
    """Remote and local caches mix only where the fingerprints agree: a local cache of another model (other
    weights, same config) is neither reused nor resumed by a remote run, which reads the weights' hash remotely."""
    from steerlab.errors import CacheError
    from steerlab.testing import tiny_model

    pairs = [make_pair(i) for i in range(4)]
    other = tiny_model(seed=5)
    extract(other, pairs, tmp_path / "c.h5", batch_size=2, progress=False)
    model = open_model(str(tiny_dir), remote=True)
    assert model.loaded.fingerprint.config_hash == other.fingerprint.config_hash  # only the weights differ
    with pytest.raises(CacheError, match="was written for"):
        extract(model.loaded, pairs, tmp_path / "c.h5", batch_size=2, progress=False, nnsight=model)
    assert len(ndif.requests) == 1  # the fingerprint request; no extraction batch was sent


def _http_error(status: int, detail: str) -> BaseException:
    import httpx

    request = httpx.Request("POST", "https://api.ndif.us/request")
    response = httpx.Response(status, json={"detail": detail}, request=request)
    cause = httpx.HTTPStatusError(f"{status}", request=request, response=response)
    return _remote_error(cause, f"Failed to send request: {detail}")


def test_try_again_answers_are_retried_and_refusals_are_not(ndif, tiny_dir, tmp_path):
    model = open_model(str(tiny_dir), remote=True)
    pairs = [make_pair(i) for i in range(2)]
    ndif.fail = [_http_error(503, "Service Unavailable"), _http_error(429, "Too many requests")]
    extract(model.loaded, pairs, tmp_path / "a.h5", batch_size=2, progress=False, nnsight=model)
    assert len(ndif.requests) == 1 + 3
    ndif.fail = [_http_error(401, "Invalid API key")]
    with pytest.raises(NDIFError, match=r"NDIF answered an extraction batch .* with an error: .*Invalid API key"):
        extract(model.loaded, pairs, tmp_path / "b.h5", batch_size=2, progress=False, nnsight=model)
    assert len(ndif.requests) == 1 + 3 + 1  # a refusal is not retried


def test_a_bug_in_a_remote_trace_keeps_its_traceback(ndif, tiny_dir, tmp_path):
    """Only the service's answers become one line; an error of steerlab's own stays an error with a traceback."""
    model = open_model(str(tiny_dir), remote=True)
    ndif.fail = [ValueError("a bug")]
    with pytest.raises(ValueError, match="a bug"):
        extract(model.loaded, [make_pair(0)], tmp_path / "a.h5", progress=False, nnsight=model)


def _tokens(loaded, requests) -> list[list[int]]:
    """The tokens each request writes under the HF backend with no end-of-sequence token, in request order (read
    from its Transcripts, one batch for all)."""
    from steerlab.backends import hf

    seen: dict[int, list[int]] = {}
    push = hf.Transcripts.push

    def record(self, b, token):
        seen.setdefault(b, []).append(token)
        push(self, b, token)

    backend = HFBackend(loaded, batch_size=len(requests))
    backend.eos_ids = set()
    hf.Transcripts.push = record
    try:
        backend.generate(requests)
    finally:
        hf.Transcripts.push = push
    ids = backend.prompt_ids(requests)
    order = sorted(range(len(requests)), key=lambda i: len(ids[i]))  # the backend decodes rows sorted by length
    return [seen[order.index(i)] for i in range(len(requests))]


def _ending_early(loaded, requests) -> set[int]:
    """End-of-sequence ids that make every row end within its first 3 tokens (a random model never writes its own):
    the third token each row writes."""
    return {tokens[2] for tokens in _tokens(loaded, requests)}


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_batches_whose_rows_all_end_early_equal_the_hf_backend(ndif, tiny, tiny_dir, temperature):
    """transformers' loop stops when every row has ended, before the trace's step loop is done: what the trace saved
    up to there is the result (locally and remotely), steered and sampled rows included."""
    requests = _mixed_requests(tiny, n=4, temperature=temperature)
    eos = _ending_early(tiny, requests)
    hf = HFBackend(tiny, batch_size=4)
    hf.eos_ids = eos
    expected = hf.generate(requests)
    assert all(r.finish_reason == "eos" and r.n_new_tokens <= 2 for r in expected)
    for model in (wrap_local(tiny), open_model(str(tiny_dir), remote=True)):
        backend = NNsightBackend(model, batch_size=4)
        backend.eos_ids = eos
        _same(expected, backend.generate(requests))


def test_the_checkpoints_generation_settings_do_not_change_the_tokens():
    """A repetition penalty (Qwen2.5 ships 1.05) or a sampling default in generation_config changes what
    transformers' generate picks; the trace chooses the tokens itself, as the HF backend does. A hard constraint it
    cannot override (a suppressed token) is refused in one line instead of changing the text."""
    from steerlab.errors import ConfigError
    from steerlab.testing import tiny_model

    loaded = tiny_model()
    requests = _mixed_requests(loaded, n=5)
    expected = HFBackend(loaded, batch_size=5).generate(requests)
    config = loaded.model.generation_config
    config.repetition_penalty, config.top_k, config.temperature = 1.3, 5, 0.7
    _same(expected, NNsightBackend(wrap_local(loaded), batch_size=5).generate(requests))
    config.suppress_tokens = [_tokens(loaded, requests)[0][0]]
    with pytest.raises(ConfigError, match="generate did not take the token .*suppress_tokens"):
        NNsightBackend(wrap_local(loaded), batch_size=5).generate(requests)
