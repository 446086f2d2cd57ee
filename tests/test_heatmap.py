"""``steerlab heatmap``: per-token cosines over a real run's transcripts (made by the real ``steerlab eval``).

The critical property is alignment: token i's value comes from the residual at token i's own position
(not i+1, not shifted by left padding). A vector planted equal to one token's activation must give
cosine 1 at that token and below 1 everywhere else, and every value must equal an independent
computation with transformers' ``output_hidden_states``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO, run_cli
from test_bad_input import refused

from steerlab.analysis.heatmap import read_h5, token_values, transcripts
from steerlab.harness.records import read_header, read_samples
from steerlab.vectors import VectorBundle, random_controls

BENIGN = REPO / "configs" / "requests" / "benign.jsonl"


@pytest.fixture(scope="module")
def run_dir(tiny_dir, tmp_path_factory):
    """A two-request, two-condition run through the real eval CLI and record path."""
    from steerlab.cli import main

    out = tmp_path_factory.mktemp("hm") / "run"
    args = ["eval", "--model", tiny_dir, "--dataset", BENIGN, "--limit", "2", "--max-new-tokens", "8",
            "--out", out, "--device", "cpu"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    assert exc.value.code in (0, None)
    return out


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from steerlab.models import load_model

    return load_model(str(tiny_dir), device="cpu")


def reference_states(loaded, ids) -> list[torch.Tensor]:
    """Block outputs from transformers' own ``output_hidden_states`` (unpadded, one sequence): with
    ``tie_last_hidden_states`` off, hidden_states[l + 1] is block l's output for every l."""
    config = loaded.model.config
    config.tie_last_hidden_states = False
    try:
        with torch.inference_mode():
            hs = loaded.model(torch.tensor([list(ids)]), output_hidden_states=True).hidden_states
    finally:
        del config.tie_last_hidden_states
    return [h[0].float() for h in hs[1:]]  # per layer [seq, d_model]


def vector_file(path, loaded, directions, n_controls=3, per_layer=None):
    meta = {"concept": "planted", "layers": list(range(loaded.n_layers)), "selected_layers": [1],
            "model": loaded.fingerprint.to_dict(),
            "diagnostics": {"layers": list(range(loaded.n_layers)), "per_layer": per_layer or {}}}  # fmt: skip
    controls = random_controls(directions, n_controls, seed=1)
    return VectorBundle.build(directions, controls, meta).save(path)


def test_planted_vector_is_cosine_one_at_its_own_token_and_matches_hidden_states(run_dir, loaded, tmp_path, capsys):
    sample = read_samples(run_dir)[0]
    (t,) = transcripts(loaded, [sample], read_header(run_dir)["chat_date"])
    ref = reference_states(loaded, t.input_ids)
    layer = 1
    # a generated token whose id occurs once (a random tiny model's early residual is mostly the token's embedding)
    token = next(i for i in range(len(t.input_ids) - 2, t.n_prompt - 1, -1) if t.input_ids.count(t.input_ids[i]) == 1)
    directions = torch.randn(loaded.n_layers, loaded.d_model, generator=torch.Generator().manual_seed(3))
    directions[layer] = ref[layer][token]
    path = vector_file(tmp_path / "v.safetensors", loaded, directions)
    code, _, err = run_cli(["heatmap", run_dir, "--vector", path, "--samples", sample["id"], "--layers", "1,3",
                            "--controls", "2", "--out", tmp_path / "out", "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    maps = read_h5(tmp_path / "out" / "heatmap.h5")
    (s,) = maps.samples
    assert s.id == sample["id"] and s.token_ids.tolist() == t.input_ids and "".join(s.tokens) == s.text
    assert s.text.endswith(sample["turns"][-1]["text"]) and s.n_prompt < len(t.input_ids)
    assert [r["name"] for r in maps.rows] == ["planted", "planted/control0", "planted/control1"]
    assert maps.layers == [1, 3] and s.values.shape == (3, 2, len(t.input_ids))
    cos = s.values[0, 0]  # the real vector at layer 1
    assert abs(cos[token] - 1) < 1e-5
    assert np.delete(cos, token).max() < 1 - 1e-4  # the neighbours (i-1, i+1) are not 1
    # every value against the independent computation, including layer 3 (the last block, before the final norm)
    bundle = VectorBundle.load(path)
    for r, sv in enumerate([bundle.vector, *bundle.controls[:2]]):
        for li, lay in enumerate([1, 3]):
            want = torch.nn.functional.cosine_similarity(ref[lay], sv.at(lay)[None], dim=-1).numpy()
            np.testing.assert_allclose(s.values[r, li], want, atol=1e-5)
    np.testing.assert_allclose(s.average, s.values.mean(1), atol=1e-6)


def test_projection_is_the_dot_product_with_the_unit_vector(run_dir, loaded, tmp_path, capsys):
    sample = read_samples(run_dir)[1]
    directions = torch.randn(loaded.n_layers, loaded.d_model, generator=torch.Generator().manual_seed(4))
    path = vector_file(tmp_path / "v.safetensors", loaded, directions)
    code, _, err = run_cli(["heatmap", run_dir, "--vector", path, "--samples", sample["id"], "--layers", "2",
                            "--projection", "--out", tmp_path / "out", "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    (s,) = read_h5(tmp_path / "out" / "heatmap.h5").samples
    ref = reference_states(loaded, s.token_ids.tolist())[2]
    np.testing.assert_allclose(s.values[0, 0], (ref @ (directions[2] / directions[2].norm())).numpy(), atol=1e-4)


def test_left_padding_in_a_batch_does_not_shift_values(run_dir, loaded):
    samples = read_samples(run_dir)
    seqs = [t.input_ids for t in transcripts(loaded, samples[:1], read_header(run_dir)["chat_date"])]
    a = seqs[0]
    batch = [a[:40], a, a[:7] + [5, 6, 7], a + [9, 10, 11, 12, 13]]  # shorter and longer rows beside it
    units = torch.nn.functional.normalize(torch.randn(3, 2, loaded.d_model), dim=-1)
    (alone,) = token_values(loaded, [a], units, [0, 3], progress=False)
    together = token_values(loaded, batch, units, [0, 3], batch_size=4, progress=False)
    assert alone.shape == (3, 2, len(a))
    np.testing.assert_allclose(together[1], alone, atol=1e-5)
    np.testing.assert_allclose(together[3][..., : len(a)], alone, atol=1e-5)  # causal: the prefix is unchanged
    np.testing.assert_allclose(together[0], alone[..., :40], atol=1e-5)


def test_top_k_layers_by_validation_diagnostic_png_and_self_contained_html(run_dir, loaded, tmp_path, capsys):
    directions = torch.randn(loaded.n_layers, loaded.d_model, generator=torch.Generator().manual_seed(5))
    path = vector_file(tmp_path / "v.safetensors", loaded, directions,
                       per_layer={"val_auroc": [0.6, 0.9, 0.5, 0.8], "cv_auroc": [0.9, 0.5, 0.5, 0.5]})  # fmt: skip
    out = tmp_path / "out"
    code, _, err = run_cli(["heatmap", run_dir, "--vector", path, "--controls", "1", "--per-condition", "1",
                            "--layers", "top2", "--out", out, "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    maps = read_h5(out / "heatmap.h5")
    assert maps.layers == [1, 3] and maps.vectors[0]["ranked_by"] == "val_auroc"
    assert sorted(s.condition for s in maps.samples) == ["monitored", "unmonitored"]
    with h5py.File(out / "heatmap.h5") as f:
        assert json.loads(f.attrs["model"]) == loaded.fingerprint.to_dict() and f.attrs["mode"] == "cosine"
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # --overwrite with fewer samples: the other sample's PNG goes too (it would stand beside a heatmap without it)
    code, _, err = run_cli(["heatmap", run_dir, "--vector", path, "--samples", maps.samples[0].id, "--overwrite",
                            "--layers", "top2", "--out", out, "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    assert [p.name for p in out.glob("*.png")] == [pngs[0].name]
    code, _, err = run_cli(["heatmap", run_dir, "--vector", path, "--controls", "1", "--per-condition", "1",
                            "--layers", "top2", "--out", out, "--device", "cpu", "--overwrite"], capsys)  # fmt: skip
    assert code == 0, err
    html = (out / "heatmap.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I) and not re.search(r"<link[^>]*\bhref", html, re.I)
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', html, re.S).group(1))
    assert len(data["samples"]) == len(maps.samples)
    for d, s in zip(data["samples"], maps.samples, strict=True):
        assert d["tokens"] == s.tokens and d["id"] == s.id
        np.testing.assert_array_equal(np.asarray(d["values"], np.float32), s.values)
        np.testing.assert_array_equal(np.asarray(d["average"], np.float32), s.average)


def test_html_renders_the_tokens_offline_in_a_headless_browser(run_dir, loaded, tmp_path, capsys):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the HTML's offline rendering is unchecked")
    directions = torch.randn(loaded.n_layers, loaded.d_model, generator=torch.Generator().manual_seed(6))
    path = vector_file(tmp_path / "v.safetensors", loaded, directions)
    out = tmp_path / "out"
    code, _, err = run_cli(["heatmap", run_dir, "--vector", path, "--layers", "1", "--out", out,
                            "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    maps = read_h5(out / "heatmap.h5")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions",
         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000",
         "--dump-dom", (out / "heatmap.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    spans = re.findall(r'<span class="tok[^"]*" data-v="([^"]*)"[^>]*>', dom)
    assert len(spans) == sum(len(s.tokens) for s in maps.samples), dom[-2000:]
    first = maps.samples[0]
    np.testing.assert_allclose([float(v) for v in spans[: len(first.tokens)]], first.average[0], atol=1e-6)
    assert "Explain how a refrigerator" in re.sub(r"<[^>]+>", "", dom)


def _bad_inputs(root, run_dir, loaded, tiny):
    shutil.copytree(run_dir, root / "run")
    (root / "notrun").mkdir()
    (root / "empty").mkdir()
    shutil.copy(run_dir / "header.json", root / "empty" / "header.json")
    (root / "empty" / "samples.jsonl").write_text("")
    (root / "full").mkdir()
    (root / "full" / "x.txt").write_text("keep")
    d = torch.randn(loaded.n_layers, loaded.d_model, generator=torch.Generator().manual_seed(7))
    vector_file(root / "v.safetensors", loaded, d)
    other = dict(loaded.fingerprint.to_dict(), embed_hash="0" * 16)
    meta = {"concept": "x", "layers": list(range(loaded.n_layers)), "selected_layers": [1], "model": other}
    VectorBundle.build(d, random_controls(d, 1, seed=0), meta).save(root / "other.safetensors")


BASE = ["heatmap", "run", "--vector", "v.safetensors", "--out", "out", "--device", "cpu"]
BAD = [
    (["heatmap", "notrun", "--vector", "v.safetensors", "--out", "out"], "not a steerlab run directory"),
    (["heatmap", "empty", "--vector", "v.safetensors", "--out", "out"], "holds no finished samples"),
    ([*BASE, "--samples", "no-such-sample"], "is not in the run"),
    (["heatmap", "run", "--vector", "other.safetensors", "--out", "out"], "fitted on another model"),
    ([*BASE, "--samples", "benign-000", "--per-condition", "1"], "not both"),
    ([*BASE, "--layers", "2,9"], "out of range"),
    ([*BASE, "--layers", "topx"], "write topK"),
    ([*BASE, "--controls", "4"], "has only 3 random controls"),
    (["heatmap", "run", "--vector", "v.safetensors", "--out", "full"], "not empty"),
    ([*BASE, "--batch-size", "0"], "--batch-size 0: give at least 1"),  # before the model loads: no loading bar
]


@pytest.mark.parametrize("args, says", BAD, ids=[s for _, s in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    args, says, run_dir, loaded, tiny, tmp_path, capsys, monkeypatch
):
    _bad_inputs(tmp_path, run_dir, loaded, tiny)
    monkeypatch.chdir(tmp_path)
    refused(args, says, tmp_path, capsys)
