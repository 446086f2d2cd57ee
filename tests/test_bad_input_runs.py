"""Bad run options (issue 14.5): each is caught before the run directory exists, so the corrected
rerun is never refused as "another config hash". Every row runs the real CLI on the tiny model
saved to disk and must exit 2 with one line, leaving the working directory as it was (no run
directory, no lock file). A directory that holds a header and no sample (what older versions left
behind) is re-initialised by the corrected run."""

import json

import pytest
import torch
import yaml
from conftest import REPO, run_cli
from test_bad_input import refused, snapshot

from steerlab.vectors import VectorBundle, random_controls

BENIGN = str(REPO / "configs" / "requests" / "benign.jsonl")


def _vector(tiny, path, width):
    directions = torch.randn(tiny.n_layers, width, generator=torch.Generator().manual_seed(0))
    meta = {"concept": "toy", "layers": list(range(tiny.n_layers)), "selected_layers": [1],
            "model": tiny.fingerprint.to_dict()}  # fmt: skip
    VectorBundle.build(directions, random_controls(directions, 2, seed=1), meta).save(path)


@pytest.fixture
def inputs(tmp_path, tiny, tiny_dir, monkeypatch):
    """vectors good.safetensors and wide.safetensors (d_model + 3, same fingerprint), a sweep YAML writer."""
    _vector(tiny, tmp_path / "good.safetensors", tiny.d_model)
    _vector(tiny, tmp_path / "wide.safetensors", tiny.d_model + 3)
    monkeypatch.chdir(tmp_path)

    def sweep_yaml(**kw):
        body = {"model": str(tiny_dir), "vectors": ["good.safetensors"], "controls": 1, "multipliers": [0, 1],
                "prompts": BENIGN, "limit": 1, "max_new_tokens": 2, "out": "run", **kw}  # fmt: skip
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(body))
        return ["sweep", "--config", "sweep.yaml", "--device", "cpu"]

    return sweep_yaml


def eval_args(tiny_dir, *extra):
    return ["eval", "--model", tiny_dir, "--dataset", BENIGN, "--limit", "1", "--conditions", "monitored",
            "--max-new-tokens", "2", "--out", "run", "--device", "cpu", *extra]  # fmt: skip


ROWS = [
    # (eval options or sweep YAML keys, what the one line must say)
    (("eval", ["--max-new-tokens", "0"]), "max_new_tokens"),
    (("eval", ["--temperature", "-1"]), "temperature"),
    (("eval", ["--temperature", "nan"]), "temperature"),
    (("eval", ["--batch-size", "0"]), "batch_size"),
    (("eval", ["--vector", "wide.safetensors", "--alpha", "1"]), "has width 67, but the model's d_model is 64"),
    (("sweep", {"layers": [99]}), "no direction for layer 99"),  # the vector file's layers, before the model loads
    (("sweep", {"layers": [99], "vectors": [], "multipliers": [0]}), "layers: 99 is not a layer of the model"),
    (("sweep", {"layers": [-1]}), "layers"),
    (("sweep", {"batch_size": 0}), "batch_size"),
    (("sweep", {"max_new_tokens": 0}), "max_new_tokens"),
    (("sweep", {"top_p": 0}), "top_p"),
    (("sweep", {"scorer": "math:pi"}), "scorer 'math:pi' is a float, not a function"),
    (("sweep", {"scorer": "steerlab.nope:score"}), "scorer 'steerlab.nope:score' cannot be imported"),
]


@pytest.mark.parametrize("row, says", ROWS, ids=[f"{r[0]} {r[1]}" for r, _ in ROWS])
def test_bad_run_option_is_one_line_and_makes_no_directory(row, says, inputs, tiny_dir, tmp_path, capsys):
    kind, option = row
    args = eval_args(tiny_dir, *option) if kind == "eval" else inputs(**option)
    refused(args, says, tmp_path, capsys, loading_bar=True)  # no run directory, header or lock file


def test_a_header_only_directory_is_reinitialised_by_the_corrected_run(inputs, tiny_dir, tmp_path, capsys):
    """What a bad option left behind before this fix: header.json (of the bad config) and an empty samples.jsonl."""
    code, _, err = run_cli(eval_args(tiny_dir), capsys)
    assert code == 0, err
    run = tmp_path / "run"
    header = json.loads((run / "header.json").read_text())
    header["config"]["max_new_tokens"], header["config_hash"] = 0, "0" * 16
    (run / "header.json").write_text(json.dumps(header))
    (run / "samples.jsonl").write_text("")
    for path in run.iterdir():  # the summary and figure of the first run go: header and empty samples stay
        if path.name not in ("header.json", "samples.jsonl"):
            path.unlink()
    code, _, err = run_cli(eval_args(tiny_dir, "--max-new-tokens", "3"), capsys)
    assert code == 0, err  # was: "holds a run with another config hash"
    header = json.loads((run / "header.json").read_text())
    assert header["config"]["max_new_tokens"] == 3 and header["config_hash"] != "0" * 16
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 1 and samples[0]["n_new_tokens"] <= 3


def test_a_run_with_samples_is_still_protected(inputs, tiny_dir, tmp_path, capsys):
    code, _, err = run_cli(eval_args(tiny_dir), capsys)
    assert code == 0, err
    before = snapshot(tmp_path)
    code, _, err = run_cli(eval_args(tiny_dir, "--max-new-tokens", "3"), capsys)
    assert code == 2 and "another config hash" in err
    assert snapshot(tmp_path) == before


def test_a_bad_header_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "samples.jsonl").write_text('{"id": "a"}\n')
    for text in ("{not json", "[1, 2]"):
        (tmp_path / "run" / "header.json").write_text(text)
        refused(["judge", "run", "--dry-run"], "header.json is broken", tmp_path, capsys)
