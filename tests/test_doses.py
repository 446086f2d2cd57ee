"""Matched doses (``steerlab calibrate-dose``): the multiplier found reaches the target KL when recomputed
independently (plain forward, own hook, ``torch.nn.functional.kl_div``, numpy's percentile); KL grows with
|multiplier| on the tiny model; a pass over many rows equals each row alone; a vector whose effect differs
from its equal-norm control gets another multiplier; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, run_cli
from test_bad_input import refused

from steerlab.analysis.doses import KLProbe, calibrate, items, read_texts
from steerlab.steer import SteeringSetting
from steerlab.testing import readout_vector
from steerlab.vectors import VectorBundle, random_controls

NEUTRAL = REPO / "configs" / "texts" / "neutral.txt"


def texts_file(path: Path, n: int = 4) -> Path:
    """The first ``n`` shipped neutral texts, as a file of paragraphs."""
    path.write_text("\n\n".join(read_texts(NEUTRAL)[:n]) + "\n")
    return path


def reference_kl(loaded, texts, vector, multiplier, layers, max_tokens) -> np.ndarray:
    """Per-token KL(unsteered || steered) over every token of every text, each text alone and unpadded, with a
    plain forward and a hook of its own, through torch's kl_div."""
    out = []
    for text in texts:
        ids = torch.tensor([loaded.tokenizer(text)["input_ids"][:max_tokens]])

        def add(layer):
            def hook(_m, _a, output):
                h = output[0] if isinstance(output, tuple) else output
                h += multiplier * vector.at(layer)

            return hook

        with torch.no_grad():
            logp = loaded.model(ids).logits.float().log_softmax(-1)[0]  # [seq, vocab]
            handles = [loaded.blocks[layer].register_forward_hook(add(layer)) for layer in layers]
            try:
                logq = loaded.model(ids).logits.float().log_softmax(-1)[0]
            finally:
                for h in handles:
                    h.remove()
        out.append(F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1).numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("statistic", ["mean", "p95"])
def test_the_found_multiplier_reaches_the_target_recomputed_independently(
    statistic, tiny, tiny_dir, tiny_vector, tmp_path, capsys
):
    texts = texts_file(tmp_path / "texts.txt")
    out = tmp_path / "doses.json"
    target = 0.01
    args = ["calibrate-dose", tiny_vector, "--target-kl", target, "--texts", texts, "--model", tiny_dir, "--out",
            out, "--device", "cpu", "--max-tokens", 24, "--statistic", statistic]  # fmt: skip
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert sum(line.startswith("│ toy") for line in stdout.splitlines()) == 6 and f"wrote {out}" in stdout
    record = json.loads(out.read_text())
    bundle = VectorBundle.load(tiny_vector)
    assert record["target_kl"] == target and record["statistic"] == statistic
    assert record["model"] == tiny.fingerprint.to_dict()
    assert record["texts"]["n_texts"] == 4 and len(record["texts"]["hash"]) == 16
    assert len(record["doses"]) == 2 * (1 + len(bundle.controls))
    vectors = {None: bundle.vector, **dict(enumerate(bundle.controls))}
    for dose in record["doses"]:
        assert dose["converged"] and dose["iterations"] == len(dose["history"])
        assert (dose["multiplier"] > 0) == (dose["sign"] == "+")
        kl = reference_kl(tiny, read_texts(texts), vectors[dose["control"]], dose["multiplier"], [1, 2], 24)
        value = kl.mean() if statistic == "mean" else np.percentile(kl, 95)
        assert abs(value - target) <= 0.05 * target + 1e-6, (dose["name"], value)
        assert value == pytest.approx(dose["kl"], rel=1e-4, abs=1e-7)
        assert kl.mean() == pytest.approx(dose["kl_mean"], rel=1e-4, abs=1e-7)


def test_kl_grows_with_the_size_of_the_multiplier_on_the_tiny_model(tiny, tiny_vector):
    bundle = VectorBundle.load(tiny_vector)
    probe = KLProbe(tiny, read_texts(NEUTRAL)[:4], max_tokens=24)
    grid = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
    for sv in [bundle.vector, *bundle.controls]:
        for sign in (1, -1):
            kl = probe.per_token([SteeringSetting(sv, sign * m) for m in grid]).mean(-1).numpy()
            assert kl[0] == 0.0
            assert (np.diff(kl) > 0).all(), (sv.name, sign, kl)


def test_one_pass_over_many_rows_equals_each_row_alone(tiny, tiny_vector):
    bundle = VectorBundle.load(tiny_vector)
    texts = read_texts(NEUTRAL)[:5]
    settings = [SteeringSetting(bundle.vector, 0.02), SteeringSetting(bundle.controls[0], -0.05),
                SteeringSetting(bundle.controls[1], 0.3), SteeringSetting(bundle.vector, -1.0)]  # fmt: skip
    together = KLProbe(tiny, texts, max_tokens=24, batch_size=64).per_token(settings)  # 20 rows, one batch
    alone = KLProbe(tiny, texts, max_tokens=24, batch_size=1)
    each = torch.cat([alone.per_token([s]) for s in settings])
    assert together.shape == (4, alone.n_tokens)
    torch.testing.assert_close(together, each, atol=1e-6, rtol=1e-5)
    # and each text alone, unpadded, through the reference
    for s, row in zip(settings, together, strict=True):
        ref = reference_kl(tiny, texts, s.vector, s.multiplier, [1, 2], 24)
        np.testing.assert_allclose(row.numpy(), ref, atol=1e-6, rtol=1e-4)


def test_a_vector_and_an_equal_norm_control_with_different_effects_get_different_multipliers(tiny):
    # the real vector, at the last layer, is the direction the unembedding reads most; the controls are random
    directions = readout_vector(tiny, 3)
    meta = {"concept": "toy", "layers": list(range(tiny.n_layers)), "selected_layers": [3],
            "model": tiny.fingerprint.to_dict()}  # fmt: skip
    bundle = VectorBundle.build(directions, random_controls(directions, 2, seed=1), meta)
    assert torch.allclose(bundle.controls[0].at(3).norm(), bundle.vector.at(3).norm())
    probe = KLProbe(tiny, read_texts(NEUTRAL)[:4], max_tokens=24)
    doses = {(d.name, d.sign): d for d in calibrate(probe, items([(Path("v"), bundle)], None), 0.02, progress=False)}
    assert all(d.converged for d in doses.values())
    for sign in (1, -1):
        real = abs(doses["toy", sign].multiplier)
        for c in (0, 1):
            assert real < 0.7 * abs(doses[f"toy/control{c}", sign].multiplier)


def test_an_unreachable_target_is_one_line_with_the_largest_kl(tiny, tiny_vector):
    from steerlab.analysis.doses import DoseError

    bundle = VectorBundle.load(tiny_vector)
    probe = KLProbe(tiny, read_texts(NEUTRAL)[:2], max_tokens=16)
    with pytest.raises(DoseError) as exc:
        calibrate(probe, items([(Path("v"), bundle)], 0), 5.0, max_multiplier=8.0, progress=False)
    line = str(exc.value)
    assert "\n" not in line and "toy (+)" in line and "--max-multiplier 8" in line and "at multiplier +8" in line
    largest = float(line.split("largest reached is ")[1].split()[0])
    assert largest == pytest.approx(probe.per_token([SteeringSetting(bundle.vector, 8.0)]).mean().item(), rel=1e-3)


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_dir, tiny_vector, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    texts_file(tmp_path / "texts.txt", 2)
    (tmp_path / "empty.txt").write_text("\n \n\n")
    vector = tmp_path / "v.safetensors"
    vector.write_bytes(Path(tiny_vector).read_bytes())
    smollm2 = REPO / "vectors" / "researcher_expectations" / "smollm2.safetensors"
    base = ["calibrate-dose", "v.safetensors", "--model", tiny_dir, "--device", "cpu", "--out", "doses.json"]
    rows = [
        ([*base, "--target-kl", "50", "--texts", "texts.txt", "--max-multiplier", "4"],
         "no multiplier up to --max-multiplier 4 reaches --target-kl 50 (mean KL); the largest reached is", True),
        ([*base, "--target-kl", "0", "--texts", "texts.txt"], "--target-kl 0: give a KL divergence above 0", False),
        ([*base, "--target-kl", "-0.5", "--texts", "texts.txt"], "--target-kl -0.5", False),
        ([*base, "--target-kl", "0.5", "--texts", "empty.txt"], "text file empty.txt holds no text", False),
        ([*base, "--target-kl", "0.5", "--texts", "missing.txt"], "text file missing.txt does not exist", False),
        ([*base, "--target-kl", "0.5", "--texts", "texts.txt", "--statistic", "median"], "use mean or p95", False),
        ([*base, "--target-kl", "0.5", "--texts", "texts.txt", "--controls", "9"], "carries 2 random controls", False),
        (["calibrate-dose", smollm2, "--model", tiny_dir, "--device", "cpu", "--out", "doses.json", "--target-kl",
          "0.5", "--texts", "texts.txt"], "was fitted on another model", True),
    ]  # fmt: skip
    for args, says, loading in rows:
        refused(args, says, tmp_path, capsys, loading_bar=loading)
    assert not (tmp_path / "doses.json").exists()


@pytest.mark.integration
def test_smollm2_doses_for_the_shipped_vector(smollm2, tmp_path):
    from steerlab.analysis.doses import run_calibration

    vector = REPO / "vectors" / "researcher_expectations" / "smollm2.safetensors"
    texts = texts_file(tmp_path / "texts.txt", 3)
    out = tmp_path / "doses.json"
    doses, record = run_calibration([vector], texts, 0.1, out=out, n_controls=1, max_tokens=24, device="cpu",
                                    rtol=0.1, progress=False)  # fmt: skip
    assert json.loads(out.read_text())["doses"] == json.loads(json.dumps(record["doses"]))
    assert [(d.name, d.sign) for d in doses] == [("researcher_expectations", 1), ("researcher_expectations", -1),
                                                 ("researcher_expectations/control0", 1),
                                                 ("researcher_expectations/control0", -1)]  # fmt: skip
    bundle = VectorBundle.load(vector)
    for d in doses[:2]:
        assert d.converged and 0 < abs(d.multiplier) < 64
        kl = reference_kl(smollm2, read_texts(texts), bundle.vector, d.multiplier, list(bundle.vector.layers), 24)
        assert abs(kl.mean() - 0.1) <= 0.1 * 0.1 + 1e-4
