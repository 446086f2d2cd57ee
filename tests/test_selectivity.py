"""Layer selection that keeps its resolution when AUROC saturates, candidate layers, and the
selectivity diagnostics between concepts (cosine, cross-concept AUROC, --orthogonalize-against).

Known answers: planted concepts whose differences share a designed component (so their vectors'
cosine and cross-concept AUROC are large) or none (near the controls and 0.5); every number is
recomputed independently from the files with numpy and scikit-learn.
"""

import json

import numpy as np
import pytest
import torch
from conftest import run_cli, synthetic_cache
from sklearn.metrics import roc_auc_score
from test_bad_input import refused, snapshot

from steerlab.cache import ActivationCache
from steerlab.diagnostics import TrainScores, default_candidates, select_layers
from steerlab.directions import FitSettings, fit_cache
from steerlab.errors import ConfigError
from steerlab.vectors import VectorBundle

N, L, D = 300, 6, 16
SPLITS = ["train"] * 180 + ["val"] * 60 + ["keyword_hard"] * 60


def concept_acts(own: torch.Tensor, shared: torch.Tensor, weight: float, seed: int) -> torch.Tensor:
    """Pairs whose difference is ``own + weight * shared`` (unit rows ``[L, D]``) plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, L, D, generator=g)
    diff = own + weight * shared
    pos = base + diff + 0.7 * torch.randn(N, L, D, generator=g)
    neg = base + 0.7 * torch.randn(N, L, D, generator=g)
    return torch.stack([pos, neg], dim=1)


def unit_rows(index: int) -> torch.Tensor:
    """Row ``index`` of an orthonormal frame per layer: unit_rows(i) and unit_rows(j) are orthogonal."""
    frame, _ = torch.linalg.qr(torch.randn(L, D, 4, generator=torch.Generator().manual_seed(0)))  # [L, D, 4]
    return frame[..., index]


def two_concepts(tmp_path, weight: float, **settings):
    """Fit concepts a then b into tmp/vectors; returns (bundle a, bundle b, acts a, acts b)."""
    shared = unit_rows(0)
    acts_a = concept_acts(unit_rows(1), shared, weight, seed=10)
    acts_b = concept_acts(unit_rows(2), shared, weight, seed=11)
    out = {}
    for name, acts in (("alpha", acts_a), ("beta", acts_b)):
        cache = synthetic_cache(tmp_path / f"{name}.h5", acts.numpy(), SPLITS, concept=name)
        out[name], _ = fit_cache(cache, FitSettings(**settings), tmp_path / "vectors" / name / "m.safetensors")
    return out["alpha"], out["beta"], acts_a, acts_b


def auroc_on(acts: torch.Tensor, direction: torch.Tensor) -> float:
    scores = acts.double() @ direction.double()  # [n, 2]
    y = np.r_[np.ones(len(scores)), np.zeros(len(scores))]
    return roc_auc_score(y, np.r_[scores[:, 0].numpy(), scores[:, 1].numpy()])


# ----------------------------------------------------------------------------- selection


def test_default_candidates_leave_out_the_first_and_last_fifth():
    assert default_candidates(30) == list(range(6, 24))
    assert default_candidates(80) == list(range(16, 64))
    assert default_candidates(126) == list(range(25, 101))
    assert default_candidates(4) == [0, 1, 2, 3]


def scores(cv, dprime):
    n = len(cv)
    return TrainScores(tuple(range(n)), np.asarray(cv, float), np.zeros(n), np.asarray(dprime, float))


def test_cv_dprime_ranks_layers_where_auroc_saturates():
    s = scores([1.0, 1.0, 1.0, 0.99, 1.0, 1.0], [3.0, 5.0, 4.0, 9.0, 2.0, 6.0])
    chosen = select_layers(s, "top-k", k=2)
    assert chosen["layers"] == [3, 5]  # d' 9 and 6: layer 3 wins despite its lower AUROC
    assert chosen["rule"]["rank_by"] == "cv_dprime"
    assert [(c["layer"], c["rank"]) for c in chosen["rule"]["chosen"]] == [(3, 1), (5, 2)]
    assert chosen["rule"]["chosen"][0]["cv_dprime"] == 9.0 and chosen["rule"]["chosen"][0]["cv_auroc"] == 0.99
    # ranked by AUROC the four saturated layers tie; d' breaks the tie
    assert select_layers(s, "top-k", k=2, rank_by="cv_auroc")["layers"] == [1, 5]
    # candidates restrict the choice; band stays inside them
    assert select_layers(s, "top-k", k=2, candidates=[0, 1, 2])["layers"] == [1, 2]
    band = select_layers(s, "band", k=3, candidates=[1, 2, 3, 4])
    assert band["layers"] == [2, 3, 4] and band["rule"]["candidates"] == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match="between 1 and the 2 candidate layers"):
        select_layers(s, "top-k", k=3, candidates=[0, 1])
    with pytest.raises(ConfigError, match="no cached layer is a candidate"):
        select_layers(s, "top-k", k=1, candidates=[7, 8])


def test_the_fit_records_criterion_and_candidates(tmp_path):
    a, _, _, _ = two_concepts(tmp_path, 0.0, candidate_layers="1-4", k=2)
    rule = a.meta["selection"]
    assert rule["candidates"] == [1, 2, 3, 4] and rule["candidates_from"] == "--candidate-layers"
    assert set(a.meta["selected_layers"]) <= {1, 2, 3, 4}
    dprime = a.meta["diagnostics"]["per_layer"]["cv_dprime"]
    best = sorted([1, 2, 3, 4], key=lambda i: -dprime[i])[:2]
    assert a.meta["selected_layers"] == sorted(best)
    # default: the middle of the model (6 layers: floor(6/5) = 1 left out on each side)
    b, _, _, _ = two_concepts(tmp_path / "d", 0.0)
    assert b.meta["selection"]["candidates"] == [1, 2, 3, 4]
    assert b.meta["selection"]["candidates_from"].startswith("default: the middle")


# ----------------------------------------------------------------------------- selectivity


def test_a_shared_component_shows_as_cosine_and_cross_concept_auroc(tmp_path):
    a, b, acts_a, acts_b = two_concepts(tmp_path, 1.5, controls=4)
    assert a.meta["selectivity"] == []  # fitted first: nothing beside it yet
    (entry,) = b.meta["selectivity"]
    assert entry["concept"] == "alpha" and entry["file"].endswith("alpha/m.safetensors")
    va, vb = a.vector.directions.double(), b.vector.directions.double()
    cos = (va * vb).sum(-1) / va.norm(dim=-1) / vb.norm(dim=-1)
    np.testing.assert_allclose(entry["cosine"], cos.numpy(), atol=1e-6)
    assert min(entry["cosine"]) > 0.35  # both concepts' differences carry the shared component
    ctrl = [abs(float(torch.nn.functional.cosine_similarity(b.vector.at(1), c.at(1), dim=0))) for c in a.controls]
    assert entry["control_abs_cosine"][1] == pytest.approx(np.mean(ctrl), abs=1e-6) and max(ctrl) < 0.5
    for layer in range(L):  # b's vector on a's val pairs and a's on b's, recomputed with sklearn
        assert entry["auroc_on_other_val"][layer] == pytest.approx(auroc_on(acts_a[180:240, :, layer], vb[layer]))
        assert entry["other_auroc_on_this_val"][layer] == pytest.approx(auroc_on(acts_b[180:240, :, layer], va[layer]))
    assert min(entry["auroc_on_other_val"]) > 0.65


def test_independent_concepts_look_selective(tmp_path):
    _, b, _, _ = two_concepts(tmp_path, 0.0, controls=4)
    (entry,) = b.meta["selectivity"]
    assert np.mean(np.abs(entry["cosine"])) < 0.25  # the planted directions are orthogonal
    assert max(abs(x - 0.5) for x in entry["auroc_on_other_val"]) < 0.15


def test_orthogonalize_against_removes_the_other_direction(tmp_path):
    a, _, _, _ = two_concepts(tmp_path, 1.5, controls=2)
    shared = unit_rows(0)
    acts_b = concept_acts(unit_rows(2), shared, 1.5, seed=11)
    cache = synthetic_cache(tmp_path / "beta2.h5", acts_b.numpy(), SPLITS, concept="beta")
    other = tmp_path / "vectors" / "alpha" / "m.safetensors"
    b, path = fit_cache(
        cache, FitSettings(orthogonalize_against=other, controls=2), tmp_path / "vectors" / "beta" / "orth.safetensors"
    )
    va = a.vector.directions
    cos = torch.nn.functional.cosine_similarity(b.vector.directions, va, dim=-1)
    assert cos.abs().max() < 1e-5  # orthogonal to alpha's vector at every layer
    record = b.meta["orthogonalized_against"]
    assert record["concept"] == "alpha" and record["file"] == str(other) and len(record["file_hash"]) == 16
    (entry,) = b.meta["selectivity"]
    assert max(abs(x - 0.5) for x in entry["auroc_on_other_val"]) < 0.15  # the shared part is gone
    plain, _ = fit_cache(cache, FitSettings(controls=2), tmp_path / "plain" / "beta" / "m.safetensors")
    assert plain.meta["controls"]["seeds"] != b.meta["controls"]["seeds"]
    assert json.loads(path.with_suffix(".diagnostics.json").read_text())["orthogonalized_against"] == record


def test_vectors_inspect_recomputes_selectivity_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    two_concepts(tmp_path, 1.5, controls=2)
    before = snapshot(tmp_path)
    code, out, _ = run_cli(["vectors", "inspect", "vectors/alpha/m.safetensors"], capsys)
    assert code == 0 and "selectivity vs beta" in out and "AUROC on its val" in out
    assert snapshot(tmp_path) == before
    # alpha was fitted before beta existed, so its header holds no selectivity; inspect computed it
    assert VectorBundle.load(tmp_path / "vectors" / "alpha" / "m.safetensors").meta["selectivity"] == []
    # a cache that is gone: the cosine is still reported, the AUROC says why it is missing
    (tmp_path / "beta.h5").unlink()
    code, out, _ = run_cli(["vectors", "inspect", "vectors/alpha/m.safetensors"], capsys)
    assert code == 0 and "AUROC on its val n/a (its cache" in out


def test_fit_cli_prints_the_selection_and_selectivity(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    two_concepts(tmp_path, 1.5, controls=2)
    code, out, _ = run_cli(["fit", "--cache", "beta.h5", "--name", "again", "--rank-by", "cv_auroc",
                            "--candidate-layers", "all", "--controls", "0"], capsys)  # fmt: skip
    assert code == 0 and "ranked by cv_auroc; ties by cv_dprime" in out and "among layers 0-5 (all layers)" in out
    assert "selectivity vs alpha" in out
    meta = VectorBundle.load(tmp_path / "vectors" / "beta" / "again.safetensors").meta
    assert meta["selection"]["rank_by"] == "cv_auroc" and meta["selection"]["candidates"] == list(range(L))


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--rank-by", "val_auroc"], "unknown --rank-by 'val_auroc'"),
        (["--candidate-layers", "5-3"], "--candidate-layers '5-3'"),
        (["--candidate-layers", "40"], "--candidate-layers"),
        (["--orthogonalize-against", "nope.safetensors"], "no such vector file"),
        (["--orthogonalize-against", "vectors/beta/m.safetensors"], "is a 'beta' vector itself"),
        (["--candidate-layers", "0", "--k", "2"], "between 1 and the 1 candidate layers"),
    ],
)
def test_bad_selection_and_selectivity_options_are_one_line(tmp_path, capsys, monkeypatch, extra, says):
    monkeypatch.chdir(tmp_path)
    two_concepts(tmp_path, 0.0, controls=0)
    refused(["fit", "--cache", "beta.h5", "--name", "x", *extra], says, tmp_path, capsys)


def test_orthogonalize_against_another_model_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    two_concepts(tmp_path, 0.0, controls=0)
    acts = concept_acts(unit_rows(3), unit_rows(0), 0.0, seed=12)
    fp = {"architecture": "Other", "n_layers": L, "d_model": D, "config_hash": "1", "embed_hash": "1"}
    synthetic_cache(tmp_path / "gamma.h5", acts.numpy(), SPLITS, concept="gamma", fingerprint=fp)
    refused(["fit", "--cache", "gamma.h5", "--orthogonalize-against", "vectors/alpha/m.safetensors"],
            "fitted on another model", tmp_path, capsys)  # fmt: skip
    assert ActivationCache.open(tmp_path / "gamma.h5").concepts[0] == "gamma"


def test_an_orthogonalized_file_reports_the_numbers_of_what_it_holds(tmp_path):
    """The saved vector and controls lie in the complement of the other vector, and the header's held-out
    numbers and the controls' AUROCs are those of the saved tensors on the raw activations."""
    from steerlab.diagnostics import split_metrics

    two_concepts(tmp_path, 1.5, controls=3)
    cache = tmp_path / "beta.h5"
    other = tmp_path / "vectors" / "alpha" / "m.safetensors"
    b, _ = fit_cache(
        cache, FitSettings(orthogonalize_against=other, controls=3), tmp_path / "o" / "beta" / "x.safetensors"
    )
    raw = torch.from_numpy(ActivationCache.open(cache).load("val"))
    va = VectorBundle.load(other).vector.directions
    per_layer = b.meta["diagnostics"]["per_layer"]
    mine = split_metrics(raw, b.vector.directions)
    np.testing.assert_allclose(per_layer["val_mean_cosine"], mine["mean_cosine"], atol=1e-6)
    np.testing.assert_allclose(per_layer["val_mean_gap"], mine["mean_gap"], rtol=1e-5)
    for c, recorded in zip(b.controls, b.meta["controls"]["diagnostics"], strict=True):
        assert torch.nn.functional.cosine_similarity(c.directions, va, dim=-1).abs().max() < 1e-5
        torch.testing.assert_close(c.directions.norm(dim=-1), b.vector.directions.norm(dim=-1))
        np.testing.assert_allclose(recorded["val_auroc"], split_metrics(raw, c.directions)["auroc"], atol=1e-9)


def test_inspect_finds_the_caches_from_another_folder(tmp_path, capsys, monkeypatch):
    """Caches named relative to the fit's working directory are found from elsewhere, next to the files."""
    two_concepts(tmp_path, 1.5, controls=2)
    monkeypatch.chdir(tmp_path)
    for name in ("alpha", "beta"):  # refit with the caches named relative to this folder
        assert (
            run_cli(["fit", "--cache", f"{name}.h5", "--name", "m", "--overwrite", "--controls", "1"], capsys)[0] == 0
        )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, _ = run_cli(["vectors", "inspect", "../vectors/alpha/m.safetensors"], capsys)
    assert code == 0 and "n/a" not in out and "AUROC on its val 0." in out and "its AUROC on this val 0." in out


def test_extract_refuses_what_its_fit_would_refuse_before_caching(tmp_path, tiny_dir, toy_pairs, capsys, monkeypatch):
    from steerlab.pairs import write_pairs

    monkeypatch.chdir(tmp_path)
    write_pairs(toy_pairs, tmp_path / "toy.jsonl")
    base = ["extract", "--pairs", "toy.jsonl", "--model", tiny_dir, "--cache", "c.h5", "--device", "cpu"]
    refused([*base, "--candidate-layers", "1", "--k", "2"], "between 1 and the 1 candidate layers", tmp_path, capsys,
            loading_bar=True)  # fmt: skip
    refused([*base, "--layers", "0,1", "--candidate-layers", "3"], "no cached layer is a candidate", tmp_path, capsys,
            loading_bar=True)  # fmt: skip
    assert not (tmp_path / "c.h5").exists()
