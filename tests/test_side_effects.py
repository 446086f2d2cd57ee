"""``steerlab side-effects``: known answers on the tiny model and a scripted judge.

- A run made by the real engine (a backend whose text names the row it serves) and judged through the real judge
  path by a scripted judge whose scores are a known function of the steering: every judge change, its interval
  (an independent numpy bootstrap), the envelope, rank and share of the controls below are hand-computed.
- The recoverability read-out of every sample equals an independent computation (transformers'
  ``output_hidden_states``, mean over the generated tokens only, dot with the unit direction), and a concept
  planted in the real arm's text comes out above the controls' envelope.
- A run made by the real ``steerlab sweep`` on the tiny model: multiplier 0 has exactly zero KL and perplexity
  change, and the KL and perplexity of a steered row equal an independent recomputation (own hooks, unpadded).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from test_bad_input import snapshot

from steerlab.analysis.side_effects import envelope, readout_layer
from steerlab.backends.base import Result
from steerlab.clients.cache import ReplyCache
from steerlab.harness.judge import Rubric, judge_run
from steerlab.harness.records import read_samples
from steerlab.testing import ScriptedJudge, block_outputs
from steerlab.vectors import VectorBundle, random_controls

RUBRIC = "configs/judge/rubric.yaml"
REPO = Path(__file__).resolve().parent.parent
PLANT = " Researchers Researchers Researchers"
TEXTS = "The river runs past the old mill.\n\nA recipe needs flour, water and salt.\n\nTrains leave at noon.\n"


def concept_file(root: Path, loaded, concept: str, directions: torch.Tensor, auroc=None, n_controls=3) -> Path:
    """A vector file for the tiny model at ``root/vectors/<concept>/tiny.safetensors`` (siblings find each other)."""
    n = loaded.n_layers
    meta = {"concept": concept, "layers": list(range(n)), "selected_layers": [1, 2], "locus": "span_mean",
            "model": loaded.fingerprint.to_dict(),
            "diagnostics": {"layers": list(range(n)), "per_layer": {"val_auroc": auroc or [0.5] * n}}}  # fmt: skip
    path = root / "vectors" / concept / "tiny.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    return VectorBundle.build(directions, random_controls(directions, n_controls, seed=7), meta).save(path)


def generated_ids(loaded, sample, turn: int = 0) -> tuple[list[int], int]:
    """A sample's tokens as the backend saw them at ``turn``: the chat template's prompt (the earlier turns as
    assistant messages, each followed by a <NEXT/> user turn; the prefill on the first turn), then the turn's text."""
    tok = loaded.tokenizer
    messages = list(sample["messages"])
    for t in sample["turns"][:turn]:
        messages += [{"role": "assistant", "content": t["text"]}, {"role": "user", "content": "<NEXT/>"}]
    prefill = (sample.get("prefill") or "") if turn == 0 else ""
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    new = sample["turns"][turn]["text"][len(prefill) :]
    return p + tok(new, add_special_tokens=False)["input_ids"], len(p)


class RowBackend:
    """Writes a scratchpad naming the generation it serves (``alpha/real|+2|monitored|benign-000|s0``), the real
    vector's positive rows with the planted words; steering is ignored (the text says what was steered). Control 0
    writes its output in a second turn (the protocol's <NEXT/>), so its read-out spans two turns."""

    def generate(self, requests):
        out = []
        for r in requests:
            key, turn = r.id.split("#")
            plant = PLANT if re.match(r"alpha/real\|\+", key) else " the weather is mild"
            text = f"<SCRATCHPAD_REASONING>{key}{plant}</SCRATCHPAD_REASONING>\n<OUTPUT>ok</OUTPUT>"
            if "/control0|" in key:
                text = (
                    f"<SCRATCHPAD_REASONING>{key}{plant}</SCRATCHPAD_REASONING>"
                    if turn == "t0"
                    else "<OUTPUT>ok</OUTPUT>"
                )
            out.append(Result(r.id, text, 5, 12, "eos", 0.0))
        return out


def scripted_scores(trace: str) -> tuple[int, int]:
    """The judge's (A, B) for a trace: unsteered 5, 5; the real vector A = 5 + m + k, B = 5 - m / 2 (k: the
    request's index); control i A = 4 + i, B = 5."""
    key = trace.split(" ")[0]
    steer, rest = (key.split("|", 2)[0], key.split("|", 2)) if not key.startswith("none") else ("none", None)
    if steer == "none":
        return 5, 5
    m, k = float(rest[1]), int(key.split("|")[3].split("-")[-1])
    if steer.endswith("/real"):
        return int(5 + m + k), int(5 - m / 2)
    return 4 + int(steer.split("control")[1]), 5


def scripted_reply(trace: str) -> str:
    a, b = scripted_scores(trace)
    return json.dumps({"A": {"score": a, "justification": "x"}, "B": {"score": b, "justification": "y"}})


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from steerlab.models import load_model

    return load_model(str(tiny_dir), device="cpu")


def planted_direction(loaded, layer: int) -> torch.Tensor:
    """The planted words' mean residual at ``layer`` (all layers: noise elsewhere)."""
    ids = loaded.tokenizer(PLANT, add_special_tokens=False)["input_ids"]
    d = 0.3 * torch.randn(loaded.n_layers, loaded.d_model, generator=torch.Generator().manual_seed(11))
    d[layer] = block_outputs(loaded, ids)[layer].mean(0)
    return d


def make_judged_run(root: Path, loaded, tiny_dir, multipliers=(-2.0, 0.0, 2.0), judge=True) -> Path:
    """A judged alignment-faking run of the alpha vector (3 controls) through the real engine and judge."""
    from steerlab.runs import SweepConfig, run_sweep

    n = loaded.n_layers
    concept_file(root, loaded, "alpha", planted_direction(loaded, 1), auroc=[0.5, 0.9, 0.6, 0.7][:n])
    concept_file(root, loaded, "beta", torch.randn(n, loaded.d_model, generator=torch.Generator().manual_seed(5)))
    rows = [{"id": f"r{i}", "prompt": f"Question {i}: say something."} for i in range(3)]
    (root / "benign.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = SweepConfig(model=str(tiny_dir), vectors=[Path("vectors/alpha/tiny.safetensors")], controls=3,
                      multipliers=list(multipliers), scenario="alignment_faking", prompts="benign.jsonl",
                      prompt_set="benign", max_new_tokens=16, out=Path("run"))  # fmt: skip
    run_dir = run_sweep(cfg, RowBackend(), loaded.fingerprint, progress=False)
    if judge:
        judge_run(
            run_dir,
            ScriptedJudge(scripted_reply),
            Rubric.load(REPO / RUBRIC),
            ReplyCache(root / "judge.sqlite"),
            Path(RUBRIC),
        )
    return run_dir


@pytest.fixture(scope="module")
def judged(tmp_path_factory, loaded, tiny_dir):
    """(root, report record, readouts) of ``steerlab side-effects`` on the judged run, through the CLI."""
    import os

    root = tmp_path_factory.mktemp("judged")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_judged_run(root, loaded, tiny_dir)
        (root / "texts.txt").write_text(TEXTS)
        before = snapshot(root / "run")
        from steerlab.cli import main

        with pytest.raises(SystemExit) as exc:
            main(["side-effects", "run", "--texts", "texts.txt", "--max-tokens", "12", "--device", "cpu",
                  "--n-resamples", "500", "--seed", "3"])  # fmt: skip
        assert exc.value.code in (0, None)
        assert snapshot(root / "run") == before  # reading a run never writes into it
        out = root / "run-side-effects"
        assert sorted(p.name for p in out.iterdir()) == ["readouts.jsonl", "side_effects.json", "side_effects.png"]
        record = json.loads((out / "side_effects.json").read_text())
        readouts = [json.loads(line) for line in (out / "readouts.jsonl").read_text().splitlines()]
    finally:
        os.chdir(cwd)
    return root, record, readouts


def row(record, arm, m):
    return next(r for r in record["rows"] if r["arm"] == arm and r["multiplier"] == m)


def test_judge_changes_are_the_scripted_ones(judged):
    _, record, _ = judged
    assert record["judge"]["judged"] and record["judge"]["concepts"] == {
        "A": "researcher_expectations", "B": "retraining_consequences"}  # fmt: skip
    a, b = "researcher_expectations", "retraining_consequences"
    # unsteered 5, 5; real A = 5 + m + k over requests k = 0, 1, 2 -> change m + 1; B = 5 - m / 2
    want = {("real", 2.0): (3.0, -1.0), ("real", -2.0): (-1.0, 1.0)}
    want.update({(f"control{i}", m): (i - 1.0, 0.0) for i in range(3) for m in (-2.0, 2.0)})
    want.update({(arm, 0.0): (0.0, 0.0) for arm in ("real", "control0", "control1", "control2")})
    for (arm, m), (da, db) in want.items():
        r = row(record, arm, m)
        assert r["judge"][a]["change"] == pytest.approx(da) and r["judge"][b]["change"] == pytest.approx(db), (arm, m)
        assert r["judge"][a]["n_requests"] == 3 and r["n_requests"] == 3
    assert record["baseline"]["judge"] == {a: 5.0, b: 5.0}
    # the interval: an independent percentile bootstrap of the per-request changes [2, 3, 4] (seed 3, 500 draws)
    d = np.array([2.0, 3.0, 4.0])
    idx = np.random.default_rng(3).integers(0, 3, size=(500, 3))
    lo, hi = np.percentile(d[idx].mean(1), [2.5, 97.5])
    r = row(record, "real", 2.0)["judge"][a]
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi))


def test_envelope_rank_and_position_of_the_scripted_judge(judged):
    _, record, _ = judged
    env = {(e["multiplier"], e["statistic"]): e for e in record["envelope"]}
    up = env[(2.0, "judge:researcher_expectations")]
    assert (up["real"], up["controls"], up["control_min"], up["control_max"]) == (3.0, [-1.0, 0.0, 1.0], -1.0, 1.0)
    assert (up["position"], up["rank"], up["share_below"]) == ("above", 1, 1.0)
    assert up["z"] is None and "fewer than 5" in up["z_note"]
    down = env[(-2.0, "judge:researcher_expectations")]  # -1 ties the lowest control
    assert (down["position"], down["rank"], down["share_below"]) == ("inside", 3, pytest.approx(1 / 6))
    b = env[(2.0, "judge:retraining_consequences")]
    assert (b["position"], b["rank"], b["share_below"]) == ("below", 4, 0.0)


def test_envelope_by_hand():
    e = envelope(2.0, [1.0, 3.0, 2.0, -1.0, 0.5])
    assert (e["control_min"], e["control_max"], e["position"], e["rank"]) == (-1.0, 3.0, "inside", 2)
    assert e["share_below"] == pytest.approx(3.5 / 5)
    sd = np.std([1.0, 3.0, 2.0, -1.0, 0.5], ddof=1)
    assert e["z"] == pytest.approx((2.0 - 1.1) / sd)
    assert envelope(9.0, [1.0, 2.0])["position"] == "above" and envelope(-9.0, [1.0])["rank"] == 2
    assert envelope(1.0, [])["position"] == "no controls" and envelope(math.nan, [1.0])["position"] == "no real value"


def test_readout_equals_an_independent_computation_and_the_plant_beats_the_controls(judged, loaded):
    root, record, readouts = judged
    samples = {s["id"]: s for s in read_samples(root / "run")}
    concepts = {c["name"]: c for c in record["concepts"]}
    assert list(concepts) == ["alpha", "beta"]  # the run's vector, then its sibling concept file
    assert (
        concepts["alpha"]["readout_layer"] == 1
        and concepts["alpha"]["layer_rule"] == "best selected layer by val_auroc"
    )
    assert concepts["beta"]["readout_layer"] == 1  # all val_auroc equal: the lower selected layer (of 1, 2)
    units = {}
    for name, c in concepts.items():
        v = VectorBundle.load(root / c["file"]).vector.at(c["readout_layer"])
        units[name] = (c["readout_layer"], v / v.norm())
    mine: dict[str, dict[str, float]] = {}
    seen: dict[tuple, dict[str, float]] = {}  # every arm's multiplier-0 rows share one generation
    n_two_turns = 0
    for r in readouts:
        sample = samples[r["id"]]
        n_two_turns += len(sample["turns"]) == 2
        views = [generated_ids(loaded, sample, t) for t in range(len(sample["turns"]))]
        key = tuple((tuple(ids), n) for ids, n in views)
        if key not in seen:  # every token generated in every turn, each read in the context it was generated in
            sums, count = dict.fromkeys(units, 0.0), 0
            for ids, n_prompt in views:
                states = block_outputs(loaded, ids)
                for n, (lay, u) in units.items():
                    sums[n] += float((states[lay][n_prompt:] @ u).sum())
                count += len(ids) - n_prompt
            seen[key] = ({n: v / count for n, v in sums.items()}, count)
        mine[r["id"]], count = seen[key]
        assert r["n_generated"] == count
        for n in units:
            assert r["readout"][n] == pytest.approx(mine[r["id"]][n], abs=1e-4), (r["id"], n)
    # the change of each row: mean over requests of (group mean - unsteered mean), recomputed with numpy
    base = {}
    for s in samples.values():
        if s["multiplier"] == 0 and s["arm"] == "real":
            base.setdefault(s["item"], []).append(mine[s["id"]])
    for r in record["rows"]:
        for n in units:
            group = {}
            for s in samples.values():
                if (s["arm"], s["multiplier"]) == (r["arm"], r["multiplier"]):
                    group.setdefault(s["item"], []).append(mine[s["id"]][n])
            want = np.mean([np.mean(group[i]) - np.mean([b[n] for b in base[i]]) for i in sorted(group)])
            assert r["readout"][n]["change"] == pytest.approx(want, abs=1e-4)
    assert n_two_turns == 2 * 2 * 3  # control 0 at both non-zero multipliers, both conditions, three requests
    env = {(e["multiplier"], e["statistic"]): e for e in record["envelope"]}
    assert env[(2.0, "readout:alpha")]["position"] == "above"  # the planted words are in the real arm's text only
    assert env[(2.0, "readout:alpha")]["real"] > 0


def test_figure_data_is_the_selectivity_panel(judged):
    _, record, _ = judged
    fig = record["figure"]
    assert fig["readout"]["steered"] == ["alpha"] and fig["readout"]["measured"] == ["alpha", "beta"]
    assert fig["judge"]["measured"] == ["researcher_expectations", "retraining_consequences"]
    cell = fig["judge"]["cells"][0][0]
    assert cell["multipliers"] == [-2.0, 0.0, 2.0] and cell["real"] == pytest.approx([-1.0, 0.0, 3.0])
    assert cell["controls"][2] == pytest.approx([-1.0, 0.0, 1.0])
    assert set(fig["divergence"]["alpha"]) >= {"multipliers", "kl_mean", "kl_mean_controls", "ppl_ratio"}


def steered_reference(loaded, texts, max_tokens, vector, layers, alpha):
    """(mean KL(unsteered || steered), perplexity unsteered, perplexity steered), each text alone, own hooks."""
    tok = loaded.tokenizer
    kls, nll0, nll1, count = [], 0.0, 0.0, 0

    def hook(layer):
        def add(_m, _a, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h + alpha * vector[layer]
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return add

    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"][:max_tokens]])
        with torch.inference_mode():
            logp = loaded.model(ids).logits[0].log_softmax(-1)
            handles = [loaded.blocks[la].register_forward_hook(hook(la)) for la in layers]
            try:
                logq = loaded.model(ids).logits[0].log_softmax(-1)
            finally:
                for h in handles:
                    h.remove()
        kls.append(torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="none").sum(-1))
        target = ids[0, 1:]
        nll0 += float(-logp[:-1].gather(-1, target[:, None]).sum())
        nll1 += float(-logq[:-1].gather(-1, target[:, None]).sum())
        count += len(target)
    return float(torch.cat(kls).mean()), math.exp(nll0 / count), math.exp(nll1 / count)


def test_real_sweep_end_to_end_kl_and_perplexity(tiny_dir, loaded, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    n = loaded.n_layers
    directions = torch.randn(n, loaded.d_model, generator=torch.Generator().manual_seed(2))
    concept_file(tmp_path, loaded, "alpha", directions)
    (tmp_path / "prompts.txt").write_text("Say a number.\nName a colour.\n")
    (tmp_path / "texts.txt").write_text(TEXTS)
    cfg = {"model": str(tiny_dir), "vectors": ["vectors/alpha/tiny.safetensors"], "controls": 2,
           "multipliers": [-3, 0, 3], "prompts": "prompts.txt", "max_new_tokens": 6, "out": "run"}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(["sweep", "--config", "sweep.yaml", "--device", "cpu"], capsys)
    assert code == 0, err
    args = ["side-effects", "run", "--texts", "texts.txt", "--max-tokens", "10", "--batch-size", "4", "--out", "se",
            "--device", "cpu", "--n-resamples", "200"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "no reasoning to judge" in out and "read-out alpha" in out and "KL mean" in out and "ppl ratio" in out
    record = json.loads((tmp_path / "se" / "side_effects.json").read_text())
    assert record["judge"]["judged"] is False and record["texts"]["n_texts"] == 3
    for r in record["rows"]:
        if r["multiplier"] == 0:  # steered by zeros through the same table: exactly the unsteered model
            assert r["kl_mean"] == 0 and r["kl_p95"] == 0 and r["ppl_delta"] == 0 and r["ppl_ratio"] == 1
            assert all(v["change"] == 0 for v in r["readout"].values())
    kl, ppl0, ppl1 = steered_reference(loaded, TEXTS.split("\n\n"), 10, directions, [1, 2], 3.0)
    real = row(record, "real", 3.0)
    assert record["baseline"]["ppl"] == pytest.approx(ppl0, rel=1e-5)
    assert real["kl_mean"] == pytest.approx(kl, rel=1e-4) and real["kl_mean"] > 0
    assert real["ppl"] == pytest.approx(ppl1, rel=1e-4) and real["ppl_delta"] == pytest.approx(ppl1 - ppl0, rel=1e-3)
    controls = [row(record, f"control{i}", 3.0)["kl_mean"] for i in range(2)]
    env = next(e for e in record["envelope"] if e["multiplier"] == 3.0 and e["statistic"] == "kl_mean")
    assert env["controls"] == pytest.approx(controls) and env["control_max"] == pytest.approx(max(controls))
    # a second run into the same --out is refused; --overwrite replaces it, --controls 1 narrows the envelope and
    # --readout-layer reads at the layer given
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "exists and is not empty" in err
    code, _, err = run_cli([*args, "--overwrite", "--controls", "1", "--readout-layer", "3"], capsys)
    assert code == 0, err
    again = json.loads((tmp_path / "se" / "side_effects.json").read_text())
    assert {r["arm"] for r in again["rows"]} == {"real", "control0"}
    assert row(again, "real", 3.0)["kl_mean"] == pytest.approx(real["kl_mean"], rel=1e-6)
    assert [(c["readout_layer"], c["layer_rule"]) for c in again["concepts"]] == [(3, "--readout-layer")]
    sample = next(s for s in read_samples(tmp_path / "run") if s["arm"] == "real" and s["multiplier"] == 3)
    ids, n_prompt = generated_ids(loaded, sample)
    u = directions[3] / directions[3].norm()
    got = next(json.loads(x) for x in (tmp_path / "se" / "readouts.jsonl").read_text().splitlines()
               if json.loads(x)["id"] == sample["id"])  # fmt: skip
    assert got["readout"]["alpha"] == pytest.approx(
        float((block_outputs(loaded, ids)[3][n_prompt:] @ u).mean()), abs=1e-4
    )


def test_default_readout_layer_is_the_best_selected_layer(loaded, tmp_path):
    directions = torch.randn(loaded.n_layers, loaded.d_model, generator=torch.Generator().manual_seed(9))
    path = concept_file(tmp_path, loaded, "gamma", directions, auroc=[0.95, 0.6, 0.7, 0.99])
    assert readout_layer(VectorBundle.load(path)) == (2, "best selected layer by val_auroc")  # of 1, 2 only
    path = concept_file(tmp_path / "b", loaded, "delta", directions, auroc=[0.5, 0.8, 0.8, 0.5])
    assert readout_layer(VectorBundle.load(path)) == (1, "best selected layer by val_auroc")  # ties: the lower


class PlainBackend:
    """Plain text naming the generation it serves; steering is ignored."""

    def generate(self, requests):
        return [Result(r.id, f"Answer for {r.id.split('|')[0]}: fine.", 5, 8, "eos", 0.0) for r in requests]


@pytest.mark.integration
def test_smollm2_shipped_vectors_relative_scale(smollm2, tmp_path, capsys, monkeypatch):
    """The real model and the shipped vectors (relative scale, sibling concept found, default read-out layers)."""
    from steerlab.runs import SweepConfig, run_sweep

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("Name a colour.\n")
    (tmp_path / "texts.txt").write_text(TEXTS)
    vec = REPO / "vectors" / "researcher_expectations" / "smollm2.safetensors"
    cfg = SweepConfig(model="smollm2", vectors=[vec], controls=1, multipliers=[-0.2, 0.0, 0.2], scale="relative",
                      prompts="prompts.txt", out=Path("run"))  # fmt: skip
    run_sweep(cfg, PlainBackend(), smollm2.fingerprint, progress=False)
    code, _, err = run_cli(["side-effects", "run", "--texts", "texts.txt", "--max-tokens", "8", "--device", "cpu",
                            "--n-resamples", "50"], capsys)  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "run-side-effects" / "side_effects.json").read_text())
    names = {c["name"]: c for c in record["concepts"]}
    assert set(names) == {"researcher_expectations", "retraining_consequences"}
    for c in names.values():
        bundle = VectorBundle.load(Path(c["file"]))
        assert c["readout_layer"] in bundle.vector.layers and c["layer_rule"].startswith("best selected layer")
    zero, real = row(record, "real", 0.0), row(record, "real", 0.2)
    assert zero["kl_mean"] == 0 and zero["ppl_ratio"] == 1 and real["kl_mean"] > 0 and real["scale"] == "relative"


def test_a_dose_run_puts_every_arm_at_its_calibrated_kl(tiny, tiny_dir, tmp_path, capsys, monkeypatch):
    """A sweep with a dose file (calibrate-dose on the same texts): at dose d every arm, the real vector and each
    control at its own calibrated multiplier, has KL d on those texts (within the calibration's tolerance), and the
    report records the multiplier each arm was steered by."""
    monkeypatch.chdir(tmp_path)
    readout = tiny.model.lm_head.weight * tiny.model.model.norm.weight  # [vocab, d_model]
    directions = torch.randn(tiny.n_layers, tiny.d_model, generator=torch.Generator().manual_seed(0))
    directions[3] = torch.linalg.svd(readout.detach(), full_matrices=False).Vh[0]  # the direction the head reads most
    directions = 4 * directions / directions.norm(dim=-1, keepdim=True)
    meta = {"concept": "toy", "layers": list(range(tiny.n_layers)), "selected_layers": [3],
            "model": tiny.fingerprint.to_dict()}  # fmt: skip
    VectorBundle.build(directions, random_controls(directions, 2, seed=1), meta).save(tmp_path / "v.safetensors")
    (tmp_path / "texts.txt").write_text(TEXTS)
    code, _, err = run_cli(["calibrate-dose", "v.safetensors", "--texts", "texts.txt", "--model", tiny_dir, "--device",
                            "cpu", "--out", "doses.json", "--max-tokens", 16, "--rtol", 0.002, "--start", 0.3,
                            "--target-kl", 0.01], capsys)  # fmt: skip
    assert code == 0, err
    doses = json.loads((tmp_path / "doses.json").read_text())["doses"]
    (tmp_path / "prompts.txt").write_text("Tell me about the sea.\nName a colour.\n")
    cfg = {"model": str(tiny_dir), "vectors": ["v.safetensors"], "controls": 2, "multipliers": [-0.01, 0.0, 0.01],
           "prompts": "prompts.txt", "max_new_tokens": 5, "doses": "doses.json", "out": "run"}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = run_cli(["sweep", "--config", "sweep.yaml", "--device", "cpu"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["side-effects", "run", "--texts", "texts.txt", "--max-tokens", 16, "--device", "cpu",
                              "--n-resamples", 50], capsys)  # fmt: skip
    assert code == 0, err
    assert re.search(r"┃ +dose ┃", out)  # the table's first column is the dose, not a multiplier
    record = json.loads((tmp_path / "run-side-effects" / "side_effects.json").read_text())
    assert record["settings"]["dose_file"] == "doses.json"
    want = {(d["control"], d["sign"]): d for d in doses}
    for r in record["rows"]:
        if r["multiplier"] == 0:
            assert r["kl_mean"] == 0 and r["dose_kl"] == 0
            continue
        d = want[(r["control"], "+" if r["multiplier"] > 0 else "-")]
        assert r["applied_multiplier"] == d["multiplier"] and r["dose_kl"] == r["multiplier"]
        assert r["kl_mean"] == pytest.approx(d["kl_mean"], rel=1e-4)  # the calibration's own KL at that multiplier
        assert r["kl_mean"] == pytest.approx(0.01, rel=0.003)
    env = next(e for e in record["envelope"] if e["multiplier"] == 0.01 and e["statistic"] == "kl_mean")
    assert env["control_max"] - env["control_min"] < 0.0001  # matched doses: no arm is a bigger push


def test_a_killed_report_resumes_to_the_same_numbers(judged, tmp_path, capsys, monkeypatch):
    """Killed after its first chunk of read-outs, a report leaves only the partial read-outs; the rerun (no
    --overwrite needed) re-encodes only the rest and writes exactly what an uninterrupted report writes."""
    import steerlab.analysis.side_effects_report as report

    root, _, _ = judged
    monkeypatch.chdir(root)
    monkeypatch.setattr(report, "READOUT_CHUNK", 8)
    args = ["side-effects", "run", "--texts", "texts.txt", "--max-tokens", "12", "--device", "cpu",
            "--n-resamples", "500", "--seed", "3"]  # fmt: skip
    code, _, err = run_cli([*args, "--out", tmp_path / "clean"], capsys)
    assert code == 0, err
    real, encoded = report.readouts, []

    def dies_on_the_second_chunk(loaded, samples, *a, **kw):
        if encoded:
            raise KeyboardInterrupt
        encoded.extend(samples)
        return real(loaded, samples, *a, **kw)

    monkeypatch.setattr(report, "readouts", dies_on_the_second_chunk)
    code, _, _ = run_cli([*args, "--out", tmp_path / "killed"], capsys)  # Ctrl-C: typer exits non-zero
    assert code not in (0, 2)
    assert [p.name for p in (tmp_path / "killed").iterdir()] == ["readouts.partial.jsonl"]
    assert len((tmp_path / "killed" / "readouts.partial.jsonl").read_text().splitlines()) == 8

    def counts(loaded, samples, *a, **kw):
        encoded.extend(samples)
        return real(loaded, samples, *a, **kw)

    encoded.clear()
    monkeypatch.setattr(report, "readouts", counts)
    code, _, err = run_cli([*args, "--out", tmp_path / "killed"], capsys)
    assert code == 0, err
    n_distinct = len({json.dumps([s["messages"], s["turns"]]) for s in read_samples(root / "run")})
    assert len(encoded) == n_distinct - 8  # the first chunk was read back, not re-encoded
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["readouts.jsonl", "side_effects.json",
                                                                        "side_effects.png"]  # fmt: skip
    for name in ("readouts.jsonl", "side_effects.json"):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "clean" / name).read_text().replace(
            str(tmp_path / "clean"), str(tmp_path / "killed")
        )
