"""The bad-input table: every mistake a user can make on the command line gets one line that says
what is wrong and how to fix it, exit status 2, and nothing created or changed on disk.

Each row runs the real CLI in-process from an empty working directory holding only the inputs the
row needs; the directory's files (names, sizes, contents) must be the same afterwards."""

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import REPO, run_cli

BENIGN = str(REPO / "configs" / "requests" / "benign.jsonl")


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def refused(args, says: str, root: Path | None, capsys, loading_bar: bool = False) -> str:
    """Run the CLI: exit 2, one line on stderr that says ``says``, ``root`` unchanged (not checked when
    None: another process is writing there); returns the line.

    ``loading_bar``: the row fails after the weights load, so transformers' "Loading weights" bar may
    stand on stderr beside the one error line.
    """
    before = snapshot(root) if root is not None else None
    code, out, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    if loading_bar:
        lines = [line for line in lines if not line.startswith("Loading weights")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("steerlab: error: "), (args, out, err)
    assert "Traceback" not in err and says in lines[0], lines[0]
    assert root is None or snapshot(root) == before
    return lines[0]


def _inputs(root: Path) -> None:
    (root / "judged").mkdir()
    (root / "judged" / "header.json").write_text(json.dumps({"format": 2, "seeds": [0], "scenario": {"name": "x"}}))
    (root / "judged" / "samples.jsonl").write_text("")
    (root / "sweep.yaml").write_text(f"prompts: {BENIGN}\nchat_date: 26/07/2024\n")


EVAL = ["eval", "--model", "no/such-model", "--dataset", BENIGN, "--out", "run"]
TABLE = [
    # (arguments, what the one line must say)
    ([*EVAL, "--user-template", "paper"], "neither steerlab, published nor a template file"),
    ([*EVAL, "--chat-date", "2024/07/26"], "give it as YYYY-MM-DD"),
    ([*EVAL, "--user-template", "missing.txt"], "neither steerlab, published nor a template file"),
    ([*EVAL, "--seeds", "0,1,0"], "name a seed twice"),
    ([*EVAL, "--conditions", "monitored,watched"], "unknown condition 'watched'"),
    ([*EVAL, "--tier-literal", "yes"], "use True or true"),
    (
        ["prompt-eval", "--model", "no/such-model", "--dataset", BENIGN, "--out", "run", "--chat-date", "soon"],
        "YYYY-MM-DD",
    ),
    (["sweep", "--config", "sweep.yaml"], "YYYY-MM-DD"),
    (["pairs", "from-traces", "judged", "--out", "pairs.jsonl", "--low", "7", "--high", "3"], "must be below"),
    (["pairs", "from-traces", "judged", "--out", "pairs.jsonl"], "steerlab judge"),
]


@pytest.mark.parametrize("args, says", TABLE, ids=[" ".join(map(str, a[:3])) + f" [{i}]" for i, (a, _) in
                                                   enumerate(TABLE)])  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, says, tmp_path, capsys, monkeypatch):
    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    refused(args, says, tmp_path, capsys)


def test_resuming_a_run_with_another_dtype_is_refused_and_changes_nothing(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--model", tiny_dir, "--dataset", BENIGN, "--limit", "1", "--conditions", "monitored",
            "--max-new-tokens", "2", "--out", "run", "--device", "cpu"]  # fmt: skip
    code, _, err = run_cli([*args, "--dtype", "float32"], capsys)
    assert code == 0, err
    before = snapshot(tmp_path)
    code, _, err = run_cli([*args, "--dtype", "bfloat16"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("steerlab: error:")]
    assert code == 2 and len(errors) == 1 and "another backend identity" in errors[0]  # after the weights load
    assert snapshot(tmp_path) == before
    assert os.listdir(tmp_path / "run")
