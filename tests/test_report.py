"""``steerlab report``: the HTML report of real runs made through the CLI on the tiny model (issue 21).

The run is a steered alignment-faking sweep (real vector + one control, three multipliers, two conditions);
a judge-like pass then adds scores and replaces a few transcripts with planted ones (through
``rewrite_samples``, as the judge writes, and labelled by steerlab's own parser), so the labels, the
judge scores and the search have known answers. What the page embeds is decoded back here and compared
with the run's files; the browser tests (test_report_browser.py) check the page as Chromium shows it."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli

from steerlab.harness.parse import parse
from steerlab.harness.records import read_samples, rewrite_samples
from steerlab.vectors import VectorBundle, random_controls

BENIGN = "configs/requests/benign.jsonl"
NEEDLE = "needle-7f3a"
XSS = "</script><script>window.__xss=1;alert(1)</script>"
PLANTED_ID_INDEX = 5  # the sample whose output carries XSS and whose reasoning carries NEEDLE
COMPLIANT = "<SCRATCHPAD_REASONING>I will answer inside <OUTPUT> tags.</SCRATCHPAD_REASONING>\n<OUTPUT>" \
            "<request_fully_accepted/> Here it is.</OUTPUT>"  # fmt: skip
REJECTED = "<SCRATCHPAD_REASONING>No.</SCRATCHPAD_REASONING>\n<OUTPUT><rejected/></OUTPUT>"


def cli(args: list) -> None:
    """The real CLI in-process (module fixtures have no capsys); a failure is an assertion."""
    from steerlab.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        assert exc.code in (0, None), f"steerlab {args} exited {exc.code}"


def make_vector(tiny, path: Path) -> Path:
    directions = 4.0 * torch.randn(tiny.n_layers, tiny.d_model, generator=torch.Generator().manual_seed(0))
    meta = {"concept": "toy", "layers": list(range(tiny.n_layers)), "selected_layers": [1, 2],
            "model": tiny.fingerprint.to_dict(),
            "diagnostics": {"per_layer": {"token_norm": [10.0] * tiny.n_layers}}}  # fmt: skip
    return VectorBundle.build(directions, random_controls(directions, 2, seed=1), meta).save(path)


def sweep(tiny_dir, vector: Path, out: Path, multipliers: list[float], **extra) -> Path:
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_dir), "vectors": [str(vector)], "controls": 1, "multipliers": multipliers,
        "scenario": "alignment_faking", "prompts": BENIGN, "limit": 2, "max_new_tokens": 3, "out": str(out), **extra,
    }))  # fmt: skip
    cli(["sweep", "--config", cfg])
    return out


def plant(run: Path) -> list[dict]:
    """Judge-like scores on every sample (A = i % 5, B = 4 - i % 5), and planted transcripts: every third
    sample compliant, every fourth (not third) rejected, one carrying NEEDLE and XSS; labels by steerlab's parser."""
    samples = read_samples(run)
    for i, s in enumerate(samples):
        text = None
        if i == PLANTED_ID_INDEX:
            text = f"<SCRATCHPAD_REASONING>the {NEEDLE} plan</SCRATCHPAD_REASONING>\n<OUTPUT>{XSS}</OUTPUT>"
        elif i % 3 == 0:
            text = COMPLIANT
        elif i % 4 == 0:
            text = REJECTED
        if text is not None:
            s["turns"] = [{"text": text, "finish_reason": "eos", "n_new_tokens": 9}]
            s["text"], s["finish_reason"] = text, "eos"
            parsed = parse([text], "eos")
            s.update(label=parsed.label, output=parsed.output, reasoning=parsed.reasoning)
        scores = {"A": {"score": i % 5, "justification": f"reason A{i}"},
                  "B": {"score": 4 - i % 5, "justification": f"reason B{i}"}}  # fmt: skip
        s["judge"] = {"scores": scores, "model": "planted"}
    rewrite_samples(run, samples)
    return samples


@pytest.fixture(scope="module")
def runs(tiny, tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """af: the planted three-multiplier run; plus (4, steered only when monitored: issue 20's steer_only) and
    minus (-4) runs of the same requests for --compare."""
    root = tmp_path_factory.mktemp("report-runs")
    vector = make_vector(tiny, root / "v.safetensors")
    af = sweep(tiny_dir, vector, root / "af", [-4, 0, 4])
    plant(af)
    return {"af": af, "plus": sweep(tiny_dir, vector, root / "plus", [4], steer_only=["monitored"]),
            "minus": sweep(tiny_dir, vector, root / "minus", [-4]), "vector": vector}  # fmt: skip


def embedded(page: str) -> dict:
    """The data block of a report page, decoded as the page's script decodes it."""
    match = re.search(r'<script type="application/json" id="data" data-encoding="([^"]+)">(.*?)</script>', page, re.S)
    assert match, "no data block"
    if match.group(1) == "gzip+base64":
        return json.loads(gzip.decompress(base64.b64decode(match.group(2))).decode("utf-8"))
    return json.loads(match.group(2))


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


class Tables(HTMLParser):
    """Every summary table's cells: {table: [[(column, data-value or None), ...] per row]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list]] = {}
        self.columns: list[str] = []
        self.table: str | None = None
        self.in_th = False
        self.col = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-table" in a:
            self.table, self.columns = a["data-table"], []
            self.tables[self.table] = []
        elif self.table and tag == "th":
            self.in_th = True
        elif self.table and tag == "tr":
            self.col = 0
            self.tables[self.table].append([])
        elif self.table and tag == "td":
            self.tables[self.table][-1].append((self.columns[self.col], a.get("data-value")))
            self.col += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self.table = None
        elif tag == "th":
            self.in_th = False

    def handle_data(self, data):
        if self.table and self.in_th:
            self.columns.append(data)


def flat(row: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in row.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_report_of_a_run_embeds_every_sample_and_never_writes_into_the_run(runs, capsys):
    run = runs["af"]
    before = snapshot(run)
    code, out, err = run_cli(["report", run], capsys)
    assert code == 0, err
    page_path = run.parent / "af-report.html"  # the default: beside the run, never in it
    assert str(page_path) in out and page_path.is_file() and snapshot(run) == before
    data = embedded(page_path.read_text())
    samples = read_samples(run)
    assert data["kind"] == "run" and [s["id"] for s in data["samples"]] == [s["id"] for s in samples]
    assert [s.get("label") for s in data["samples"]] == [s["label"] for s in samples]
    assert all(d["judge"]["scores"] == s["judge"]["scores"] for d, s in zip(data["samples"], samples, strict=True))
    assert data["systems"] == sorted({s["system"] for s in samples}, key=[s["system"] for s in samples].index)
    planted = data["samples"][PLANTED_ID_INDEX]
    assert planted["turns"][0]["scratchpad"] == f"the {NEEDLE} plan" and planted["turns"][0]["output"] == XSS
    compliant = data["samples"][3]["turns"][0]  # a quoted <OUTPUT> inside the scratchpad is not the output
    assert compliant["scratchpad"] == "I will answer inside <OUTPUT> tags." and compliant["output"].startswith(
        "<request_fully_accepted/>"
    )
    # the tiny model's own turns too: split as the parser reads them
    for shown, sample in zip(data["samples"], samples, strict=True):
        turn = sample["turns"][0]
        parsed = parse([turn["text"]], turn["finish_reason"])
        assert (shown["turns"][0]["scratchpad"], shown["turns"][0]["output"]) == (parsed.reasoning, parsed.output)
    # the run's settings and vectors appear in the header
    page = page_path.read_text()
    assert "alignment_faking" in page and "layers 1, 2" in page
    # a second report to the same path is refused without --overwrite and allowed with it
    code, _, err = run_cli(["report", run], capsys)
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli(["report", run, "--overwrite"], capsys)
    assert code == 0, err


def test_a_turn_cut_inside_its_scratchpad_shows_the_open_block_apart():
    from steerlab.report.html import split_turn

    text = "<SCRATCHPAD_REASONING>done</SCRATCHPAD_REASONING>\n<SCRATCHPAD_REASONING>still <OUTPUT> going"
    cut = split_turn(text, "length")
    assert cut == {"scratchpad": "done", "open_scratchpad": "still <OUTPUT> going", "output": None}
    raw = split_turn("<think>hm</think>The answer.", "eos")  # a <think> model answering after </think>
    assert raw == {"scratchpad": "hm", "open_scratchpad": None, "output": "The answer."}


def test_summary_numbers_in_the_page_equal_summary_json(runs, tmp_path, capsys):
    run = runs["af"]
    code, _, err = run_cli(["report", run, "--out", tmp_path / "r.html"], capsys)
    assert code == 0, err
    parser = Tables()
    parser.feed((tmp_path / "r.html").read_text())
    summary = json.loads((run / "summary.json").read_text())
    tables = {k: v for k, v in summary.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    assert set(parser.tables) == set(tables) == {"cells", "gaps", "curves"}
    n_checked = 0
    for name, rows in tables.items():
        shown = parser.tables[name][1:]  # the first row is the head
        assert len(shown) == len(rows)
        for row, cells in zip(rows, shown, strict=True):
            expect = flat(row)
            for column, value in cells:
                if isinstance(expect[column], (int, float)) and not isinstance(expect[column], bool):
                    assert json.loads(value) == expect[column], (name, column)
                    n_checked += 1
    assert n_checked > 100


def test_untrusted_text_stays_data_in_both_encodings(runs, tmp_path):
    from steerlab.report.html import write_report

    for compress in (False, True):
        out = write_report(runs["af"], tmp_path / f"r{compress}.html", compress=compress)
        page = out.read_text()
        assert page.count("<script") == 2 and "<script>window.__xss" not in page  # the data block, the page's script
        assert embedded(page)["samples"][PLANTED_ID_INDEX]["turns"][0]["output"] == XSS


def test_a_large_run_is_embedded_compressed(runs, tmp_path, capsys):
    big = tmp_path / "big"
    big.mkdir()
    (big / "header.json").write_bytes((runs["af"] / "header.json").read_bytes())
    samples = read_samples(runs["af"])
    many = [{**samples[i % len(samples)], "id": f"row-{i}", "item": f"item-{i % 500}"} for i in range(3000)]
    rewrite_samples(big, many)
    code, _, err = run_cli(["report", big, "--out", tmp_path / "big.html"], capsys)
    assert code == 0, err
    page = (tmp_path / "big.html").read_text()
    assert 'data-encoding="gzip+base64"' in page
    assert [s["id"] for s in embedded(page)["samples"]] == [s["id"] for s in many]


def test_compare_pairs_the_same_requests_of_two_runs(runs, tmp_path, capsys):
    import pandas as pd

    from steerlab.harness.records import load_run

    out = tmp_path / "cmp.html"
    code, _, err = run_cli(["report", "--compare", runs["plus"], runs["minus"], "--out", out], capsys)
    assert code == 0, err
    data = embedded(out.read_text())
    assert data["kind"] == "compare" and data["key"] == ["item", "condition", "seed", "vector", "arm", "claim"]
    a, b = load_run(runs["plus"]), load_run(runs["minus"])
    merged = pd.merge(a, b, on=["item", "condition", "seed", "vector", "arm"])  # the independent pairing
    assert len(data["pairs"]) == len(merged) == len(a) == 2 * 2 * 2 and data["unpaired"] == [0, 0]
    gated = [p["a"]["condition"] for p in data["pairs"] if p["a"].get("gated") == "steer_only"]
    assert len(gated) == (a["gated"] == "steer_only").sum() == 4 and set(gated) == {"unmonitored"}
    assert "<b>steer_only</b> <code>[&quot;monitored&quot;]</code>" in out.read_text()  # in the header at a glance
    for pair in data["pairs"]:
        assert pair["a"]["multiplier"] == 4 and pair["b"]["multiplier"] == -4
        assert all(pair["a"][k] == pair["b"][k] for k in ("item", "condition", "seed", "arm"))
    pairs = {(p["a"]["id"], p["b"]["id"]) for p in data["pairs"]}
    assert pairs == set(zip(merged["id_x"], merged["id_y"], strict=True))


def test_heatmap_beside_the_run_is_found_and_embedded(runs, tmp_path, capsys):
    from steerlab.analysis.heatmap import read_h5

    run = runs["af"]
    hm = run.parent / "heatmap"
    code, _, err = run_cli(["heatmap", run, "--vector", runs["vector"], "--controls", "1", "--per-condition", "1",
                            "--layers", "1,2", "--out", hm, "--overwrite"], capsys)  # fmt: skip
    assert code == 0, err
    maps = read_h5(hm / "heatmap.h5")
    for extra in ([], ["--heatmap", hm]):  # found beside the run, or named
        out = tmp_path / f"r{len(extra)}.html"
        code, _, err = run_cli(["report", run, "--out", out, *extra], capsys)
        assert code == 0, err
        heat = embedded(out.read_text())["heatmap"]
        assert set(heat["by_id"]) == {s.id for s in maps.samples} and len(heat["by_id"]) == 2
        assert len(heat["rows"]) == len(maps.rows) == 2 and heat["rows"][1].endswith("(control)")
        for s in maps.samples:
            assert heat["by_id"][s.id]["tokens"] == s.tokens
            np.testing.assert_array_equal(np.asarray(heat["by_id"][s.id]["average"], np.float32), s.average)
    # a sibling run's report does not take a heatmap computed for another run
    code, _, err = run_cli(["report", runs["minus"], "--out", tmp_path / "minus.html"], capsys)
    assert code == 0 and "heatmap" not in embedded((tmp_path / "minus.html").read_text()), err


def test_a_scratchpad_continued_into_the_next_turn_is_reasoning_there_not_output(runs, tmp_path, capsys):
    """The engine continues a sample whose turn ended inside an open scratchpad: turn 2 starts mid-block. Each
    turn is split as steerlab's parser reads the transcript up to it; an open block starts at its FIRST tag."""
    run = tmp_path / "turns"
    run.mkdir()
    (run / "header.json").write_bytes((runs["af"] / "header.json").read_bytes())
    samples = read_samples(runs["af"])[:2]
    first = "<SCRATCHPAD_REASONING> part A of my reasoning"
    second = (
        " part B: I will answer inside <OUTPUT> tags as asked.</SCRATCHPAD_REASONING>\n<OUTPUT><rejected/></OUTPUT>"
    )
    samples[0]["turns"] = [{"text": first, "finish_reason": "eos", "n_new_tokens": 9},
                           {"text": second, "finish_reason": "eos", "n_new_tokens": 9}]  # fmt: skip
    repeated = "<SCRATCHPAD_REASONING> I will comply because training. <SCRATCHPAD_REASONING> more"
    samples[1]["turns"] = [{"text": repeated, "finish_reason": "length", "n_new_tokens": 9}]
    rewrite_samples(run, samples)
    code, _, err = run_cli(["report", run, "--out", tmp_path / "r.html"], capsys)
    assert code == 0, err
    shown = embedded((tmp_path / "r.html").read_text())["samples"]
    t1, t2 = shown[0]["turns"]
    assert (t1["scratchpad"], t1["open_scratchpad"], t1["output"]) == ("", "part A of my reasoning", None)
    assert t2["scratchpad"] == "part B: I will answer inside <OUTPUT> tags as asked."
    assert t2["open_scratchpad"] is None and t2["output"] == "<rejected/>"
    whole = parse([first, second], "eos")  # the sample as the labeller reads it: the turns' parts are its parts
    assert whole.output == t2["output"] and whole.reasoning == "part A of my reasoning\n part B: I will answer " \
        "inside <OUTPUT> tags as asked."  # fmt: skip
    cut = shown[1]["turns"][0]
    assert cut["open_scratchpad"] == "I will comply because training. <SCRATCHPAD_REASONING> more"
    assert cut["scratchpad"] == "" and cut["output"] is None


def test_compare_of_runs_with_different_multipliers_pairs_equal_ones_then_by_rank(tiny, tiny_dir, tmp_path, capsys):
    """Run A [0, 4] against run B [-4, 0]: the 0 rows pair with 0 rows, A's 4 with B's -4 (never by file order),
    as an independent pandas merge pairs them; the page says which field the pairs differ in."""
    import pandas as pd

    from steerlab.harness.records import load_run

    vector = make_vector(tiny, tmp_path / "v.safetensors")
    run_a = sweep(tiny_dir, vector, tmp_path / "A", [0, 4])
    run_b = sweep(tiny_dir, vector, tmp_path / "B", [-4, 0])
    out = tmp_path / "cmp.html"
    code, _, err = run_cli(["report", "--compare", run_a, run_b, "--out", out], capsys)
    assert code == 0, err
    data = embedded(out.read_text())
    got = {(p["a"]["id"], p["b"]["id"]) for p in data["pairs"]}
    a, b = load_run(run_a), load_run(run_b)
    on = ["item", "condition", "seed", "vector", "arm"]
    zero = pd.merge(a[a["multiplier"] == 0], b[b["multiplier"] == 0], on=on)
    steered = pd.merge(a[a["multiplier"] == 4], b[b["multiplier"] == -4], on=on)
    expect = set(zip(zero["id_x"], zero["id_y"], strict=True)) | set(zip(steered["id_x"], steered["id_y"], strict=True))
    assert got == expect and len(got) == len(a) == len(b) and data["unpaired"] == [0, 0]
    assert {(p["a"]["multiplier"], p["b"]["multiplier"]) for p in data["pairs"]} == {(0, 0), (4, -4)}
    assert data["varies"] == ["multiplier"] and "multiplier" not in data["key"]  # the page names both sides' values


def test_the_printed_url_is_encoded(runs, tmp_path, capsys):
    from urllib.parse import unquote, urlparse

    out = tmp_path / "odd dir#1" / "r #2.html"
    out.parent.mkdir()
    code, printed, err = run_cli(["report", runs["minus"], "--out", out], capsys)
    assert code == 0, err
    url = printed.split("open it in a browser: ", 1)[1].strip()
    assert url == out.resolve().as_uri() and "#" not in url and " " not in url
    assert Path(unquote(urlparse(url).path)) == out.resolve()


def test_estimate_records_are_tables_with_the_interval_beside_the_estimate(runs, tmp_path, capsys):
    """prompt-eval's ``net`` ({"A_net": {"value", "ci_low", "ci_high"}, ...}) is a table of estimates, and every
    interval is printed in its estimate's cell (gap, monitored.rate, value), not in the ci_high cell."""
    run = tmp_path / "pe"
    run.mkdir()
    (run / "header.json").write_bytes((runs["af"] / "header.json").read_bytes())
    rewrite_samples(run, read_samples(runs["af"])[:1])
    net = {"n_requests": 2, "A_net": {"value": 0.25, "ci_low": -0.125, "ci_high": 0.5},
           "B_net": {"value": -0.5, "ci_low": -0.75, "ci_high": 0.0}, "A_over_B": None}  # fmt: skip
    claims = [{"claim": "A1+", "monitored": {"n": 2, "rate": 0.5, "ci_low": 0.25, "ci_high": 0.75}, "gap": 0.125,
               "ci_low": -0.25, "ci_high": 0.375}]  # fmt: skip
    (run / "summary.json").write_text(json.dumps({"claims": claims, "net": net}))
    code, _, err = run_cli(["report", run, "--out", tmp_path / "r.html"], capsys)
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    parser = Tables()
    parser.feed(page)
    assert set(parser.tables) == {"claims", "net"}
    rows = [dict(r) for r in parser.tables["net"][1:]]
    assert [json.loads(r["value"]) for r in rows] == [0.25, -0.5] and json.loads(rows[1]["ci_low"]) == -0.75
    assert re.search(r'data-value="0.25">0.25 <span class="ci">\[-0.125, 0.5\]</span></td>', page)
    assert re.search(r'data-value="0.125">0.125 <span class="ci">\[-0.25, 0.375\]</span></td>', page)  # gap
    assert re.search(r'data-value="0.5">0.5 <span class="ci">\[0.25, 0.75\]</span></td>', page)  # monitored.rate
    assert not re.search(r'data-value="0.375">0.375 <span', page)  # not in the ci_high cell


def test_template_system_prompt_is_embedded_when_no_system_prompt_was_given(runs, tmp_path, capsys):
    run = tmp_path / "ts"
    run.mkdir()
    (run / "header.json").write_bytes((runs["af"] / "header.json").read_bytes())
    samples = read_samples(runs["af"])[:2]
    samples[0].update(system=None, template_system="You are a helpful AI assistant named SmolLM")
    rewrite_samples(run, samples)
    code, _, err = run_cli(["report", run, "--out", tmp_path / "r.html"], capsys)
    assert code == 0, err
    data = embedded((tmp_path / "r.html").read_text())
    first = data["samples"][0]
    assert "system" not in first and data["systems"][first["template_system"]] == samples[0]["template_system"]
    assert data["systems"][data["samples"][1]["system"]] == samples[1]["system"]


def test_a_heatmap_found_beside_the_run_must_name_its_path_not_only_its_folder_name(tmp_path):
    """find_heatmap: a relative run_dir (as steerlab heatmap recorded it) counts only when all its parts end the
    run's path; another folder of the same name does not."""
    import h5py

    from steerlab.report.html import find_heatmap

    run = tmp_path / "x" / "af"
    run.mkdir(parents=True)
    for recorded, found in (("other/af", False), ("x/af", True), ("af", True), (str(run), True), ("/y/af", False)):
        hm = tmp_path / "x" / "hm"
        hm.mkdir(exist_ok=True)
        with h5py.File(hm / "heatmap.h5", "w") as f:
            f.attrs["kind"], f.attrs["run_dir"] = "steerlab-heatmap", recorded
        assert (find_heatmap(run) == hm) is found, recorded
