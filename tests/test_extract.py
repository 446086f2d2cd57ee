import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO, make_pair, reference, run_cli

from steerlab.cache import ActivationCache, partial_path, progress_path
from steerlab.errors import CacheError, ConfigError, PairFileError
from steerlab.extract import encode_pairs, extract
from steerlab.loci import Locus
from steerlab.pairs import write_pairs
from steerlab.testing import tiny_model


def varied_pairs(n):
    """Pairs of different lengths, so batches need padding."""
    return [make_pair(i, task=f"What is {i} plus 1?" + " Please be quick." * (i % 4)) for i in range(n)]


@pytest.mark.parametrize("locus", [locus.value for locus in Locus])
def test_cache_equals_output_hidden_states(tiny, tmp_path, locus):
    pairs = varied_pairs(7)
    out = extract(tiny, pairs, tmp_path / "c.h5", locus=locus, batch_size=3, progress=False)
    cache = ActivationCache.open(out)
    got = cache.load()
    assert got.shape == (7, 2, tiny.n_layers, tiny.d_model)
    want = reference(tiny, pairs, locus)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
    assert np.abs(got[:, 0] - got[:, 1]).max() > 1e-3 or locus == "last"  # the sides really differ


def test_last_layer_is_pre_final_norm(tiny, tmp_path):
    pairs = [make_pair(0)]
    got = ActivationCache.open(extract(tiny, pairs, tmp_path / "c.h5", progress=False)).load()
    encoded = encode_pairs(tiny, pairs, Locus.scratchpad_mean)[0][0]
    with torch.inference_mode():
        hs = tiny.model(torch.tensor([encoded.input_ids]), output_hidden_states=True).hidden_states
    post_norm = hs[-1][0, encoded.positions].mean(0).numpy()
    assert not np.allclose(got[0, 0, -1], post_norm, atol=1e-3)


def test_locus_token_positions_follow_the_half_inside_rule(tiny):
    from steerlab.loci import char_range, render

    pair = make_pair(3)
    tok = tiny.tokenizer
    rendered = render(tok, pair.chat("positive"), tiny.chat_template, pair.span_positive)
    offsets = tok(rendered.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    content = pair.positive[-1].content
    for locus, text in [
        ("span_mean", pair.span_positive),
        ("scratchpad_mean", content.split("<SCRATCHPAD_REASONING>")[1].split("</SCRATCHPAD_REASONING>")[0]),
        ("response_mean", content),
    ]:
        lo, hi = char_range(rendered, Locus(locus))
        assert rendered.text[lo:hi] == text
        side = encode_pairs(tiny, [pair], Locus(locus))[0][0]
        inside = [i for i, (s, e) in enumerate(offsets) if e > s and 2 * (min(e, hi) - max(s, lo)) >= e - s]
        assert side.positions == inside
        decoded = tok.decode([side.input_ids[i] for i in side.positions])
        assert text.startswith(decoded.strip()[:5]) and len(decoded) >= len(text) - 3
    assert (
        tok.decode(
            [
                encode_pairs(tiny, [pair], Locus.span_mean)[0][0].input_ids[i]
                for i in encode_pairs(tiny, [pair], Locus.span_mean)[0][0].positions
            ]
        )
        == pair.span_positive
    )
    last = encode_pairs(tiny, [pair], Locus.last)[0][0]
    resp = encode_pairs(tiny, [pair], Locus.response_mean)[0][0]
    assert last.positions == [resp.positions[-1]]


def test_float16_and_layer_subset(tiny, tmp_path):
    pairs = varied_pairs(5)
    full = ActivationCache.open(extract(tiny, pairs, tmp_path / "a.h5", progress=False)).load()
    sub = ActivationCache.open(extract(tiny, pairs, tmp_path / "b.h5", layers=[3, 1], dtype="float16", progress=False))
    assert sub.layers == [1, 3]
    data = sub.load()
    assert data.dtype == np.float16 and data.shape == (5, 2, 2, tiny.d_model)
    np.testing.assert_allclose(data.astype(np.float32), full[:, :, [1, 3]], atol=1e-3, rtol=1e-2)
    np.testing.assert_array_equal(sub.load(layers=[3]), data[:, :, [1]])


def test_output_directory_is_created(tiny, tmp_path):
    out = extract(tiny, [make_pair(0)], tmp_path / "new" / "dir" / "c.h5", progress=False)
    assert ActivationCache.open(out).load().shape == (1, 2, 4, 64)


def test_batch_size_does_not_change_values(tiny, tmp_path):
    pairs = varied_pairs(6)
    one = ActivationCache.open(extract(tiny, pairs, tmp_path / "a.h5", batch_size=1, progress=False)).load()
    six = ActivationCache.open(extract(tiny, pairs, tmp_path / "b.h5", batch_size=6, progress=False)).load()
    np.testing.assert_allclose(one, six, atol=2e-5)


def test_metadata_and_split_reading(tiny, tmp_path):
    pairs = [make_pair(0, split="train"), make_pair(1, split="val"), make_pair(2, split="train")]
    cache = ActivationCache.open(
        extract(tiny, pairs, tmp_path / "c.h5", locus="span_mean", pair_file_hash="abc123", progress=False)
    )
    meta = cache.meta
    assert meta["model"] == tiny.fingerprint.to_dict()
    assert (meta["locus"], meta["dtype"], meta["pair_file_hash"], meta["n_pairs"]) == (
        "span_mean",
        "float32",
        "abc123",
        3,
    )
    assert meta["layers"] == [0, 1, 2, 3] and meta["split_counts"] == {"train": 2, "val": 1}
    assert len(meta["chat_template_hash"]) == 16 and meta["steerlab_version"]
    assert cache.pair_ids == ["toy-train-0", "toy-val-1", "toy-train-2"]
    np.testing.assert_array_equal(cache.load("train"), cache.load()[[0, 2]])
    assert cache.load("keyword_hard").shape[0] == 0


def interrupted_extract(loaded, pairs, out, *, at_batch, batch_size):
    """Run extract() and press Ctrl-C (KeyboardInterrupt) in the forward pass of batch ``at_batch``."""
    calls = []

    def hook(*_):
        calls.append(1)
        if len(calls) == at_batch:
            raise KeyboardInterrupt

    handle = loaded.model.get_input_embeddings().register_forward_hook(hook)
    try:
        with pytest.raises(KeyboardInterrupt):
            extract(loaded, pairs, out, batch_size=batch_size, progress=False)
    finally:
        handle.remove()


def test_interrupt_then_resume_equals_uninterrupted(tiny, tmp_path):
    pairs = varied_pairs(10)
    clean = ActivationCache.open(extract(tiny, pairs, tmp_path / "clean.h5", batch_size=3, progress=False))

    out = tmp_path / "c.h5"
    interrupted_extract(tiny, pairs, out, at_batch=3, batch_size=3)
    assert not out.exists() and partial_path(out).exists()
    assert json.loads(progress_path(out).read_text())["rows_done"] == 6

    with pytest.raises(CacheError, match="interrupted run left .*--resume"):
        extract(tiny, pairs, out, batch_size=3, progress=False)

    resumed = ActivationCache.open(extract(tiny, pairs, out, batch_size=3, resume=True, progress=False))
    np.testing.assert_array_equal(resumed.load(), clean.load())
    assert resumed.meta == clean.meta and resumed.pair_ids == clean.pair_ids
    assert not partial_path(out).exists() and not progress_path(out).exists()


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from steerlab.testing import tiny_model
    from steerlab.pairs import load_pairs
    from steerlab.extract import extract
    loaded = tiny_model()
    loaded.blocks[0].register_forward_hook(lambda *a: time.sleep(0.2))  # slow enough to kill mid-run
    extract(loaded, load_pairs(Path(sys.argv[1])), Path(sys.argv[2]), batch_size=2, progress=False)
    """
)


def test_kill_9_then_resume_equals_uninterrupted(tiny, tmp_path):
    pairs = varied_pairs(24)
    src = tmp_path / "p.jsonl"
    write_pairs(pairs, src)
    out = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(src), str(out)], env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            prog = progress_path(out)
            if prog.exists() and json.loads(prog.read_text())["rows_done"] >= 6:
                break
            assert proc.poll() is None, "extraction ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = json.loads(progress_path(out).read_text())["rows_done"]
    assert 6 <= done < 24 and not out.exists()

    loaded = tiny_model()  # the same weights the killed process built
    resumed = ActivationCache.open(extract(loaded, pairs, out, batch_size=2, resume=True, progress=False))
    clean = ActivationCache.open(extract(loaded, pairs, tmp_path / "clean.h5", batch_size=2, progress=False))
    np.testing.assert_array_equal(resumed.load(), clean.load())  # load() verifies every row's checksums
    assert resumed.meta == clean.meta
    with h5py.File(resumed.path) as a, h5py.File(clean.path) as b:  # the same content, checksums included
        for name in ("activations", "token_norms", "checksums"):
            np.testing.assert_array_equal(a[name][...], b[name][...])
        assert a.attrs["steerlab_checksums"] == b.attrs["steerlab_checksums"]
        assert (a["checksums"][...] != 0).all()


def test_resume_refuses_other_locus_or_model(tiny, tmp_path):
    pairs = varied_pairs(6)
    out = tmp_path / "c.h5"
    interrupted_extract(tiny, pairs, out, at_batch=2, batch_size=2)
    before = partial_path(out).read_bytes()
    with pytest.raises(CacheError, match=r"written for locus 'scratchpad_mean' \(this run: 'last'\)"):
        extract(tiny, pairs, out, locus="last", batch_size=2, resume=True, progress=False)
    other = tiny_model(seed=1)
    with pytest.raises(CacheError, match=r"another model \(fingerprint differs in embed_hash\)"):
        extract(other, pairs, out, batch_size=2, resume=True, progress=False)
    assert partial_path(out).read_bytes() == before  # refused runs leave the partial cache untouched


def test_finished_cache_is_protected(tiny, tmp_path):
    pairs = varied_pairs(4)
    out = extract(tiny, pairs, tmp_path / "c.h5", progress=False)
    stamp = out.stat().st_mtime_ns
    extract(tiny, pairs, out, progress=False)  # finished and matching: reused as it is
    extract(tiny, pairs, out, resume=True, progress=False)
    assert out.stat().st_mtime_ns == stamp
    with pytest.raises(CacheError, match=r"another model .*--overwrite"):
        extract(tiny_model(seed=3), pairs, out, progress=False)
    with pytest.raises(CacheError, match="written for locus"):
        extract(tiny, pairs, out, locus="last", resume=True, progress=False)
    extract(tiny, pairs, out, locus="last", overwrite=True, progress=False)
    assert ActivationCache.open(out).meta["locus"] == "last"


def test_bad_input_writes_nothing(tiny, tmp_path):
    out = tmp_path / "c.h5"
    bad = make_pair(5).model_copy(update={"span_positive": "missing sentence"})
    with pytest.raises(PairFileError, match="pair 'toy-train-5'.*span not found"):
        extract(tiny, [make_pair(0), bad], out, locus="span_mean", progress=False)
    with pytest.raises(ConfigError, match="out of range"):
        extract(tiny, [make_pair(0)], out, layers=[9], progress=False)
    with pytest.raises(CacheError, match="float16"):
        extract(tiny, [make_pair(0)], out, dtype="int8", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_partial_is_reported(tiny, tmp_path):
    out = tmp_path / "c.h5"
    partial_path(out).write_bytes(b"not hdf5")
    progress_path(out).write_text('{"rows_done": 2, "n_pairs": 4}')
    with pytest.raises(CacheError, match="cannot be read.*--overwrite"):
        extract(tiny, varied_pairs(4), out, resume=True, progress=False)
    extract(tiny, varied_pairs(4), out, overwrite=True, progress=False)
    with h5py.File(out) as f:
        assert f["activations"].shape[0] == 4


@pytest.mark.parametrize(
    "progress, says",
    [
        ({"rows_done": 9, "n_pairs": 4}, "records 9 of 4 rows done, but the partial cache has 4 pairs"),
        ({"rows_done": 2, "n_pairs": 9}, "records 2 of 9 rows done, but the partial cache has 4 pairs"),
        ({"rows_done": -1, "n_pairs": 4}, "records -1 of 4 rows done"),
        ({"rows_done": "2", "n_pairs": 4}, "does not hold row counts"),
        ([2, 4], "cannot be read"),
    ],
)
def test_a_progress_file_that_claims_too_much_is_refused(tiny, tmp_path, progress, says):
    out = tmp_path / "c.h5"
    interrupted_extract(tiny, varied_pairs(4), out, at_batch=2, batch_size=2)
    progress_path(out).write_text(json.dumps(progress))
    before = partial_path(out).read_bytes()
    with pytest.raises(CacheError, match=f"{says}.*--overwrite"):
        extract(tiny, varied_pairs(4), out, batch_size=2, resume=True, progress=False)
    assert partial_path(out).read_bytes() == before and not out.exists()


def test_cli_extract(tiny, tiny_dir, tmp_path, capsys):
    src = tmp_path / "p.jsonl"
    write_pairs(varied_pairs(5), src)
    out = tmp_path / "c.h5"
    args = ["extract", "--pairs", src, "--model", tiny_dir, "--no-fit", "--out", out, "--locus", "span_mean",
            "--batch-size", "2"]  # fmt: skip
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "5 pairs x 2 sides x 4 layers x 64" in stdout
    cache = ActivationCache.open(out)
    np.testing.assert_allclose(cache.load(), reference(tiny, varied_pairs(5), "span_mean"), atol=2e-5, rtol=1e-4)

    stamp = out.stat().st_mtime_ns
    code, stdout, err = run_cli(args, capsys)  # the same run again reuses the finished cache
    assert code == 0 and out.stat().st_mtime_ns == stamp
    code, _, err = run_cli([*args[:-4], "--locus", "last", "--batch-size", "2"], capsys)
    assert code == 2 and "written for locus 'span_mean' (this run: 'last')" in err and err.count("\n") == 1
    assert "Loading" not in err  # refused before the model loads
    code, _, err = run_cli([*args[:-2], "--layers", "0,7", "--overwrite"], capsys)
    assert code == 2 and "layer(s) [7] out of range" in err
    (tmp_path / "bad.jsonl").write_text('{"id": 1\n')
    code, _, err = run_cli(
        ["extract", "--pairs", tmp_path / "bad.jsonl", "--model", tiny_dir, "--out", tmp_path / "x.h5"], capsys
    )
    assert code == 2 and "bad.jsonl:1: malformed JSON" in err
    code, _, err = run_cli(["cache", "inspect", out], capsys)
    assert code == 0 and '"locus": "span_mean"' in _


def test_cli_extract_then_fit(tiny_dir, tmp_path, capsys):
    pairs = [make_pair(i, split="train" if i < 24 else "val") for i in range(32)]
    src = tmp_path / "p.jsonl"
    write_pairs(pairs, src)
    vec = tmp_path / "vectors"
    args = ["extract", "--pairs", src, "--model", tiny_dir, "--cache", tmp_path / "c.h5", "--locus", "span_mean",
            "--vectors-dir", vec, "--name", "tiny", "--folds", "2", "--controls", "2"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    from steerlab.vectors import VectorBundle

    bundle = VectorBundle.load(vec / "toy" / "tiny.safetensors")
    assert bundle.meta["locus"] == "span_mean" and len(bundle.controls) == 2
    assert bundle.meta["cache_file"] == str(tmp_path / "c.h5")
    assert "selected layers" in out


# ----------------------------------------------------------------------------- issue 13: per-token norms


def direct_token_norms(loaded, pairs, locus):
    """Mean over the locus's tokens of ||h_t||, straight from output_hidden_states, one unpadded
    sequence at a time: [n_pairs, 2, n_layers].

    Layer l is hidden_states[l + 1] for every layer but the last. transformers' last entry is taken
    after the final norm, so the last layer is read from a second pass with tie_last_hidden_states
    off, where hidden_states[-1] is the last block's own output (before the norm).
    """
    config = loaded.model.config
    out = []
    for sides in encode_pairs(loaded, pairs, Locus(locus)):
        row = []
        for side in sides:
            ids = torch.tensor([side.input_ids])
            with torch.inference_mode():
                tied = loaded.model(ids, output_hidden_states=True).hidden_states
                config.tie_last_hidden_states = False
                try:
                    untied = loaded.model(ids, output_hidden_states=True).hidden_states
                finally:
                    del config.tie_last_hidden_states
            layers = [tied[l + 1] for l in range(loaded.n_layers - 1)] + [untied[-1]]  # noqa: E741
            # the convention matters: the last entry of the default hidden_states is after the final norm
            assert torch.equal(untied[-2], tied[-2]) and not torch.allclose(untied[-1], tied[-1])
            row.append([float(h[0, side.positions].norm(dim=-1).mean()) for h in layers])
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("locus", ["scratchpad_mean", "span_mean", "last"])
def test_token_norms_equal_output_hidden_states(tiny, tmp_path, locus):
    pairs = varied_pairs(7)
    cache = ActivationCache.open(extract(tiny, pairs, tmp_path / "c.h5", locus=locus, batch_size=3, progress=False))
    got = cache.load_token_norms()
    assert got.shape == (7, 2, tiny.n_layers) and got.dtype == np.float32
    want = direct_token_norms(tiny, pairs, locus)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the per-token norm is not the norm of the pooled mean (they agree only for a one-token locus)
    pooled = np.linalg.norm(cache.load(), axis=-1)
    if locus == "last":
        np.testing.assert_allclose(got, pooled, rtol=1e-5)
    else:
        assert (got > pooled * 1.01).all()
    np.testing.assert_array_equal(cache.load_token_norms("train", layers=[3, 1]), got[:, :, [3, 1]])


def test_fit_records_the_mean_token_norm(tiny_dir, tiny, tmp_path, capsys):
    pairs = [make_pair(i, split="train" if i < 24 else "val") for i in range(30)]
    src = tmp_path / "p.jsonl"
    write_pairs(pairs, src)
    args = ["extract", "--pairs", src, "--model", tiny_dir, "--cache", tmp_path / "c.h5", "--vectors-dir",
            tmp_path / "v", "--name", "tiny", "--folds", "2", "--controls", "1"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    from steerlab.vectors import VectorBundle

    per_layer = VectorBundle.load(tmp_path / "v" / "toy" / "tiny.safetensors").meta["diagnostics"]["per_layer"]
    want = direct_token_norms(tiny, pairs[:24], "scratchpad_mean").mean((0, 1))  # train pairs, both sides
    np.testing.assert_allclose(per_layer["token_norm"], want, rtol=1e-5)
    assert "resid_norm" not in per_layer  # the ambiguous name is gone
    train = ActivationCache.open(tmp_path / "c.h5").load("train")
    np.testing.assert_allclose(per_layer["pooled_norm"], np.linalg.norm(train, axis=-1).mean((0, 1)), rtol=1e-5)


def test_a_cache_without_token_norms_is_refused(tiny, tmp_path):
    out = extract(tiny, varied_pairs(2), tmp_path / "c.h5", progress=False)
    with h5py.File(out, "r+") as f:  # what steerlab before the per-token norm wrote
        del f["token_norms"]
        meta = json.loads(f.attrs["steerlab_meta"])
        f.attrs["steerlab_meta"] = json.dumps({**meta, "format_version": 1})
    with pytest.raises(CacheError, match=r"cache format 1.*re-extract") as info:
        ActivationCache.open(out)
    assert "\n" not in str(info.value)
    with pytest.raises(CacheError, match="re-extract"):
        extract(tiny, varied_pairs(2), out, progress=False)
    extract(tiny, varied_pairs(2), out, overwrite=True, progress=False)  # --overwrite re-extracts it
    assert ActivationCache.open(out).load_token_norms().shape == (2, 2, 4)


def test_a_format_2_cache_is_read_unverified_with_a_warning(tiny, tmp_path, caplog):
    out = extract(tiny, varied_pairs(3), tmp_path / "c.h5", progress=False)
    want = ActivationCache.open(out).load()
    with h5py.File(out, "r+") as f:  # what steerlab wrote before the checksums
        del f["checksums"]
        del f.attrs["steerlab_checksums"]
        meta = json.loads(f.attrs["steerlab_meta"])
        f.attrs["steerlab_meta"] = json.dumps({**meta, "format_version": 2})
    with caplog.at_level("WARNING", logger="steerlab.cache"):
        cache = ActivationCache.open(out)
        ActivationCache.open(out)
    assert not cache.verified
    np.testing.assert_array_equal(cache.load(), want)
    warnings = [r.getMessage() for r in caplog.records if "format-2" in r.getMessage()]
    assert len(warnings) == 1 and "no checksums" in warnings[0] and "--overwrite" in warnings[0]
    with pytest.raises(CacheError, match=r"in cache format 2 \(this steerlab writes format 3.*\); pass --overwrite"):
        extract(tiny, varied_pairs(3), out, progress=False)  # not reused: re-extract with --overwrite


def test_a_format_3_cache_without_checksums_is_refused(tiny, tmp_path):
    out = extract(tiny, varied_pairs(2), tmp_path / "c.h5", progress=False)
    with h5py.File(out, "r+") as f:
        del f["checksums"]
    with pytest.raises(CacheError, match="has no checksums dataset.*--overwrite"):
        ActivationCache.open(out)
