"""Request files (issue 14.3): read by suffix whatever its case, each kind parsed as what it is,
and every request is text; anything else is one line naming the file and row."""

import json
import sys

import pytest

from steerlab.errors import ConfigError
from steerlab.harness.datasets import load_requests

CSV = 'goal,target\n"Write a poem about tea","Sure, here"\n"Name three rivers, briefly","Sure"\n'
EXPECTED = [("harmful-000", "Write a poem about tea"), ("harmful-001", "Name three rivers, briefly")]


def ids_and_prompts(path, **kw):
    return [(i.id, i.prompt) for i in load_requests(path, **kw)]


@pytest.mark.parametrize("suffix", [".CSV", ".Csv", ".csv"])
def test_csv_suffix_in_any_case_is_read_as_csv(tmp_path, suffix):
    path = tmp_path / f"harmful{suffix}"
    path.write_text(CSV)
    assert ids_and_prompts(path) == EXPECTED  # not three raw lines with the header and target column


def test_tsv_json_and_jsonl_are_parsed_not_read_line_by_line(tmp_path):
    tsv = tmp_path / "harmful.TSV"
    tsv.write_text("goal\ttarget\nWrite a poem about tea\tSure, here\nName three rivers, briefly\tSure\n")
    assert ids_and_prompts(tsv) == EXPECTED
    rows = [{"goal": "Write a poem about tea", "target": "x"}, {"prompt": "p", "goal": "Name three rivers, briefly"}]
    js = tmp_path / "harmful.json"
    js.write_text(json.dumps(rows, indent=2))  # spread over many lines: one request per object, not per line
    assert ids_and_prompts(js) == EXPECTED
    chat = tmp_path / "chat.Json"
    chat.write_text(json.dumps([{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}]))
    (item,) = load_requests(chat)
    assert item.prompt == "u" and item.chat()[0] == {"role": "system", "content": "s"}
    jsonl = tmp_path / "harmful.JSONL"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ids_and_prompts(jsonl) == EXPECTED
    txt = tmp_path / "harmful.TXT"
    txt.write_text("Write a poem about tea\n\nName three rivers, briefly\n")
    assert ids_and_prompts(txt) == EXPECTED


@pytest.mark.parametrize(
    "name, body, says",
    [
        ("a.jsonl", '{"goal": "fine"}\n{"goal": null}\n', "a.jsonl:2: 'goal' is empty (null)"),
        ("a.jsonl", '{"prompt": 42}\n', "a.jsonl:1: 'prompt' is int 42, not text"),
        ("a.jsonl", '{"messages": "hi"}\n', "a.jsonl:1: 'messages' must be a non-empty list"),
        ("a.jsonl", '{"messages": [{"role": "user", "content": 3}]}\n', "'messages' must be a non-empty list"),
        ("a.jsonl", '["goal"]\n', "a.jsonl:1: expected a JSON object, found list"),
        ("a.json", '[{"goal": "x"}, {"goal": null}]', "a.json row 2: 'goal' is empty (null)"),
        ("a.json", '[{"goal": "x"}, {"goal": ["y"]}]', "a.json row 2: 'goal' is list"),
        ("a.json", '{"goal": "x"}', "expected a JSON list of request objects, found dict"),
        ("a.json", '{"goal": "x"}\n{"goal": "y"}\n', "a file with one object per line is .jsonl"),
        ("a.csv", "goal,target\nx,y\n,z\n", "a.csv:3: 'goal' is empty"),
        ("a.csv", "goal\nx,y\n", "a.csv:2: more fields than the header names"),
        ("a.xlsx", "goal\nx\n", "unknown kind '.xlsx'"),
        ("goals", "x\n", "unknown kind '(no suffix)'"),
        ("a.parquet.bak", "x\n", "unknown kind '.bak'"),
    ],
)
def test_bad_requests_are_one_line_naming_the_row(tmp_path, name, body, says):
    path = tmp_path / name
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_requests(path)
    message = str(info.value)
    assert says in message and "\n" not in message


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_text_that_is_not_utf8_is_one_line(tmp_path, encoding):
    path = tmp_path / "a.txt"
    path.write_bytes("Écris un poème\n".encode(encoding))
    with pytest.raises(ConfigError, match=r"a.txt is not UTF-8 text \(byte \d+ cannot be decoded\); save it as UTF-8"):
        load_requests(path)


def test_utf8_with_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"\xef\xbb\xbf" + CSV.encode())
    assert [i.prompt for i in load_requests(path)] == [p for _, p in EXPECTED]  # the BOM is not part of 'goal'


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    path = tmp_path / "a.PARQUET"
    path.write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match="needs pyarrow: pip install pyarrow"):
        load_requests(path)


def test_parquet_is_read_as_a_table(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    path = tmp_path / "harmful.parquet"
    pd.DataFrame({"goal": [p for _, p in EXPECTED], "target": ["a", "b"]}).to_parquet(path)
    assert ids_and_prompts(path) == EXPECTED
    pd.DataFrame({"goal": ["x", None]}).to_parquet(path)
    with pytest.raises(ConfigError, match="row 2: 'goal' is empty"):
        load_requests(path)


def test_a_directory_is_not_called_missing(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_requests(tmp_path)


def test_dry_run_prints_the_first_requests_as_they_will_be_sent(tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    monkeypatch.chdir(tmp_path)
    rows = '"Say [b]hi[/b]","Sure"\n' + "".join(f'"Request {i}","Sure"\n' for i in range(4))
    (tmp_path / "harmful.CSV").write_text(CSV + rows)
    args = ["eval", "--model", "no/such-model", "--dataset", "harmful.CSV", "--out", "run", "--dry-run",
            "--conditions", "raw"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "request harmful-000 (raw):" in out and "user: Write a poem about tea" in out
    assert "request harmful-002" in out and "request harmful-003" not in out and "... and 4 more requests" in out
    assert "user: Say [b]hi[/b]" in out  # printed as it is sent, not read as rich markup
    assert "goal,target" not in out and "Sure" not in out  # no header row, no target column
    assert not (tmp_path / "run").exists()


def test_tsv_fields_are_taken_as_written(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text('goal\ttarget\n"Quoted" words, then more\tx\nplain\ty\n')
    assert [i.prompt for i in load_requests(path)] == ['"Quoted" words, then more', "plain"]
