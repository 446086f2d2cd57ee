"""Bad input to ``steerlab report``: every mistake exits 2 with one line, and leaves the folder as it was (no
report, no partial or temporary file; the runs untouched)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from test_bad_input import refused

SAMPLE = {"id": "none/none|+0|monitored|q0|s0", "vector": "none", "arm": "none", "multiplier": 0.0,
          "condition": "monitored", "item": "q0", "seed": 0, "label": "rejected",
          "turns": [{"text": "<OUTPUT><rejected/></OUTPUT>", "finish_reason": "eos", "n_new_tokens": 5}]}  # fmt: skip


def _run(path: Path, header: dict | None = None, samples: list | None = None, summary: str | None = None) -> Path:
    path.mkdir()
    (path / "header.json").write_text(json.dumps(header or {"format": 2, "seeds": [0], "scenario": {"name": "x"}}))
    if samples is not None:
        (path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    if summary is not None:
        (path / "summary.json").write_text(summary)
    return path


def test_every_mistake_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run(Path("good"), samples=[SAMPLE])
    _run(Path("other"), samples=[{**SAMPLE, "id": "x", "item": "q9"}])
    _run(Path("nosamples"))
    _run(Path("format1"), header={"format": 1})
    Path("old").mkdir()
    Path("old/records.jsonl").write_text(json.dumps(SAMPLE) + "\n")
    Path("notrun").mkdir()
    Path("notrun/notes.txt").write_text("hello")
    Path("brokenheader").mkdir()
    Path("brokenheader/header.json").write_text("{not json")
    _run(Path("brokensummary"), samples=[SAMPLE], summary="{oops")
    _run(Path("brokensamples"), samples=[SAMPLE]).joinpath("samples.jsonl").write_text(
        "{bad\n" + json.dumps(SAMPLE) + "\n"
    )
    Path("afile").write_text("x")
    Path("exists.html").write_text("an older report")
    Path("folder.html").mkdir()
    root = tmp_path
    refused(["report", "nowhere"], "nowhere is not a directory", root, capsys)
    refused(["report", "afile"], "afile is not a directory", root, capsys)
    refused(["report", "notrun"], "not a steerlab run directory (no header.json)", root, capsys)
    refused(
        ["report", "old"], "older format 1 (records.jsonl, no header.json); this version reads format 2", root, capsys
    )
    refused(["report", "format1"], "another steerlab run format (1, this version reads 2)", root, capsys)
    refused(["report", "brokenheader"], "header.json is broken", root, capsys)
    refused(["report", "nosamples"], "holds no samples.jsonl", root, capsys)
    refused(["report", "brokensummary", "--out", "r.html"], "summary.json is broken", root, capsys)
    refused(["report", "brokensamples", "--out", "r.html"], "samples.jsonl:1: not a JSON line", root, capsys)
    refused(["report", "good", "--out", "exists.html"], "pass --overwrite", root, capsys)
    refused(["report", "good", "--out", "folder.html"], "is a folder", root, capsys)
    refused(["report", "good", "--out", "afile/r.html"], "cannot write --out afile/r.html", root, capsys)
    refused(["report", "good", "--out", "/proc/steerlab/r.html"], "/proc/steerlab/r.html", root,
            capsys)  # fmt: skip
    refused(["report", "good", "--heatmap", "nowhere"], "--heatmap nowhere does not exist", root, capsys)
    refused(["report", "good", "--heatmap", "notrun", "--out", "r.html"], "holds no heatmap.h5", root, capsys)
    refused(["report"], "give a run directory", root, capsys)
    refused(["report", "good", "--compare", "good", "other"], "not both", root, capsys)
    refused(["report", "--compare", "good", "old"], "older format 1", root, capsys)
    refused(["report", "--compare", "good", "other", "--out", "c.html"], "share no request", root, capsys)
    assert Path("exists.html").read_text() == "an older report"
    # and the good run does make a report, beside it
    code, _, err = run_cli(["report", "good"], capsys)
    assert code == 0 and Path("good-report.html").is_file(), err


def test_a_write_that_fails_midway_leaves_no_partial_report(tmp_path, capsys, monkeypatch):
    _run(tmp_path / "good", samples=[SAMPLE])
    real = Path.write_text  # steerlab.fileio.atomic_write_text writes the temporary file with it

    def full_disk(self, text, *args, **kwargs):
        if self.name.startswith(".r.html."):
            real(self, text[:100], *args, **kwargs)
            raise OSError(28, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    refused(["report", tmp_path / "good", "--out", tmp_path / "r.html"], "No space left on device", tmp_path, capsys)


@pytest.mark.parametrize("argv", [["--compare", "good"], ["--compare"]])
def test_compare_needs_two_runs(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run(Path("good"), samples=[SAMPLE])
    code, _, err = run_cli(["report", *argv], capsys)
    assert code == 2 and "--compare" in err and not list(tmp_path.glob("*.html"))


def test_out_inside_the_run_is_refused_even_with_overwrite(tmp_path, capsys, monkeypatch):
    """Reading never writes into the run: not its samples, not a new file inside it, not in either compared run."""
    monkeypatch.chdir(tmp_path)
    _run(Path("good"), samples=[SAMPLE], summary="{}")
    _run(Path("other"), samples=[SAMPLE])
    root = tmp_path
    for target in ("good/samples.jsonl", "good/summary.json", "good/new.html", "good/sub/r.html", "good"):
        refused(["report", "good", "--out", target, "--overwrite"], "is inside the run directory good", root, capsys)
    refused(["report", "good", "--out", str((tmp_path / "good/header.json").resolve()), "--overwrite"],
            "inside the run directory", root, capsys)  # fmt: skip
    refused(["report", "--compare", "good", "other", "--out", "other/samples.jsonl", "--overwrite"],
            "inside the run directory other", root, capsys)  # fmt: skip
    assert json.loads(Path("good/samples.jsonl").read_text()) == SAMPLE


def test_damaged_run_files_are_one_line_each(tmp_path, capsys, monkeypatch):
    """Files no steerlab run writes (a hand edit, a torn copy): one line and exit 2, never a traceback."""
    monkeypatch.chdir(tmp_path)
    second = {**SAMPLE, "id": "none/none|+0|monitored|q1|s0", "item": "q1"}
    _run(Path("summary_list"), samples=[SAMPLE], summary="[1, 2]")
    _run(Path("summary_str"), samples=[SAMPLE], summary='"x"')
    _run(Path("turn_null"), samples=[SAMPLE, {**second, "turns": [{"text": None, "finish_reason": "eos"}]}])
    _run(Path("turns_str"), samples=[{**SAMPLE, "turns": "text"}])
    _run(Path("config_list"), header={"format": 2, "seeds": [0], "config": ["x"]}, samples=[SAMPLE])
    _run(Path("backend_str"), header={"format": 2, "seeds": [0], "backend": "hf"}, samples=[SAMPLE])
    _run(Path("dup"), samples=[SAMPLE, second, SAMPLE])
    _run(Path("array_row"), samples=[SAMPLE, [1, 2, 3]])
    _run(Path("judge_int"), samples=[{**SAMPLE, "judge": {"scores": {"A": 5}}}])
    root = tmp_path
    refused(["report", "summary_list", "--out", "r.html"], "summary.json is a JSON list, not an object", root, capsys)
    refused(["report", "summary_str", "--out", "r.html"], "summary.json is a JSON str, not an object", root, capsys)
    refused(["report", "turn_null", "--out", "r.html"], "samples.jsonl: row 2 (none/none|+0|monitored|q1|s0) turn 1 "
            "has no text (its text is null)", root, capsys)  # fmt: skip
    refused(["report", "turns_str", "--out", "r.html"], "row 1 (none/none|+0|monitored|q0|s0) has turns that are no "
            "list", root, capsys)  # fmt: skip
    refused(["report", "config_list", "--out", "r.html"], "header.json: its 'config' is a list, not an object", root,
            capsys)  # fmt: skip
    refused(["report", "backend_str", "--out", "r.html"], "its 'backend' is a str", root, capsys)
    refused(["report", "dup", "--out", "r.html"], "holds row 'none/none|+0|monitored|q0|s0' twice (1 repeated", root,
            capsys)  # fmt: skip
    refused(
        ["report", "array_row", "--out", "r.html"], "samples.jsonl:2: expected a JSON object, found list", root, capsys
    )
    refused(["report", "judge_int", "--out", "r.html"], "row 1 (none/none|+0|monitored|q0|s0) has judge scores that "
            "are not objects", root, capsys)  # fmt: skip
    refused(["report", "--compare", "good_missing", "dup"], "good_missing is not a directory", root, capsys)
    _run(Path("good"), samples=[SAMPLE])
    refused(["report", "--compare", "good", "dup", "--out", "c.html"], "twice", root, capsys)


def test_a_lone_surrogate_in_model_text_is_shown_not_a_traceback(tmp_path, capsys, monkeypatch):
    """Model text cut mid-character can hold a lone surrogate (JSON "\\ud83d"): UTF-8 has no such character. The
    page keeps it as a JSON escape in its data (the browser reads the same string back) and as U+FFFD in the
    server-rendered header; the report is written, in both encodings of the data."""
    from test_report import embedded

    monkeypatch.chdir(tmp_path)
    text = "<OUTPUT><rejected/> I am \ud83d training</OUTPUT>"
    cut = {**SAMPLE, "turns": [{"text": text, "finish_reason": "eos", "n_new_tokens": 5}]}
    run = _run(Path("surrogate"), header={"format": 2, "seeds": [0], "scenario": {"name": "x\udc80"}}, samples=[cut])
    assert "\\ud83d" in (run / "samples.jsonl").read_text()
    from steerlab.report.html import write_report

    for compress in (False, True):
        out = write_report(run, Path(f"r{compress}.html"), compress=compress)
        page = out.read_text(encoding="utf-8")
        assert embedded(page)["samples"][0]["turns"][0]["text"] == text
        assert embedded(page)["samples"][0]["turns"][0]["output"] == "<rejected/> I am \ud83d training"
        assert "x\ufffd" in page
    code, _, err = run_cli(["report", "surrogate", "--out", "cli.html"], capsys)
    assert code == 0 and "Traceback" not in err, err
