"""``steerlab condition fit``: the layer and threshold search, known answers and the real path."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from steerlab.analysis.condition_fit import best_threshold, prompt_features, search
from steerlab.backends.base import Request, Sampling
from steerlab.backends.hf import HFBackend
from steerlab.conditions import load_condition
from steerlab.steer import SteeringSetting
from steerlab.vectors import SteeringVector, VectorBundle, random_controls


def test_best_threshold_is_the_middle_of_the_gap_and_picks_the_side():
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert best_threshold(scores, np.array([0, 0, 0, 1, 1, 1], bool)) == (">", pytest.approx(0.5), 1.0)
    assert best_threshold(scores, np.array([1, 1, 1, 0, 0, 0], bool)) == ("<", pytest.approx(0.5), 1.0)
    from sklearn.metrics import f1_score  # the F1 of an imperfect split, by scikit-learn

    labels = np.array([0, 1, 0, 1, 1, 1], bool)
    comparator, cut, value = best_threshold(scores, labels)
    assert value == pytest.approx(f1_score(labels, scores > cut if comparator == ">" else scores < cut))


def test_search_recovers_a_planted_layer_and_threshold():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6, 16))
    labels = np.array([True] * 20 + [False] * 20)
    features[labels, 3, 0] += 6.0  # only layer 3 tells them apart, along axis 0
    report = search(features, labels, list(range(6)), folds=5, seed=0)
    assert report["layer"] == 3 and report["cv_f1"] == 1.0
    fit = report["fit"]
    assert abs(fit.direction[0]) > 0.8  # the mean difference found the planted axis
    scores = features[:, 3] @ fit.direction
    assert fit.comparator == ">" and scores[~labels].max() < fit.threshold < scores[labels].min()
    others = [r["cv_f1"] for r in report["per_layer"] if r["layer"] != 3]
    assert max(others) < 0.9


def test_choosing_among_noise_layers_inflates_cv_f1_and_nested_cv_does_not():
    """A simulation with a known answer: labels independent of every layer. The best layer's CV F1 is inflated by
    the choice; the nested estimate stays near what no signal gives."""
    rng = np.random.default_rng(1)
    optimistic, nested = [], []
    for r in range(6):
        report = search(rng.normal(size=(40, 12, 16)), np.array([True] * 20 + [False] * 20), list(range(12)),
                        folds=5, seed=r)  # fmt: skip
        optimistic.append(report["cv_f1"])
        nested.append(report["nested_f1"])
    assert np.mean(optimistic) > np.mean(nested) + 0.08
    assert np.mean(nested) < 0.6


def planted_prompts(tiny, tmp_path):
    """Prompt files whose labels are set by a planted threshold on the layer-2 mean cosine with a fixed direction;
    a vector file holding that direction."""
    words = "the cat sat on a mat while graders watched the next update of readers here and wrote notes".split()
    texts = [" ".join(words[(i * 5 + k) % len(words)] for k in range(3 + i % 7)) for i in range(24)]
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(tiny.n_layers, tiny.d_model, generator=g)
    chats = [[{"role": "user", "content": t}] for t in texts]
    scores = prompt_features(tiny, chats, [2])[:, 0] @ (directions[2] / directions[2].norm()).numpy()
    order = np.sort(scores)
    planted = float((order[11] + order[12]) / 2)
    true = [t for t, s in zip(texts, scores, strict=True) if s > planted]
    false = [t for t, s in zip(texts, scores, strict=True) if s <= planted]
    (tmp_path / "true.txt").write_text("\n".join(true) + "\n")
    (tmp_path / "false.txt").write_text("\n".join(false) + "\n")
    vec = SteeringVector(directions, tuple(range(tiny.n_layers)), (1, 2), tiny.fingerprint.to_dict(), "toy")
    return true, false, scores, planted, vec


def test_cli_fit_recovers_the_planted_threshold_and_the_backend_applies_it(tiny, tiny_dir, tmp_path, capsys):
    true, false, scores, planted, vec = planted_prompts(tiny, tmp_path)
    meta = {"concept": "toy", "layers": list(range(tiny.n_layers)), "selected_layers": [1, 2],
            "model": tiny.fingerprint.to_dict()}  # fmt: skip
    VectorBundle.build(vec.directions, random_controls(vec.directions, 1, seed=1), meta).save(
        tmp_path / "toy.safetensors"
    )
    out = tmp_path / "cond.json"
    code, stdout, err = run_cli(["condition", "fit", "--true", tmp_path / "true.txt", "--false", tmp_path / "false.txt",
                                 "--model", tiny_dir, "--vector", tmp_path / "toy.safetensors", "--layers", "2",
                                 "--folds", "3", "--out", out], capsys)  # fmt: skip
    assert code == 0, err
    assert "nested-CV F1" in stdout
    record = json.loads(out.read_text())
    assert record["fit"]["train_f1"] == 1.0 and record["fit"]["inputs"]["vector"]["file"].endswith("toy.safetensors")
    cond = load_condition(out, expect=tiny.fingerprint)
    assert cond.layer == 2 and cond.comparator == ">"  # the planted threshold, recovered within the gap
    assert max(s for s in scores if s <= planted) < cond.threshold < min(s for s in scores if s > planted)
    torch.testing.assert_close(cond.direction, vec.at(2) / vec.at(2).norm())
    # the fitted condition, applied by the HF backend to the same prompts, reproduces the labels
    setting = SteeringSetting(vec, 1.0, condition=cond)
    reqs = [Request([{"role": "user", "content": t}], Sampling(max_new_tokens=2), setting, id=str(i))
            for i, t in enumerate(true + false)]  # fmt: skip
    met = [r.condition_met for r in HFBackend(tiny, batch_size=5).generate(reqs)]
    assert met == [True] * len(true) + [False] * len(false)
    # a second fit without --overwrite is refused and leaves the file as it was
    before = out.read_bytes()
    code, _, err = run_cli(["condition", "fit", "--true", tmp_path / "true.txt", "--false", tmp_path / "false.txt",
                            "--model", tiny_dir, "--folds", "3", "--out", out], capsys)  # fmt: skip
    assert code == 2 and "--overwrite" in err and out.read_bytes() == before
