import re

import numpy as np
import pytest
import torch
from conftest import planted, run_cli, synthetic_cache
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.preprocessing import StandardScaler

from steerlab.cache import ActivationCache
from steerlab.diagnostics import auroc, diagnose, pair_folds, select_layers, tpr_at_fpr
from steerlab.directions import FitSettings, fit_cache
from steerlab.errors import CacheError, ConfigError
from steerlab.fit import logistic, mean_diff, pca


def cos(a, b):
    return float(torch.nn.functional.cosine_similarity(torch.as_tensor(a).double(), torch.as_tensor(b).double(), dim=0))


def sklearn_direction(pos, neg, c=1.0):
    """The reference: LogisticRegression without intercept on the standardised symmetric set."""
    d = (pos - neg).double().numpy()
    x = np.r_[d, -d]
    y = np.r_[np.ones(len(d)), np.zeros(len(d))]
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(fit_intercept=False, C=c, tol=1e-10, max_iter=10000).fit(scaler.transform(x), y)
    return clf.coef_[0] / scaler.scale_


# ----------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("method", ["logistic", "mean_diff", "pca"])
def test_planted_direction_is_recovered(method):
    # Non-separable (noise 0.7 per dimension against a unit signal), where logistic regression
    # estimates the Bayes direction; on separable data it tends to a max-margin one instead.
    acts, direction = planted(3000, n_layers=3, d_model=16, noise=0.7)
    fit = {"logistic": logistic, "mean_diff": mean_diff, "pca": pca}[method]
    got = fit(acts[:, 0], acts[:, 1])
    assert got.shape == (3, 16)
    for layer in range(3):
        assert cos(got[layer], direction[layer]) >= 0.99


def test_mean_diff_and_pca_scale():
    acts, _ = planted(50, n_layers=2, d_model=8, noise=0.3)
    diffs = acts[:, 0] - acts[:, 1]
    torch.testing.assert_close(mean_diff(acts[:, 0], acts[:, 1]), diffs.mean(0))
    v = pca(acts[:, 0], acts[:, 1])
    unit = v / v.norm(dim=-1, keepdim=True)
    # scaled by the mean projection, and signed to agree with the mean difference
    torch.testing.assert_close(v.norm(dim=-1), (diffs * unit).sum(-1).mean(0), atol=1e-5, rtol=1e-5)
    assert ((v * diffs.mean(0)).sum(-1) > 0).all()


@pytest.mark.parametrize("c", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("n,d", [(60, 100), (200, 20)])  # dual (n < d, separable) and primal (n > d)
def test_logistic_matches_sklearn(c, n, d):
    acts, _ = planted(n, n_layers=2, d_model=d, noise=1.0, seed=3)
    ours = logistic(acts[:, 0], acts[:, 1], c=c)
    for layer in range(2):
        ref = sklearn_direction(acts[:, 0, layer], acts[:, 1, layer], c=c)
        assert cos(ours[layer], ref) >= 0.999
        assert np.linalg.norm(ours[layer].numpy()) == pytest.approx(np.linalg.norm(ref), rel=1e-3)


def test_primal_and_dual_agree():
    from steerlab.fit import logistic_dual, logistic_primal

    z = torch.randn(3, 25, 25, generator=torch.Generator().manual_seed(4)) + 0.3
    dual = torch.einsum("bn,bnd->bd", logistic_dual(z @ z.transpose(1, 2)), z.double())
    primal = logistic_primal(z)
    torch.testing.assert_close(dual, primal, atol=1e-6, rtol=1e-6)


def test_zero_variance_features_are_handled_like_sklearn():
    acts, _ = planted(40, n_layers=1, d_model=12, noise=0.5)
    acts[:, :, :, 5] = 7.0  # a feature identical on both sides: zero difference, zero variance
    ours = logistic(acts[:, 0], acts[:, 1])
    assert torch.isfinite(ours).all() and ours[0, 5] == 0
    assert cos(ours[0], sklearn_direction(acts[:, 0, 0], acts[:, 1, 0])) >= 0.999


# ----------------------------------------------------------------------------- metrics


def test_auroc_and_tpr_match_sklearn():
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(3, 40, generator=g) + 1
    neg = torch.randn(3, 55, generator=g)
    pos[0, :5] = neg[0, :5]  # ties
    ours_auc, ours_tpr = auroc(pos, neg), tpr_at_fpr(pos, neg, 0.05)
    for b in range(3):
        y = np.r_[np.ones(40), np.zeros(55)]
        s = np.r_[pos[b].numpy(), neg[b].numpy()]
        assert float(ours_auc[b]) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        fpr, tpr, _ = roc_curve(y, s)
        assert float(ours_tpr[b]) == pytest.approx(tpr[fpr <= 0.05].max(), abs=1e-12)


def test_folds_split_pairs_not_sides():
    folds = pair_folds(53, 5, seed=0)
    held = np.concatenate([te for _, te in folds])
    assert sorted(held) == list(range(53))
    for tr, te in folds:
        assert not set(tr) & set(te) and len(tr) + len(te) == 53
    with pytest.raises(ConfigError, match="fewer than 10 pairs per fold"):
        pair_folds(49, 5, seed=0)


def test_cv_has_no_pair_leakage():
    # Each pair lives on its own axis: pos_i = 5 e_i, neg_i = -5 e_i. A direction fitted without
    # pair i is exactly orthogonal to it, so every held-out score is 0 and each fold's AUROC is
    # exactly 0.5 (all ties). Had any held-out pair leaked into its fold's fit, it would score 1.0.
    axes = 5 * torch.eye(100)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    acts = torch.stack([axes, -axes], dim=1)[:, :, None, :]  # [100, 2, 1, 100]
    diag = diagnose({"train": acts, "val": acts[:20]}, [0], folds=5)
    assert diag.column("cv_auroc")[0] == 0.5
    # the detector works: a direction fitted on all pairs (the leak) separates any fold perfectly
    leaked = logistic(acts[:, 0], acts[:, 1])
    _, held = pair_folds(100, 5, seed=0)[0]
    proj = torch.einsum("nsd,d->ns", acts[held, :, 0], leaked[0])
    assert float(auroc(proj[None, :, 0], proj[None, :, 1])[0]) == 1.0


def test_cv_auroc_matches_sklearn_loop():
    acts, _ = planted(80, n_layers=3, d_model=40, noise=0.5, seed=5, base=0.5)  # noisy enough that AUROC < 1
    diag = diagnose({"train": acts, "val": acts[:20]}, [0, 1, 2], folds=5, seed=7)
    for layer in range(3):
        scores, dprimes = [], []
        for tr, te in pair_folds(80, 5, seed=7):
            v = sklearn_direction(acts[tr, 0, layer], acts[tr, 1, layer])
            held = acts[te, :, layer].double().numpy() @ (v / np.linalg.norm(v))
            scores.append(roc_auc_score(np.r_[np.ones(len(te)), np.zeros(len(te))], np.r_[held[:, 0], held[:, 1]]))
            pooled_sd = np.sqrt((held[:, 0].var() + held[:, 1].var()) / 2)
            dprimes.append((held[:, 0].mean() - held[:, 1].mean()) / pooled_sd)
        assert 0.55 < np.mean(scores) < 0.999
        assert diag.column("cv_auroc")[layer] == pytest.approx(np.mean(scores), abs=0.002)
        assert diag.column("cv_auroc_sd")[layer] == pytest.approx(np.std(scores), abs=0.002)
        assert diag.column("cv_dprime")[layer] == pytest.approx(np.mean(dprimes), rel=0.01)


# ----------------------------------------------------------------------------- selection


def make_scores(cv, dprime=None, spread=None):
    from steerlab.diagnostics import TrainScores

    n = len(cv)
    dprime = [0.0] * n if dprime is None else dprime
    spread = [0.0] * n if spread is None else spread
    return TrainScores(tuple(range(n)), *(np.asarray(x, dtype=float) for x in (cv, spread, dprime)))


def test_layer_selection_rules():
    scores = make_scores([0.6, 0.9, 0.95, 0.95, 0.7, 0.95], dprime=[1, 1, 2, 4, 1, 3])
    top = select_layers(scores, "top-k", k=2)
    assert top["layers"] == [3, 5]  # three tie at 0.95; the train-only CV d' breaks the tie
    assert top["rule"]["name"] == "top-k" and "train only" in top["rule"]["by"]
    assert select_layers(scores, "band", k=3)["layers"] == [2, 3, 4]  # centred on the peak, layer 3
    assert select_layers(make_scores([0.9, 0.1, 0.1]), "band", k=2)["layers"] == [0, 1]  # clipped
    # then the smaller fold spread, then the lower layer
    assert select_layers(make_scores([1, 1, 1], [2, 2, 2], [0.1, 0.0, 0.0]), "top-k", k=1)["layers"] == [1]
    assert select_layers(make_scores([1, 1, 1]), "top-k", k=1)["layers"] == [0]
    assert select_layers(scores, "list", explicit=[4, 1])["layers"] == [1, 4]
    with pytest.raises(ConfigError, match=r"layer\(s\) \[9\] out of range"):
        select_layers(scores, "list", explicit=[9])
    with pytest.raises(ConfigError, match="--k 7"):
        select_layers(scores, "top-k", k=7)


# ----------------------------------------------------------------------------- the whole fit


def fit_synthetic(tmp_path, n_train=60, n_val=20, n_kh=20, **settings):
    acts, direction = planted(n_train + n_val + n_kh, n_layers=4, d_model=48, noise=0.3, seed=2, base=0.3)
    splits = ["train"] * n_train + ["val"] * n_val + ["keyword_hard"] * n_kh
    cache = synthetic_cache(tmp_path / "c.h5", acts.numpy(), splits)
    bundle, path = fit_cache(cache, FitSettings(**settings), tmp_path / "v" / "toy.safetensors")
    return bundle, path, direction


def test_fit_cache_writes_bundle_report_and_figure(tmp_path):
    bundle, path, _ = fit_synthetic(tmp_path, controls=4)
    assert path.is_file() and path.with_suffix(".diagnostics.json").is_file()
    assert path.with_suffix(".diagnostics.png").read_bytes()[:4] == b"\x89PNG"
    meta = bundle.meta
    assert meta["concept"] == "toy" and meta["method"] == "logistic" and meta["C"] == 1.0
    assert len(meta["selected_layers"]) == 3 and meta["selection"]["name"] == "top-k"
    per_layer = meta["diagnostics"]["per_layer"]
    assert min(per_layer["val_auroc"]) > 0.9 and min(per_layer["keyword_hard_paired_accuracy"]) > 0.9
    train = torch.from_numpy(ActivationCache.open(tmp_path / "c.h5").load("train"))
    torch.testing.assert_close(bundle.vector.directions, logistic(train[:, 0], train[:, 1]))


def test_controls_are_norm_matched_random_and_near_chance(tmp_path):
    bundle, _, _ = fit_synthetic(tmp_path, controls=5, control_seed=11)
    real = bundle.vector.directions
    assert len(bundle.controls) == 5 and bundle.meta["controls"]["run_seed"] == 11
    assert len(set(bundle.meta["controls"]["seeds"])) == 5
    for ctrl in bundle.controls:
        torch.testing.assert_close(ctrl.directions.norm(dim=-1), real.norm(dim=-1), rtol=1e-6, atol=1e-6)
        for layer in range(4):
            assert abs(cos(ctrl.at(layer), real[layer])) < 0.5  # 48 dims: random cosines are ~N(0, 0.14)
    vals = np.array([c["val_auroc"] for c in bundle.meta["controls"]["diagnostics"]])
    assert abs(vals.mean() - 0.5) < 0.15
    again, _, _ = fit_synthetic(tmp_path / "again", controls=5, control_seed=11)
    assert all(torch.equal(a.directions, b.directions) for a, b in zip(bundle.controls, again.controls, strict=True))


def test_bad_caches_are_refused(tmp_path):
    acts, _ = planted(60, n_layers=2, d_model=8)
    splits = ["train"] * 40 + ["val"] * 20
    nan = acts.clone()
    nan[41, 1, 1, 3] = float("nan")
    with pytest.raises(CacheError, match=r"non-finite activation .*pair 'p41', layer 1"):
        fit_cache(synthetic_cache(tmp_path / "nan.h5", nan.numpy(), splits), FitSettings(), tmp_path / "a.safetensors")
    same = acts.clone()
    same[3, 1] = same[3, 0]
    with pytest.raises(CacheError, match=r"pair\(s\) \['p3'\] have identical activations"):
        fit_cache(
            synthetic_cache(tmp_path / "same.h5", same.numpy(), splits), FitSettings(), tmp_path / "b.safetensors"
        )
    with pytest.raises(ConfigError, match="fewer than 10 pairs per fold"):
        small = synthetic_cache(tmp_path / "small.h5", acts[:50].numpy(), ["train"] * 30 + ["val"] * 20)
        fit_cache(small, FitSettings(), tmp_path / "c.safetensors")
    with pytest.raises(ConfigError, match="val split of 'toy' .* is empty"):
        fit_cache(
            synthetic_cache(tmp_path / "noval.h5", acts.numpy(), ["train"] * 60),
            FitSettings(),
            tmp_path / "d.safetensors",
        )
    assert not list(tmp_path.glob("*.safetensors"))


def test_cli_fit_and_inspect(tmp_path, capsys):
    acts, _ = planted(80, n_layers=3, d_model=16, noise=0.8)
    cache = synthetic_cache(tmp_path / "c.h5", acts.numpy(), ["train"] * 60 + ["val"] * 20)
    code, out, err = run_cli(
        ["fit", "--cache", cache, "--vectors-dir", tmp_path / "vec", "--select", "band", "--k", "2"], capsys
    )
    assert code == 0, err
    path = tmp_path / "vec" / "toy" / "synthetic.safetensors"
    assert path.is_file() and "selected layers" in out and "random controls" in out
    code, out, err = run_cli(["vectors", "inspect", path], capsys)
    assert code == 0 and "concept: toy" in out and "method: logistic" in out
    code, _, err = run_cli(["fit", "--cache", cache, "--vectors-dir", tmp_path / "vec"], capsys)
    assert code == 2 and "already exists; pass --overwrite" in err
    code, _, err = run_cli(["fit", "--cache", cache, "--select", "list", "--select-layers", "5", "--overwrite",
                            "--vectors-dir", tmp_path / "vec"], capsys)  # fmt: skip
    assert code == 2 and "layer(s) [5] out of range" in err
    code, _, err = run_cli(["fit", "--cache", cache, "--method", "svm", "--vectors-dir", tmp_path / "x"], capsys)
    assert code == 2 and "unknown method 'svm'" in err
    if not torch.cuda.is_available():
        code, _, err = run_cli(["fit", "--cache", cache, "--device", "cuda", "--vectors-dir", tmp_path / "x"], capsys)
        assert code == 2 and "CUDA is not available" in err


# ----------------------------------------------------------------------------- issue 13: controls and selection


def fit_concept(tmp_path, concept, acts, splits, **settings):
    cache = synthetic_cache(tmp_path / f"{concept}.h5", acts.numpy(), splits, concept=concept)
    bundle, _ = fit_cache(cache, FitSettings(**settings), tmp_path / concept / "toy.safetensors")
    return bundle


def test_each_concept_gets_its_own_controls_and_a_refit_reproduces_them(tmp_path):
    from steerlab.vectors import control_seeds, controls_from_seeds

    acts, _ = planted(100, n_layers=4, d_model=48, noise=0.3, seed=2, base=0.3)
    splits = ["train"] * 60 + ["val"] * 20 + ["keyword_hard"] * 20
    a = fit_concept(tmp_path / "a", "researcher_expectations", acts, splits, controls=3)
    b = fit_concept(tmp_path / "b", "retraining_consequences", acts, splits, controls=3)
    # the same run seed (the default) and even the same activations: different concepts, different controls
    assert a.meta["controls"]["run_seed"] == b.meta["controls"]["run_seed"]
    assert not set(a.meta["controls"]["seeds"]) & set(b.meta["controls"]["seeds"])
    for ca, cb in zip(a.controls, b.controls, strict=True):
        for layer in range(4):
            assert abs(cos(ca.at(layer), cb.at(layer))) < 0.6  # 48 dims: independent cosines are ~N(0, 0.14)
    # a refit reproduces its own controls, and the header alone regenerates them
    again = fit_concept(tmp_path / "again", "researcher_expectations", acts, splits, controls=3)
    assert all(torch.equal(x.directions, y.directions) for x, y in zip(a.controls, again.controls, strict=True))
    ctrl = a.meta["controls"]
    assert control_seeds(ctrl["run_seed"], ctrl["identity"], ctrl["n"]) == ctrl["seeds"]
    assert ctrl["identity"]["concept"] == "researcher_expectations" and ctrl["identity"]["model"] == a.meta["model"]
    assert ctrl["identity"]["pair_file_hash"] == a.meta["pair_file_hash"]
    regenerated = controls_from_seeds(a.vector.directions, ctrl["seeds"])
    assert all(torch.equal(regenerated[i], c.directions) for i, c in enumerate(a.controls))
    # another run seed gives other controls
    other = fit_concept(tmp_path / "other", "researcher_expectations", acts, splits, controls=3, control_seed=7)
    assert other.meta["controls"]["seeds"] != ctrl["seeds"]


def test_control_seeds_depend_on_every_part_of_the_identity():
    from steerlab.vectors import control_seeds

    ident = {"concept": "a", "model": {"embed_hash": "x"}, "pair_file_hash": "p", "locus": "scratchpad_mean"}
    base = control_seeds(1000, ident, 5)
    assert len(set(base)) == 5 and all(0 <= s < 2**63 for s in base)
    assert control_seeds(1000, dict(ident), 5) == base
    for change in ({"concept": "b"}, {"model": {"embed_hash": "y"}}, {"pair_file_hash": "q"}, {"locus": "last"}):
        assert not set(control_seeds(1000, {**ident, **change}, 5)) & set(base)
    assert not set(control_seeds(1001, ident, 5)) & set(base)


def tied_layers_acts(noisy_kh_layer):
    """Four layers, all perfectly separable on train (CV AUROC 1.0 at every layer: a tie), with a train
    margin that grows with the layer; keyword-hard pairs separate at every layer but ``noisy_kh_layer``.
    The train and val pairs do not depend on ``noisy_kh_layer``."""
    g = torch.Generator().manual_seed(0)
    n, n_layers, d = 100, 4, 24
    direction = torch.nn.functional.normalize(torch.randn(n_layers, d, generator=g), dim=-1)
    shared = 0.2 * torch.randn(n, n_layers, d, generator=g)
    signal = torch.tensor([2.0, 3.0, 4.0, 5.0])[None, :, None] * direction
    pos = shared + signal + 0.05 * torch.randn(n, n_layers, d, generator=g)
    neg = shared + 0.05 * torch.randn(n, n_layers, d, generator=g)
    acts = torch.stack([pos, neg], dim=1)
    noise = 3.0 * torch.randn(20, d, generator=g)
    acts[80:, 0, noisy_kh_layer] = acts[80:, 1, noisy_kh_layer] + noise  # keyword-hard: no signal at this layer
    return acts, ["train"] * 60 + ["val"] * 20 + ["keyword_hard"] * 20


def test_selection_reads_no_held_out_split(tmp_path):
    acts, splits = tied_layers_acts(noisy_kh_layer=3)
    first = fit_concept(tmp_path / "a", "toy", acts, splits, k=1)
    per_layer = first.meta["diagnostics"]["per_layer"]
    kh = per_layer["keyword_hard_auroc"]
    assert per_layer["cv_auroc"] == [1.0] * 4 and min(kh[:3]) > 0.99 and kh[3] < 0.8  # tied on CV, kh differs
    # permute keyword-hard AUROC across the layers (now layer 0 is the bad one) and scramble val
    permuted, _ = tied_layers_acts(noisy_kh_layer=0)
    permuted[60:80] = permuted[60:80].flip(1)  # val sides swapped: val AUROC ~0 everywhere
    assert torch.equal(permuted[:60], acts[:60])
    second = fit_concept(tmp_path / "b", "toy", permuted, splits, k=1)
    kh2 = second.meta["diagnostics"]["per_layer"]["keyword_hard_auroc"]
    assert kh2[0] < 0.8 and min(kh2[1:]) > 0.99 and max(second.meta["diagnostics"]["per_layer"]["val_auroc"]) < 0.1
    assert first.meta["selected_layers"] == second.meta["selected_layers"] == [3]  # the largest train margin
    assert first.meta["selection"] == second.meta["selection"]
    for rule in ("band", "top-k"):
        a = fit_concept(tmp_path / f"a{rule}", "toy", acts, splits, select=rule, k=2)
        b = fit_concept(tmp_path / f"b{rule}", "toy", permuted, splits, select=rule, k=2)
        assert a.meta["selected_layers"] == b.meta["selected_layers"] == [2, 3]


def test_selection_receives_only_train_columns():
    import dataclasses

    from steerlab.diagnostics import Diagnostics, TrainScores

    names = {f.name for f in dataclasses.fields(TrainScores)}
    assert names == {"layers", "cv_auroc", "cv_auroc_sd", "cv_dprime"}
    per_layer = {"cv_auroc": [0.9, 0.9], "cv_auroc_sd": [0.0, 0.0], "cv_dprime": [1.0, 2.0], "val_auroc": [1.0, 0.0]}
    diag = Diagnostics([0, 1], torch.zeros(2, 4), per_layer)
    with pytest.raises(TypeError, match="train"):
        select_layers(diag, "top-k", k=1)
    assert select_layers(diag.train_scores(), "top-k", k=1)["layers"] == [1]


# ----------------------------------------------------------------------------- issue 14.2: numbers that fit nothing


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"c": float("nan")}, "--C nan must be a finite number above 0"),
        ({"c": float("inf")}, "--C inf must be"),
        ({"c": 0.0}, "--C 0.0 must be"),
        ({"c": -1.0}, "--C -1.0 must be"),
        ({"folds": 1}, "--folds 1 must be 2 or more"),
        ({"k": 0}, "--k 0 must be 1 or more"),
        ({"controls": -2}, "--controls -2 must lie in"),
        ({"seed": 2**32}, "--seed 4294967296 must lie in"),
    ],
)
def test_fit_refuses_numbers_that_fit_nothing(tmp_path, settings, says):
    acts, _ = planted(60, n_layers=2, d_model=8)
    cache = synthetic_cache(tmp_path / "c.h5", acts.numpy(), ["train"] * 40 + ["val"] * 20)
    with pytest.raises(ConfigError, match=re.escape(says)):
        fit_cache(cache, FitSettings(**settings), tmp_path / "v.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


@pytest.mark.parametrize("method", ["logistic", "mean_diff"])
def test_a_layer_where_the_sides_never_differ_is_refused_not_written_as_a_zero_vector(tmp_path, method):
    acts, _ = planted(70, n_layers=3, d_model=8)
    acts[:, 1, 1] = acts[:, 0, 1]  # layer 1 identical on both sides of every pair (layers 0 and 2 differ)
    cache = synthetic_cache(tmp_path / "c.h5", acts.numpy(), ["train"] * 50 + ["val"] * 20)
    with pytest.raises(ConfigError, match=f"the {method} fit of 'toy' gave a vector with zero norm at layer 1"):
        fit_cache(cache, FitSettings(method=method), tmp_path / "v.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]
