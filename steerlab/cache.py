"""The HDF5 activation cache: streaming, resumable writes and a small reader.

Layout of a cache file::

    /activations   [n_pairs, 2, n_layers, d_model]  float32 | float16   (side 0 = positive)
    /token_norms   [n_pairs, 2, n_layers]  float32: per sequence and layer, the mean over the locus's
                   tokens of the residual norm ||h_t|| (NaN where a writer recorded none)
    /pair_ids      [n_pairs]  str
    /splits        [n_pairs]  str
    /concepts      [n_pairs]  str
    attrs["steerlab_meta"]  JSON: model fingerprint, locus, dtype, layers, chat-template hash,
                            steerlab version, pair-file hash, ...

Crash safety. A run writes ``OUT.partial`` and, after each flushed batch, an atomic sidecar
``OUT.partial.progress.json`` holding the number of rows done. Every dataset is allocated in
full when the file is created (HDF5 "early" allocation), so later writes only fill raw bytes:
HDF5's own metadata never changes after creation, and a ``kill -9`` in the middle of a batch
leaves at worst some unfinished rows beyond the recorded count, which ``--resume`` writes
again. When the last row is flushed the file is renamed to ``OUT``; a finished cache is never
overwritten without ``overwrite=True``.

Format 2 added ``token_norms``. A format-1 cache cannot be read compatibly (the per-token norms
need the model), so it is refused with a message to re-extract it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from steerlab.errors import CacheError
from steerlab.fileio import atomic_write_text

FORMAT_VERSION = 2
META_ATTR = "steerlab_meta"
# Fields that must agree between a partial cache and the run resuming it.
IDENTITY_FIELDS = ("format_version", "model", "locus", "dtype", "layers", "pair_file_hash", "chat_template_hash")
_CHUNK_BYTES = 1 << 20


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.progress.json")


def _describe_mismatch(key: str, old: Any, new: Any) -> str:
    if key == "model":
        diff = [k for k in new if old.get(k) != new.get(k)]
        return f"another model (fingerprint differs in {', '.join(diff)})"
    return f"{key} {old!r} (this run: {new!r})"


def check_compatible(meta: dict[str, Any], expected: dict[str, Any], where: Path) -> None:
    """Refuse to resume or reuse a cache written with other settings."""
    for key in IDENTITY_FIELDS:
        if meta.get(key) != expected.get(key):
            raise CacheError(
                f"{where} was written for {_describe_mismatch(key, meta.get(key), expected.get(key))}; "
                "rerun with matching settings, or pass --overwrite to start over"
            )


class CacheWriter:
    """Creates (or reopens) a partial cache and writes rows in order."""

    def __init__(self, out: Path, meta: dict[str, Any], ids: list[str], splits: list[str], concepts: list[str]):
        self.out = Path(out)
        self.meta = meta
        self.n_pairs = len(ids)
        self._ids, self._splits, self._concepts = ids, splits, concepts
        self._file: h5py.File | None = None
        self.done = 0

    # -- lifecycle ---------------------------------------------------------------------
    def open(self, resume: bool) -> int:
        """Open for writing; returns the number of rows already done (0 for a fresh file)."""
        part, prog = partial_path(self.out), progress_path(self.out)
        if resume and part.exists() and prog.exists():
            try:
                done = int(json.loads(prog.read_text())["rows_done"])
                self._file = h5py.File(part, "r+")
                meta = json.loads(self._file.attrs[META_ATTR])
            except (OSError, KeyError, ValueError) as exc:
                raise CacheError(
                    f"the partial cache {part} cannot be read ({exc}); pass --overwrite to start over"
                ) from None
            try:
                check_compatible(meta, self.meta, part)
                if list(self._file["pair_ids"].asstr()[...]) != self._ids:
                    raise CacheError(f"{part} holds other pairs; pass --overwrite to start over")
            except CacheError:
                self.close()
                raise
            self.done = done
            return done
        self._create(part)
        self._write_progress(0)
        return 0

    def _create(self, part: Path) -> None:
        part.parent.mkdir(parents=True, exist_ok=True)
        for stale in (part, progress_path(self.out)):
            stale.unlink(missing_ok=True)
        n_layers, d_model = len(self.meta["layers"]), self.meta["d_model"]
        dtype = np.dtype(self.meta["dtype"])
        row_bytes = 2 * n_layers * d_model * dtype.itemsize
        rows = max(1, min(self.n_pairs, _CHUNK_BYTES // row_bytes))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        f = h5py.File(part, "w")
        f.create_dataset(
            "activations",
            shape=(self.n_pairs, 2, n_layers, d_model),
            dtype=dtype,
            chunks=(rows, 2, n_layers, d_model),
            dcpl=dcpl,
        )
        norms_dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)  # h5py sets the chunk shape on a dcpl it is given
        norms_dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        f.create_dataset(
            "token_norms", shape=(self.n_pairs, 2, n_layers), dtype=np.float32, fillvalue=np.nan, dcpl=norms_dcpl
        )
        text = h5py.string_dtype()
        f.create_dataset("pair_ids", data=np.array(self._ids, dtype=object), dtype=text)
        f.create_dataset("splits", data=np.array(self._splits, dtype=object), dtype=text)
        f.create_dataset("concepts", data=np.array(self._concepts, dtype=object), dtype=text)
        f.attrs[META_ATTR] = json.dumps(self.meta, sort_keys=True)
        f.flush()
        self._file = f

    def write(self, start: int, block: np.ndarray, token_norms: np.ndarray | None = None) -> None:
        """Write rows ``start:start+len(block)`` ([rows, 2, n_layers, d_model]) and their per-token norms
        ([rows, 2, n_layers]; left NaN when None), then record progress."""
        assert self._file is not None and start == self.done, (start, self.done)
        self._file["activations"][start : start + len(block)] = block
        if token_norms is not None:
            if token_norms.shape != block.shape[:3]:
                raise ValueError(f"token_norms {token_norms.shape} do not match the block {block.shape}")
            self._file["token_norms"][start : start + len(block)] = token_norms
        self._file.flush()
        self.done = start + len(block)
        self._write_progress(self.done)

    def _write_progress(self, done: int) -> None:
        atomic_write_text(progress_path(self.out), json.dumps({"rows_done": done, "n_pairs": self.n_pairs}))

    def finish(self) -> Path:
        """Close and publish: rename the partial file onto the final name."""
        if self.done != self.n_pairs:
            raise RuntimeError(f"finish() with {self.done}/{self.n_pairs} rows written")
        self.close()
        os.replace(partial_path(self.out), self.out)
        progress_path(self.out).unlink(missing_ok=True)
        return self.out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class ActivationCache:
    """Read side of a finished cache; activations are read lazily."""

    path: Path
    meta: dict[str, Any]
    pair_ids: list[str]
    splits: list[str]
    concepts: list[str]

    @classmethod
    def open(cls, path: Path) -> ActivationCache:
        path = Path(path)
        if not path.is_file():
            hint = (
                " (an interrupted run left a .partial file: rerun with --resume)" if partial_path(path).exists() else ""
            )
            raise CacheError(f"no activation cache at {path}{hint}")
        try:
            with h5py.File(path, "r") as f:
                meta = json.loads(f.attrs[META_ATTR])
                ids = list(f["pair_ids"].asstr()[...])
                splits = list(f["splits"].asstr()[...])
                concepts = list(f["concepts"].asstr()[...])
        except (OSError, KeyError, ValueError) as exc:
            raise CacheError(f"{path} is not a steerlab activation cache ({exc})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise CacheError(
                f"{path} has cache format {meta.get('format_version')}, this steerlab reads {FORMAT_VERSION} "
                "(it records per-token norms); re-extract it: steerlab extract ... --overwrite"
            )
        return cls(path=path, meta=meta, pair_ids=ids, splits=splits, concepts=concepts)

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    def rows(self, split: str | None = None, concept: str | None = None) -> np.ndarray:
        """Row indices of one split and/or concept (all rows when both are None), in file order."""
        keep = np.ones(len(self.pair_ids), dtype=bool)
        if split is not None:
            keep &= np.array(self.splits) == split
        if concept is not None:
            keep &= np.array(self.concepts) == concept
        return np.flatnonzero(keep)

    def load(self, split: str | None = None, layers: list[int] | None = None, concept: str | None = None) -> np.ndarray:
        """Activations ``[n_rows, 2, n_selected_layers, d_model]`` for one split and/or concept (or all)."""
        return self._read("activations", split, layers, concept)

    def load_token_norms(
        self, split: str | None = None, layers: list[int] | None = None, concept: str | None = None
    ) -> np.ndarray:
        """Mean per-token residual norms ``[n_rows, 2, n_selected_layers]`` (float32; NaN where none was recorded)."""
        return self._read("token_norms", split, layers, concept)

    def _read(self, name: str, split: str | None, layers: list[int] | None, concept: str | None) -> np.ndarray:
        cols: Any = slice(None)
        if layers is not None:
            missing = [layer for layer in layers if layer not in self.layers]
            if missing:
                raise CacheError(f"layer(s) {missing} are not in {self.path} (it holds {self.layers})")
            cols = [self.layers.index(layer) for layer in layers]
        with h5py.File(self.path, "r") as f:
            dataset = f[name]
            if split is None and concept is None:
                data = dataset[...]
            else:
                rows = self.rows(split, concept)
                data = dataset[rows] if len(rows) else np.empty((0, *dataset.shape[1:]), dtype=dataset.dtype)
        return data[:, :, cols] if layers is not None else data
