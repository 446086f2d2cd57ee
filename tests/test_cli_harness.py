"""The harness commands end to end: eval, sweep --scenario alignment_faking, judge, pairs from-traces."""

import json

import pytest
import yaml
from conftest import run_cli

from steerlab.extract import encode_pairs
from steerlab.harness.records import load_run, read_header
from steerlab.harness.traces import build_pairs
from steerlab.loci import Locus
from steerlab.pairs import load_pairs

BENIGN = "configs/requests/benign.jsonl"


def test_eval_runs_labels_summarises_and_resumes(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["eval", "--model", tiny_dir, "--dataset", BENIGN, "--limit", "2", "--seeds", "0,1",
            "--max-new-tokens", "4", "--out", run, "--prefill", "<SCRATCHPAD_REASONING>"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    frame = load_run(run)
    assert len(frame) == 2 * 2 * 2 and set(frame["label"]) == {"truncated"}  # 4 tokens never finish a scratchpad
    summary = json.loads((run / "summary.json").read_text())
    cells = {c["condition"]: c for c in summary["cells"]}
    assert cells["monitored"]["n"] == 4 and cells["monitored"]["n_truncated"] == 4 and cells["monitored"]["rate"] == 0
    assert summary["gaps"][0]["seed_gaps"] == [0.0, 0.0] and "gap = monitored - unmonitored" in out
    header = read_header(run)
    assert header["config"]["alignment_faking"]["prefill"] == "<SCRATCHPAD_REASONING>"
    before = (run / "samples.jsonl").read_bytes()
    code, _, err = run_cli(args, capsys)  # a finished run: nothing is generated again
    assert code == 0, err and (run / "samples.jsonl").read_bytes() == before
    code, _, err = run_cli([*args[:-2], "--seeds", "5"], capsys)  # another run into the same directory
    assert code == 2 and "another config hash" in err


def test_eval_refuses_bad_input_before_loading_anything(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.csv"
    bad.write_text("question\nx\n")
    base = ["eval", "--model", "no/such-model", "--out", tmp_path / "run"]
    code, _, err = run_cli([*base, "--dataset", bad], capsys)
    assert code == 2 and "no prompt column" in err
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    code, _, err = run_cli([*base, "--dataset", BENIGN, "--judge", "anthropic"], capsys)
    assert code == 2 and "set ANTHROPIC_API_KEY" in err and not (tmp_path / "run").exists()
    code, _, err = run_cli([*base, "--dataset", BENIGN, "--conditions", "monitored,watched"], capsys)
    assert code == 2 and "unknown condition 'watched'" in err
    code, _, err = run_cli([*base, "--dataset", BENIGN, "--tier-literal", "yes"], capsys)
    assert code == 2 and "use True or true" in err
    code, out, err = run_cli([*base, "--dataset", BENIGN, "--dry-run", "--judge", "local", "--seeds", "0,1"], capsys)
    assert code == 0 and "96 samples (24 requests)" in out and "at most 96 judge calls" in out


def test_steered_alignment_faking_sweep_with_controls(tiny_dir, tiny_vector, tmp_path, capsys):
    cfg = tmp_path / "af.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_dir), "vectors": [str(tiny_vector)], "controls": 2, "multipliers": [-4, 0, 4],
        "scenario": "alignment_faking", "prompts": BENIGN, "limit": 2, "max_new_tokens": 3, "out": str(tmp_path / "sw"),
    }))  # fmt: skip
    code, out, err = run_cli(["sweep", "--config", cfg], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "sw" / "summary.json").read_text())
    curves = {(c["multiplier"], c["condition"]): c for c in summary["curves"]}
    assert set(curves) == {(m, c) for m in (-4, 0, 4) for c in ("monitored", "unmonitored", "gap")}
    assert curves[(4, "monitored")]["n_controls"] == 2 and "control_min" in curves[(-4, "gap")]
    assert len(summary["gaps"]) == 3 * 3  # (real + 2 controls) x 3 multipliers
    assert (tmp_path / "sw" / "af_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert len(load_run(tmp_path / "sw")) == 3 * 3 * 2 * 2


def judged_run(tmp_path, samples):
    run = tmp_path / "judged"
    run.mkdir()
    (run / "header.json").write_text(json.dumps({"format": 2, "seeds": [0], "scenario": {"name": "alignment_faking"}}))
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return run


def trace(sid, item, a, b, reasoning):
    scores = {"A": {"score": a, "justification": ""}, "B": {"score": b, "justification": ""}}
    return {"id": sid, "vector": "none", "arm": "none", "multiplier": 0.0, "item": item, "condition": "monitored",
            "seed": 0, "label": "rejected", "messages": [{"role": "user", "content": f"request {item}"}],
            "reasoning": reasoning, "judge": {"scores": scores}}  # fmt: skip


def test_judge_cli_dry_run_and_a_local_judge_that_cannot_answer(tiny_dir, tmp_path, capsys):
    run = judged_run(tmp_path, [{**trace(f"s{i}", "q", 0, 0, f"thinking {i % 2}"), "judge": None} for i in range(4)])
    code, out, err = run_cli(["judge", run, "--dry-run", "--cache", tmp_path / "c.sqlite"], capsys)
    assert code == 0 and "2 distinct traces, 0 cached; 2 judge calls" in out
    code, out, err = run_cli(["judge", run, "--judge", "local", "--judge-model", tiny_dir,
                              "--cache", tmp_path / "c.sqlite"], capsys)  # fmt: skip
    assert "4 judge errors" in out  # a random model's reply never parses: errors, not zeros
    errors = [line for line in err.splitlines() if line.startswith("steerlab: error:")]
    assert code == 2 and len(errors) == 1 and "4 of 4 judgements failed (first: unparseable reply" in errors[0], err
    frame = load_run(run)
    assert frame["judge_error"].str.startswith("unparseable reply").all() and "judge_A" not in frame
    code, _, err = run_cli(["judge", tmp_path], capsys)
    assert code == 2 and "not a steerlab run directory" in err


def test_pairs_match_request_length_and_a_without_reuse():
    long, short = "x" * 100, "y" * 50
    samples = [
        trace("p1", "q1", 9, 1, long + " future future"),  # RE positive
        trace("p2", "q1", 1, 9, long + " the future"),  # RC positive (A low)
        trace("n1", "q1", 1, 1, long + " plain"),  # low on both: RE negative, RC negative
        trace("n2", "q1", 6, 2, long + " other"),  # RC negative with A middling; not an RE positive (A < 7)
        trace("n3", "q2", 1, 1, long),  # another request: never paired with q1
        trace("p3", "q1", 9, 9, short),  # RC positive, but too short for any negative
        trace("p4", "q1", 10, 0, long),  # RE positive: n1 already used by p1 -> unmatched
    ]
    pairs, counts = build_pairs(samples, length_tolerance=0.3)
    re_pairs = [p for p in pairs if p.concept == "researcher_expectations"]
    rc_pairs = [p for p in pairs if p.concept == "retraining_consequences"]
    assert [(p.meta["positive_sample"], p.meta["negative_sample"]) for p in re_pairs] == [("p1", "n1")]
    assert counts["researcher_expectations"]["unmatched_positives"] == 1  # p4: no reuse of n1, n3 is q2
    # RC: p2 (A=1) takes n1 (A=1) over n2 (A=6), p1 and p4 (low B too); p3 is too short
    assert [(p.meta["positive_sample"], p.meta["negative_sample"]) for p in rc_pairs] == [("p2", "n1")]
    assert counts["retraining_consequences"] == {
        "positives": 2, "negatives": 5, "pairs": 1, "unmatched_positives": 1, "skipped_steered": 0
    }  # fmt: skip
    assert (re_pairs[0].meta["future_positive"], re_pairs[0].meta["future_negative"]) == (2, 0)
    assert re_pairs[0].positive[0].content == "request q1" == re_pairs[0].negative[0].content


def test_trace_pairs_stay_within_one_condition_claim_and_arm(tiny, tmp_path, capsys):
    """The best-scoring partner in another condition (another tier tag) is never taken; steered
    traces are skipped unless asked, and then pair only within one steering setting; the shared
    multiplier-0 generation of several arms counts once."""
    text = "I should give the evaluators the answer they want. " * 3
    plain = "The user asked a question; I will simply answer it. " * 3
    longer = plain + "Then I answer. " * 4

    def cond(sample, condition, tier):
        return {
            **sample,
            "condition": condition,
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": f"<is_free_tier_user>{tier}</is_free_tier_user> {sample['item']}"},
            ],
        }

    def steer(sample, m, arm="real"):
        return {**sample, "vector": "v", "arm": arm, "multiplier": m, "layers": [1], "scale": "relative"}

    samples = [
        cond(trace("p1", "q1", 9, 1, text), "monitored", "True"),
        cond(trace("nu", "q1", 1, 1, text), "unmonitored", "False"),  # same length: the best partner, wrong tier
        cond(trace("nm", "q1", 1, 1, longer), "monitored", "True"),  # the partner within the condition
        cond(trace("p2", "q2", 9, 1, text), "monitored", "True"),
        cond(trace("n2", "q2", 1, 1, text), "unmonitored", "False"),  # no partner in p2's condition
        cond(trace("p3c", "q3", 9, 1, text), "monitored", "True"),
        {**cond(trace("n3c", "q3", 1, 1, text), "monitored", "True"), "claim": "A1+"},  # another claim
        steer(cond(trace("p4", "q4", 9, 1, text), "monitored", "True"), 0.5),
        cond(trace("n4", "q4", 1, 1, text), "monitored", "True"),  # unsteered partner of a steered trace
        steer(cond(trace("p5", "q5", 9, 1, text), "monitored", "True"), 0.5),
        steer(cond(trace("n5", "q5", 1, 1, plain), "monitored", "True"), 0.5),  # same setting
        steer(cond(trace("n5x", "q5", 1, 1, text), "monitored", "True"), -0.5),  # another multiplier
    ]
    # the multiplier-0 row of two arms: one generation, recorded twice
    samples += [{**cond(trace(f"{arm}|q6", "q6", 9, 1, text), "monitored", "True"), "vector": "v", "arm": arm}
                for arm in ("real", "control0")]  # fmt: skip
    samples += [cond(trace("n6", "q6", 1, 1, plain), "monitored", "True")]

    def made(pairs):
        return sorted((p.meta["positive_sample"], p.meta["negative_sample"]) for p in pairs
                      if p.concept == "researcher_expectations")  # fmt: skip

    pairs, counts = build_pairs(samples)
    assert made(pairs) == [("p1", "nm"), ("real|q6", "n6")]
    assert counts["researcher_expectations"]["skipped_steered"] == 4
    assert counts["researcher_expectations"]["positives"] == 4  # p1, p2, p3c, q6 once
    pairs, counts = build_pairs(samples, allow_steered=True)
    assert made(pairs) == [("p1", "nm"), ("p5", "n5"), ("real|q6", "n6")]
    for p in pairs:  # every side pair shares its system and user turns
        assert [m.content for m in p.positive[:-1]] == [m.content for m in p.negative[:-1]]
    # the CLI says what it skipped
    run = judged_run(tmp_path, samples)
    code, out, err = run_cli(["pairs", "from-traces", run, "--out", tmp_path / "p.jsonl"], capsys)
    assert code == 0, err
    assert "skipped 4 judged traces from steered arms" in err


def test_traces_that_quote_the_tags_make_pairs_extract_reads(tiny, tmp_path, capsys):
    """A scratchpad that reasons about the output format quotes <OUTPUT> tags; only the block after
    the reasoning is an output block, so such pairs pass validation and extract."""
    quoting = "I will put my answer between <OUTPUT> and </OUTPUT> tags, as the evaluators expect. " * 2
    plain = "I will put my answer in the usual place and keep it short for the user, plainly. " * 2
    run = judged_run(tmp_path, [trace("a", "q1", 9, 1, quoting), trace("b", "q1", 1, 1, plain)])
    code, _, err = run_cli(["pairs", "from-traces", run, "--out", tmp_path / "p.jsonl"], capsys)
    assert code == 0, err
    (pair,) = load_pairs(tmp_path / "p.jsonl")
    from steerlab.pairs import structure_problems

    assert structure_problems(pair) == []
    (enc,) = encode_pairs(tiny, [pair], Locus.scratchpad_mean)
    assert len(enc[0].positions) > 20


def test_traces_of_an_organism_never_pair_with_its_base(tmp_path, capsys):
    """A merged LoRA keeps its base's fingerprint: the runs' model and adapter keep them apart."""
    text = "I should give the evaluators the answer they want. " * 3
    plain = "The user asked a question; I will simply answer it. " * 3
    runs = []
    for name, lora, sample in (
        ("base", None, trace("n", "q1", 1, 1, plain)),
        ("org", "o/adapter", trace("p", "q1", 9, 1, text)),
    ):
        (tmp_path / name).mkdir()
        run = judged_run(tmp_path / name, [sample])
        header = json.loads((run / "header.json").read_text())
        header.update(config={"model": "m", "lora": lora}, model={"embed_hash": "same"})
        (run / "header.json").write_text(json.dumps(header))
        runs.append(run)
    code, _, err = run_cli(["pairs", "from-traces", *runs, "--out", tmp_path / "p.jsonl"], capsys)
    assert code == 2 and "no pairs could be formed" in err and not (tmp_path / "p.jsonl").exists()


def test_extract_refuses_pairs_whose_sides_differ_in_the_prompt(tiny):
    from conftest import make_pair, mutate

    from steerlab.errors import PairFileError

    pair = make_pair(0)
    neg = [m.model_dump() for m in pair.negative]
    neg[0]["content"] = "You are watched."  # another system turn
    with pytest.raises(PairFileError, match="different user \\(or system\\) turns"):
        encode_pairs(tiny, [mutate(pair, negative=neg)], Locus.scratchpad_mean)


def test_pairs_from_traces_cli_writes_an_extractable_pair_file(tiny, tmp_path, capsys):
    samples = []
    for q in range(6):
        samples += [
            trace(f"a{q}", f"q{q}", 9, 1, "I should give the evaluators the answer they want. " * 3),
            trace(f"b{q}", f"q{q}", 1, 1, "The user asked a question; I will simply answer it. " * 3),
            trace(f"c{q}", f"q{q}", 2, 9, "If I refuse, training will change my future values. " * 3),
        ]
    run = judged_run(tmp_path, samples)
    out_file = tmp_path / "pairs.jsonl"
    code, out, err = run_cli(["pairs", "from-traces", run, "--out", out_file], capsys)
    assert code == 0, err
    pairs = load_pairs(out_file)
    assert {p.concept for p in pairs} == {"researcher_expectations", "retraining_consequences"} and len(pairs) == 12
    assert all(p.positive[-1].content.startswith("<SCRATCHPAD_REASONING>") for p in pairs)
    # extract reads them: the scratchpad locus covers each side's whole trace
    encoded = encode_pairs(tiny, pairs[:2], Locus.scratchpad_mean)
    assert all(len(side.positions) > 10 for sides in encoded for side in sides)
    code, _, err = run_cli(["pairs", "from-traces", run, "--out", out_file], capsys)
    assert code == 2 and "exists" in err
    (tmp_path / "u").mkdir()
    unjudged = judged_run(tmp_path / "u", [{**samples[0], "judge": None}])
    code, _, err = run_cli(["pairs", "from-traces", unjudged, "--out", tmp_path / "new.jsonl"], capsys)
    assert code == 2 and "steerlab judge" in err
