"""Dose files in runs (``sweep --dose-file``, ``eval --dose-file``, ``doses:``): the multipliers are signed doses in
KL units and every arm (the real vector and each control) is steered by its own calibrated multiplier.

Known answers, through the real CLI on the tiny model saved to disk: each sample records the dose and exactly the
multiplier calibrate-dose wrote for its arm, sign and target; its text equals a plain sweep's (no dose file) at
that multiplier; a file holds several targets; the summary's cells are the doses, each holding the real vector
and its controls (recomputed with pandas from the samples); a killed run resumes to the same samples; a resume
with another dose file (another path, or the same path with other content) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, run_cli
from test_bad_input import refused

from steerlab.analysis.doses import read_texts
from steerlab.fileio import file_hash
from steerlab.testing import readout_vector
from steerlab.vectors import VectorBundle, random_controls

NEUTRAL = REPO / "configs" / "texts" / "neutral.txt"
TARGETS = (0.005, 0.01)
DOSES = [-0.01, 0.0, 0.005, 0.01]


@pytest.fixture
def tiny_vector(tiny, tmp_path) -> Path:
    """A vector file whose real vector (layer 3) is the direction the unembedding reads most, so it reaches a KL
    at a smaller multiplier than its two equal-norm random controls (which differ from each other too)."""
    directions = readout_vector(tiny, 3)
    meta = {"concept": "toy", "layers": list(range(tiny.n_layers)), "selected_layers": [3],
            "model": tiny.fingerprint.to_dict()}  # fmt: skip
    return VectorBundle.build(directions, random_controls(directions, 2, seed=1), meta).save(tmp_path / "v.safetensors")


def calibrate(capsys, tiny_dir, vector, out: Path, targets=TARGETS, *extra) -> dict:
    """calibrate-dose through the CLI on the first 3 shipped neutral texts (16 tokens each); the record."""
    out.parent.mkdir(exist_ok=True)
    texts = out.parent / "texts.txt"
    texts.write_text("\n\n".join(read_texts(NEUTRAL)[:3]) + "\n")
    args = ["calibrate-dose", vector, "--texts", texts, "--model", tiny_dir, "--device", "cpu", "--out", out,
            "--max-tokens", 16, "--rtol", 0.002, "--start", 0.3,
            *[a for t in targets for a in ("--target-kl", t)], *extra]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    return json.loads(out.read_text())


def sweep_args(tmp_path, tiny_dir, vector, out="run", **kw) -> list:
    (tmp_path / "prompts.txt").write_text("Tell me about the sea.\nName a colour.\n")
    body = {"model": str(tiny_dir), "vectors": [str(vector)], "controls": 2, "multipliers": DOSES,
            "prompts": str(tmp_path / "prompts.txt"), "max_new_tokens": 5, "temperature": 0.0, "batch_size": 4,
            "scorer": "[aeiou]{2}", "out": str(tmp_path / out), **kw}  # fmt: skip
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(body))
    return ["sweep", "--config", path, "--device", "cpu"]


def samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def calibrated(record: dict) -> dict[tuple, float]:
    """(control, sign, target) -> multiplier, as calibrate-dose wrote it."""
    return {(d["control"], d["sign"], d["target_kl"]): d["multiplier"] for d in record["doses"]}


def test_a_dose_sweep_steers_each_arm_by_its_own_calibrated_multiplier(tiny_dir, tiny_vector, tmp_path, capsys):
    record = calibrate(capsys, tiny_dir, tiny_vector, tmp_path / "doses.json")
    # one file, two targets: 2 targets x (vector + 2 controls) x 2 signs, each with its target and the file's hash
    assert record["format"] == 2 and record["targets"] == list(TARGETS) and "target_kl" not in record
    assert len(record["doses"]) == 12 and {d["target_kl"] for d in record["doses"]} == set(TARGETS)
    assert {d["file_hash"] for d in record["doses"]} == {file_hash(Path(tiny_vector))}
    assert all(d["converged"] for d in record["doses"])
    table = calibrated(record)
    # the controls' multipliers differ from the vector's at one dose, so a mix-up of arms would show
    assert len({round(table[c, "+", 0.01], 6) for c in (None, 0, 1)}) == 3
    assert abs(table[None, "+", 0.01]) < 0.7 * min(abs(table[c, "+", 0.01]) for c in (0, 1))

    code, stdout, err = run_cli([*sweep_args(tmp_path, tiny_dir, tiny_vector), "--dose-file",
                                 tmp_path / "doses.json"], capsys)  # fmt: skip
    assert code == 0, err
    assert "dose (KL)" in stdout
    rows = samples(tmp_path / "run")
    assert len(rows) == 3 * 4 * 2  # arms x doses x prompts
    control = {"real": None, "control0": 0, "control1": 1}
    for r in rows:
        assert r["dose_kl"] == r["multiplier"] and r["multiplier"] in DOSES
        if r["multiplier"] == 0:
            assert r["steering_multiplier"] == 0.0 and r["layers"] == []
        else:
            m = r["multiplier"]
            expected = table[control[r["arm"]], "+" if m > 0 else "-", abs(m)]
            assert r["steering_multiplier"] == expected, r["id"]
            assert r["layers"] == [3]
    header = json.loads((tmp_path / "run" / "header.json").read_text())
    assert header["dose_file"]["hash"] == file_hash(tmp_path / "doses.json")
    assert header["dose_file"]["targets"] == list(TARGETS)

    # the summary's cells are the doses: real and both controls in each, recomputed here with pandas
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["dose_file"]["hash"] == header["dose_file"]["hash"]
    frame = pd.DataFrame(rows)
    frame["score"] = frame["text"].str.contains("[aeiou]{2}", regex=True).astype(float)
    cells = {c["multiplier"]: c for c in summary["cells"]}
    assert sorted(cells) == sorted(DOSES)
    for dose, cell in cells.items():
        here = frame[frame["multiplier"] == dose]
        means = here.groupby("arm")["score"].mean()
        assert cell["n_controls"] == 2 and cell["real_mean"] == pytest.approx(means["real"])
        assert cell["control_min"] == pytest.approx(min(means["control0"], means["control1"]))
        assert cell["control_max"] == pytest.approx(max(means["control0"], means["control1"]))
        assert cell["dose_kl"] == dose
        if dose != 0:
            sign = "+" if dose > 0 else "-"
            assert cell["real_steering_multiplier"] == table[None, sign, abs(dose)]
            assert cell["control_steering_multipliers"] == [table[0, sign, abs(dose)], table[1, sign, abs(dose)]]

    # each arm's generation equals a plain sweep (no dose file) at the multiplier it was given
    real, c1 = table[None, "+", 0.01], table[1, "+", 0.01]
    code, _, err = run_cli(sweep_args(tmp_path, tiny_dir, tiny_vector, out="plain", multipliers=[real, c1]), capsys)
    assert code == 0, err
    plain = {(r["arm"], r["multiplier"], r["item"]): r["text"] for r in samples(tmp_path / "plain")}
    dosed = {(r["arm"], r["multiplier"], r["item"]): r["text"] for r in rows}
    for item in ("prompts-000", "prompts-001"):
        assert dosed["real", 0.01, item] == plain["real", real, item]
        assert dosed["control1", 0.01, item] == plain["control1", c1, item]
    assert "dose_kl" not in samples(tmp_path / "plain")[0]
    unsteered = {r["item"]: r["text"] for r in rows if r["multiplier"] == 0}
    assert any(dosed["real", 0.01, item] != text for item, text in unsteered.items())  # the steering shows


def test_a_killed_dose_run_resumes_and_another_dose_file_is_refused(tiny_dir, tiny_vector, tmp_path, capsys):
    calibrate(capsys, tiny_dir, tiny_vector, tmp_path / "doses.json")
    args = [*sweep_args(tmp_path, tiny_dir, tiny_vector, multipliers=[0.0, 0.005]), "--dose-file",
            tmp_path / "doses.json"]  # fmt: skip
    assert run_cli(args, capsys)[0] == 0
    run = tmp_path / "run" / "samples.jsonl"
    full = run.read_text().splitlines()
    run.write_text("\n".join(full[:5]) + "\n" + full[5][:20])  # killed mid-line after 5 samples
    assert run_cli(args, capsys)[0] == 0
    again = run.read_text().splitlines()
    key = lambda lines: sorted((r["id"], r["text"], r["steering_multiplier"]) for r in map(json.loads, lines))  # noqa: E731
    assert key(again) == key(full)

    # another calibration (other texts' cut): another dose file, at another path and then at the same path
    other = calibrate(capsys, tiny_dir, tiny_vector, tmp_path / "other" / "doses.json", TARGETS, "--rtol", "0.2")
    assert other["doses"] != json.loads((tmp_path / "doses.json").read_text())["doses"]
    other_path = [*args[:-1], tmp_path / "other" / "doses.json"]
    refused(other_path, "holds a run with another config hash", tmp_path, capsys, True)
    (tmp_path / "doses.json").write_text((tmp_path / "other" / "doses.json").read_text())
    line = refused(args, "holds a run with another dose file", tmp_path, capsys, True)
    assert "hash" in line
    assert run.read_text().splitlines() == again


def test_eval_takes_a_dose_file(tiny_dir, tiny_vector, tmp_path, capsys):
    record = calibrate(capsys, tiny_dir, tiny_vector, tmp_path / "doses.json", (0.01,), "--controls", "1")
    # a single-target file keeps format 1's target_kl beside targets
    assert record["target_kl"] == 0.01 and record["targets"] == [0.01]
    args = ["eval", "--model", tiny_dir, "--dataset", REPO / "configs" / "requests" / "benign.jsonl", "--limit", 1,
            "--out", tmp_path / "af", "--vector", tiny_vector, "--controls", 1, "--alpha", "0,-0.01", "--dose-file",
            tmp_path / "doses.json", "--max-turns", 1, "--max-new-tokens", 3, "--temperature", 0,
            "--device", "cpu"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    rows = samples(tmp_path / "af")
    table = calibrated(record)
    assert len(rows) == 2 * 2 * 2  # arms x doses x conditions
    for r in rows:
        control = None if r["arm"] == "real" else 0
        want = 0.0 if r["multiplier"] == 0 else table[control, "-", 0.01]
        assert r["dose_kl"] == r["multiplier"] and r["steering_multiplier"] == want


def test_a_gated_dose_run_records_each_rows_own_dose_and_no_multiplier(tiny_dir, tiny_vector, tmp_path, capsys):
    """steer_only with a dose file: rows of the gated condition share the unsteered generation, yet each records its
    own dose and a steering multiplier of 0 (a shared field copied from one row would give every gated row the first
    row's dose: review finding F4)."""
    record = calibrate(capsys, tiny_dir, tiny_vector, tmp_path / "doses.json")
    args = sweep_args(tmp_path, tiny_dir, tiny_vector, doses=str(tmp_path / "doses.json"),
                      conditions={"a": None, "b": "Be brief."}, steer_only=["a"])  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    table = calibrated(record)
    rows = samples(tmp_path / "run")
    assert all(s["dose_kl"] == s["multiplier"] for s in rows)
    for s in rows:
        if s["condition"] == "b" or s["multiplier"] == 0:
            assert s["steering_multiplier"] == 0.0
        else:
            control = None if s["arm"] == "real" else int(s["arm"].removeprefix("control"))
            sign = "+" if s["multiplier"] > 0 else "-"
            assert s["steering_multiplier"] == table[(control, sign, abs(s["multiplier"]))]
    assert {s["multiplier"] for s in rows if s.get("gated")} == {m for m in DOSES if m != 0}
