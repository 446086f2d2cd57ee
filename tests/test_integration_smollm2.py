"""Integration tier: the real embedded model, SmolLM2-135M-Instruct (CPU, float32)."""

import numpy as np
import pytest
import torch
from conftest import DEMO, REPO, reference, run_cli

from steerlab.cache import ActivationCache
from steerlab.extract import encode_pairs
from steerlab.loci import Locus
from steerlab.models import embedded_gguf_path, embedded_snapshot, load_model
from steerlab.pairs import load_pairs, write_pairs

pytestmark = pytest.mark.integration
DEMO_CONCEPTS = ("researcher_expectations", "retraining_consequences")


def test_snapshot_is_a_clean_conversion_of_the_gguf(smollm2):
    snapshot = embedded_snapshot()
    config = (snapshot / "config.json").read_text()
    assert "quantization_config" not in config and (snapshot / "model.safetensors").is_file()
    fp = smollm2.fingerprint
    assert (fp.architecture, fp.n_layers, fp.d_model) == ("LlamaForCausalLM", 30, 576)
    direct = load_model(str(embedded_gguf_path()), device="cpu")  # the .gguf path, loaded as is
    assert direct.fingerprint == fp
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        a, b = smollm2.model(ids).logits, direct.model(ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert smollm2.tokenizer.decode(a[0, -1].argmax()).strip() == "Paris"


def test_span_tokens_decode_to_the_span(smollm2):
    pairs = load_pairs(DEMO / "researcher_expectations.jsonl")[:5]
    for pair, (pos, neg) in zip(pairs, encode_pairs(smollm2, pairs, Locus.span_mean), strict=True):
        assert smollm2.tokenizer.decode([pos.input_ids[i] for i in pos.positions]).strip() == pair.span_positive
        assert smollm2.tokenizer.decode([neg.input_ids[i] for i in neg.positions]).strip() == pair.span_negative


def test_cli_extract_on_smollm2_matches_hidden_states(smollm2, tmp_path, capsys):
    pairs = load_pairs(DEMO / "retraining_consequences.jsonl")[:6]
    src = tmp_path / "p.jsonl"
    write_pairs(pairs, src)
    out = tmp_path / "c.h5"
    code, stdout, err = run_cli(
        [
            "extract",
            "--pairs",
            src,
            "--out",
            out,
            "--no-fit",
            "--locus",
            "scratchpad_mean",
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    cache = ActivationCache.open(out)
    assert cache.meta["model"] == smollm2.fingerprint.to_dict() and cache.meta["model_source"] == "smollm2"
    got = cache.load()
    assert got.shape == (6, 2, 30, 576)
    np.testing.assert_allclose(got, reference(smollm2, pairs, "scratchpad_mean"), atol=1e-4, rtol=1e-4)
    # the mean per-token norm at the locus, against output_hidden_states (untied: the last layer before the norm)
    config = smollm2.model.config
    config.tie_last_hidden_states = False
    try:
        want = []
        for sides in encode_pairs(smollm2, pairs, Locus.scratchpad_mean):
            row = []
            for side in sides:
                with torch.inference_mode():
                    hs = smollm2.model(torch.tensor([side.input_ids]), output_hidden_states=True).hidden_states
                row.append([float(h[0, side.positions].norm(dim=-1).mean()) for h in hs[1:]])
            want.append(row)
    finally:
        del config.tie_last_hidden_states
    norms = cache.load_token_norms()
    np.testing.assert_allclose(norms, np.array(want), rtol=1e-5)
    assert (norms > np.linalg.norm(got, axis=-1)).all()  # the pooled mean's norm is smaller


@pytest.mark.parametrize("concept", ["researcher_expectations", "retraining_consequences"])
def test_shipped_vectors_match_the_model_and_separate_fresh_activations(smollm2, concept):
    from steerlab.extract import pooled_activations
    from steerlab.vectors import VectorBundle, control_seeds, controls_from_seeds

    bundle = VectorBundle.load(REPO / "vectors" / concept / "smollm2.safetensors", expect=smollm2.fingerprint)
    meta = bundle.meta
    assert meta["concept"] == concept and meta["method"] == "logistic" and meta["locus"] == "scratchpad_mean"
    assert len(bundle.controls) == 5 and len(meta["selected_layers"]) == 3
    per_layer = meta["diagnostics"]["per_layer"]
    chosen = [meta["layers"].index(layer) for layer in meta["selected_layers"]]
    ctrl_val = [c["val_auroc"][i] for c in meta["controls"]["diagnostics"] for i in chosen]
    assert min(per_layer["val_auroc"][i] for i in chosen) > max(ctrl_val)  # weak vectors, but above every control
    # fresh activations of the val pairs, through today's code, give the recorded numbers
    from sklearn.metrics import roc_auc_score

    pairs = [p for p in load_pairs(DEMO / f"{concept}.jsonl") if p.split == "val"]
    sides = [s for pair in encode_pairs(smollm2, pairs, Locus.scratchpad_mean) for s in pair]
    acts = pooled_activations(smollm2, sides, meta["selected_layers"])  # [96, 3, 576]
    proj = torch.einsum("nld,ld->nl", acts.double(), bundle.vector.selected().double()).numpy()
    y = np.r_[np.ones(len(pairs)), np.zeros(len(pairs))]
    for k, i in enumerate(chosen):
        assert roc_auc_score(y, np.r_[proj[0::2, k], proj[1::2, k]]) == pytest.approx(
            per_layer["val_auroc"][i], abs=2e-3
        )
        assert np.mean(proj[0::2, k] > proj[1::2, k]) == pytest.approx(per_layer["val_paired_accuracy"][i], abs=0.03)
    # refitted with the per-token norm, per-file control seeds and train-only selection among the middle layers
    assert meta["selection"]["by"].endswith("(train only)") and meta["selection"]["rank_by"] == "cv_dprime"
    assert meta["selection"]["candidates"] == list(range(6, 24)) and set(meta["selected_layers"]) <= set(range(6, 24))
    dprime = per_layer["cv_dprime"]
    assert sorted(meta["selected_layers"]) == sorted(sorted(range(6, 24), key=lambda i: -dprime[i])[:3])
    # both shipped headers hold their selectivity against the other concept
    (entry,) = meta["selectivity"]
    assert entry["concept"] != concept and len(entry["cosine"]) == len(meta["layers"])
    assert all(per_layer["token_norm"][i] > per_layer["pooled_norm"][i] for i in range(len(meta["layers"])))
    controls = meta["controls"]
    assert controls["identity"]["concept"] == concept and controls["identity"]["model"] == meta["model"]
    assert control_seeds(controls["run_seed"], controls["identity"], 5) == controls["seeds"]
    regenerated = controls_from_seeds(bundle.vector.directions, controls["seeds"])
    assert all(torch.equal(regenerated[i], c.directions) for i, c in enumerate(bundle.controls))


def test_shipped_concepts_have_independent_controls():
    from steerlab.vectors import VectorBundle

    a, b = (VectorBundle.load(REPO / "vectors" / c / "smollm2.safetensors") for c in DEMO_CONCEPTS)
    for ca, cb in zip(a.controls, b.controls, strict=True):
        cosines = torch.nn.functional.cosine_similarity(ca.directions, cb.directions, dim=-1)  # [30 layers]
        assert cosines.abs().max() < 0.25  # 576 dims: independent directions have cosines ~N(0, 0.04)


def test_steered_greedy_generation_on_smollm2(smollm2):
    from steerlab.backends.base import Request, Sampling
    from steerlab.backends.hf import HFBackend
    from steerlab.generate import as_chat, settings_for
    from steerlab.vectors import VectorBundle

    bundle = VectorBundle.load(
        REPO / "vectors" / "researcher_expectations" / "smollm2.safetensors", smollm2.fingerprint
    )
    zero, strong = settings_for(bundle, [0.0, 0.5], scale="relative")  # 0.5: half the layer's mean |h_t|
    prompt = as_chat("Give me one word that means the opposite of 'noisy'.")
    sampling = Sampling(max_new_tokens=12)
    plain, at_zero, steered = HFBackend(smollm2).generate(
        [Request(prompt, sampling), Request(prompt, sampling, zero), Request(prompt, sampling, strong)]
    )
    assert plain.text and at_zero.text == plain.text
    assert steered.text != plain.text


def test_compiled_decoding_on_smollm2_writes_the_eager_tokens(smollm2):
    """The compiled decode path (static cache, inductor-compiled step, steering in the graph) on the real model:
    greedy and sampled rows, steered at two relative doses and not, the same tokens as the eager path."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from steerlab.backends.base import Request, Sampling
    from steerlab.backends.hf import HFBackend
    from steerlab.generate import load_prompts, settings_for
    from steerlab.vectors import VectorBundle

    bundle = VectorBundle.load(
        REPO / "vectors" / "researcher_expectations" / "smollm2.safetensors", smollm2.fingerprint
    )
    settings = [None, *settings_for(bundle, [0.25, -0.25], scale="relative")]
    prompts = load_prompts(REPO / "configs" / "prompts" / "everyday.txt")[:4]
    requests = [
        Request(p, Sampling(max_new_tokens=16, temperature=0.7 if i % 2 else 0.0, seed=i), s, id=f"{i}-{j}")
        for i, p in enumerate(prompts)
        for j, s in enumerate(settings)
    ]
    counter = CompileCounterWithBackend("inductor")
    compiled = HFBackend(smollm2, batch_size=8, compile=True, compiler=counter)
    got = [(r.id, r.text, r.n_new_tokens) for r in compiled.generate(requests)]  # 12 rows: batches of 8 and 4 (+4)
    want = [(r.id, r.text, r.n_new_tokens) for r in HFBackend(smollm2, batch_size=8).generate(requests)]
    assert got == want and counter.frame_count == 1
    assert len({text for _, text, _ in want}) == len(want)  # the doses and seeds changed the texts
