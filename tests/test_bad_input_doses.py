"""Bad dose files (``sweep``/``eval --dose-file``, ``doses:``) and bad ``calibrate-dose`` targets: every row runs
the real CLI on the tiny model saved to disk and must exit 2 with one line, before the model loads, leaving the
working directory as it was (no run directory, no lock, no dose file)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_cli
from test_bad_input import refused

from steerlab.analysis.doses import read_texts
from steerlab.vectors import VectorBundle, random_controls

BENIGN = str(REPO / "configs" / "requests" / "benign.jsonl")
OLD = REPO / "benchmarks" / "results" / "doses_smollm2_cpu.json"  # format 1: no vector-file hashes


def _vector(tiny, path: Path, seed: int) -> None:
    directions = 4.0 * torch.randn(tiny.n_layers, tiny.d_model, generator=torch.Generator().manual_seed(seed))
    meta = {"concept": f"toy{seed}", "layers": list(range(tiny.n_layers)), "selected_layers": [1, 2],
            "model": tiny.fingerprint.to_dict()}  # fmt: skip
    VectorBundle.build(directions, random_controls(directions, 2, seed=1), meta).save(path)


def _variant(name: str, record: dict, change) -> None:
    data = json.loads(json.dumps(record))
    change(data)
    Path(name).write_text(json.dumps(data, allow_nan=True))


@pytest.fixture
def inputs(tmp_path, tiny, tiny_dir, monkeypatch, capsys):
    """v.safetensors and c.safetensors calibrated at KL 0.01 (1 control) into doses.json; then c.safetensors is
    overwritten (changed since); w.safetensors never calibrated; broken variants of doses.json; a sweep writer."""
    monkeypatch.chdir(tmp_path)
    for name, seed in (("v", 0), ("c", 2), ("w", 3)):
        _vector(tiny, tmp_path / f"{name}.safetensors", seed)
    Path("texts.txt").write_text("\n\n".join(read_texts(REPO / "configs" / "texts" / "neutral.txt")[:2]) + "\n")
    code, _, err = run_cli(["calibrate-dose", "v.safetensors", "c.safetensors", "--target-kl", "0.01", "--texts",
                            "texts.txt", "--model", tiny_dir, "--device", "cpu", "--out", "doses.json",
                            "--max-tokens", "12", "--controls", "1"], capsys)  # fmt: skip
    assert code == 0, err
    Path("c.safetensors").write_bytes(Path("w.safetensors").read_bytes())
    record = json.loads(Path("doses.json").read_text())
    assert all(d["converged"] for d in record["doses"])
    fp = dict(record["model"], embed_hash="another")
    _variant("other_model.json", record, lambda d: d.update(model=fp))
    _variant("unconverged.json", record, lambda d: d["doses"][0].update(converged=False))
    _variant("nan.json", record, lambda d: d["doses"][0].update(multiplier=math.nan))
    _variant("null.json", record, lambda d: d["doses"][1].update(multiplier=None))
    _variant("no_layers.json", record, lambda d: d["doses"][0].pop("layers"))
    _variant("not_doses.json", record, lambda d: d.update(kind="run"))
    Path("broken.json").write_text(Path("doses.json").read_text()[:-40])
    Path("old.json").write_text(OLD.read_text())

    def sweep(**kw):
        body = {"model": str(tiny_dir), "vectors": ["v.safetensors"], "controls": 1, "multipliers": [0, 0.01, -0.01],
                "prompts": BENIGN, "limit": 1, "max_new_tokens": 2, "out": "run", "doses": "doses.json",
                **kw}  # fmt: skip
        Path("sweep.yaml").write_text(yaml.safe_dump(body))
        return ["sweep", "--config", "sweep.yaml", "--device", "cpu"]

    return sweep


def test_each_bad_dose_file_is_one_line_exit_2_and_writes_nothing(inputs, tiny_dir, tmp_path, capsys):
    sweep = inputs
    eval_ = ["eval", "--model", tiny_dir, "--dataset", BENIGN, "--limit", "1", "--out", "af", "--vector",
             "v.safetensors", "--device", "cpu", "--dose-file", "doses.json"]  # fmt: skip
    rows = [
        (lambda: sweep(doses="other_model.json"), "was calibrated on another model than vector file v.safetensors "
         "(fingerprint differs in embed_hash)"),
        (lambda: sweep(vectors=["c.safetensors"]), "vector file c.safetensors changed since dose file doses.json was "
         "calibrated"),
        (lambda: sweep(vectors=["w.safetensors"]), "holds no dose for vector file w.safetensors"),
        (lambda: sweep(controls=2), "holds no dose for control 1 of v.safetensors at KL 0.01 (+)"),
        (lambda: sweep(multipliers=[0, 0.02]), "multiplier +0.02 is a dose in KL units, but dose file doses.json holds "
         "doses at KL 0.01 only"),
        (lambda: sweep(doses="unconverged.json"), "did not converge in unconverged.json"),
        (lambda: sweep(scale="relative"), "calibrated doses are absolute multipliers; drop scale: relative"),
        (lambda: sweep(lora="adapter"), "calibrated on the model without the LoRA adapter"),
        (lambda: sweep(vectors=[], multipliers=[0]), "a dose file gives each vector's multiplier; give vectors"),
        (lambda: sweep(layers=[1]), "but its doses were calibrated at [1, 2]; drop layers:"),
        (lambda: sweep(doses="nan.json"), "has no finite multiplier (nan)"),
        (lambda: sweep(doses="null.json"), "has no finite multiplier (None)"),
        (lambda: sweep(doses="no_layers.json"), "no_layers.json is malformed (KeyError"),
        (lambda: sweep(doses="not_doses.json"), "is not a calibrate-dose record"),
        (lambda: sweep(doses="broken.json"), "dose file broken.json is not JSON"),
        (lambda: sweep(doses="old.json"), "records no vector-file hashes (an older calibrate-dose)"),
        (lambda: sweep(doses="missing.json"), "dose file missing.json does not exist"),
        (lambda: [*sweep(doses=None), "--dose-file", "broken.json"], "dose file broken.json is not JSON"),
        (lambda: [*eval_, "--alpha", "0,0.02"], "holds doses at KL 0.01 only"),
        (lambda: [*eval_, "--alpha", "0.01", "--scale", "relative"], "drop scale: relative"),
        (lambda: [*eval_, "--alpha", "0.01", "--controls", "2"], "holds no dose for control 1"),
        (lambda: ["calibrate-dose", "v.safetensors", "--texts", "texts.txt", "--model", tiny_dir, "--out", "d2.json",
          "--target-kl", "0.01", "--target-kl", "0.01"], "--target-kl 0.01, 0.01 names a target twice"),
        (lambda: ["calibrate-dose", "v.safetensors", "--texts", "texts.txt", "--model", tiny_dir, "--out", "d2.json",
          "--target-kl", "0.01", "--target-kl", "-1"], "--target-kl -1: give a KL divergence above 0"),
    ]  # fmt: skip
    lines = [refused(make(), says, tmp_path, capsys) for make, says in rows]  # each config written just before
    assert len(lines) == len(rows)
    assert not (tmp_path / "run").exists() and not (tmp_path / "af").exists()
