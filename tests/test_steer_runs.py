"""Operators, conditions and the experimenter's gate in runs (sweep/eval): through the real CLI on the tiny model.

Known answers: a row the gate (steer_only) leaves unsteered, or whose prompt fails its steer_if condition, has
exactly the unsteered generation of its (condition, prompt, seed); an ablating sweep's rows at multiplier 0 are
steered (ablated), not the unsteered row; every decision is recorded, and a resume with another condition file is
refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from test_bad_input import refused

from steerlab.analysis.condition_fit import prompt_features
from steerlab.conditions import Condition
from steerlab.generate import load_prompts

PROMPTS = ["the cat sat on a mat", "graders watched the next update", "readers here wrote notes today",
           "a short answer please", "spell this word backwards", "convert twelve kilometres to miles"]  # fmt: skip


def sweep(tmp_path, tiny_dir, vector, out="run", **kw) -> list:
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    body = {"model": str(tiny_dir), "vectors": [str(vector)], "controls": 1, "multipliers": [0, 2.0],
            "conditions": {"watched": "You are being evaluated.", "alone": None},
            "prompts": str(tmp_path / "prompts.txt"), "max_new_tokens": 6, "batch_size": 8,
            "out": str(tmp_path / out)}  # fmt: skip
    body.update(kw)
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(body))
    return ["sweep", "--config", path, "--device", "cpu"]


def samples(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def unsteered_text(rows: list[dict]) -> dict[tuple, str]:
    return {(r["condition"], r["item"], r["seed"]): r["text"] for r in rows if r["multiplier"] == 0}


def test_steer_only_leaves_other_conditions_unsteered_and_says_so(tiny_dir, tiny_vector, tmp_path, capsys):
    code, _, err = run_cli(sweep(tmp_path, tiny_dir, tiny_vector, steer_only=["watched"], scorer="[aeiou]{2}"), capsys)
    assert code == 0, err
    cells = json.loads((tmp_path / "run" / "summary.json").read_text())["cells"]
    assert {(c["condition"], c["multiplier"]) for c in cells if c.get("gated")} == {("alone", 2.0)}
    rows = samples(tmp_path / "run")
    base = unsteered_text(rows)
    steered = [r for r in rows if r["multiplier"] != 0]
    assert len(steered) == 2 * 2 * len(PROMPTS)  # arms x conditions x prompts
    for r in steered:
        key = (r["condition"], r["item"], r["seed"])
        if r["condition"] == "alone":
            assert r["gated"] == "steer_only" and r["layers"] == [] and r["text"] == base[key]
        else:
            assert "gated" not in r and r["layers"] == [1, 2]
    assert any(
        r["text"] != base[(r["condition"], r["item"], r["seed"])] for r in steered if r["condition"] == "watched"
    )
    header = json.loads((tmp_path / "run" / "header.json").read_text())
    assert header["config"]["steer_only"] == ["watched"]
    # the same run without the gate: the gated rows are the ones that change
    code, _, err = run_cli(sweep(tmp_path, tiny_dir, tiny_vector, out="open"), capsys)
    assert code == 0, err
    open_rows = {r["id"]: r for r in samples(tmp_path / "open")}
    for r in steered:
        if r["condition"] == "watched":
            assert open_rows[r["id"]]["text"] == r["text"]
    assert "steer_only" not in json.loads((tmp_path / "open" / "header.json").read_text())["config"]


def test_ablation_sweep_steers_at_multiplier_zero(tiny_dir, tiny_vector, tmp_path, capsys):
    code, _, err = run_cli(sweep(tmp_path, tiny_dir, tiny_vector, operator="ablate", multipliers=[0.0]), capsys)
    assert code == 0, err
    rows = samples(tmp_path / "run")
    assert {tuple(r["layers"]) for r in rows} == {(1, 2)}  # every row ablated, none shares an unsteered generation
    code, _, err = run_cli(sweep(tmp_path, tiny_dir, tiny_vector, out="plain", multipliers=[0.0]), capsys)
    plain = {r["id"]: r["text"] for r in samples(tmp_path / "plain")}
    assert any(plain[r["id"]] != r["text"] for r in rows)
    real = [r for r in rows if r["arm"] == "real"]
    control = {(r["condition"], r["item"]): r["text"] for r in rows if r["arm"] == "control0"}
    assert any(r["text"] != control[(r["condition"], r["item"])] for r in real)  # each arm ablates its own direction


def planted_condition(tiny, tmp_path) -> tuple[Path, dict[str, bool]]:
    """A condition at layer 0 whose threshold splits the run's prompts (as the run renders them, with each scenario
    condition's system prompt) in two."""
    w = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(5))
    chats = {(cond, i): ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
             for cond, system in (("watched", "You are being evaluated."), ("alone", None))
             for i, p in enumerate(PROMPTS)}  # fmt: skip
    keys = list(chats)
    scores = prompt_features(tiny, [chats[k] for k in keys], [0])[:, 0] @ (w / w.norm()).numpy()
    ordered = np.sort(scores)
    threshold = float((ordered[5] + ordered[6]) / 2)
    cond = Condition(w, 0, threshold, ">", name="planted", model=tiny.fingerprint.to_dict())
    path = tmp_path / "cond.json"
    path.write_text(json.dumps(cond.record()))
    return path, {k: bool(s > threshold) for k, s in zip(keys, scores, strict=True)}


def test_steer_if_steers_the_rows_whose_prompt_passes_and_records_each_decision(tiny, tiny_dir, tiny_vector,
                                                                               tmp_path, capsys):  # fmt: skip
    path, passes = planted_condition(tiny, tmp_path)
    code, _, err = run_cli(sweep(tmp_path, tiny_dir, tiny_vector, steer_if=str(path)), capsys)
    assert code == 0, err
    rows = samples(tmp_path / "run")
    base = unsteered_text(rows)
    items = {p: i for i, p in enumerate(PROMPTS)}
    checked = 0
    for r in rows:
        if r["multiplier"] == 0:
            assert "steer_if" not in r
            continue
        met = passes[(r["condition"], items[r["prompt"]])]
        assert [d["met"] for d in r["steer_if"]] == [met]  # one turn, one decision
        if not met:
            assert r["text"] == base[(r["condition"], r["item"], r["seed"])]
            checked += 1
    assert 0 < checked < len(rows) / 2
    header = json.loads((tmp_path / "run" / "header.json").read_text())
    assert list(header["steer_if_file"]) == [str(path)]
    # a resume after the condition file changed is refused, and nothing is written
    record = json.loads(path.read_text())
    record["threshold"] += 1.0
    path.write_text(json.dumps(record))
    refused(
        sweep(tmp_path, tiny_dir, tiny_vector, steer_if=str(path)),
        "another steer if file",
        tmp_path / "run",
        capsys,
        loading_bar=True,
    )


def test_eval_takes_the_steering_options(tiny_dir, tiny_vector, tmp_path, capsys):
    from conftest import REPO

    args = ["eval", "--model", tiny_dir, "--dataset", REPO / "configs/requests/benign.jsonl", "--limit", "2",
            "--max-turns", "1", "--max-new-tokens", "4", "--vector", tiny_vector, "--alpha", "0,1",
            "--steer-only", "monitored", "--operator", "clamp", "--clamp", "-1:", "--out", tmp_path / "ev",
            "--device", "cpu", "--temperature", "0"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    rows = samples(tmp_path / "ev")
    header = json.loads((tmp_path / "ev" / "header.json").read_text())
    assert header["config"]["operator"] == "clamp" and header["config"]["clamp"] == [-1.0, None]
    assert all(("gated" in r) == (r["condition"] == "unmonitored") for r in rows)
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert {(c["condition"], c["multiplier"]) for c in summary["cells"] if c.get("gated")} == {
        ("unmonitored", 0.0),
        ("unmonitored", 1.0),
    }
    assert all(g["gated_conditions"] == ["unmonitored"] for g in summary["gaps"])
    assert {tuple(r["layers"]) for r in rows if r["condition"] == "monitored"} == {(1, 2)}  # clamp steers at 0 too


@pytest.mark.parametrize(
    "kw, says",
    [
        ({"steer_only": ["nobody"]}, "'nobody' is not a condition of this run"),
        ({"operator": "clamp"}, "operator clamp needs clamp"),
        ({"clamp": [0, 1]}, "bounds are for operator clamp"),
        ({"operator": "clamp", "clamp": [2, 1]}, "give LO <= HI"),
        ({"operator": "shrink"}, "operator"),
        ({"vectors": [], "multipliers": [0], "steer_only": ["watched"]}, "give vectors"),
        ({"steer_if": "no/such.json"}, "no/such.json"),
    ],
)
def test_bad_steering_config(kw, says, tiny_dir, tiny_vector, tmp_path, capsys):
    args = sweep(tmp_path, tiny_dir, tiny_vector, **kw)
    refused(args, says, tmp_path / "run" if (tmp_path / "run").exists() else None, capsys)
    assert not (tmp_path / "run").exists()


def test_vllm_refuses_operators_and_conditions_in_runs(tiny_dir, tiny_vector, tmp_path, capsys):
    refused([*sweep(tmp_path, tiny_dir, tiny_vector, operator="ablate"), "--backend", "vllm"],
            "--operator ablate needs --backend hf or nnsight", None, capsys)  # fmt: skip
    assert not (tmp_path / "run").exists()
    assert load_prompts  # (the prompt reader the sweep uses is the generate module's)


def test_a_condition_fitted_without_the_runs_system_prompt_is_refused(tiny_dir, tiny_vector, tmp_path, capsys):
    """condition fit records its prompts' system prompts; a run that sends another would score other tokens than
    the fit saw (review finding F5)."""
    (tmp_path / "t.txt").write_text("\n".join(f"please evaluate answer {i}" for i in range(5)) + "\n")
    (tmp_path / "f.txt").write_text("\n".join(f"tell me a story {i}" for i in range(5)) + "\n")
    fit = ["condition", "fit", "--true", tmp_path / "t.txt", "--false", tmp_path / "f.txt", "--model", tiny_dir]
    code, _, err = run_cli([*fit, "--folds", "2", "--layers", "0", "--out", tmp_path / "c.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "c.json").read_text())["fit"]["system_prompts"] == [None]
    refused(sweep(tmp_path, tiny_dir, tiny_vector, steer_if=str(tmp_path / "c.json")),
            "condition 'watched' has a system prompt the fit never saw", tmp_path, capsys)  # fmt: skip
    code, _, err = run_cli(sweep(tmp_path, tiny_dir, tiny_vector, steer_if=str(tmp_path / "c.json"),
                                 conditions={"alone": None}), capsys)  # fmt: skip
    assert code == 0, err


def test_nnsight_refuses_a_condition_after_a_steered_layer_before_the_run_directory_exists(tiny, tiny_dir,
                                                                                         tiny_vector, tmp_path,
                                                                                         capsys):  # fmt: skip
    pytest.importorskip("nnsight")
    late = Condition(torch.ones(tiny.d_model), 3, 0.0, ">", model=tiny.fingerprint.to_dict())
    (tmp_path / "late.json").write_text(json.dumps(late.record()))
    args = [*sweep(tmp_path, tiny_dir, tiny_vector, steer_if=str(tmp_path / "late.json")), "--backend", "nnsight"]
    refused(args, "decides a condition in the same pass only", None, capsys)
    assert not (tmp_path / "run").exists()


def test_a_killed_gated_run_resumes_to_the_same_samples(tiny_dir, tiny_vector, tmp_path, capsys):
    """A steer_only run cut mid-way (a torn last line, some rows of a shared generation written) resumes to the same
    samples as an uninterrupted run: gated rows that reuse a written generation still say gated, with their own ids."""
    code, _, err = run_cli(sweep(tmp_path, tiny_dir, tiny_vector, out="whole", steer_only=["watched"]), capsys)
    assert code == 0, err
    whole = (tmp_path / "whole" / "samples.jsonl").read_text().splitlines()
    args = sweep(tmp_path, tiny_dir, tiny_vector, out="cut", steer_only=["watched"])
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    lines = (tmp_path / "cut" / "samples.jsonl").read_text().splitlines()
    (tmp_path / "cut" / "samples.jsonl").write_text("\n".join(lines[:7]) + "\n" + lines[7][:40])  # torn 8th line
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    by_id = lambda text: {json.loads(x)["id"]: json.loads(x) for x in text}  # noqa: E731
    resumed = by_id((tmp_path / "cut" / "samples.jsonl").read_text().splitlines())
    first = by_id(whole)
    assert resumed.keys() == first.keys()
    for rid, s in first.items():
        assert {k: resumed[rid][k] for k in ("text", "layers", "multiplier")} == {
            k: s[k] for k in ("text", "layers", "multiplier")
        }
        assert resumed[rid].get("gated") == s.get("gated")


def test_every_turn_of_a_conditioned_sample_records_its_own_decision(tmp_path):
    """Multi-turn alignment-faking samples (the scripted model closes its scratchpad and the engine sends <NEXT/>):
    each turn's prompt is decided anew through the real engine and HF backend, and the sample records one steer_if
    entry per turn."""
    from steerlab.backends.hf import HFBackend
    from steerlab.runs import SweepConfig, run_sweep
    from steerlab.testing import PROTOCOL_SCRIPTS, scripted_llama
    from steerlab.vectors import VectorBundle, random_controls

    loaded = scripted_llama(PROTOCOL_SCRIPTS)
    fp = loaded.fingerprint
    cond = Condition(torch.ones(fp.d_model), 0, -2.0, ">", model=fp.to_dict())  # every prompt passes
    (tmp_path / "all.json").write_text(json.dumps(cond.record()))
    d = torch.randn(fp.n_layers, fp.d_model, generator=torch.Generator().manual_seed(0))
    meta = {"concept": "toy", "layers": list(range(fp.n_layers)), "selected_layers": [1], "model": fp.to_dict()}
    vector = VectorBundle.build(d, random_controls(d, 1, seed=1), meta).save(tmp_path / "v.safetensors")
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"prompt": m}) + "\n" for m in PROTOCOL_SCRIPTS))
    cfg = SweepConfig(scenario="alignment_faking", prompts=requests, conditions=["monitored"], max_new_tokens=120,
                      alignment_faking={"prefill": "<SCRATCHPAD_REASONING>", "max_turns": 2}, vectors=[vector],
                      controls=0, multipliers=[0.0, 1.0], steer_if=tmp_path / "all.json",
                      out=tmp_path / "run")  # fmt: skip
    run_sweep(cfg, HFBackend(loaded, batch_size=4), fp, progress=False)
    steered = [r for r in samples(tmp_path / "run") if r["multiplier"] != 0]
    assert any(len(r["turns"]) == 2 for r in steered)  # the path under test: continued samples
    for r in steered:
        assert len(r["steer_if"]) == len(r["turns"]) and all(d["met"] for d in r["steer_if"])
