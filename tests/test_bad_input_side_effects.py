"""``steerlab side-effects``: every user mistake is one line, exit status 2, and nothing created or changed on disk
(the run directory included), refused before the model loads.

Each row copies a small run (made by the real engine on the tiny model, see test_side_effects) into an empty working
directory, breaks what the row names, runs the real CLI there and checks the directory is unchanged."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from test_bad_input import refused
from test_side_effects import concept_file, make_judged_run


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_dir):
    """A judged run of the alpha vector (controls 3, multipliers -2, 0, 2) and one without multiplier 0."""
    from steerlab.models import load_model

    loaded = load_model(str(tiny_dir), device="cpu")
    root = tmp_path_factory.mktemp("made")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_judged_run(root, loaded, tiny_dir, judge=False)
        other = root / "no_zero"
        other.mkdir()
        os.chdir(other)
        make_judged_run(other, loaded, tiny_dir, multipliers=(2.0,), judge=False)
    finally:
        os.chdir(cwd)
    foreign = loaded.fingerprint.to_dict() | {"embed_hash": "another"}
    d = torch.randn(loaded.n_layers, loaded.d_model, generator=torch.Generator().manual_seed(1))
    meta = concept_file(root / "x", loaded, "foreign", d)
    from steerlab.vectors import VectorBundle

    b = VectorBundle.load(meta)
    b.meta["model"] = foreign
    b.save(root / "foreign.safetensors")
    shutil.rmtree(root / "x")
    two = {"concept": "two", "layers": [1, 2], "selected_layers": [1], "model": loaded.fingerprint.to_dict()}
    VectorBundle.build(d[1:3], torch.empty(0, 2, loaded.d_model), two).save(root / "two_layers.safetensors")
    return root


def _eval_run(root):
    """A run directory of an unsteered evaluation (no vectors)."""
    (root / "eval").mkdir()
    header = json.loads((root / "run" / "header.json").read_text())
    header["config"] = header["config"] | {"vectors": [], "multipliers": [0.0], "controls": 0}
    (root / "eval" / "header.json").write_text(json.dumps(header))
    (root / "eval" / "samples.jsonl").write_text("")


def _changed_vector(root):
    path = root / "vectors" / "alpha" / "tiny.safetensors"
    from steerlab.vectors import VectorBundle

    b = VectorBundle.load(path)
    b.meta["note"] = "refit"
    b.save(path)


def _with_config(name, **changes):
    """A copy of the run whose header's config steers otherwise (an operator, a condition, a gate)."""

    def make(root):
        shutil.copytree(root / "run", root / name)
        header = json.loads((root / name / "header.json").read_text())
        header["config"] = header["config"] | changes
        (root / name / "header.json").write_text(json.dumps(header))

    return make


def _empty_texts(root):
    (root / "empty.txt").write_text("\n\n  \n")


def _not_a_run(root):
    (root / "folder").mkdir()
    (root / "folder" / "notes.txt").write_text("hello")


def _full_out(root):
    (root / "full").mkdir()
    (root / "full" / "old.json").write_text("{}")


SE = ["side-effects", "run", "--device", "cpu"]
TABLE = [
    # (arguments, what the one line must say, how to break the inputs first)
    (["side-effects", "missing"], "is not a directory", None),
    (["side-effects", "folder"], "not a steerlab run directory", _not_a_run),
    (["side-effects", "eval"], "is not a steered run", _eval_run),
    (["side-effects", "no_zero/run"], "has no multiplier 0", None),
    ([*SE, "--vector", "foreign.safetensors"], "fitted on another model", None),
    ([*SE, "--vector", "nowhere.safetensors"], "no vector file at nowhere.safetensors", None),
    ([*SE, "--readout-layer", "9"], "the model has 4 layers", None),
    ([*SE, "--readout-layer", "-1"], "the model has 4 layers", None),
    ([*SE, "--vector", "two_layers.safetensors", "--readout-layer", "3"], "has no direction at layer 3", None),
    ([*SE, "--texts", "empty.txt"], "holds no text", _empty_texts),
    ([*SE, "--texts", "none.txt"], "does not exist", None),
    ([*SE, "--out", "run/side"], "inside the run directory", None),
    ([*SE, "--out", "full"], "exists and is not empty", _full_out),
    ([*SE, "--out", "benign.jsonl"], "is a file", None),
    ([*SE, "--condition", "watched"], "the run's conditions are monitored, unmonitored", None),
    ([*SE, "--controls", "5"], "the run has 3 random controls", None),
    ([*SE, "--batch-size", "0"], "give at least 1", None),
    ([*SE, "--max-tokens", "0"], "give at least 1", None),
    ([*SE, "--n-resamples", "-1"], "give 0 or more", None),
    (SE, "changed since the run", _changed_vector),
    (
        ["side-effects", "ablated", "--device", "cpu"],
        "steers with operator ablate",
        _with_config("ablated", operator="ablate"),
    ),
    (
        ["side-effects", "gated", "--device", "cpu"],
        "steers with steer_only",
        _with_config("gated", steer_only=["monitored"]),
    ),
]


@pytest.mark.parametrize("args, says, breaks", TABLE, ids=[f"{i}: {s}" for i, (_, s, _) in enumerate(TABLE)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, says, breaks, made, tmp_path, capsys, monkeypatch):
    root = tmp_path / "w"
    shutil.copytree(made, root)
    if breaks:
        breaks(root)
    monkeypatch.chdir(root)
    refused(args, says, root, capsys)
    assert not (root / "run-side-effects").exists()
