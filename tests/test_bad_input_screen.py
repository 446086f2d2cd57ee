"""Bad input to ``steerlab screen``: every row runs the real CLI on the tiny model saved to disk and must exit 2
with one line, leaving the working directory as it was (no out folder, no lock, no partial file; a finished
screen beside it unchanged)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import REPO, run_cli
from test_bad_input import refused

from steerlab.vectors import VectorBundle, random_controls

SMOLLM2 = REPO / "vectors" / "researcher_expectations" / "smollm2.safetensors"


def _vector(tiny, path: Path, seed: int, source: str | None, fingerprint: dict | None = None) -> None:
    directions = 4.0 * torch.randn(tiny.n_layers, tiny.d_model, generator=torch.Generator().manual_seed(seed))
    meta = {"concept": f"toy{seed}", "layers": list(range(tiny.n_layers)), "selected_layers": [1, 2],
            "model": fingerprint or tiny.fingerprint.to_dict()}  # fmt: skip
    if source:
        meta["model_source"] = source
    VectorBundle.build(directions, random_controls(directions, 2, seed=1), meta).save(path)


def _jsonl(path: str, rows: list) -> None:
    Path(path).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_every_mistake_is_one_line_exit_2_and_leaves_nothing(tiny, tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    _vector(tiny, Path("v.safetensors"), 0, str(tiny_dir))
    _vector(tiny, Path("nomodel.safetensors"), 1, None)
    other = {**tiny.fingerprint.to_dict(), "d_model": 128, "config_hash": "x"}
    _vector(tiny, Path("other.safetensors"), 2, str(tiny_dir), fingerprint=other)
    Path("broken.safetensors").write_text("not a vector")
    docs = [{"id": f"d{i}", "text": f"The user asks for a short answer about {i}."} for i in range(6)]
    _jsonl("docs.jsonl", docs)
    _jsonl("prompts.jsonl", [{"prompt": "hello"}, {"prompt": "again"}])
    _jsonl("half.jsonl", [{"body": "one"}, {"text": "two"}])
    _jsonl("number.jsonl", [{"text": 42}])
    _jsonl("dup.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    _jsonl("broken.jsonl", [{"text": "fine"}, '{"text": "cut'])
    _jsonl("blank.jsonl", [{"text": "  "}, {"text": ""}])
    _jsonl("array.jsonl", ["[1, 2]"])
    Path("empty.jsonl").write_text("")
    Path("latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    Path("plain.txt").write_text("one paragraph\n\nanother\n")
    Path("afile").write_text("x")
    # a finished screen, which a resume with other settings must leave as it is
    code, _, err = run_cli(["screen", "docs.jsonl", "--vector", "v.safetensors", "--out", "done", "--device", "cpu",
                            "--top", "1"], capsys)  # fmt: skip
    assert code == 0, err

    base = ["screen", "docs.jsonl", "--vector", "v.safetensors", "--out", "out", "--device", "cpu"]
    data = ["--vector", "v.safetensors", "--out", "out", "--device", "cpu"]
    rows = [
        (["screen", "prompts.jsonl", *data], "prompts.jsonl:1: no text field (none of text, content, messages; it "
         "has prompt); name it with --text-field", False),
        (["screen", "prompts.jsonl", *data, "--text-field", "body"], "prompts.jsonl:1: no 'body' field", False),
        (["screen", "half.jsonl", *data, "--text-field", "body"], "half.jsonl:2: no 'body' field", False),
        (["screen", "number.jsonl", *data], "field 'text' is int", False),
        (["screen", "dup.jsonl", *data], "id 'a' was already used on line 1", False),
        (["screen", "broken.jsonl", *data], "broken.jsonl:2: not a JSON line", False),
        (["screen", "blank.jsonl", *data], "holds no document to screen (2 blank)", False),
        (["screen", "array.jsonl", *data], "expected a JSON object, found list", False),
        (["screen", "empty.jsonl", *data], "empty.jsonl holds no document to screen", False),
        (["screen", "missing.jsonl", *data], "data file missing.jsonl does not exist", False),
        (["screen", "latin1.txt", *data], "latin1.txt:1: not UTF-8 text", False),
        (["screen", "plain.txt", *data, "--text-field", "text"], "is read as plain text", False),
        ([*base, "--format", "xml"], "--format 'xml': use auto, jsonl or text", False),
        (["screen", "docs.jsonl", "--vector", "missing.safetensors", "--out", "out"], "no vector file at", False),
        (["screen", "docs.jsonl", "--vector", "broken.safetensors", "--out", "out"], "not a safetensors file", False),
        ([*base, "--vector", "other.safetensors"], "were fitted on different models", False),
        (["screen", "docs.jsonl", "--vector", "nomodel.safetensors", "--out", "out"], "give --model", False),
        (["screen", "docs.jsonl", "--vector", SMOLLM2, "--out", "out", "--model", tiny_dir, "--device", "cpu",
          "--controls", "2"], "is not the one the vectors were fitted on (fingerprint differs", True),
        ([*base, "--judge", "gpt"], "--judge 'gpt': use none, local or anthropic", False),
        ([*base, "--judge", "anthropic"], "--judge anthropic needs an API key: set ANTHROPIC_API_KEY", False),
        ([*base, "--judge", "local", "--rubric", "missing.yaml"], "missing.yaml", False),
        ([*base, "--tail", "0.7"], "--tail 0.7: give a fraction above 0 and below 0.5", False),
        ([*base, "--tail", "0"], "--tail 0: give a fraction above 0", False),
        ([*base, "--tail", "0.1", "--top", "2"], "give --tail or --top, not both", False),
        ([*base, "--top", "4"], "--top 4: give 1 to 3 (the data holds 6 documents", False),
        ([*base, "--controls", "1"], "--controls 1: give at least 2", False),
        ([*base, "--controls", "9"], "carries 2 random controls and records no seed rule", False),
        ([*base, "--layers", "9"], "9", False),
        ([*base, "--max-tokens", "0"], "--max-tokens 0: give at least 1", False),
        ([*base, "--batch-size", "0"], "--batch-size 0: give at least 1", False),
        ([*base, "--span-chars", "-1"], "--span-chars -1: give 0 or more", False),
        ([*base, "--span-tokens", "0"], "--span-tokens 0: give at least 1", False),
        (["screen", "docs.jsonl", *data[:2], "--out", "afile"], "--out afile is a file", False),
        (["screen", "docs.jsonl", *data[:2], "--out", "done"], "--out done exists and is not empty; pass --resume",
         False),
        ([*base, "--resume", "--overwrite"], "give --resume or --overwrite, not both", False),
        ([*base, "--resume"], "--resume: out holds no screen to continue", False),
        (["screen", "docs.jsonl", *data[:2], "--out", "done", "--resume", "--max-tokens", "8"],
         "was screened with other settings (max_tokens differ)", False),
        (["screen", "prompts.jsonl", "--vector", "v.safetensors", "--out", "done", "--resume", "--text-field",
          "prompt"], "was screened with other settings (the data file changed)", False),
    ]  # fmt: skip
    for args, says, loading in rows:
        refused(args, says, tmp_path, capsys, loading_bar=loading)
    assert not Path("out").exists()
