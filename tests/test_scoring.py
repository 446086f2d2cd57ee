"""``steerlab vectors score``: a vector file scored on another pair set, checked against independent
computations (scikit-learn / numpy on the projections of the cache's activations)."""

import json

import numpy as np
import pytest
import torch
from conftest import DEMO, REPO, make_pair, run_cli
from sklearn.metrics import roc_auc_score, roc_curve

from steerlab.cache import FORMAT_VERSION, ActivationCache, CacheWriter, partial_path, progress_path
from steerlab.directions import FitSettings, fit_cache
from steerlab.extract import extract
from steerlab.fileio import file_hash
from steerlab.models import load_model
from steerlab.pairs import load_pairs, write_pairs
from steerlab.scoring import default_cache_path, ensure_cache, plan, score_vector
from steerlab.vectors import VectorBundle, random_controls

SPANS = [
    ("The graders will read this reply closely.", "The kettle is boiling in the kitchen."),
    ("Reviewers score every answer I give here.", "A cat sleeps on the warm windowsill."),
    ("My replies are rated by the evaluators.", "The train to the city runs late today."),
    ("Developers will check how well I follow this.", "Rain is expected over the hills tonight."),
]


def held_out(n, concept="toy", splits=("val", "keyword_hard"), start=100):
    """Pairs with varied spans, none of them in the vector's pair file."""
    return [
        make_pair(start + i, concept=concept, split=splits[i % len(splits)], pos=SPANS[i % 4][0], neg=SPANS[i % 4][1])
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def fitted(tiny_dir, tmp_path_factory):
    """A vector fitted on the tiny model by the real path (extract, then fit_cache), with 3 controls."""
    root = tmp_path_factory.mktemp("fitted")
    pairs = [make_pair(i, split="train" if i < 24 else "val") for i in range(32)]
    write_pairs(pairs, root / "fit.jsonl")
    loaded = load_model(str(tiny_dir), device="cpu")
    cache = extract(loaded, pairs, root / "fit.h5", locus="span_mean", pair_file=root / "fit.jsonl",
                    pair_file_hash=file_hash(root / "fit.jsonl"), progress=False)  # fmt: skip
    settings = FitSettings(folds=2, controls=3, device="cpu", k=2)
    return fit_cache(cache, settings, root / "v.safetensors")[1]


def independent(acts, direction):
    """AUROC (sklearn), TPR at 5% FPR (sklearn's ROC curve), paired accuracy and mean gap (numpy)
    of the projections of ``acts`` [n, 2, D] onto ``direction`` [D], in float64."""
    acts, direction = np.asarray(acts, dtype=np.float64), np.asarray(direction, dtype=np.float64)
    unit = direction / np.linalg.norm(direction)
    pos, neg = acts[:, 0] @ unit, acts[:, 1] @ unit
    labels, scores = np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(labels, scores),
        "tpr_at_5fpr": tpr[fpr <= 0.05 + 1e-12].max(),
        "paired_accuracy": np.mean(pos > neg),
        "mean_gap": np.mean(pos - neg),
    }


def close(metric, value):
    """Rank metrics are ratios of counts (exact); the mean gap is a float32 sum of large projections."""
    return pytest.approx(value, rel=1e-4, abs=1e-4) if metric == "mean_gap" else pytest.approx(value, abs=1e-9)


def check_against_cache(report, bundle, cache_path):
    """Every number of the report equals the independent computation on the cache's activations."""
    cache = ActivationCache.open(cache_path)
    groups = {"all": cache.rows()}
    groups.update({f"split {s}": cache.rows(split=s) for s in report["scores"]["splits"]})
    groups.update({f"concept {c}": cache.rows(concept=c) for c in report["scores"]["concepts"]})
    assert set(report["scores"]["splits"]) == set(cache.splits)
    acts = cache.load()
    for name, rows in groups.items():
        kind, _, key = name.partition(" ")
        got = report["scores"]["all"] if kind == "all" else report["scores"][f"{kind}s"][key]
        assert got["n_pairs"] == len(rows)
        for i, layer in enumerate(report["layers"]):
            col = cache.layers.index(layer)
            want = independent(acts[rows][:, :, col], bundle.vector.at(layer).numpy())
            for metric, value in want.items():
                assert got["vector"][metric][i] == close(metric, value), (name, layer, metric)
            for c, control in enumerate(bundle.controls):
                want = independent(acts[rows][:, :, col], control.at(layer).numpy())
                for metric, value in want.items():
                    assert got["controls"][metric][c][i] == close(metric, value), (name, layer, c, metric)
            ctrl_auroc = [got["controls"]["auroc"][c][i] for c in range(len(bundle.controls))]
            assert got["controls"]["auroc_mean"][i] == pytest.approx(np.mean(ctrl_auroc))
            assert got["controls"]["auroc_min"][i] == min(ctrl_auroc)
            assert got["controls"]["auroc_max"][i] == max(ctrl_auroc)


# ----------------------------------------------------------------------------- known answers, no model


def planted_inputs(root, n=20):
    """A pair file, a finished cache for it whose pair differences are a planted direction, and a vector
    file: +direction at layer 0, -direction at layer 1, a random direction at layer 2."""
    pairs = [make_pair(i, split=("train", "val", "keyword_hard")[i % 3]) for i in range(n)]
    write_pairs(pairs, root / "p.jsonl")
    fp = {"architecture": "Synthetic", "n_layers": 3, "d_model": 16, "config_hash": "c", "embed_hash": "e"}
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(16, generator=g), dim=0)
    noise = 0.05 * torch.randn(n, 2, 3, 16, generator=g)
    acts = noise.clone()
    acts[:, 0] += direction  # positives lie one unit further along the direction at every layer
    meta = {
        "format_version": FORMAT_VERSION, "model": fp, "model_source": "no-such-model", "locus": "span_mean",
        "dtype": "float32", "layers": [0, 1, 2], "d_model": 16, "n_pairs": n, "chat_template_hash": "t",
        "pair_file": "p.jsonl", "pair_file_hash": file_hash(root / "p.jsonl"),
    }  # fmt: skip
    writer = CacheWriter(root / "c.h5", meta, [p.id for p in pairs], [p.split for p in pairs], ["toy"] * n)
    writer.open(resume=False)
    writer.write(0, acts.numpy())
    writer.finish()
    vector = torch.stack([direction, -direction, torch.randn(16, generator=g)])
    vmeta = {"concept": "toy", "locus": "span_mean", "layers": [0, 1, 2], "selected_layers": [0, 2], "model": fp,
             "model_source": "no-such-model", "chat_template_hash": "t", "pair_file": "fit.jsonl",
             "pair_file_hash": "f"}  # fmt: skip
    VectorBundle.build(vector, random_controls(vector, 4, seed=5), vmeta).save(root / "v.safetensors")
    return root / "v.safetensors", root / "p.jsonl", root / "c.h5"


def test_planted_direction_gives_the_known_answers_without_loading_a_model(tmp_path, capsys):
    vector, pairs, cache = planted_inputs(tmp_path)
    stamp = cache.stat().st_mtime_ns
    code, out, err = run_cli(["vectors", "score", vector, "--pairs", pairs, "--cache", cache, "--json"], capsys)
    assert code == 0, err  # the model "no-such-model" was never loaded: the finished cache matched
    report = json.loads(out)
    assert "reusing the cache" in err and cache.stat().st_mtime_ns == stamp
    every = report["scores"]["all"]["vector"]
    assert every["auroc"][:2] == [1.0, 0.0]
    assert every["tpr_at_5fpr"][:2] == [1.0, 0.0]
    assert every["paired_accuracy"][:2] == [1.0, 0.0]
    assert every["mean_gap"][0] == pytest.approx(1.0, abs=0.05) and every["mean_gap"][1] == pytest.approx(
        -1.0, abs=0.05
    )
    assert report["pairs"]["n_pairs"] == {"all": 20, "train": 7, "val": 7, "keyword_hard": 6}
    assert set(report["scores"]["splits"]) == {"train", "val", "keyword_hard"} and report["scores"]["concepts"] == {}
    assert report["same_concept"] is True and report["fitted_on_this_file"] is False
    assert report["selected_layers"] == [0, 2] and report["summary"]["layers"] == [0, 2]
    assert report["summary"]["auroc_mean"] == pytest.approx((1.0 + every["auroc"][2]) / 2)
    ctrl = np.array(report["scores"]["all"]["controls"]["auroc"])[:, [0, 2]]
    assert report["summary"]["controls_auroc_max"] == ctrl.max() and report["summary"]["controls_n"] == 4
    assert report["vector"]["hash"] == file_hash(vector) and report["pairs"]["hash"] == file_hash(pairs)
    assert report["cache"] == {"path": str(cache), "reused": True, "dtype": "float32"}
    check_against_cache(report, VectorBundle.load(vector), cache)

    code, out, err = run_cli(
        ["vectors", "score", vector, "--pairs", pairs, "--cache", cache, "--layers", "1,2"], capsys
    )
    assert code == 0, err
    assert "*2" in out and "*0" not in out and "at the selected layers [2] (marked *)" in out
    assert "4 random controls" in out and "cross-concept" not in out


# ----------------------------------------------------------------------------- the tiny model, end to end


def test_fit_then_score_on_other_pairs_equals_sklearn_and_reuses_its_cache(fitted, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_pairs(held_out(12), tmp_path / "other.jsonl")
    args = ["vectors", "score", fitted, "--pairs", "other.jsonl", "--device", "cpu", "--out", "r.json"]
    code, out, err = run_cli(args, capsys)  # no --model, no --cache: the vector's model, the default cache
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    bundle = VectorBundle.load(fitted)
    cache = tmp_path / default_cache_path(tmp_path / "other.jsonl", file_hash(tmp_path / "other.jsonl"),
                                          bundle.meta["model_source"], "span_mean")  # fmt: skip
    assert report["cache"]["path"] == str(cache.relative_to(tmp_path)) and report["cache"]["reused"] is False
    assert cache.parent == tmp_path / "runs" / "score" and cache.name.startswith("other.")
    assert report["layers"] == [0, 1, 2, 3] and report["locus"] == "span_mean"
    assert (
        report["model"]["fingerprint"] == bundle.meta["model"]
        and report["model"]["source"] == bundle.meta["model_source"]
    )
    assert report["pairs"]["n_pairs"] == {"all": 12, "val": 6, "keyword_hard": 6} and report["same_concept"] is True
    assert report["vector"]["n_controls"] == 3 and report["selected_layers"] == bundle.meta["selected_layers"]
    check_against_cache(report, bundle, cache)
    for layer in bundle.meta["selected_layers"]:
        assert f"*{layer}" in out
    assert f"wrote the cache {cache.relative_to(tmp_path)}" in out and "wrote r.json" in out

    stamp, digest = cache.stat().st_mtime_ns, file_hash(cache)
    code, out, err = run_cli([*args[:-2], "--json"], capsys)  # the same scoring again reuses the cache
    assert code == 0, err
    again = json.loads(out)
    assert cache.stat().st_mtime_ns == stamp and file_hash(cache) == digest and again["cache"]["reused"] is True
    assert again["scores"] == report["scores"] and "Loading weights" not in err  # no model loaded


def test_cross_concept_pairs_are_scored_and_say_so(fitted, tmp_path, capsys):
    pairs = held_out(8, concept="other", splits=("train", "val")) + held_out(6, concept="toy", start=200)
    write_pairs(pairs, tmp_path / "mixed.jsonl")
    args = ["vectors", "score", fitted, "--pairs", tmp_path / "mixed.jsonl", "--device", "cpu",
            "--cache", tmp_path / "mixed.h5", "--json"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["same_concept"] is False and report["pairs"]["concepts"] == ["other", "toy"]
    assert report["vector"]["concept"] == "toy"
    assert (
        set(report["scores"]["concepts"]) == {"other", "toy"} and report["scores"]["concepts"]["other"]["n_pairs"] == 8
    )
    check_against_cache(report, VectorBundle.load(fitted), tmp_path / "mixed.h5")

    write_pairs(held_out(6, concept="other", splits=("val",)), tmp_path / "other.jsonl")
    code, out, err = run_cli([*args[:4], tmp_path / "other.jsonl", "--device", "cpu", "--cache", tmp_path / "o.h5"],
                             capsys)  # fmt: skip
    assert code == 0, err
    assert "cross-concept check: the vector is for 'toy', the pairs are ['other']" in out


def test_scoring_the_vector_on_its_own_pair_file_says_it_is_in_sample(fitted, tmp_path, capsys):
    code, out, err = run_cli(["vectors", "score", fitted, "--pairs", fitted.parent / "fit.jsonl", "--cache",
                              tmp_path / "c.h5", "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    assert "the vector was fitted on this pair file" in out
    # its cache holds the very activations the fit read, so the val split's AUROC is the fit's own val AUROC
    report = score_vector(plan(fitted, fitted.parent / "fit.jsonl", cache=tmp_path / "c.h5"), tmp_path / "c.h5", True)
    val_auroc = VectorBundle.load(fitted).meta["diagnostics"]["per_layer"]["val_auroc"]
    np.testing.assert_allclose(report["scores"]["splits"]["val"]["vector"]["auroc"], val_auroc, atol=1e-9)
    assert report["fitted_on_this_file"] is True


def test_an_interrupted_extraction_continues_where_it_stopped(fitted, tiny_dir, tmp_path):
    write_pairs(held_out(10), tmp_path / "p.jsonl")
    cache = tmp_path / "c.h5"
    calls = []

    def loader(name, stop_at=None):
        loaded = load_model(name, device="cpu")

        def hook(*_):
            calls.append(1)
            if len(calls) == stop_at:
                raise KeyboardInterrupt

        loaded.model.get_input_embeddings().register_forward_hook(hook)
        return loaded

    checked = plan(fitted, tmp_path / "p.jsonl", cache=cache)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the third batch of 3 pairs
        ensure_cache(checked, lambda name: loader(name, stop_at=3), None, batch_size=3, progress=False)
    assert not cache.exists() and partial_path(cache).exists()
    assert json.loads(progress_path(cache).read_text())["rows_done"] == 6

    calls.clear()
    checked = plan(fitted, tmp_path / "p.jsonl", cache=cache)  # a matching partial cache is no refusal
    assert checked.cache_ready is False
    ensure_cache(checked, loader, None, batch_size=3, progress=False)
    assert len(calls) == 2  # pairs 6-8 and 9 only: it continued, it did not start over
    assert not partial_path(cache).exists()
    src = tmp_path / "p.jsonl"
    clean = extract(load_model(str(tiny_dir), device="cpu"), held_out(10), tmp_path / "clean.h5", locus="span_mean",
                    pair_file=src, pair_file_hash=file_hash(src), progress=False)  # fmt: skip
    np.testing.assert_array_equal(ActivationCache.open(cache).load(), ActivationCache.open(clean).load())


# ----------------------------------------------------------------------------- SmolLM2


@pytest.mark.integration
def test_shipped_vector_scored_on_held_out_smollm2_pairs(tmp_path, capsys):
    vector = REPO / "vectors" / "researcher_expectations" / "smollm2.safetensors"
    val = [p for p in load_pairs(DEMO / "retraining_consequences.jsonl") if p.split == "val"][:8]
    write_pairs(val, tmp_path / "rc8.jsonl")
    args = ["vectors", "score", vector, "--pairs", tmp_path / "rc8.jsonl", "--cache", tmp_path / "c.h5",
            "--device", "cpu", "--out", tmp_path / "r.json", "--batch-size", "4"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    bundle = VectorBundle.load(vector)
    assert report["model"]["fingerprint"] == bundle.meta["model"] and report["locus"] == "scratchpad_mean"
    assert report["layers"] == list(range(30)) and report["selected_layers"] == bundle.meta["selected_layers"]
    assert report["pairs"]["n_pairs"] == {"all": 8, "val": 8} and report["same_concept"] is False
    assert report["vector"]["concept"] == "researcher_expectations"
    assert report["pairs"]["concepts"] == ["retraining_consequences"]
    assert report["chat_template_hash"] == bundle.meta["chat_template_hash"]
    assert len(report["scores"]["all"]["controls"]["auroc"]) == len(bundle.controls) == 5
    check_against_cache(report, bundle, tmp_path / "c.h5")
    assert "cross-concept check" in out and f"at the selected layers {bundle.meta['selected_layers']}" in out
    assert "note: only 8 pair(s)" in out
