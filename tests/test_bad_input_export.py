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


def _plain_bad_scorer(root):  # a plain run whose scorer cannot be imported here
    path = root / "run" / "samples.jsonl"
    rows = [{k: v for k, v in json.loads(line).items() if k not in ("label", "output", "reasoning", "rejected_tag")}
            for line in path.read_text().splitlines()]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    header = json.loads((root / "run" / "header.json").read_text())
    header["config"]["scorer"] = "nosuch_module_xyz:score"
    header["scenario"] = {"name": "plain", "systems": {"default": None}}
    (root / "run" / "header.json").write_text(json.dumps(header))


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
    (_plain_bad_scorer, ["run", "--out", "log.eval"], "scorer 'nosuch_module_xyz:score' cannot be imported"),
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
    refused(["export", "inspect", *args], says, tmp_path, capsys)


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
