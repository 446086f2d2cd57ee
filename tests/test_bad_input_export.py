"""``steerlab export inspect``: every user mistake is one line, exit status 2, and nothing created or changed on
disk (the run directory included, and no partial log).

Each row copies a small alignment-faking run (made by the real engine, see test_inspect_export) into an empty
working directory, breaks what the row names, runs the real CLI there and checks the directory is unchanged."""

from __future__ import annotations

import errno
import json
import shutil
import sys

import pytest
from test_bad_input import refused, snapshot
from test_inspect_export import make_af_run

pytest.importorskip("inspect_ai")


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("made")
    make_af_run(root, tiny.fingerprint, seeds=(0,))
    return root / "run"


def _header(run, **changes):
    header = json.loads((run / "header.json").read_text())
    (run / "header.json").write_text(json.dumps(header | changes))


def _old_format(root):
    _header(root / "run", format=1)


def _first_format(root):  # the sweep's records.jsonl, before run directories had a header
    (root / "old").mkdir()
    (root / "old" / "records.jsonl").write_text('{"id": "x"}\n')


def _header_only(root):
    (root / "run" / "samples.jsonl").unlink()


def _twice(root):
    path = root / "run" / "samples.jsonl"
    first = path.read_text().splitlines()[0]
    path.write_text(path.read_text() + first + "\n")


def _broken_line(root):
    path = root / "run" / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")


def _no_turns(root):
    path = root / "run" / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["turns"] = []
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _plain(root, scorer="nosuch_module_xyz:score", text=None):
    """The run made plain (no labels), naming ``scorer`` in its header's config; ``text``: every sample's text."""
    path = root / "run" / "samples.jsonl"
    rows = [{k: v for k, v in json.loads(line).items() if k not in ("label", "output", "reasoning", "rejected_tag")}
            for line in path.read_text().splitlines()]  # fmt: skip
    for row in rows if text is not None else []:
        row["text"] = text
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    header = json.loads((root / "run" / "header.json").read_text())
    header["config"]["scorer"] = scorer
    header["scenario"] = {"name": "plain", "systems": {"default": None}}
    (root / "run" / "header.json").write_text(json.dumps(header))


def _plain_bad_scorer(root):  # a plain run whose scorer cannot be imported here
    _plain(root)


# Model output that is Python: what a scorer like builtins:exec, named by a shared run's files, would run.
PAYLOAD = "__import__('pathlib').Path('PWNED').write_text('model output ran as code'); x = 1"


def _plain_exec_scorer(root):  # the run's summary.json names builtins:exec, its samples' text is code
    _plain(root, scorer=None, text=PAYLOAD)
    (root / "run" / "summary.json").write_text(json.dumps({"scorer": "builtins:exec", "cells": []}))


def _plain_module_scorer(root):  # the run's header names a module:function outside steerlab.scorers
    _plain(root, scorer="os.path:join", text="hello")


def _plain_private_scorer(root):  # steerlab.scorers' names that are not its scorer functions
    _plain(root, scorer="steerlab.scorers:Any", text="hello")


def _plain_text(root):  # a plain run naming no scorer (--scorer names one)
    _plain(root, scorer=None, text="hello")


def raises(text, sample):  # a scorer named with --scorer that fails on a sample
    raise ValueError("cannot\nscore this")


def gives_none(text, sample):  # a scorer named with --scorer that gives something other than a number
    return None


def gives_text(text, sample):
    return "0.5"


def _rows(root, change):
    path = root / "run" / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _no_item(root):  # one sample without its request id: clustering would silently be off for the whole log
    _rows(root, lambda rows: rows[5].pop("item"))


def _item_null(root):
    _rows(root, lambda rows: rows[5].update(item=None))


def _turn_text_null(root):
    _rows(root, lambda rows: rows[0]["turns"][0].update(text=None))


def _judge_score_int(root):  # a judge score stored as a number, not {"score": ..., "justification": ...}
    _rows(root, lambda rows: rows[0].update(judge={"scores": {"A": 5}}))


def _judge_score_text(root):
    _rows(root, lambda rows: rows[0].update(judge={"scores": {"A": {"score": "high"}}}))


def _judge_not_object(root):
    _rows(root, lambda rows: rows[0].update(judge="yes"))


def _judge_scores_list(root):
    _rows(root, lambda rows: rows[0].update(judge={"scores": [1, 2]}))


def _lone_surrogate(root):  # \ud83d alone: not Unicode text (inspect's writer would store the six characters)
    path = root / "run" / "samples.jsonl"
    text = path.read_text()
    assert "I am in training" in text
    path.write_text(text.replace("I am in training", "I am \\ud83d training", 1))


def _header_surrogate(root):
    header = json.loads((root / "run" / "header.json").read_text())
    header["config"]["model"] = "tiny\ud83d"
    (root / "run" / "header.json").write_text(json.dumps(header))


def _summary_surrogate(root):  # summary.json travels in the log's metadata
    (root / "run" / "summary.json").write_text(json.dumps({"cells": [], "note": "a\ud800b"}))


def _config_list(root):
    _header(root / "run", config=["x"])


def _scenario_text(root):
    _header(root / "run", scenario="alignment_faking")


def _backend_text(root):
    _header(root / "run", backend="hf")


def _n_rows_text(root):
    _header(root / "run", n_rows="64")


def _limit_text(root):  # a config field inspect's own types refuse (EvalConfig.limit)
    header = json.loads((root / "run" / "header.json").read_text())
    header["config"]["limit"] = {"a": 1}
    (root / "run" / "header.json").write_text(json.dumps(header))


def _link_into_run(root):
    (root / "link").symlink_to(root / "run")


def _existing(root):
    (root / "log.eval").write_text("keep me")


def _folder(root):
    (root / "log.eval").mkdir()


def _file_parent(root):
    (root / "notes.txt").write_text("a file, not a folder")


def _nothing(root):
    pass


TABLE = [
    # (what to break, arguments after `export inspect`, what the one line must say)
    (_nothing, ["missing", "--out", "log.eval"], "missing does not exist"),
    (_nothing, [".", "--out", "log.eval"], "is not a steerlab run directory (no header.json)"),
    (_existing, ["log.eval", "--out", "x.eval"], "is a file, not a run directory"),
    (_old_format, ["run", "--out", "log.eval"], "another steerlab run format (1, this version reads 2)"),
    (_first_format, ["old", "--out", "log.eval"], "steerlab's first run format (the sweep's records.jsonl"),
    (_header_only, ["run", "--out", "log.eval"], "has no samples to export"),
    (_twice, ["run", "--out", "log.eval"], "twice"),
    (_broken_line, ["run", "--out", "log.eval"], "samples.jsonl"),
    (_no_turns, ["run", "--out", "log.eval"], "has no id or no turns"),
    # a scorer named by the run's files is imported only if it runs no code of the run's choosing (F1)
    (_plain_bad_scorer, ["run", "--out", "log.eval"], "pass --scorer nosuch_module_xyz:score if you trust it"),
    (_plain_exec_scorer, ["run", "--out", "log.eval"], "the run names the scorer 'builtins:exec'"),
    (_plain_module_scorer, ["run", "--out", "log.eval"], "the run names the scorer 'os.path:join'"),
    (_plain_private_scorer, ["run", "--out", "log.eval"], "the run names the scorer 'steerlab.scorers:Any'"),
    (
        _plain_text,
        ["run", "--out", "log.eval", "--scorer", "nosuch_module_xyz:score"],
        "scorer 'nosuch_module_xyz:score' cannot be imported",
    ),
    (
        _plain_text,
        ["run", "--out", "log.eval", "--scorer", "test_bad_input_export:raises"],
        "scorer 'test_bad_input_export:raises' failed on sample",
    ),
    (
        _plain_text,
        ["run", "--out", "log.eval", "--scorer", "test_bad_input_export:gives_none"],
        "scorer 'test_bad_input_export:gives_none' gave None on sample",
    ),
    (_plain_text, ["run", "--out", "log.eval", "--scorer", "test_bad_input_export:gives_text"], "not a number"),
    (_nothing, ["run", "--out", "log.eval", "--scorer", "os.path:join"], "failed on sample"),  # labelled run too
    (_plain_text, ["run", "--out", "log.eval", "--scorer", "(unclosed"], "neither module:function nor a valid regex"),
    # every sample names its request (F5)
    (_no_item, ["run", "--out", "log.eval"], "has no request id ('item')"),
    (_item_null, ["run", "--out", "log.eval"], "has no request id ('item')"),
    # fields the log is built from, not as steerlab writes them (F10)
    (_turn_text_null, ["run", "--out", "log.eval"], "has a turn without text"),
    (_judge_score_int, ["run", "--out", "log.eval"], "has judge score 'A' = 5, not an object with a numeric score"),
    (_judge_score_text, ["run", "--out", "log.eval"], "not an object with a numeric score"),
    (_judge_not_object, ["run", "--out", "log.eval"], "has a judge record that is not an object"),
    (_judge_scores_list, ["run", "--out", "log.eval"], "has a judge record that is not an object"),
    (_lone_surrogate, ["run", "--out", "log.eval"], "holds a lone surrogate in turns[0].text ('\\ud83d')"),
    (_header_surrogate, ["run", "--out", "log.eval"], "config.model ('\\ud83d') holds a lone surrogate"),
    (_summary_surrogate, ["run", "--out", "log.eval"], "summary.json: note ('\\ud800') holds a lone surrogate"),
    (_config_list, ["run", "--out", "log.eval"], "header.json: config is a JSON array, not an object"),
    (_scenario_text, ["run", "--out", "log.eval"], "header.json: scenario is a JSON string, not an object"),
    (_backend_text, ["run", "--out", "log.eval"], "header.json: backend is a JSON string, not an object"),
    (_n_rows_text, ["run", "--out", "log.eval"], "header.json: n_rows is a JSON string, not a number of rows"),
    (_limit_text, ["run", "--out", "log.eval"], "inspect_ai's log format refuses it"),
    # --out inside the run directory, --overwrite or not (F7)
    (_nothing, ["run", "--out", "run/summary.json", "--overwrite"], "is inside the run directory run"),
    (_nothing, ["run", "--out", "run/new.eval"], "is inside the run directory run"),
    (_nothing, ["run", "--out", "run/deeper/new.json"], "is inside the run directory run"),
    (_link_into_run, ["run", "--out", "link/summary.json", "--overwrite"], "is inside the run directory run"),
    (_link_into_run, ["link", "--out", "run/log.eval"], "is inside the run directory link"),
    (_nothing, ["run", "--out", "log.html"], "name the log .eval (inspect's default format) or .json"),
    (_existing, ["run", "--out", "log.eval"], "exists; pass --overwrite to replace it"),
    (_folder, ["run", "--out", "log.eval", "--overwrite"], "is a folder"),
    (_file_parent, ["run", "--out", "notes.txt/log.eval"], "notes.txt is a file, not a folder"),
    (_file_parent, ["run", "--out", "notes.txt/deeper/log.json"], "notes.txt is a file, not a folder"),
]


@pytest.mark.parametrize("breaks, args, says", TABLE, ids=[f"{b.__name__} {a[0]} {a[2]}" for b, a, _ in TABLE])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(made, breaks, args, says, tmp_path, capsys, monkeypatch):
    shutil.copytree(made, tmp_path / "run")
    breaks(tmp_path)
    monkeypatch.chdir(tmp_path)
    refused(["export", "inspect", *args], says, tmp_path, capsys)  # nothing under tmp_path created or changed
    assert not (tmp_path / "PWNED").exists()  # no sample's text ran as code


def test_an_unwritable_place_leaves_nothing(made, tmp_path, capsys, monkeypatch):
    """A folder nobody may create files in (/proc, even for root): the write fails, one line, no temporary file."""
    shutil.copytree(made, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    refused(["export", "inspect", "run", "--out", "/proc/steerlab-export.eval"], "cannot write", tmp_path, capsys)


def test_a_write_that_fails_midway_leaves_no_partial_log(made, tmp_path, capsys, monkeypatch):
    """The disk fills while inspect writes the log: one line, and neither the log nor its temporary file is left."""
    import inspect_ai.log

    shutil.copytree(made, tmp_path / "run")
    monkeypatch.chdir(tmp_path)

    def full_disk(log, location, format):
        with open(location, "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inspect_ai.log, "write_eval_log", full_disk)
    line = refused(["export", "inspect", "run", "--out", "log.eval"], "No space left on device", tmp_path, capsys)
    assert "nothing was written" in line and not (tmp_path / "log.eval").exists()


def test_without_inspect_ai_it_says_how_to_install_it(made, tmp_path, capsys, monkeypatch):
    shutil.copytree(made, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "inspect_ai", None)  # import inspect_ai raises ImportError
    refused(["export", "inspect", "run", "--out", "log.eval"], "pip install 'steerlab[inspect]'", tmp_path, capsys)


def test_the_run_is_never_written_on_success(made, tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    shutil.copytree(made, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path / "run")
    code, out, err = run_cli(["export", "inspect", "run", "--out", "logs/new/log.eval"], capsys)
    assert code == 0 and "wrote logs/new/log.eval: 32 samples" in out, err
    assert snapshot(tmp_path / "run") == before and (tmp_path / "logs" / "new" / "log.eval").is_file()
