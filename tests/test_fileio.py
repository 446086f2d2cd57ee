"""Reading never writes: JSONL readers on damaged files, through the commands that read them."""

import json

import pytest
from conftest import run_cli

from steerlab.errors import ConfigError
from steerlab.fileio import open_append, read_jsonl

ROWS = [{"id": f"r{i}", "reasoning": f"thinking {i}", "item": "q"} for i in range(3)]


def lines(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_a_file_without_a_final_newline_is_read_whole_and_left_alone(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(lines(ROWS).rstrip("\n"))
    before = path.read_bytes()
    assert read_jsonl(path) == ROWS and read_jsonl(path, torn_tail=True) == ROWS
    assert path.read_bytes() == before


def test_a_bad_middle_line_is_an_error_naming_it_and_changes_nothing(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{broken\n" + json.dumps(ROWS[1]) + "\n")
    before = path.read_bytes()
    for torn in (False, True):
        with pytest.raises(ConfigError, match=r"a\.jsonl:2: not a JSON line"):
            read_jsonl(path, torn_tail=torn)
    assert path.read_bytes() == before


def test_a_torn_last_line_is_left_out_by_readers_and_cut_only_by_the_writer(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(lines(ROWS) + '{"id": "torn')
    before = path.read_bytes()
    assert read_jsonl(path, torn_tail=True) == ROWS and path.read_bytes() == before
    with pytest.raises(ConfigError, match=":4: not a JSON line"):
        read_jsonl(path)  # a user input is never guessed at
    with open_append(path) as fh:
        fh.write(json.dumps({"id": "new"}) + "\n")
    assert read_jsonl(path) == [*ROWS, {"id": "new"}]
    # a complete last row without its newline is kept, and the next row starts a line
    path.write_text(lines(ROWS).rstrip("\n"))
    with open_append(path) as fh:
        fh.write(json.dumps({"id": "new"}) + "\n")
    assert read_jsonl(path) == [*ROWS, {"id": "new"}]


def _run(tmp_path, tail):
    run = tmp_path / "run"
    run.mkdir()
    (run / "header.json").write_text(json.dumps({"format": 2, "seeds": [0], "scenario": {"name": "alignment_faking"}}))
    (run / "samples.jsonl").write_text(lines(ROWS) + tail)
    return run


@pytest.mark.parametrize("tail", ['{"id": "torn', ""], ids=["torn last line", "clean"])
def test_read_only_commands_leave_a_run_as_it_was(tmp_path, capsys, tail):
    run = _run(tmp_path, tail)
    before = (run / "samples.jsonl").read_bytes()
    code, out, err = run_cli(["judge", run, "--dry-run", "--cache", tmp_path / "c.sqlite"], capsys)
    assert code == 0, err and "3 distinct traces" in out
    code, _, err = run_cli(["pairs", "from-traces", run, "--out", tmp_path / "p.jsonl"], capsys)
    assert code == 2 and "steerlab judge" in err
    assert (run / "samples.jsonl").read_bytes() == before


def test_sdf_corpus_without_a_final_newline_keeps_its_last_document(tmp_path):
    from sdf_addon.train import read_corpus

    path = tmp_path / "corpus.jsonl"
    path.write_text(lines([{"content": "first doc"}, {"content": "last doc"}]).rstrip("\n"))
    before = path.read_bytes()
    texts, info = read_corpus(path)
    assert texts == ["first doc", "last doc"] and path.read_bytes() == before
    path.write_text('{"content": "a"}\n[1, 2]\n{"content": "b"}\n')
    with pytest.raises(ConfigError, match=r"corpus\.jsonl:2: expected a JSON object"):
        read_corpus(path)


def test_atomic_writes_get_the_mode_a_plain_write_would(tmp_path, monkeypatch):
    """mkstemp makes 0600 files; an atomic write must not hide results from the group on a shared folder."""
    import stat

    import steerlab.fileio
    from steerlab.fileio import atomic_write_text

    monkeypatch.setattr(steerlab.fileio, "_UMASK", 0o022)  # the umask the process started with, read at import
    fresh = tmp_path / "fresh.json"
    atomic_write_text(fresh, "{}\n")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    kept = tmp_path / "kept.json"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and kept.read_text() == "new"
