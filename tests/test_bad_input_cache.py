"""Activation caches a user might hand over damaged or in the wrong place (issue 14.6 and the cache rows
of its list): corrupt bytes inside the activations, an .h5 without activations, a progress file that
claims more pairs than exist, a cache path that cannot be written, a second extract while the first
is alive. Each is one line, exit 2, and nothing created or changed (see tests/test_bad_input.py)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import safetensors.numpy
from conftest import REPO, make_pair, run_cli
from test_bad_input import refused

from steerlab.cache import ActivationCache, partial_path, progress_path
from steerlab.errors import CacheError
from steerlab.extract import extract
from steerlab.fileio import LockedError
from steerlab.pairs import write_pairs

PAIRS = [make_pair(i, split="train" if i < 24 else "val") for i in range(30)]
FIT = ["--vectors-dir", "vectors", "--name", "tiny", "--folds", "2", "--controls", "1"]


@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    """A finished tiny cache of PAIRS, its pair file, and the same cache without its activations."""
    root = tmp_path_factory.mktemp("caches")
    write_pairs(PAIRS, root / "p.jsonl")
    extract(tiny, PAIRS, root / "good.h5", locus="span_mean", progress=False)
    shutil.copy(root / "good.h5", root / "noacts.h5")
    with h5py.File(root / "noacts.h5", "r+") as f:
        del f["activations"]
    return root


def activation_offset(path):
    """Byte offset of the activations' first chunk in the file (early allocation: always on disk)."""
    with h5py.File(path, "r") as f:
        dataset = f["activations"]
        info = dataset.id.get_chunk_info(0)
        return info.byte_offset, info.size


def corrupt(path, at=8192, n=4096):
    """Overwrite ``n`` bytes inside the activations with finite float32 values (no NaN to give it away)."""
    offset, size = activation_offset(path)
    assert at + n <= size
    noise = np.random.default_rng(0).normal(size=n // 4).astype(np.float32).tobytes()
    with open(path, "r+b") as fh:
        fh.seek(offset + at)
        old = fh.read(n)
        fh.seek(offset + at)
        fh.write(noise)
    assert old != noise


def test_corrupt_activations_stop_fit_and_write_no_vector(made, tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(made / "good.h5", "c.h5")
    code, _, err = run_cli(["fit", "--cache", "c.h5", *FIT], capsys)  # the uncorrupted cache fits as before
    assert code == 0, err
    fitted = (tmp_path / "vectors" / "toy" / "tiny.safetensors").read_bytes()
    shutil.rmtree("vectors")

    corrupt(tmp_path / "c.h5")
    with h5py.File("c.h5", "r") as f:  # the bytes changed are activation bytes: rows 4 and 5 of 30
        changed = np.flatnonzero(np.any(f["activations"][...] != ActivationCache.open(made / "good.h5").load(),
                                        axis=(1, 2, 3)))  # fmt: skip
    assert list(changed) == [4, 5]
    line = refused(["fit", "--cache", "c.h5", *FIT], "c.h5 is corrupt", tmp_path, capsys)
    assert "'toy-train-4' (row 4) and 1 more" in line and "--overwrite" in line
    assert not (tmp_path / "vectors").exists()

    # the one line's advice works: --overwrite re-extracts it, and the fit gives the same vectors as before
    code, _, err = run_cli(["extract", "--pairs", made / "p.jsonl", "--model", tiny_dir, "--cache", "c.h5",
                            "--locus", "span_mean", "--overwrite", *FIT], capsys)  # fmt: skip
    assert code == 0, err
    refit = safetensors.numpy.load(Path("vectors/toy/tiny.safetensors").read_bytes())
    np.testing.assert_allclose(refit["vector"], safetensors.numpy.load(fitted)["vector"], rtol=1e-5, atol=1e-6)


def test_corruption_is_named_on_every_read(made, tmp_path):
    path = tmp_path / "c.h5"
    shutil.copy(made / "good.h5", path)
    corrupt(path, at=24 * 2048)  # row 24: the first val pair; the train rows are intact
    cache = ActivationCache.open(path)
    assert cache.load("train").shape[0] == 24
    for read in (lambda: cache.load("val"), cache.load, lambda: cache.load(layers=[1])):
        with pytest.raises(CacheError, match=r"is corrupt: the activations of pair 'toy-val-24' \(row 24\)"):
            read()
    with h5py.File(path, "r+") as f:  # a label changed on disk (same length): caught when the cache opens
        f["splits"][0] = "val".ljust(5)
    with pytest.raises(CacheError, match="its splits do not match their checksums"):
        ActivationCache.open(path)


def _inputs(root, made):
    for name in ("good.h5", "noacts.h5", "p.jsonl"):
        shutil.copy(made / name, root / name)
    shutil.copy(made / "good.h5", partial_path(root / "stuck.h5"))
    progress_path(root / "stuck.h5").write_text(json.dumps({"rows_done": 99, "n_pairs": 99}))
    (root / "afile").write_text("a file, not a folder\n")


EXTRACT = ["extract", "--pairs", "p.jsonl", "--model", "TINY", "--locus", "span_mean", "--no-fit"]
TABLE = [
    (["fit", "--cache", "noacts.h5", *FIT], "noacts.h5 has no activations dataset"),
    (["cache", "inspect", "noacts.h5"], "noacts.h5 has no activations dataset"),
    (["fit", "--cache", "good.h5", *FIT[:4], "--folds", "0"], "--folds 0 must be 2 or more"),
    (["fit", "--cache", "good.h5", *FIT[:4], "--folds", "1"], "--folds 1 must be 2 or more"),
    ([*EXTRACT, "--cache", "stuck.h5", "--resume"], "records 99 of 99 rows done, but the partial cache has 30 pairs"),
    ([*EXTRACT, "--cache", "/proc/steerlab-test.h5"], "cannot write the cache /proc/steerlab-test.h5"),
    ([*EXTRACT, "--cache", "/proc/no/such/dir/c.h5"], "cannot write the cache /proc/no/such/dir/c.h5"),
    ([*EXTRACT, "--cache", "afile/c.h5"], "afile is a file, not a folder"),
    ([*EXTRACT, "--cache", "afile/sub/c.h5"], "afile is a file, not a folder"),
]


@pytest.mark.parametrize("args, says", TABLE, ids=[" ".join(a[:1] + a[-2:]) for a, _ in TABLE])
def test_bad_caches_are_one_line_exit_2_and_change_nothing(args, says, made, tiny_dir, tmp_path, capsys, monkeypatch):
    _inputs(tmp_path, made)
    monkeypatch.chdir(tmp_path)
    refused([tiny_dir if a == "TINY" else a for a in args], says, tmp_path, capsys)


SLOW_EXTRACT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from steerlab.testing import tiny_model
    from steerlab.pairs import load_pairs
    from steerlab.extract import extract
    loaded = tiny_model()
    loaded.blocks[0].register_forward_hook(lambda *a: time.sleep(0.5))  # slow enough to meet mid-run
    extract(loaded, load_pairs(Path(sys.argv[1])), Path(sys.argv[2]), batch_size=2, progress=False)
    """
)


def test_a_second_extract_is_told_the_first_is_alive_not_interrupted(made, tiny, tmp_path, capsys, monkeypatch):
    from steerlab.testing import tiny_model

    monkeypatch.chdir(tmp_path)
    shutil.copy(made / "p.jsonl", "p.jsonl")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT, "p.jsonl", "c.h5"], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (progress_path(tmp_path / "c.h5").exists() and partial_path(tmp_path / "c.h5").exists()):
            assert first.poll() is None and time.monotonic() < deadline, "the first extract ended too soon"
            time.sleep(0.05)
        args = ["extract", "--pairs", "p.jsonl", "--model", "no/such-model", "--cache", "c.h5", "--no-fit"]
        for extra in ([], ["--resume"], ["--overwrite"]):
            # refused before the model loads (the first extract is writing here: no snapshot)
            line = refused([*args, *extra], f"c.h5 is in use by another steerlab process (pid {first.pid})", None,
                           capsys)  # fmt: skip
            assert "interrupted" not in line
        with pytest.raises(LockedError, match=f"in use by another steerlab process \\(pid {first.pid}\\)"):
            extract(tiny_model(), PAIRS, tmp_path / "c.h5", batch_size=2, resume=True, progress=False)
        assert first.poll() is None  # the first one goes on
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait()
    # once it is dead, the same cache is an interrupted run, and resumes to the uninterrupted result
    line = refused(args, "an interrupted run left", tmp_path, capsys)
    assert "--resume" in line
    loaded = tiny_model()
    resumed = ActivationCache.open(extract(loaded, PAIRS, tmp_path / "c.h5", batch_size=2, resume=True,
                                           progress=False))  # fmt: skip
    clean = ActivationCache.open(extract(loaded, PAIRS, tmp_path / "clean.h5", batch_size=2, progress=False))
    np.testing.assert_array_equal(resumed.load(), clean.load())
