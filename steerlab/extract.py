"""Run a model over both sides of every pair and cache locus-pooled residual activations.

The residual stream at layer ``l`` is the output of decoder block ``l`` (0-based). At the
last block this is the stream *before* the model's final norm; note that transformers'
``output_hidden_states[-1]`` is taken after that norm.

Pooling happens inside forward hooks, one batched matrix product per layer, so only
``[batch, n_layers, d_model]`` floats per batch ever leave the model; the forward pass stops
after the last requested block (no final norm, no LM head). The same hook also reduces the
per-token norms ||h_t|| with the same weights: the mean over the locus's tokens of the residual
norm, ``[batch, n_layers]``, which is what a dose relative to "the residual norm" must use,
since steering adds at every token (the norm of the pooled mean is smaller, by a factor that
depends on the locus).

Overlap. :func:`extract` keeps the accelerator busy while the cache is written. For each batch
the main thread launches the forward pass, then queues the pooled block's copy to the host: on
CUDA each layer's ``[batch, d_model]`` result is copied with ``non_blocking=True`` into pinned
host memory and a CUDA event is recorded after the copies (on the CPU the hooks' own tensors are
stacked: no further copy). One writer thread takes the blocks from a queue of depth 2, in order;
it waits on the block's events before it reads the buffer, then writes the rows, their checksums
and the progress record (:meth:`steerlab.cache.CacheWriter.write`) and advances the progress bar,
while the main thread already runs the next batch. Only the writer thread touches the HDF5 file
while it runs; the main thread opens it before and closes or publishes it after the thread has
stopped. The resume guarantees are those of a sequential run: progress counts only rows that are
written and flushed. A failed write is re-raised in the main thread (the same exception) before
its next forward pass, and the blocks queued after it are dropped unwritten. When the main thread
fails (a model error, Ctrl-C) the writer finishes the blocks already queued, then the file is
closed and the lock released; a second Ctrl-C while it drains drops the blocks not yet begun.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import torch
from tqdm.auto import tqdm

import steerlab
from steerlab.cache import (
    FORMAT_VERSION,
    IDENTITY_FIELDS,
    ActivationCache,
    CacheWriter,
    check_compatible,
    partial_path,
    progress_path,
    read_progress,
)
from steerlab.errors import CacheError, PairFileError
from steerlab.fileio import LockedError, exclusive
from steerlab.loci import Locus, char_range, render, render_prompt, token_positions
from steerlab.models import LoadedModel, chat_template_hash, check_layers, context_length
from steerlab.pairs import SIDES, Pair, structure_problems

CACHE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class Encoded:
    """One side of one pair, tokenised, with the token positions its locus pools over."""

    input_ids: list[int]
    positions: list[int]


def encode_pairs(loaded: LoadedModel, pairs: Sequence[Pair], locus: Locus) -> list[tuple[Encoded, Encoded]]:
    """Tokenise every pair up front, so bad input fails before anything is written.

    Both sides of a pair share their prompt, so it is rendered once; all texts go through the
    tokenizer in one batched call.
    """
    tokenizer, template = loaded.tokenizer, loaded.chat_template
    texts, ranges = [], []
    for pair in pairs:
        problems = structure_problems(pair)
        if problems:
            raise PairFileError(f"pair {pair.id!r}: {problems[0].message} (run `steerlab pairs validate`)")
        prompt_messages = pair.chat("positive")[:-1]
        prompt = render_prompt(tokenizer, prompt_messages, template)
        for side in SIDES:
            try:
                chat = pair.chat(side)
                shared = prompt if chat[:-1] == prompt_messages else None
                rendered = render(tokenizer, chat, template, pair.span(side), prompt=shared)
                ranges.append(char_range(rendered, locus))
            except PairFileError as exc:
                raise PairFileError(f"pair {pair.id!r} ({side}): {exc}") from None
            texts.append(rendered.text)
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    context = context_length(loaded)
    encoded = []
    for k, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"], strict=True)):
        if context is not None and len(ids) > context:
            raise PairFileError(
                f"pair {pairs[k // 2].id!r} ({SIDES[k % 2]}) is {len(ids)} tokens, longer than the model's context "
                f"of {context}; shorten or drop it"
            )
        try:
            positions = token_positions(offsets, ranges[k], locus)
        except PairFileError as exc:
            raise PairFileError(f"pair {pairs[k // 2].id!r} ({SIDES[k % 2]}): {exc}") from None
        encoded.append(Encoded(input_ids=list(ids), positions=positions))
    return [(encoded[i], encoded[i + 1]) for i in range(0, len(encoded), 2)]


class _StopForward(Exception):
    """Raised by the last capture hook: nothing after that block is needed."""


@contextlib.contextmanager
def pooling_hooks(
    blocks: torch.nn.ModuleList, layers: list[int], weights: torch.Tensor
) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Hooks that pool each selected block's output with ``weights`` ``[batch, seq]``.

    Yields two lists that fill with one tensor per selected layer: the pooled activations
    ``[batch, d_model]`` and the equally weighted per-token norms ``[batch]`` (float32). The
    hook on the deepest selected block stops the forward pass.
    """
    pooled: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    by_device: dict[torch.device, torch.Tensor] = {}
    deepest = max(layers)

    def make_hook(layer: int):
        def hook(_module: Any, _args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output  # [batch, seq, d_model]
            w = by_device.get(hidden.device)
            if w is None:
                w = by_device.setdefault(hidden.device, to_device(weights, hidden.device))
            h = hidden.float()
            pooled.append(torch.bmm(w.unsqueeze(1), h).squeeze(1))  # [batch, d_model]
            norms.append((w * torch.linalg.vector_norm(h, dim=-1)).sum(-1))  # [batch]: mean of ||h_t|| at the locus
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in layers]
    try:
        yield pooled, norms
    finally:
        for handle in handles:
            handle.remove()


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a host tensor bound for CUDA goes through pinned memory without
    blocking the host (a plain ``.to()`` makes the host wait for the work already queued there)."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def pad_batch(
    sides: Sequence[Encoded], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` ``[batch, seq]`` on ``device`` and pooling weights
    ``[batch, seq]`` (CPU)."""
    seq = max(len(s.input_ids) for s in sides)
    ids = torch.full((len(sides), seq), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sides), seq), dtype=torch.long)
    weights = torch.zeros((len(sides), seq), dtype=torch.float32)
    for row, side in enumerate(sides):
        ids[row, : len(side.input_ids)] = torch.tensor(side.input_ids)
        mask[row, : len(side.input_ids)] = 1
        weights[row, side.positions] = 1.0 / len(side.positions)
    return to_device(ids, device), to_device(mask, device), weights


@torch.inference_mode()
def _forward_pooled(
    loaded: LoadedModel, sides: Sequence[Encoded], layers: list[int]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One forward pass; per selected layer, the pooled activations ``[len(sides), d_model]`` and norms
    ``[len(sides)]`` (float32), each on the device its block ran on (possibly still being computed)."""
    ids, mask, weights = pad_batch(sides, loaded.tokenizer.pad_token_id, loaded.device)
    with pooling_hooks(loaded.blocks, layers, weights) as (pooled, norms):
        try:
            loaded.model(input_ids=ids, attention_mask=mask, use_cache=False)
        except _StopForward:
            pass
    return pooled, norms


def _nnsight_forward(model: Any) -> Callable[..., tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """:func:`_forward_pooled` through ``model``'s nnsight traces: the same right-padded batch and weights."""
    from steerlab.nnsight_model import pool_trace

    def forward(loaded: LoadedModel, sides: Sequence[Encoded], layers: list[int]):
        ids, mask, weights = pad_batch(sides, loaded.tokenizer.pad_token_id, model.input_device)
        pooled, norms = pool_trace(model, ids, mask, weights, layers)  # [batch, L, D], [batch, L]
        return list(pooled.unbind(1)), list(norms.unbind(1))

    return forward


@torch.inference_mode()
def pool(loaded: LoadedModel, sides: Sequence[Encoded], layers: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Locus-pooled residual activations ``[len(sides), len(layers), d_model]`` and the mean per-token
    norms at the locus ``[len(sides), len(layers)]`` (float32, CPU), from one forward pass."""
    pooled, norms = _forward_pooled(loaded, sides, layers)
    return torch.stack([p.cpu() for p in pooled], dim=1), torch.stack([n.cpu() for n in norms], dim=1)


@dataclass
class HostBlock:
    """Per-layer results stacked on the host, ``[n_layers, *part]``, possibly still in flight from a
    CUDA device: :meth:`ready` waits for the copies before the data may be read."""

    data: torch.Tensor
    events: list[Any]  # torch.cuda.Event, one per CUDA device the parts came from

    def ready(self) -> torch.Tensor:
        for event in self.events:
            event.synchronize()
        return self.data


@torch.inference_mode()
def to_host(parts: Sequence[torch.Tensor]) -> HostBlock:
    """Stack ``parts`` (same shape and dtype, any devices) into one host tensor ``[len(parts), *shape]``.

    CUDA parts are copied asynchronously into pinned memory (``non_blocking``), with an event recorded
    on each source device's current stream after its copies; parts already on the CPU are stacked,
    which is the one copy they need. Nothing here waits for the device.
    """
    cuda = list(dict.fromkeys(p.device for p in parts if p.device.type == "cuda"))
    if not cuda:
        return HostBlock(torch.stack([p.cpu() for p in parts]), [])
    host = torch.empty((len(parts), *parts[0].shape), dtype=parts[0].dtype, pin_memory=True)
    for row, part in zip(host, parts, strict=True):
        row.copy_(part, non_blocking=part.device.type == "cuda")  # each row is contiguous: a true async copy
    events = []
    for device in cuda:
        event = torch.cuda.Event(blocking=True)  # the writer thread sleeps on it instead of spinning
        event.record(torch.cuda.current_stream(device))
        events.append(event)
    return HostBlock(host, events)


_STOP = object()  # BlockWriter's end-of-queue marker


class BlockWriter:
    """One background thread that runs ``write(item)`` for queued items, in order.

    ``put`` blocks while ``depth`` items wait. The first exception ``write`` raises is kept; later
    items are then dropped unwritten, and :meth:`raise_error` re-raises it (the same object) in the
    caller's thread. :meth:`close` lets the thread finish the queued items and waits for it to stop;
    an interrupt (Ctrl-C) while it waits makes the thread drop the items it has not begun, and is
    re-raised once the thread has stopped, so nothing runs ``write`` after :meth:`close` returns.
    """

    def __init__(self, write: Callable[[Any], None], depth: int = 2, name: str = "steerlab-cache-writer"):
        self._write = write
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._closing = False
        self._abandon = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()  # the thread takes every item up to _STOP, so a put() never waits forever
            if item is _STOP:
                return
            if self.error is None and not self._abandon:
                try:
                    self._write(item)
                except BaseException as exc:  # surfaced in the caller's thread by raise_error()
                    self.error = exc
            del item  # let the block's buffers go now, not when the next one arrives

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item: Any) -> None:
        """Queue ``item`` (waiting while the queue is full); first re-raises a failed write."""
        self.raise_error()
        if self._closing:
            raise RuntimeError("put() after close()")
        self._queue.put(item)

    def close(self) -> None:
        """Finish the queued items and stop the thread (see the class docstring); idempotent."""
        stop_sent, self._closing = self._closing, True
        interrupt: BaseException | None = None
        while self._thread.is_alive():
            try:
                if not stop_sent:
                    self._queue.put(_STOP)  # waits for room behind the queued items
                    stop_sent = True
                self._thread.join()
            except BaseException as exc:  # Ctrl-C while draining: drop what has not begun, still wait
                self._abandon = True
                interrupt = interrupt or exc
        if interrupt is not None:
            raise interrupt


def pooled_activations(loaded: LoadedModel, sides: Sequence[Encoded], layers: list[int]) -> torch.Tensor:
    """Locus-pooled residual activations ``[len(sides), len(layers), d_model]`` (float32, CPU)."""
    return pool(loaded, sides, layers)[0]


def cache_meta(
    loaded: LoadedModel,
    pairs: Sequence[Pair],
    *,
    locus: Locus,
    dtype: str,
    layers: list[int],
    pair_file: Path,
    pair_file_hash: str,
    engine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    splits: dict[str, int] = {}
    for p in pairs:
        splits[p.split] = splits.get(p.split, 0) + 1
    return {
        "format_version": FORMAT_VERSION,
        "steerlab_version": steerlab.__version__,
        "model": loaded.fingerprint.to_dict(),
        "model_source": loaded.source,
        "locus": locus.value,
        "dtype": dtype,
        "layers": layers,
        "d_model": loaded.d_model,
        "n_pairs": len(pairs),
        "chat_template_hash": chat_template_hash(loaded.chat_template),
        "pair_file": str(pair_file),
        "pair_file_hash": pair_file_hash,
        "concepts": sorted({p.concept for p in pairs}),
        "split_counts": splits,
        # how the activations were computed: {"engine": "hf"} or the nnsight engine's record (remote runs: the NDIF
        # model id). Recorded, not part of the identity: engines agree to float32 rounding (tested), and whether a
        # remote and a local model are the same is the fingerprint's to say.
        "engine": engine or {"engine": "hf"},
    }


def check_writable(out: Path) -> None:
    """Refuse a cache path that cannot be written (a file where a folder is expected, a folder that
    takes no files such as /proc), before anything loads; nothing is left behind."""
    out = Path(out)
    if out.is_dir():
        raise CacheError(f"{out} is a directory; --cache names the cache file to write")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CacheError(f"cannot write the cache {out}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise CacheError(f"cannot write the cache {out}: {folder} does not take new files ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def lock_holder(out: Path) -> str | None:
    """The pid (as recorded) of a live process holding ``out``'s cache lock, or None; creates nothing."""
    lock = Path(out).with_name(Path(out).name + ".lock")
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # also releases a lock this probe got
    return None


_held: set[Path] = set()  # caches this process holds the lock of (nested holds are one hold)


@contextlib.contextmanager
def writing(out: Path) -> Iterator[None]:
    """Hold ``out``'s cache lock (:func:`steerlab.fileio.exclusive` on ``<out>.lock``) for the block,
    creating its folder; a second writer gets one line naming the holder's pid. Re-entrant within a
    process (a nested hold is the same hold; :func:`preflight` inside it does not probe the lock)."""
    out = Path(out)
    key = out.absolute()
    if key in _held:
        yield
        return
    check_writable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot write the cache {out}: {exc.strerror} ({exc.filename})") from None
    with exclusive(out, "cache"):
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)


def preflight(out: Path, *, resume: bool, overwrite: bool, expect: dict[str, Any] | None = None) -> None:
    """Refusals that need no model: call before loading weights. Leaves nothing behind.

    ``expect`` holds whichever identity fields are known without the model (locus, dtype,
    pair_file_hash, layers); a finished cache at ``out`` that disagrees is refused here. A partial
    cache that a live process is writing is refused with that process's pid. A path that cannot be
    written is refused unless a finished cache there is to be reused (a read-only folder is fine then).
    """
    out = Path(out)
    if out.is_dir():
        raise CacheError(f"{out} is a directory; --cache names the cache file to write")
    if overwrite or not out.exists():
        check_writable(out)
    if Path(out).absolute() not in _held and (holder := lock_holder(out)) is not None:
        raise LockedError(
            f"{out} is in use by another steerlab process (pid {holder}); wait for it to finish, or stop it first"
        )
    part = partial_path(out)
    if part.exists() and not (resume or overwrite):
        raise CacheError(f"an interrupted run left {part}; pass --resume to continue it or --overwrite to start over")
    if part.exists() and resume and not overwrite and progress_path(out).exists():
        try:
            with h5py.File(part, "r") as f:
                n_pairs = len(f["pair_ids"])
        except (OSError, KeyError) as exc:
            raise CacheError(
                f"the partial cache {part} cannot be read ({exc}); pass --overwrite to start over"
            ) from None
        read_progress(out, n_pairs)
    if out.exists() and not overwrite and expect:
        meta = ActivationCache.open(out).meta
        known = {**{k: meta.get(k) for k in IDENTITY_FIELDS}, "format_version": FORMAT_VERSION, **expect}
        check_compatible(meta, known, out)


def extract(
    loaded: LoadedModel,
    pairs: Sequence[Pair],
    out: Path,
    *,
    locus: Locus | str = Locus.scratchpad_mean,
    dtype: str = "float32",
    layers: list[int] | None = None,
    batch_size: int = 8,
    resume: bool = False,
    overwrite: bool = False,
    pair_file: Path = Path("<memory>"),
    pair_file_hash: str = "",
    progress: bool = True,
    nnsight: Any = None,
) -> Path:
    """Write the activation cache for ``pairs`` at ``out``, or reuse or resume one.

    A finished cache at ``out`` written with the same settings and model is reused as it is; one
    written otherwise is refused unless ``overwrite`` (which replaces it only once the new one is
    complete). An interrupted run's partial cache continues with ``resume``. ``batch_size``
    counts pairs; each batch runs ``2 * batch_size`` sequences. ``nnsight``: a
    :class:`steerlab.nnsight_model.NNsightModel` wrapping ``loaded`` (locally or on NDIF), whose traces then compute
    the pooled activations (:func:`steerlab.nnsight_model.pool_trace`) instead of steerlab's own hooks.
    """
    out = Path(out)
    locus = Locus(locus)
    if dtype not in CACHE_DTYPES:
        raise CacheError(f"cache dtype {dtype!r} is not supported; use {' or '.join(CACHE_DTYPES)}")
    if batch_size < 1:
        raise CacheError("--batch-size must be at least 1")
    layers = check_layers(layers, loaded.n_layers)
    meta = cache_meta(
        loaded, pairs, locus=locus, dtype=dtype, layers=layers, pair_file=pair_file, pair_file_hash=pair_file_hash,
        engine=nnsight.engine_meta() if nnsight is not None else None,
    )  # fmt: skip
    forward = _forward_pooled if nnsight is None else _nnsight_forward(nnsight)

    preflight(out, resume=resume, overwrite=overwrite)
    if out.exists() and not overwrite:
        check_compatible(ActivationCache.open(out).meta, meta, out)
        return out  # finished and matching: reuse it

    encoded = encode_pairs(loaded, pairs, locus)  # bad pairs fail before anything is written
    with writing(out):
        preflight(out, resume=resume, overwrite=overwrite)  # again, now that no other writer can start
        writer = CacheWriter(out, meta, [p.id for p in pairs], [p.split for p in pairs], [p.concept for p in pairs])
        start = writer.open(resume=resume and not overwrite)
        try:
            bar = tqdm(total=len(pairs), initial=start, unit="pair", desc="extract", disable=not progress)

            def write_block(item: tuple[int, int, HostBlock, HostBlock]) -> None:  # on the writer thread
                lo, n, acts, norms = item
                # [n_layers, 2 * n, d_model] -> [n, 2, n_layers, d_model]; [n_layers, 2 * n] -> [n, 2, n_layers]
                block = acts.ready().transpose(0, 1).reshape(n, 2, len(layers), loaded.d_model)
                norms_block = norms.ready().transpose(0, 1).reshape(n, 2, len(layers))
                writer.write(lo, block.numpy().astype(dtype, copy=False), norms_block.numpy())
                bar.update(n)

            blocks = BlockWriter(write_block)  # from here until blocks.close() only its thread uses `writer`
            try:
                for lo in range(start, len(pairs), batch_size):
                    blocks.raise_error()  # a failed write stops the run before the next forward pass
                    chunk = encoded[lo : lo + batch_size]
                    sides = [side for pair_sides in chunk for side in pair_sides]  # pos0, neg0, pos1, neg1, ...
                    pooled, norms = forward(loaded, sides, layers)
                    blocks.put((lo, len(chunk), to_host(pooled), to_host(norms)))
            finally:
                blocks.close()  # the queued blocks are written (or dropped after a failed write)
            blocks.raise_error()
            bar.close()
        except BaseException:
            writer.close()
            raise
        return writer.finish()
