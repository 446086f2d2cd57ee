"""extract() overlaps the cache writes with the next forward pass (a writer thread): the cache it
writes equals a sequential run's bit for bit, a failed write or a failed forward pass stops the run
with progress claiming only rows that were written, and a resume completes the cache identically."""

import json
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import make_pair

from steerlab.cache import CacheWriter, partial_path, progress_path
from steerlab.extract import BlockWriter, cache_meta, encode_pairs, extract, lock_holder, pool, to_host
from steerlab.loci import Locus
from steerlab.testing import tiny_model

WAIT_S = 20  # a gate that is never opened fails the test after this long instead of hanging it


def varied_pairs(n):
    """Pairs of different lengths, so batches need padding."""
    return [make_pair(i, task=f"What is {i} plus 1?" + " Please be quick." * (i % 4)) for i in range(n)]


def sequential_extract(loaded, pairs, out, *, batch_size, dtype="float32", locus=Locus.scratchpad_mean):
    """The cache as extract() wrote it before the overlap: pool, then write, one batch after another."""
    layers = list(range(loaded.n_layers))
    meta = cache_meta(
        loaded, pairs, locus=locus, dtype=dtype, layers=layers, pair_file=Path("<memory>"), pair_file_hash=""
    )
    encoded = encode_pairs(loaded, pairs, locus)
    writer = CacheWriter(out, meta, [p.id for p in pairs], [p.split for p in pairs], [p.concept for p in pairs])
    writer.open(resume=False)
    for lo in range(0, len(pairs), batch_size):
        chunk = encoded[lo : lo + batch_size]
        acts, norms = pool(loaded, [s for sides in chunk for s in sides], layers)
        block = acts.reshape(len(chunk), 2, len(layers), loaded.d_model).numpy().astype(dtype, copy=False)
        writer.write(lo, block, norms.reshape(len(chunk), 2, len(layers)).numpy())
    return writer.finish()


def assert_same_cache(a_path, b_path):
    """Every dataset and attribute equal, to the bit (NaN included)."""
    with h5py.File(a_path) as a, h5py.File(b_path) as b:
        assert sorted(a) == sorted(b) and dict(a.attrs) == dict(b.attrs)
        for name in a:
            x, y = a[name][...], b[name][...]
            assert x.dtype == y.dtype and x.shape == y.shape, name
            if x.dtype.kind in "fiu":
                assert x.tobytes() == y.tobytes(), name
            else:
                assert list(x) == list(y), name


def writer_threads():
    return [t for t in threading.enumerate() if t.name == "steerlab-cache-writer"]


def count_forwards(loaded, on_call=None):
    """Count forward passes (the input embedding runs once per batch); ``on_call(n)`` runs at the n-th."""
    calls = []

    def hook(*_):
        calls.append(1)
        if on_call is not None:
            on_call(len(calls))

    return calls, loaded.model.get_input_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_overlapped_cache_equals_sequential(tiny, tmp_path, dtype):
    pairs = varied_pairs(11)  # batches of 3: the last one is short
    seq = sequential_extract(tiny, pairs, tmp_path / "seq.h5", batch_size=3, dtype=dtype)
    ovl = extract(tiny, pairs, tmp_path / "ovl.h5", batch_size=3, dtype=dtype, progress=False)
    assert_same_cache(ovl, seq)
    with h5py.File(ovl) as f:
        assert (f["checksums"][...] != 0).all() and np.isfinite(f["token_norms"][...]).all()


def test_writes_run_on_one_thread_while_the_next_batch_runs(tiny, tmp_path, monkeypatch):
    """The write of block 0 waits until the forward pass of batch 1 has begun: a sequential extract
    never gets there (the gate times out), an overlapped one does."""
    pairs = varied_pairs(8)
    second_forward = threading.Event()
    calls, handle = count_forwards(tiny, lambda n: n == 2 and second_forward.set())
    real_write = CacheWriter.write
    seen = []  # (start row, thread, whether the gate opened)

    def write(self, start, block, norms=None):
        opened = second_forward.wait(WAIT_S) if start == 0 else True
        seen.append((start, threading.current_thread(), opened))
        return real_write(self, start, block, norms)

    monkeypatch.setattr(CacheWriter, "write", write)
    try:
        out = extract(tiny, pairs, tmp_path / "c.h5", batch_size=2, progress=False)
    finally:
        handle.remove()
    assert [s[0] for s in seen] == [0, 2, 4, 6]  # in order, each once
    assert all(opened for _, _, opened in seen), "the next forward pass did not run during a write"
    threads = {s[1] for s in seen}
    assert len(threads) == 1 and threading.main_thread() not in threads
    assert not writer_threads()  # stopped once extract() returned
    assert len(calls) == 4
    monkeypatch.undo()
    assert_same_cache(out, sequential_extract(tiny, pairs, tmp_path / "seq.h5", batch_size=2))


def test_a_failed_write_surfaces_with_nothing_claimed_beyond_it(tiny, tmp_path, monkeypatch):
    """Block 2's write fails (disk full) while block 3 waits in the queue: extract() raises that
    very OSError, progress claims blocks 0-1 only, nothing later is written, and --resume completes
    the cache to the uninterrupted one's bytes."""
    pairs, bs, fail = varied_pairs(20), 2, 2  # 10 batches
    clean = extract(tiny, pairs, tmp_path / "clean.h5", batch_size=bs, progress=False)
    later_forward = threading.Event()
    calls, handle = count_forwards(tiny, lambda n: n == fail + 3 and later_forward.set())
    real_write = CacheWriter.write
    raised = []

    def write(self, start, block, norms=None):
        if start == fail * bs:
            raised.append(later_forward.wait(WAIT_S))  # block fail+1 is queued by now, fail+2 computed
            raised.append(OSError(28, "No space left on device"))
            raise raised[-1]
        return real_write(self, start, block, norms)

    monkeypatch.setattr(CacheWriter, "write", write)
    out = tmp_path / "c.h5"
    try:
        with pytest.raises(OSError) as excinfo:
            extract(tiny, pairs, out, batch_size=bs, progress=False)
    finally:
        handle.remove()
    assert raised[0], "the queue never held blocks behind the failing one"
    assert excinfo.value is raised[1] and str(excinfo.value) == "[Errno 28] No space left on device"
    assert fail + 3 <= len(calls) <= fail + 4 < 10  # the run stopped: at most the block being put when it failed
    assert json.loads(progress_path(out).read_text()) == {"rows_done": fail * bs, "n_pairs": 20}
    with h5py.File(partial_path(out)) as f:  # the queued blocks were dropped, not written
        assert (f["checksums"][: fail * bs] != 0).all() and (f["checksums"][fail * bs :] == 0).all()
        assert np.isnan(f["token_norms"][fail * bs :]).all()
    assert not out.exists() and not writer_threads() and lock_holder(out) is None

    monkeypatch.undo()
    assert_same_cache(extract(tiny, pairs, out, batch_size=bs, resume=True, progress=False), clean)
    assert not partial_path(out).exists() and not progress_path(out).exists()


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: an illegal memory access"), KeyboardInterrupt()])
def test_a_failed_forward_pass_finishes_the_queued_blocks_then_resumes(tiny, tmp_path, monkeypatch, error):
    """The forward pass of batch 3 fails while block 0 is still being written and blocks 1-2 wait in
    the queue: the same error reaches the caller only after the writer has written and recorded
    blocks 0-2; the file is closed, the lock free, and --resume completes it identically."""
    pairs, bs, fail = varied_pairs(16), 2, 3
    clean = extract(tiny, pairs, tmp_path / "clean.h5", batch_size=bs, progress=False)
    failing = threading.Event()

    def on_call(n):
        if n == fail + 1:
            failing.set()
            raise error

    calls, handle = count_forwards(tiny, on_call)
    real_write = CacheWriter.write
    gate = []

    def write(self, start, block, norms=None):
        if start == 0:
            gate.append(failing.wait(WAIT_S))  # held until the main thread has failed
        return real_write(self, start, block, norms)

    monkeypatch.setattr(CacheWriter, "write", write)
    out = tmp_path / "c.h5"
    try:
        with pytest.raises(type(error)) as excinfo:
            extract(tiny, pairs, out, batch_size=bs, progress=False)
    finally:
        handle.remove()
    assert excinfo.value is error and gate == [True] and len(calls) == fail + 1
    assert json.loads(progress_path(out).read_text()) == {"rows_done": fail * bs, "n_pairs": 16}
    with h5py.File(partial_path(out)) as f:
        assert (f["checksums"][: fail * bs] != 0).all() and (f["checksums"][fail * bs :] == 0).all()
    assert not out.exists() and not writer_threads() and lock_holder(out) is None

    monkeypatch.undo()
    assert_same_cache(extract(tiny, pairs, out, batch_size=bs, resume=True, progress=False), clean)


def test_an_interrupt_while_draining_drops_the_blocks_not_begun():
    """A second Ctrl-C while close() waits: the block being written is finished, the queued ones are
    dropped, the thread has stopped when the interrupt is re-raised."""
    started, release = threading.Event(), threading.Event()
    written = []

    def write(item):
        started.set()
        assert release.wait(WAIT_S)
        written.append(item)

    blocks = BlockWriter(write, depth=3)  # room for the end marker behind blocks 1 and 2
    blocks.put(0)
    started.wait(WAIT_S)
    blocks.put(1)
    blocks.put(2)
    thread, real_join, joins = blocks._thread, blocks._thread.join, []

    def join(timeout=None):
        joins.append(1)
        if len(joins) == 1:
            raise KeyboardInterrupt  # Ctrl-C while waiting for the queue to drain
        release.set()  # the write in progress ends only after the interrupt was taken
        return real_join(timeout)

    thread.join = join
    with pytest.raises(KeyboardInterrupt):
        blocks.close()
    assert written == [0] and not thread.is_alive()


def test_a_write_error_is_reraised_at_the_next_put():
    def write(item):
        raise OSError(5, f"Input/output error at {item}")

    blocks = BlockWriter(write)
    blocks.put(0)
    blocks.close()
    with pytest.raises(OSError, match=r"^\[Errno 5\] Input/output error at 0$"):
        blocks.raise_error()
    with pytest.raises(OSError, match="at 0$"):
        blocks.put(1)


def test_to_host_on_cpu_stacks_without_events():
    parts = [torch.arange(6, dtype=torch.float32).reshape(2, 3) + k for k in range(4)]
    host = to_host(parts)
    assert host.events == [] and host.data.shape == (4, 2, 3)
    assert torch.equal(host.ready(), torch.stack(parts))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_to_host_copies_cuda_parts_into_pinned_memory_behind_an_event():
    parts = [torch.randn(16, 4096, device="cuda") for _ in range(8)]
    host = to_host(parts)
    assert host.data.is_pinned() and len(host.events) == 1
    assert torch.equal(host.ready(), torch.stack([p.cpu() for p in parts]))


@cuda
def test_overlapped_cache_on_cuda_equals_sequential(tmp_path):
    loaded = tiny_model()
    loaded.model.to("cuda")
    pairs = varied_pairs(11)
    seq = sequential_extract(loaded, pairs, tmp_path / "seq.h5", batch_size=3)
    ovl = extract(loaded, pairs, tmp_path / "ovl.h5", batch_size=3, progress=False)
    assert_same_cache(ovl, seq)
