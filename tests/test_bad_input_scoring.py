"""Bad input to ``steerlab vectors score``: one line that says what is wrong and how to fix it, exit
status 2, and nothing created or changed on disk (checked on the whole working directory)."""

import shutil

import pytest
from conftest import make_pair
from test_bad_input import refused
from test_scoring import fitted, held_out  # noqa: F401 (the fixture is used by name)

from steerlab.extract import extract
from steerlab.fileio import file_hash
from steerlab.models import load_model
from steerlab.pairs import write_pairs
from steerlab.testing import tiny_model


@pytest.fixture(scope="module")
def inputs(fitted, tiny_dir, tmp_path_factory):  # noqa: F811
    """A folder with the vector, pair files, and caches that do not fit it, copied into each row's root."""
    root = tmp_path_factory.mktemp("score-inputs")
    shutil.copy(fitted, root / "v.safetensors")
    (root / "broken.safetensors").write_bytes(b"not a safetensors file")
    write_pairs(held_out(6), root / "p.jsonl")
    write_pairs(held_out(6, start=300), root / "other.jsonl")
    bad = make_pair(9).model_copy(update={"span_positive": "a sentence that is not there"})
    write_pairs([bad], root / "bad.jsonl")
    (root / "r.json").write_text("{}")
    (root / "adir").mkdir()
    loaded = load_model(str(tiny_dir), device="cpu")
    other = tiny_model(seed=1)  # another model: its fingerprint differs in embed_hash
    (root / "other-model").mkdir()
    other.model.save_pretrained(root / "other-model")
    other.tokenizer.save_pretrained(root / "other-model")

    def cache(model, src, out, locus="span_mean"):
        extract(model, held_out(6, start=300) if src == "other.jsonl" else held_out(6), root / out, locus=locus,
                pair_file=root / src, pair_file_hash=file_hash(root / src), progress=False)  # fmt: skip

    cache(loaded, "other.jsonl", "c_other_pairs.h5")
    cache(loaded, "p.jsonl", "c_last.h5", locus="last")
    cache(other, "p.jsonl", "c_model.h5")
    # an interrupted cache of the other pair file: Ctrl-C in the second batch
    calls = []

    def stop(*_):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    handle = loaded.model.get_input_embeddings().register_forward_hook(stop)
    src = root / "other.jsonl"
    with pytest.raises(KeyboardInterrupt):
        extract(loaded, held_out(6, start=300), root / "c_part.h5", locus="span_mean", batch_size=2, pair_file=src,
                pair_file_hash=file_hash(src), progress=False)  # fmt: skip
    handle.remove()
    for lock in root.glob("*.lock"):
        lock.unlink()
    return root


SCORE = ["vectors", "score", "v.safetensors", "--pairs", "p.jsonl", "--device", "cpu"]
TABLE = [
    # (arguments, what the one line must say)
    (["vectors", "score", "missing.safetensors", "--pairs", "p.jsonl"], "no vector file at missing.safetensors"),
    (["vectors", "score", "broken.safetensors", "--pairs", "p.jsonl"], "is not a safetensors file"),
    (["vectors", "score", "v.safetensors", "--pairs", "missing.jsonl"], "pair file missing.jsonl does not exist"),
    (["vectors", "score", "v.safetensors", "--pairs", "bad.jsonl"], "span not found"),
    ([*SCORE, "--cache", "c_other_pairs.h5"], "was written for another pair file"),
    ([*SCORE, "--cache", "c_last.h5"], "written for locus 'last', the vector's locus is 'span_mean'"),
    ([*SCORE, "--cache", "c_model.h5"], "another model than the vector (fingerprint differs in embed_hash)"),
    ([*SCORE, "--cache", "c_part.h5"], "the interrupted cache c_part.h5.partial was written for another pair file"),
    ([*SCORE, "--cache", "adir"], "--cache adir is a directory"),
    ([*SCORE, "--cache", "p.jsonl"], "--cache p.jsonl names the pair file"),
    ([*SCORE, "--layers", "2,7"], "--layers: layer(s) [7] are not in v.safetensors (it has layers 0-3)"),
    ([*SCORE, "--layers", "1-"], "is not a layer or range"),
    ([*SCORE, "--out", "r.json"], "--out r.json already exists; pass --overwrite"),
    ([*SCORE, "--out", "adir"], "--out adir is a directory"),
    ([*SCORE, "--out", "v.safetensors", "--overwrite"], "--out v.safetensors names the vector file"),
    ([*SCORE, "--out", "p.jsonl/r.json"], "cannot write the report p.jsonl/r.json"),
    ([*SCORE, "--batch-size", "0"], "--batch-size 0 must be at least 1"),
    ([*SCORE, "--model", "no/such/model"], "no model at 'no/such/model'"),
]


@pytest.mark.parametrize("args, says", TABLE, ids=[f"{i}: {says[:40]}" for i, (_, says) in enumerate(TABLE)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, says, inputs, tmp_path, capsys, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(inputs, root)
    monkeypatch.chdir(root)
    refused(args, says, root, capsys)


def test_a_model_with_another_fingerprint_is_refused_after_loading_and_writes_nothing(inputs, tmp_path, capsys,
                                                                                       monkeypatch):  # fmt: skip
    root = tmp_path / "root"
    shutil.copytree(inputs, root)
    monkeypatch.chdir(root)
    line = refused([*SCORE, "--model", "other-model"], "is not the one v.safetensors was fitted on", root, capsys,
                   loading_bar=True)  # fmt: skip
    assert "fingerprint differs in embed_hash" in line and "pass --model with that model" in line
    assert not (root / "runs").exists()  # the default cache was not started
