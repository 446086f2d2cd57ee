"""Issue 14, items 2 and 8: numbers that are not numbers, or that could only give garbage, and layer lists that
are empty or absurd, are refused with one line, exit status 2 and nothing written, before any model loads.

Same pattern as the table of test_bad_input: the real CLI, run in-process from a working directory holding
only the inputs the row needs; that directory must be unchanged afterwards."""

import json

import pytest
import torch
from conftest import planted, run_cli, synthetic_cache
from safetensors.torch import save_file
from test_bad_input import refused, snapshot

from steerlab.vectors import META_KEY, VectorBundle, random_controls


def raw_vector_file(path, tiny, edit=None, meta_edit=None):
    """A vector file for the tiny model written by safetensors itself (VectorBundle.save would refuse it)."""
    g = torch.Generator().manual_seed(0)
    vector = 4.0 * torch.randn(tiny.n_layers, tiny.d_model, generator=g)
    controls = random_controls(vector, 2, seed=1)
    if edit:
        edit(vector, controls)
    per_layer = {"token_norm": [10.0] * tiny.n_layers}
    meta = {"concept": "toy", "layers": list(range(tiny.n_layers)), "selected_layers": [1, 2],
            "model": tiny.fingerprint.to_dict(), "diagnostics": {"per_layer": per_layer}}  # fmt: skip
    if meta_edit:
        meta_edit(meta)
    save_file({"vector": vector, "controls": controls}, str(path), metadata={META_KEY: json.dumps(meta)})
    return path


def _nan_at_layer_2(vector, controls):
    vector[2, 5] = float("nan")


def _inf_in_control_1(vector, controls):
    controls[1, 0, 3] = float("inf")


def _zero_layer_3(vector, controls):
    vector[3] = 0.0


def _zero_token_norm(meta):
    meta["diagnostics"]["per_layer"]["token_norm"][1] = 0.0


@pytest.fixture
def inputs(tmp_path, tiny):
    acts, _ = planted(80, n_layers=3, d_model=16, noise=0.8)
    synthetic_cache(tmp_path / "c.h5", acts.numpy(), ["train"] * 60 + ["val"] * 20)
    raw_vector_file(tmp_path / "good.safetensors", tiny)
    raw_vector_file(tmp_path / "nan.safetensors", tiny, _nan_at_layer_2)
    raw_vector_file(tmp_path / "inf_control.safetensors", tiny, _inf_in_control_1)
    raw_vector_file(tmp_path / "zero.safetensors", tiny, _zero_layer_3)
    raw_vector_file(tmp_path / "zero_norm.safetensors", tiny, meta_edit=_zero_token_norm)
    (tmp_path / "broken.safetensors").write_bytes(b"")
    save_file({"vector": torch.ones(4, tiny.d_model)}, str(tmp_path / "broken.safetensors"),
              metadata={META_KEY: "{not json"})  # fmt: skip
    return tmp_path


FIT = ["fit", "--cache", "c.h5", "--vectors-dir", "vec"]
STEER = ["steer", "--vector", "good.safetensors", "--prompt", "x", "--max-new-tokens", "2", "--device", "cpu"]


def vector_file(name):
    """``steer`` with the vector file ``NAME.safetensors`` and a model that does not exist."""
    return [*STEER[:2], f"{name}.safetensors", *STEER[3:], "--model", "no/such-model"]


TABLE = [
    # fit: the numbers of the fit itself
    ([*FIT, "--C", "nan"], "--C nan must be a finite number above 0"),
    ([*FIT, "--C", "inf"], "--C inf must be a finite number above 0"),
    ([*FIT, "--C", "0"], "--C 0.0 must be a finite number above 0"),
    ([*FIT, "--C", "-1"], "--C -1.0 must be a finite number above 0"),
    ([*FIT, "--folds", "0"], "--folds 0 must be 2 or more"),
    ([*FIT, "--folds", "1"], "--folds 1 must be 2 or more"),
    ([*FIT, "--k", "0"], "--k 0 must be 1 or more"),
    ([*FIT, "--controls", "-1"], "--controls -1 must lie in 0..1000"),
    ([*FIT, "--seed", "-1"], "--seed -1 must lie in 0.."),
    ([*FIT, "--select", "best"], "unknown selection rule 'best'"),
    ([*FIT, "--select", "list", "--select-layers", "1,,2"], "--select-layers '1,,2' has an empty item"),
    ([*FIT, "--select", "list", "--select-layers", "0-1000000000"], "layer 1000000000 is out of range"),
    # steer: multipliers, layers and vector files (the model named does not exist: all fail before it loads)
    ([*STEER, "--model", "no/such-model", "--alpha", "1,,2"], "--alpha '1,,2' has an empty item"),
    ([*STEER, "--model", "no/such-model", "--alpha", "1e400"], "--alpha 1e400 is not a finite number"),
    ([*STEER, "--model", "no/such-model", "--alpha", "1e38"], "alpha=+1e+38 x toy at layers [1, 2]: the added vector"),
    ([*STEER, "--model", "no/such-model", "--alpha", "1", "--layers", "0-1000000000"], "layer 1000000000 is out of"),
    ([*STEER, "--model", "no/such-model", "--alpha", "1", "--layers", "1,,2"], "--layers '1,,2' has an empty item"),
    ([*STEER, "--model", "no/such-model", "--alpha", "1", "--layers", ","], "--layers ',' has an empty item"),
    ([*STEER, "--model", "no/such-model", "--alpha", "1", "--layers", "3-1"], "the range 3-1 runs backwards"),
    ([*STEER, "--model", "no/such-model", "--alpha", "1", "--layers", "-1"], "'-1' is not a layer or range"),
    ([*vector_file("nan"), "--alpha", "1"], "nan.safetensors: tensor 'vector' has non-finite values at layer 2"),
    (
        [*vector_file("inf_control"), "--alpha", "1"],
        "inf_control.safetensors: tensor 'controls' (control 1) has non-finite values at layer 0",
    ),
    ([*vector_file("zero"), "--alpha", "1"], "zero.safetensors: tensor 'vector' has zero norm at layer 3"),
    ([*vector_file("broken"), "--alpha", "1"], "the 'steerlab' JSON header is broken"),
    ([*vector_file("zero_norm"), "--alpha", "1", "--scale", "relative"], "the recorded token_norm of layer 1 is 0.0"),
    (["vectors", "inspect", "nan.safetensors"], "tensor 'vector' has non-finite values at layer 2"),
    # extract: a layer range is checked before anything is expanded or loaded
    (
        ["extract", "--pairs", "c.h5", "--cache", "x.h5", "--model", "no/such-model", "--layers", "0-1000000000"],
        "layer 1000000000 is out of range",
    ),
]


@pytest.mark.parametrize("args, says", TABLE, ids=[" ".join(map(str, a[:3])) + f" [{i}]" for i, (a, _) in
                                                   enumerate(TABLE)])  # fmt: skip
def test_bad_number_is_one_line_exit_2_and_writes_nothing(args, says, inputs, capsys, monkeypatch):
    monkeypatch.chdir(inputs)
    refused(args, says, inputs, capsys)


def test_alpha_that_overflows_is_refused_with_the_model_loaded(tiny_dir, tiny_vector, tmp_path, capsys, monkeypatch):
    """On the real tiny model (not only before it loads): 1e38 x a vector with entries ~4 overflows float32."""
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    args = ["steer", "--model", tiny_dir, "--vector", tiny_vector, "--prompt", "x", "--max-new-tokens", "2",
            "--alpha", "1e38", "--device", "cpu"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.startswith("steerlab: error:")]
    assert code == 2 and out == "" and len(lines) == 1, err
    assert "alpha=+1e+38 x toy at layers [1, 2]: the added vector at layer 1 has norm" in lines[0]
    assert "overflows float32" in lines[0]
    assert snapshot(tmp_path) == before


def test_a_huge_layer_range_is_refused_before_it_is_expanded(monkeypatch):
    """``0-1000000000`` must raise from the bounds alone: expanding it took 22 GB. A ``range`` inside the parser
    that would produce more than 100000 layers fails the test instead of filling memory."""
    import steerlab.cli
    import steerlab.generate
    from steerlab.cli import parse_layers  # what every command calls (it delegates to steerlab.generate)
    from steerlab.errors import ConfigError

    def guarded_range(*args):
        r = range(*args)
        assert len(r) <= 100_000, f"parse_layers expanded range{args}"
        return r

    for module in (steerlab.cli, steerlab.generate):
        monkeypatch.setattr(module, "range", guarded_range, raising=False)
    with pytest.raises(ConfigError, match="layer 1000000000 is out of range"):
        parse_layers("0-1000000000")
    with pytest.raises(ConfigError, match=r"layer 40 is out of range \(the model has 32 layers, 0..31\)"):
        parse_layers("0-40", n_layers=32)
    assert parse_layers("3, 5,10-12") == [3, 5, 10, 11, 12]
    assert parse_layers("0-31", n_layers=32) == list(range(32))
    assert parse_layers(None) is None


def test_the_vector_file_that_fit_would_write_is_refused_and_nothing_is_written(tmp_path, tiny):
    """VectorBundle.save refuses a vector or control with a NaN, an inf or zero norm at a layer."""
    from steerlab.vectors import VectorError

    good = VectorBundle.load(raw_vector_file(tmp_path / "good.safetensors", tiny))
    bad = VectorBundle.build(good.vector.directions.clone(), torch.stack([c.directions for c in good.controls]),
                             good.meta)  # fmt: skip
    bad.vector.directions[1, 0] = float("nan")
    with pytest.raises(VectorError, match=r"refusing to write .*v.safetensors: tensor 'vector' has non-finite values"):
        bad.save(tmp_path / "v.safetensors")
    bad.vector.directions[1, 0] = 0.5
    bad.controls[1].directions[3] = 0.0
    with pytest.raises(VectorError, match=r"tensor 'controls' \(control 1\) has zero norm at layer 3"):
        bad.save(tmp_path / "v.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors"]
