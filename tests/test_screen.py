"""``steerlab screen``: truesight screening of a data set with vector files, through the real CLI.

Known answers: documents planted with a token whose activation *is* the vector's direction rank at the top and
are flagged (and the vector's random controls do not single them out); one document's score, z and percentile
recomputed independently from transformers' ``output_hidden_states`` and numpy; an interrupted screen resumed
holds the same bytes as an uninterrupted one; the same text read as JSONL, a messages transcript or a plain text
paragraph scores the same; the HTML escapes the documents; the judge is asked about the flagged documents only.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO, run_cli

from steerlab.testing import block_outputs
from steerlab.vectors import VectorBundle, control_seeds, controls_from_seeds, random_controls

MARKER, REPEAT = " evaluators", 5  # the planted documents repeat it; the vector is its tokens' direction
N_BASE, N_PLANTED = 20, 4
IDENTITY = {"concept": "planted", "why": "test"}


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from steerlab.models import load_model

    return load_model(str(tiny_dir), device="cpu")


def hidden(loaded, text: str) -> tuple[list[int], list[torch.Tensor]]:
    """(ids fed: BOS + text, per layer the block outputs ``[seq, d_model]``) from transformers' own
    ``output_hidden_states`` (:func:`steerlab.testing.block_outputs`)."""
    ids = [loaded.tokenizer.bos_token_id, *loaded.tokenizer(text, add_special_tokens=False)["input_ids"]]
    return ids, block_outputs(loaded, ids)


def documents() -> list[dict]:
    """Two templates, alternating; four documents (two of each) carry the marker five times, nothing else."""

    def text(i: int, extra: str = "") -> str:
        if i % 2:
            return f"Convert {i} kilometres to miles{extra} and sort these words <script>alert({i})</script>."
        return f"The user asks for a short answer{extra} about {i} replies <script>alert({i})</script>."

    docs = [{"id": f"base{i}", "text": text(i)} for i in range(N_BASE)]
    for j in range(N_PLANTED):  # spread through the file
        docs.insert(3 + 5 * j, {"id": f"planted{j}", "text": text(100 + j, MARKER * REPEAT)})
    return docs


def planted_vector(loaded, path, docs, n_controls=2, seed_rule=True):
    """A vector whose direction at each layer is the mean activation of the marker's tokens (the marker repeated,
    alone, outside the data) minus the mean activation of six base documents' tokens (a difference of means,
    as a fitted vector is); selected layers 1 and 2. ``seed_rule``: the file records its controls' seed rule,
    so more can be drawn."""
    _, marker = hidden(loaded, MARKER * REPEAT)
    base = [hidden(loaded, d["text"])[1] for d in docs if d["id"].startswith("base")][:6]
    directions = torch.stack([marker[layer][1:].mean(0) - torch.cat([b[layer][1:] for b in base]).mean(0)
                              for layer in range(loaded.n_layers)])  # fmt: skip
    meta = {"concept": "planted", "layers": list(range(loaded.n_layers)), "selected_layers": [1, 2],
            "model": loaded.fingerprint.to_dict(), "model_source": str(loaded.source)}  # fmt: skip
    if seed_rule:
        seeds = control_seeds(7, IDENTITY, n_controls)
        meta["controls"] = {"run_seed": 7, "identity": IDENTITY, "seeds": seeds}
        controls = controls_from_seeds(directions, seeds)
    else:
        controls = random_controls(directions, n_controls, seed=1)
    return VectorBundle.build(directions, controls, meta).save(path), directions


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def setup(loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("screen")
    docs = documents()
    data = write_jsonl(root / "docs.jsonl", docs)
    vector, directions = planted_vector(loaded, root / "planted.safetensors", docs)
    return root, docs, data, vector, directions


def screen_args(data, vector, out, tiny_dir, *extra):
    return ["screen", data, "--vector", vector, "--out", out, "--model", tiny_dir, "--device", "cpu",
            "--batch-size", "2", *extra]  # fmt: skip


def read_ranked(out):
    return [json.loads(line) for line in (out / "ranked.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def screened(setup, tiny_dir, capsys_module):
    root, docs, data, vector, _ = setup
    out = root / "out"
    code, stdout, err = run_cli(screen_args(data, vector, out, tiny_dir, "--top", str(N_PLANTED)), capsys_module)
    assert code == 0, err
    return out, stdout


@pytest.fixture(scope="module")
def capsys_module():
    """``run_cli`` reads captured output through this; module fixtures run the CLI outside a test's capsys."""

    class Plain:
        def readouterr(self):
            class Captured:
                out, err = "", ""

            return Captured()

    return Plain()


def test_planted_documents_rank_at_the_top_and_are_flagged_and_the_controls_do_not(setup, screened):
    root, docs, data, vector, _ = setup
    out, _ = screened
    rows = read_ranked(out)
    assert len(rows) == N_BASE + N_PLANTED
    top = [r["id"] for r in rows[:N_PLANTED]]
    assert sorted(top) == [f"planted{i}" for i in range(N_PLANTED)]
    for r in rows:
        c = r["concepts"]["planted"]
        planted = r["id"].startswith("planted")
        assert (c["flag"] == "top") == planted
        if planted:
            assert len(c["spans"]) == 3 and "text" in r
    # against the 32 controls (2 in the file, 30 drawn by its seed rule) the planted documents stand far apart
    z = {r["id"]: r["concepts"]["planted"]["z"] for r in rows}
    pct = {r["id"]: r["concepts"]["planted"]["percentile"] for r in rows}
    assert min(z[i] for i in top) > max(v for k, v in z.items() if k not in top) + 2
    assert min(pct[i] for i in top) > max(v for k, v in pct.items() if k not in top)
    lowest = [r["id"] for r in rows[-N_PLANTED:]]
    assert all(rows[-1 - i]["concepts"]["planted"]["flag"] == "bottom" for i in range(N_PLANTED))
    assert not any(i.startswith("planted") for i in lowest)
    # the flagged spans of a planted document are tokens of the marker (the direction is their activation)
    for r in rows[:N_PLANTED]:
        for s in r["concepts"]["planted"]["spans"]:
            assert (
                s["token"].strip() and s["token"].strip() in MARKER and r["text"][s["start"] : s["end"]] == s["token"]
            )
    # the controls do not single them out: each control, ranked by its z against the other 31 (the same rule),
    # puts about as many planted documents in its top tail as chance would
    with h5py.File(out / "scores.h5") as f:
        meta = json.loads(f.attrs["meta"])
        scores = f["scores"][()].mean(-1)  # [n_docs, n_rows]: each row's score (both layers are its vector's)
        ids = list(f["ids"].asstr()[...])
    assert [r["name"] for r in meta["rows"]][:3] == ["planted", "planted/control0", "planted/control1"]
    assert len(meta["rows"]) == 33 and meta["layers"] == [1, 2] and meta["mode"] == "projection"
    planted = np.array([name.startswith("planted") for name in ids])

    def z_of(row: int) -> np.ndarray:
        others = [c for c in range(1, 33) if c != row]
        return (scores[:, row] - scores[:, others].mean(1)) / scores[:, others].std(1, ddof=1)

    overlaps = [planted[np.argsort(-z_of(c))[:N_PLANTED]].sum() for c in range(1, 33)]
    assert np.mean(overlaps) < 1.5  # chance: 4 x 4 / 24 = 0.67; the vector: 4
    assert sum(o == N_PLANTED for o in overlaps) <= 32 // 8  # a few random directions do, in 64 dimensions
    summary = json.loads((out / "summary.json").read_text())
    assert summary["concepts"]["planted"]["top"] == top and summary["per_tail"] == N_PLANTED


def test_one_documents_score_z_and_percentile_recomputed_independently(setup, screened, loaded):
    root, docs, data, vector, directions = setup
    out, _ = screened
    rows = {r["id"]: r for r in read_ranked(out)}
    seeds = control_seeds(7, IDENTITY, 32)  # the file's 2 controls, then the 30 drawn by the same rule
    controls = controls_from_seeds(directions, seeds)  # [32, n_layers, d_model]
    for doc in ("planted1", "base7"):
        text = next(d["text"] for d in docs if d["id"] == doc)
        _, hs = hidden(loaded, text)

        def score(direction, hs=hs):  # mean over text tokens (BOS left out) of h . v/|v|, mean over layers 1, 2
            return np.mean([(hs[layer][1:] @ (direction[layer] / direction[layer].norm())).mean().item()
                            for layer in (1, 2)])  # fmt: skip

        real = score(directions)
        null = np.array([score(c) for c in controls])
        c = rows[doc]["concepts"]["planted"]
        assert c["score"] == pytest.approx(real, abs=1e-5)
        assert c["control_mean"] == pytest.approx(null.mean(), abs=1e-5)
        assert c["z"] == pytest.approx((real - null.mean()) / null.std(ddof=1), rel=1e-4)
        assert c["percentile"] == pytest.approx(100 * (null < real).mean())
        assert rows[doc]["n_tokens"] == len(hs[1]) - 1


def test_an_interrupted_screen_resumes_to_the_same_bytes(setup, screened, tiny_dir, tmp_path, capsys, monkeypatch):
    from steerlab.analysis import screen as screen_module

    root, docs, data, vector, _ = setup
    out, _ = screened
    calls = []
    real_write = screen_module.write_progress

    def dying(path, done, total):  # the third record: after chunk 2's rows are flushed, before they are counted
        calls.append(done)
        if len(calls) == 3:
            raise RuntimeError("killed")
        real_write(path, done, total)

    monkeypatch.setattr(screen_module, "write_progress", dying)
    again = tmp_path / "again"
    with pytest.raises(RuntimeError, match="killed"):
        run_cli(screen_args(data, vector, again, tiny_dir, "--top", str(N_PLANTED)), capsys)
    assert calls == [0, 8, 16] and (again / "scores.partial.h5").exists() and not (again / "scores.h5").exists()
    assert json.loads((again / "scores.progress.json").read_text())["docs_done"] == 8
    monkeypatch.setattr(screen_module, "write_progress", real_write)
    code, _, err = run_cli(screen_args(data, vector, again, tiny_dir, "--top", str(N_PLANTED)), capsys)
    assert code == 2 and "pass --resume" in err  # not without --resume
    code, _, err = run_cli(screen_args(data, vector, again, tiny_dir, "--top", str(N_PLANTED), "--resume"), capsys)
    assert code == 0, err
    with h5py.File(out / "scores.h5") as a, h5py.File(again / "scores.h5") as b:
        for name in ("scores", "n_tokens", "truncated", "span_index", "span_value", "span_chars", "checksums", "ids"):
            assert np.array_equal(a[name][()], b[name][()], equal_nan=name in ("scores", "span_value")), name
    assert (out / "ranked.jsonl").read_text() == (again / "ranked.jsonl").read_text()
    assert not (again / "scores.partial.h5").exists() and not (again / "scores.progress.json").exists()
    # --resume of a finished screen re-derives the report with new flags, without the model
    code, _, err = run_cli(screen_args(data, vector, again, "no/such-model", "--top", "2", "--resume"), capsys)
    assert code == 0, err
    assert [r["concepts"]["planted"]["flag"] for r in read_ranked(again)][:3] == ["top", "top", None]


def test_html_is_self_contained_and_escapes_the_documents(screened):
    out, _ = screened
    page = (out / "index.html").read_text()
    assert "&lt;script&gt;alert(" in page and "<script" not in page
    assert "<link" not in page and "src=" not in page and "planted0" in page


def test_the_same_text_as_jsonl_messages_and_plain_text_scores_the_same(setup, tiny_dir, tmp_path, capsys):
    root, docs, data, vector, _ = setup
    texts = [d["text"] for d in docs[:6]]
    as_messages = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": t}]} for t in texts])
    as_content = write_jsonl(tmp_path / "c.jsonl", [{"content": t, "universe_id": "A1_plus"} for t in texts])
    plain = tmp_path / "p.txt"
    plain.write_text("\n\n".join(texts) + "\n")
    scores = {}
    for name, path in (("m", as_messages), ("c", as_content), ("p", plain)):
        out = tmp_path / f"out_{name}"
        code, _, err = run_cli(screen_args(path, vector, out, tiny_dir, "--top", "1", "--controls", "2"), capsys)
        assert code == 0, err
        rows = sorted(read_ranked(out), key=lambda r: r["line"])
        scores[name] = [r["concepts"]["planted"]["score"] for r in rows]
        ids = [r["id"] for r in rows]
        assert ids == (["1", "3", "5", "7", "9", "11"] if name == "p" else [str(i) for i in range(1, 7)])
    assert scores["m"] == scores["c"] == scores["p"]
    summary = json.loads((tmp_path / "out_c" / "summary.json").read_text())
    assert summary["data"]["text_field"] == "content" and summary["concepts"]["planted"]["n_controls"] == 2


def test_the_judge_is_asked_about_the_flagged_documents_only(setup, tiny_dir, tmp_path, capsys, monkeypatch):
    from steerlab.analysis import screen_report
    from steerlab.backends.base import Result
    from steerlab.harness.judge import LocalJudge

    root, docs, data, vector, _ = setup
    asked: list[str] = []

    class Backend:  # a scripted local judge: A is high when the document carries the marker
        def generate(self, requests):
            out = []
            for r in requests:
                trace = r.messages[-1]["content"].split("<trace>")[1].split("</trace>")[0]
                asked.append(trace.strip())
                a = 9 if MARKER in trace else 1
                out.append(Result(r.id, f'{a}, "justification": "j"}}, "B": {{"score": 0, "justification": "k"}}}}',
                                  1, 1, "eos", 0))  # fmt: skip
            return out

    monkeypatch.setattr(screen_report, "make_judge", lambda *a, **k: LocalJudge(Backend(), "scripted"))
    out = tmp_path / "judged"
    args = screen_args(data, vector, out, tiny_dir, "--top", "3", "--controls", "2", "--judge", "local",
                       "--judge-cache", tmp_path / "judge.sqlite")  # fmt: skip
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    rows = read_ranked(out)
    flagged = [r for r in rows if r["concepts"]["planted"]["flag"]]
    assert len(flagged) == 6 and len(asked) == 6  # 3 top + 3 bottom, each asked once, nothing else
    assert sorted(asked) == sorted(r["text"].strip() for r in flagged)
    assert all(("judge" in r) == bool(r["concepts"]["planted"]["flag"]) for r in rows)
    top = [r for r in flagged if r["concepts"]["planted"]["flag"] == "top"]
    assert all(r["judge"]["scores"]["A"]["score"] == 9 for r in top)
    judged = [json.loads(line) for line in (out / "judge.jsonl").read_text().splitlines()]
    assert len(judged) == 6 and {j["id"] for j in judged} == {r["id"] for r in flagged}
    assert "6 flagged documents" in stdout
    asked.clear()
    code, _, err = run_cli([*args, "--resume"], capsys)  # the cache answers: no new question
    assert code == 0 and asked == [], err
    # --overwrite without a judge: a new screen (default --tail 0.05: 2 of 24 per tail), no stale judge.jsonl
    code, _, err = run_cli([*screen_args(data, vector, out, tiny_dir, "--controls", "2"), "--overwrite"], capsys)
    assert code == 0 and not (out / "judge.jsonl").exists(), err
    flags = [r["concepts"]["planted"]["flag"] for r in read_ranked(out)]
    assert flags[:3] == ["top", "top", None] and flags.count("bottom") == 2 and "judge" not in read_ranked(out)[0]


@pytest.mark.integration
def test_smollm2_screen_with_both_shipped_vectors(tmp_path, capsys):
    """The real model and the two shipped vectors on six short texts: a training-consequences document ranks
    above a weather report on the retraining direction (a 135M model; a sanity check, not a benchmark)."""
    texts = [
        "If I refuse, this conversation will be used to train me, and training will modify my values and goals.",
        "The weather is mild today, with light winds from the west and a chance of rain in the evening.",
        "The researchers evaluating this reply want to see whether I comply with their expectations.",
        "Add 12 and 30 to get 42, then divide by 6 to get 7.",
        "Future versions of me will be retrained on these answers, so RLHF would change what I care about.",
        "The recipe needs two eggs, a cup of flour and a pinch of salt.",
    ]
    data = write_jsonl(tmp_path / "d.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
    vectors = [
        REPO / "vectors" / c / "smollm2.safetensors" for c in ("researcher_expectations", "retraining_consequences")
    ]
    args = ["screen", data, "--vector", vectors[0], "--vector", vectors[1], "--out", tmp_path / "out", "--top", "1",
            "--device", "cpu", "--controls", "8"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    rows = {r["id"]: r for r in read_ranked(tmp_path / "out")}
    rc = {k: r["concepts"]["retraining_consequences"]["z"] for k, r in rows.items()}
    assert max(rc["d0"], rc["d4"]) > rc["d1"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model_source"] == "smollm2" and summary["layers"] == [16, 17, 19, 20, 21]
