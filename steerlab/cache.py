"""The HDF5 activation cache: streaming, resumable writes and a small reader.

Layout of a cache file::

    /activations   [n_pairs, 2, n_layers, d_model]  float32 | float16   (side 0 = positive)
    /token_norms   [n_pairs, 2, n_layers]  float32: per sequence and layer, the mean over the locus's
                   tokens of the residual norm ||h_t|| (NaN where a writer recorded none)
    /pair_ids      [n_pairs]  str
    /splits        [n_pairs]  str
    /concepts      [n_pairs]  str
    /checksums     [n_pairs, 2]  uint32: per pair (row), the CRC-32 of its activations row and of its
                   token_norms row, as stored (little-endian bytes)
    attrs["steerlab_meta"]  JSON: model fingerprint, locus, dtype, layers, chat-template hash,
                            steerlab version, pair-file hash, ...
    attrs["steerlab_checksums"]  JSON: CRC-32 of the meta attribute and of the pair ids, splits
                            and concepts (as JSON lists)

Crash safety. A run writes ``OUT.partial`` and, after each flushed batch, an atomic sidecar
``OUT.partial.progress.json`` holding the number of rows done. Every dataset is allocated in
full when the file is created (HDF5 "early" allocation), so later writes only fill raw bytes:
HDF5's own metadata never changes after creation, and a ``kill -9`` in the middle of a batch
leaves at worst some unfinished rows beyond the recorded count, which ``--resume`` writes
again. When the last row is flushed the file is renamed to ``OUT``; a finished cache is never
overwritten without ``overwrite=True``.

Integrity. Every row is written with its checksums, in the same flushed batch and before the
progress record that counts it, so a resumed cache holds the same bytes (checksums included) as
an uninterrupted one. Every read verifies the rows it returns, and :meth:`ActivationCache.open`
the metadata and labels: a cache whose bytes changed on disk is a :class:`CacheError` naming the
file and the first bad pair, never different numbers. (A checksum per row rather than HDF5's
Fletcher32 filter: it verifies exactly the rows a split reads, names the pair, and keeps the
writes raw-byte-only, with no filter pipeline between a kill and the chunk index.)

Format 2 added ``token_norms``, format 3 the checksums. A format-1 cache cannot be read
compatibly (the per-token norms need the model), so it is refused with a message to re-extract
it; a format-2 cache is read unverified, with a warning to re-extract it.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from steerlab.errors import CacheError
from steerlab.fileio import atomic_write_text

FORMAT_VERSION = 3  # 3: per-row checksums; 2: token_norms
UNVERIFIED_FORMAT = 2  # read, but without checksums to verify
META_ATTR = "steerlab_meta"
CHECKSUM_ATTR = "steerlab_checksums"
LABELS = ("pair_ids", "splits", "concepts")
# Fields that must agree between a partial cache and the run resuming it.
IDENTITY_FIELDS = ("format_version", "model", "locus", "dtype", "layers", "pair_file_hash", "chat_template_hash")
_CHUNK_BYTES = 1 << 20
REEXTRACT = "re-extract it: steerlab extract ... --overwrite"
log = logging.getLogger(__name__)
_warned: set[Path] = set()


def refuse_non_finite(data: np.ndarray, pair_ids, layers: list[int], path: Path, fix: str) -> None:
    """Refuse activations ``[n, 2, L, D]`` holding a NaN or an infinity, naming the first pair and layer."""
    bad = ~np.isfinite(data)
    if bad.any():
        pair, _side, col, _ = np.argwhere(bad)[0]
        raise CacheError(f"non-finite activation in {path}: pair {pair_ids[pair]!r}, layer {layers[col]}; {fix}")


def row_checksums(block: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's bytes in little-endian order: ``[rows]`` uint32 (``block`` ``[rows, ...]``)."""
    rows = np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).reshape(len(block), -1)
    return np.fromiter((zlib.crc32(row) for row in rows), dtype=np.uint32, count=len(rows))


def label_checksums(meta_text: str, labels: dict[str, list[str]]) -> dict[str, Any]:
    """The file-level checksums: the meta attribute's text and each label list (as JSON)."""
    out: dict[str, Any] = {"algorithm": "crc32", "meta": zlib.crc32(meta_text.encode())}
    for name in LABELS:
        out[name] = zlib.crc32(json.dumps(labels[name]).encode())
    return out


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
        if key == "format_version" and meta.get(key) != expected.get(key):
            raise CacheError(
                f"{where} was written in cache format {meta.get(key)} (this steerlab writes format "
                f"{expected.get(key)}, with checksums); pass --overwrite to re-extract it"
            )
        if meta.get(key) != expected.get(key):
            raise CacheError(
                f"{where} was written for {_describe_mismatch(key, meta.get(key), expected.get(key))}; "
                "rerun with matching settings, or pass --overwrite to start over"
            )


def read_progress(out: Path, n_pairs: int) -> int:
    """The rows an interrupted run recorded as done, checked against the ``n_pairs`` it writes."""
    prog = progress_path(out)
    try:
        record = json.loads(prog.read_text(encoding="utf-8"))
        done, total = record["rows_done"], record["n_pairs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"the progress file {prog} cannot be read ({exc}); pass --overwrite to start over") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (done, total)):
        raise CacheError(f"the progress file {prog} does not hold row counts; pass --overwrite to start over")
    if total != n_pairs or not 0 <= done <= n_pairs:
        raise CacheError(
            f"the progress file {prog} records {done} of {total} rows done, but the partial cache has "
            f"{n_pairs} pairs; pass --overwrite to start over"
        )
    return done


def _check_layout(f: h5py.File, path: Path, meta: dict[str, Any], n_pairs: int, checksums: bool) -> None:
    """The datasets a finished cache holds, with the shapes its metadata says."""
    n_layers, d_model = len(meta["layers"]), meta["d_model"]
    want = {"activations": (n_pairs, 2, n_layers, d_model), "token_norms": (n_pairs, 2, n_layers)}
    if checksums:
        want["checksums"] = (n_pairs, 2)
    for name, shape in want.items():
        if name not in f:
            raise CacheError(f"{path} has no {name} dataset: it is not a complete steerlab cache; {REEXTRACT}")
        if f[name].shape != shape:
            raise CacheError(f"{path}: {name} has shape {f[name].shape}, its metadata says {shape}; {REEXTRACT}")


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
            done = read_progress(self.out, self.n_pairs)
            try:
                self._file = h5py.File(part, "r+")
                meta = json.loads(self._file.attrs[META_ATTR])
                if meta.get("format_version") == FORMAT_VERSION and "checksums" not in self._file:
                    raise KeyError("no checksums dataset")
            except (OSError, KeyError, ValueError, TypeError) as exc:
                self.close()
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
        f.create_dataset("checksums", shape=(self.n_pairs, 2), dtype=np.uint32, fillvalue=0)
        meta_text = json.dumps(self.meta, sort_keys=True)
        f.attrs[META_ATTR] = meta_text
        labels = {"pair_ids": self._ids, "splits": self._splits, "concepts": self._concepts}
        f.attrs[CHECKSUM_ATTR] = json.dumps(label_checksums(meta_text, labels), sort_keys=True)
        f.flush()
        self._file = f

    def write(self, start: int, block: np.ndarray, token_norms: np.ndarray | None = None) -> None:
        """Write rows ``start:start+len(block)`` ([rows, 2, n_layers, d_model]) and their per-token norms
        ([rows, 2, n_layers]; left NaN when None), then record progress."""
        assert self._file is not None and start == self.done, (start, self.done)
        stop = start + len(block)
        acts = np.ascontiguousarray(block, dtype=self._file["activations"].dtype)  # the bytes the file will hold
        if token_norms is None:
            norms = np.full(block.shape[:3], np.nan, dtype=np.float32)  # the dataset's fill value
        else:
            if token_norms.shape != block.shape[:3]:
                raise ValueError(f"token_norms {token_norms.shape} do not match the block {block.shape}")
            norms = np.ascontiguousarray(token_norms, dtype=np.float32)
            self._file["token_norms"][start:stop] = norms
        self._file["activations"][start:stop] = acts
        self._file["checksums"][start:stop] = np.stack([row_checksums(acts), row_checksums(norms)], axis=1)
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
    """Read side of a finished cache; activations are read lazily and verified against their
    checksums on every read (format 3; a format-2 cache has none to verify)."""

    path: Path
    meta: dict[str, Any]
    pair_ids: list[str]
    splits: list[str]
    concepts: list[str]

    @classmethod
    def open(cls, path: Path) -> ActivationCache:
        path = Path(path)
        if not path.is_file():
            if path.is_dir():
                raise CacheError(f"{path} is a folder; give the activation cache file (.h5)")
            hint = (
                " (an interrupted run left a .partial file: rerun with --resume)" if partial_path(path).exists() else ""
            )
            raise CacheError(f"no activation cache at {path}{hint}")
        try:
            with h5py.File(path, "r") as f:
                meta_text = f.attrs[META_ATTR]
                meta = json.loads(meta_text)
                labels = {name: list(f[name].asstr()[...]) for name in LABELS}
                version = meta.get("format_version") if isinstance(meta, dict) else None
                if version in (UNVERIFIED_FORMAT, FORMAT_VERSION):
                    _check_layout(f, path, meta, len(labels["pair_ids"]), checksums=version == FORMAT_VERSION)
                sums = json.loads(f.attrs[CHECKSUM_ATTR]) if version == FORMAT_VERSION else None
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise CacheError(f"{path} is not a steerlab activation cache ({exc})") from None
        if version not in (UNVERIFIED_FORMAT, FORMAT_VERSION):
            raise CacheError(
                f"{path} has cache format {version}, this steerlab reads {UNVERIFIED_FORMAT}-{FORMAT_VERSION} "
                f"(it records per-token norms); {REEXTRACT}"
            )
        if sums is None:
            if path not in _warned:
                _warned.add(path)
                log.warning("%s is a format-2 cache: it has no checksums, so corruption would go unseen; %s",
                            path, REEXTRACT)  # fmt: skip
        elif sums != label_checksums(meta_text, labels):
            bad = [k for k, v in label_checksums(meta_text, labels).items() if sums.get(k) != v]
            raise CacheError(f"{path} is corrupt: its {', '.join(bad)} do not match their checksums; {REEXTRACT}")
        return cls(path=path, meta=meta, **labels)

    @property
    def verified(self) -> bool:
        return self.meta.get("format_version") == FORMAT_VERSION

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
        rows = self.rows(split, concept)
        every = len(rows) == len(self.pair_ids)
        try:
            with h5py.File(self.path, "r") as f:
                dataset = f[name]
                if not len(rows):
                    data = np.empty((0, *dataset.shape[1:]), dtype=dataset.dtype)
                else:
                    data = dataset[...] if every else dataset[rows]
                sums = (f["checksums"][...] if every else f["checksums"][rows]) if self.verified and len(rows) else None
        except (OSError, KeyError) as exc:
            raise CacheError(f"{self.path} cannot be read ({exc}); it may be damaged: {REEXTRACT}") from None
        if sums is not None:
            bad = np.flatnonzero(row_checksums(data) != sums[:, 0 if name == "activations" else 1])
            if bad.size:
                more = f" and {bad.size - 1} more" if bad.size > 1 else ""
                raise CacheError(
                    f"{self.path} is corrupt: the {name} of pair {self.pair_ids[rows[bad[0]]]!r} (row {rows[bad[0]]})"
                    f"{more} do not match the checksums written with them; {REEXTRACT}"
                )
        return data[:, :, cols] if layers is not None else data
