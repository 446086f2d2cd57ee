"""Truesight screening of training data (issue 20, item 5): score every document of a data set by its mean
projection onto each concept direction, against the vector's random controls, resumably.

Data. A JSONL file (one document per line: the ``--text-field``; by default ``text``, else ``content`` as the
SDF corpora write it, else ``messages``, a transcript whose contents are joined by blank lines) or a plain
text file (one document per paragraph, paragraphs separated by blank lines). A document's id is its ``id``
field, else its line number (a paragraph's first line). Blank documents are skipped and counted.

What the model sees: each document as ``sdf train`` feeds it, the tokenizer's BOS (when it has one distinct
from EOS) and then the text's tokens, cut at ``max_tokens`` text tokens. The residual at layer ``l`` is the
output of decoder block ``l``, read per token by :func:`steerlab.analysis.heatmap.token_values` (the heatmap's
computation); the BOS is fed but not scored.

Scores. For each row (each vector file's real vector, then its controls) and each layer used, a document's
score is the mean over its text tokens of ``h·v/|v|`` (the projection, activation units; ``cosine=True``:
the mean of ``h·v/(|h||v|)``), kept per layer in ``scores.h5``; a row's score is the mean over its vector's
layers (its selected layers unless ``layers`` says otherwise). The controls are random Gaussian directions
norm-matched to the vector at each layer (:mod:`steerlab.vectors`), so at each document their scores are a
null distribution of what a direction with no meaning gives there: ``z = (real - mean(controls)) / sd(controls)``
(``ddof=1``) and ``percentile`` (the share of controls below the real score, in %). Ranking and flags use ``z``,
so a document that projects far on every direction (a large residual norm) is not flagged for that alone.
More controls than a file carries are drawn by the file's own seed rule (:func:`steerlab.vectors.control_seeds`
with its recorded run seed and identity: the first ones are the file's), so ``z`` need not rest on five.

Streaming and resume. Documents go through in chunks (``4 x batch_size`` documents, in file order; inside a
chunk, batches of similar length). After each chunk the rows are flushed to ``scores.partial.h5`` (every
dataset allocated in full at creation, with a CRC-32 per row) and then the count is recorded atomically in
``scores.progress.json``; a killed run continues from the last recorded chunk with the same chunks and
batches, so its file holds the same bytes as an uninterrupted one. When the last chunk is in, the file is
renamed to ``scores.h5``. The report (:mod:`steerlab.analysis.screen_report`) is derived from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from steerlab.analysis.heatmap import token_values, vector_rows
from steerlab.cache import row_checksums
from steerlab.errors import SteerlabError
from steerlab.fileio import atomic_write_text, file_hash
from steerlab.models import Fingerprint, LoadedModel
from steerlab.vectors import SteeringVector, VectorBundle, control_seeds, controls_from_seeds

FORMAT = 1
KIND = "steerlab-screen"
SCORES, PARTIAL, PROGRESS = "scores.h5", "scores.partial.h5", "scores.progress.json"
TEXT_FIELDS = ("text", "content", "messages")  # tried in this order when no --text-field is given
FORMATS = ("auto", "jsonl", "text")


class ScreenError(SteerlabError):
    """A screening that cannot be done as asked (a data file without its text field, a bad setting, ...)."""


# ----------------------------------------------------------------------------------------------------- data
@dataclass
class DataSet:
    """What the first pass over a data file found: the documents' ids and lines, and what was skipped."""

    path: Path
    kind: str  # jsonl or text
    field: str | None  # the JSONL field read
    ids: list[str]
    lines: list[int]
    skipped: list[dict[str, Any]]  # blank documents: line, id
    hash: str

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.path), "hash": self.hash, "format": self.kind, "text_field": self.field,
                "n_docs": len(self.ids), "n_skipped": len(self.skipped)}  # fmt: skip


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 file, streamed; other bytes are one line naming the line."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise ScreenError(f"{path}:{lineno}: not UTF-8 text; save the file as UTF-8") from None


def _kind(path: Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ScreenError(f"--format {fmt!r}: use auto, jsonl or text")
    if fmt != "auto":
        return fmt
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    first = next((line.lstrip() for _, line in _lines(path) if line.strip()), "")
    return "jsonl" if first.startswith("{") else "text"


def doc_text(value: Any, where: str, name: str) -> str:
    """A document's text from its field: a string, or a transcript (a list of ``{role, content}``) whose
    contents (strings, or lists of blocks with ``text``) are joined by blank lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        parts = []
        for m in value:
            c = m["content"]
            if isinstance(c, list):
                c = "\n".join(b.get("text", "") for b in c if isinstance(b, dict))
            if not isinstance(c, str):
                raise ScreenError(f"{where}: a message's content in {name!r} is {type(c).__name__}, not text")
            parts.append(c)
        return "\n\n".join(p for p in parts if p.strip())
    raise ScreenError(f"{where}: field {name!r} is {type(value).__name__}; it must be text or a list of messages "
                      "({role, content})")  # fmt: skip


def _jsonl_docs(path: Path, text_field: str | None) -> Iterator[tuple[int, str | None, str, str]]:
    """(line, id field or None, text, field) of each JSONL row; the first row decides the field when none is given."""
    chosen = text_field
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScreenError(f"{path}:{lineno}: not a JSON line ({exc.msg}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise ScreenError(f"{path}:{lineno}: expected a JSON object, found {type(row).__name__}")
        if chosen is None:
            chosen = next((f for f in TEXT_FIELDS if f in row), None)
            if chosen is None:
                raise ScreenError(f"{path}:{lineno}: no text field (none of {', '.join(TEXT_FIELDS)}; it has "
                                  f"{', '.join(sorted(row)) or 'no fields'}); name it with --text-field")  # fmt: skip
        if chosen not in row:
            raise ScreenError(f"{path}:{lineno}: no {chosen!r} field (it has {', '.join(sorted(row)) or 'no fields'})"
                              "; name the text field with --text-field")  # fmt: skip
        ident = row.get("id")
        if ident is not None and not isinstance(ident, (str, int)) or isinstance(ident, bool):
            raise ScreenError(f"{path}:{lineno}: id {ident!r} is not a string or an integer")
        yield lineno, None if ident is None else str(ident), doc_text(row[chosen], f"{path}:{lineno}", chosen), chosen


def _text_docs(path: Path) -> Iterator[tuple[int, str | None, str, str]]:
    """(first line, None, paragraph) of each blank-line-separated paragraph (its lines joined by newlines)."""
    start, current = 0, []
    for lineno, line in _lines(path):
        if line.strip():
            if not current:
                start = lineno
            current.append(line.rstrip("\r\n"))
        elif current:
            yield start, None, "\n".join(current), ""
            current = []
    if current:
        yield start, None, "\n".join(current), ""


def _docs(path: Path, kind: str, text_field: str | None) -> Iterator[tuple[int, str | None, str, str]]:
    return _jsonl_docs(path, text_field) if kind == "jsonl" else _text_docs(path)


def scan(path: Path, text_field: str | None = None, fmt: str = "auto") -> DataSet:
    """The first pass: every document checked (field, type, unique id), nothing kept but ids and lines."""
    path = Path(path)
    if path.is_dir():
        raise ScreenError(f"data file {path} is a folder; give a JSONL or text file")
    if not path.is_file():
        raise ScreenError(f"data file {path} does not exist")
    kind = _kind(path, fmt)
    if kind == "text" and text_field is not None:
        raise ScreenError(f"--text-field {text_field!r}: {path} is read as plain text (one document per paragraph); "
                          "give a JSONL file or leave out --text-field")  # fmt: skip
    ids, lines, skipped, seen, used = [], [], [], {}, text_field
    for lineno, ident, text, field_read in _docs(path, kind, text_field):
        used = field_read
        name = ident if ident is not None else str(lineno)
        if not text.strip():
            skipped.append({"line": lineno, "id": name})
            continue
        if name in seen:
            raise ScreenError(f"{path}:{lineno}: id {name!r} was already used on line {seen[name]}; ids must be unique")
        seen[name] = lineno
        ids.append(name)
        lines.append(lineno)
    if not ids:
        raise ScreenError(f"data file {path} holds no document to screen"
                          + (f" ({len(skipped)} blank)" if skipped else ""))  # fmt: skip
    return DataSet(path, kind, used if kind == "jsonl" else None, ids, lines, skipped, file_hash(path))


def iter_texts(data: DataSet, start: int = 0) -> Iterator[tuple[int, str]]:
    """(index, text) of the documents from index ``start`` on, streamed from the file again."""
    i = 0
    for _, _, text, _ in _docs(data.path, data.kind, data.field):
        if not text.strip():
            continue
        if i >= start:
            yield i, text
        i += 1


def texts_of(data: DataSet, wanted: set[int]) -> dict[int, str]:
    """The texts of the documents at the ``wanted`` indices (one more pass; only those are kept)."""
    return {i: t for i, t in iter_texts(data) if i in wanted}


# ----------------------------------------------------------------------------------------------------- vectors
def with_controls(path: Path, bundle: VectorBundle, n: int) -> VectorBundle:
    """``bundle`` with exactly ``n`` controls: its first ``n``, or more drawn by the file's own seed rule."""
    if n <= len(bundle.controls):
        return VectorBundle(bundle.vector, bundle.controls[:n], bundle.meta)
    info = bundle.meta.get("controls") or {}
    if not isinstance(info, dict) or "run_seed" not in info or "identity" not in info:
        raise ScreenError(f"--controls {n}: {path} carries {len(bundle.controls)} random controls and records no "
                          f"seed rule to draw more; give --controls {len(bundle.controls)} or fewer")  # fmt: skip
    seeds = control_seeds(int(info["run_seed"]), info["identity"], n)
    if list(info.get("seeds") or [])[: len(bundle.controls)] != seeds[: len(bundle.controls)]:
        raise ScreenError(f"--controls {n}: {path}'s recorded control seeds do not follow its seed rule, so no more "
                          f"can be drawn; give --controls {len(bundle.controls)} or fewer")  # fmt: skip
    v = bundle.vector
    drawn = controls_from_seeds(v.directions, seeds)  # [n, n_available, d_model]
    controls = [SteeringVector(c, v.layers_available, v.layers, v.fingerprint, name=f"{v.name}/control{i}")
                for i, c in enumerate(drawn)]  # fmt: skip
    return VectorBundle(v, controls, {**bundle.meta, "screen_control_seeds": seeds})


@dataclass
class Plan:
    """The rows and layers every document is scored on."""

    rows: list[dict[str, Any]]  # name, vector, control, layers (of its vector)
    vectors: list[dict[str, Any]]  # name, file, layers, ranked_by, (hash, n_controls: added here)
    layers: list[int]  # the layers of the scores' last axis
    units: Any  # torch [n_rows, n_layers, d_model], unit rows
    cosine: bool
    max_tokens: int
    span_tokens: int
    real: list[int] = field(default_factory=list)  # per vector: its real row
    controls: list[list[int]] = field(default_factory=list)  # per vector: its control rows
    layer_index: list[list[int]] = field(default_factory=list)  # per vector: its layers' positions in ``layers``

    def __post_init__(self) -> None:
        names = [v["name"] for v in self.vectors]
        self.real = [next(i for i, r in enumerate(self.rows) if r["vector"] == n and r["control"] is None)
                     for n in names]  # fmt: skip
        self.controls = [[i for i, r in enumerate(self.rows) if r["vector"] == n and r["control"] is not None]
                         for n in names]  # fmt: skip
        self.layer_index = [[self.layers.index(layer) for layer in v["layers"]] for v in self.vectors]


def make_plan(bundles: Sequence[tuple[Path, VectorBundle]], n_controls: int, choice: int | list[int] | None,
              cosine: bool, max_tokens: int, span_tokens: int) -> Plan:  # fmt: skip
    """The plan for the vector files (each with ``n_controls`` controls, drawn if the file carries fewer)."""
    if n_controls < 2:
        raise ScreenError(f"--controls {n_controls}: give at least 2 (the z-score needs the controls' spread)")
    if max_tokens < 1:
        raise ScreenError(f"--max-tokens {max_tokens}: give at least 1")
    if span_tokens < 1:
        raise ScreenError(f"--span-tokens {span_tokens}: give at least 1")
    full = [(p, with_controls(p, b, n_controls)) for p, b in bundles]
    rows, vectors, layers, units = vector_rows(full, n_controls, choice)
    for v, (p, b), (_, given) in zip(vectors, full, bundles, strict=True):  # the seeds, so the controls are known
        seeds = b.meta.get("screen_control_seeds") or list((b.meta.get("controls") or {}).get("seeds") or [])
        v.update({"hash": file_hash(p), "n_controls": n_controls, "n_controls_in_file": len(given.controls),
                  "control_seeds": seeds[:n_controls] or None})  # fmt: skip
    return Plan(rows, vectors, layers, units, cosine, max_tokens, span_tokens)


def check_model(bundles: Sequence[tuple[Path, VectorBundle]]) -> Fingerprint:
    """The one model every vector file was fitted on (refused when they differ)."""
    first_path, first = bundles[0]
    fp = Fingerprint.from_dict(first.meta["model"])
    for path, b in bundles[1:]:
        diff = fp.differences(Fingerprint.from_dict(b.meta["model"]))
        if diff:
            raise ScreenError(f"{path} and {first_path} were fitted on different models (fingerprint differs in "
                              f"{', '.join(diff)}); screen with vectors of one model")  # fmt: skip
    return fp


# ----------------------------------------------------------------------------------------------------- scoring
def encode(loaded: LoadedModel, texts: Sequence[str], max_tokens: int) -> list[tuple[list[int], np.ndarray, int, bool]]:
    """Per text: (ids fed: BOS + text tokens, the text tokens' character offsets ``[n, 2]``, lead (1 with a BOS,
    else 0), whether the text was cut at ``max_tokens``)."""
    tok = loaded.tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id
    lead = [bos] if bos is not None and bos != eos else []
    enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for ids, offs in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        cut = len(ids) > max_tokens
        out.append((lead + list(ids[:max_tokens]), np.asarray(offs[:max_tokens], np.int64).reshape(-1, 2), len(lead),
                    cut))  # fmt: skip
    return out


def score_texts(loaded: LoadedModel, plan: Plan, texts: Sequence[str], batch_size: int) -> dict[str, np.ndarray]:
    """The rows ``scores.h5`` holds for these texts (see :class:`ScoreStore` for the datasets)."""
    encoded = encode(loaded, texts, plan.max_tokens)
    values = token_values(loaded, [e[0] for e in encoded], plan.units, plan.layers, projection=not plan.cosine,
                          batch_size=batch_size, progress=False)  # fmt: skip
    n, k, nv = len(texts), plan.span_tokens, len(plan.vectors)
    out = {
        "scores": np.zeros((n, len(plan.rows), len(plan.layers)), np.float32),
        "n_tokens": np.zeros(n, np.int32), "truncated": np.zeros(n, np.uint8),
        "span_index": np.full((n, nv, 2, k), -1, np.int32), "span_value": np.full((n, nv, 2, k), np.nan, np.float32),
        "span_chars": np.full((n, nv, 2, k, 2), -1, np.int64),
    }  # fmt: skip
    for i, ((_, offsets, lead, cut), v) in enumerate(zip(encoded, values, strict=True)):
        v = v[:, :, lead:]  # [n_rows, n_layers, n_text]: the BOS is fed, not scored
        out["scores"][i] = v.mean(-1)
        out["n_tokens"][i], out["truncated"][i] = v.shape[-1], cut
        for j in range(nv):
            per_token = v[plan.real[j]][plan.layer_index[j]].mean(0)  # [n_text]: the heatmap's average
            order = np.argsort(-per_token, kind="stable")  # highest first; ties: the earlier token
            for side, picks in enumerate((order[:k], np.argsort(per_token, kind="stable")[:k])):
                m = len(picks)
                out["span_index"][i, j, side, :m] = picks
                out["span_value"][i, j, side, :m] = per_token[picks]
                out["span_chars"][i, j, side, :m] = offsets[picks]
    return out


DATASETS = ("scores", "n_tokens", "truncated", "span_index", "span_value", "span_chars")


class ScoreStore:
    """``scores.h5`` in an out folder: written as ``scores.partial.h5`` chunk by chunk, then renamed.

    Datasets: ``scores`` ``[n_docs, n_rows, n_layers]`` float32, ``n_tokens`` and ``truncated`` ``[n_docs]``,
    ``span_index``/``span_value`` ``[n_docs, n_vectors, 2, k]`` (side 0: the highest per-token values, 1: the
    lowest; -1/NaN past a short text), ``span_chars`` ``[n_docs, n_vectors, 2, k, 2]`` (character ranges),
    ``ids``, ``lines``, ``checksums`` (CRC-32 of each document's scores row); ``attrs["meta"]``: JSON."""

    def __init__(self, out: Path, meta: dict[str, Any], data: DataSet, plan: Plan):
        self.out, self.meta, self.data, self.plan = Path(out), meta, data, plan
        self.f: h5py.File | None = None
        self.done = 0

    @property
    def partial(self) -> Path:
        return self.out / PARTIAL

    @property
    def progress(self) -> Path:
        return self.out / PROGRESS

    def open(self, resume: bool) -> int:
        """Open for writing (continuing a partial file when ``resume`` and one is there); the rows done."""
        if resume and self.partial.exists() and self.progress.exists():
            self.done = read_progress(self.out, len(self.data.ids))
            self.f = h5py.File(self.partial, "r+")
            return self.done
        self.partial.unlink(missing_ok=True)
        n, plan, k = len(self.data.ids), self.plan, self.plan.span_tokens
        shapes = {"scores": ((n, len(plan.rows), len(plan.layers)), np.float32, np.nan),
                  "n_tokens": ((n,), np.int32, 0), "truncated": ((n,), np.uint8, 0),
                  "span_index": ((n, len(plan.vectors), 2, k), np.int32, -1),
                  "span_value": ((n, len(plan.vectors), 2, k), np.float32, np.nan),
                  "span_chars": ((n, len(plan.vectors), 2, k, 2), np.int64, -1),
                  "checksums": ((n,), np.uint32, 0)}  # fmt: skip
        f = h5py.File(self.partial, "w")
        for name, (shape, dtype, fill) in shapes.items():
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # only raw bytes change after this (cache.py's reason)
            f.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill, dcpl=dcpl)
        f.create_dataset("ids", data=np.array(self.data.ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("lines", data=np.asarray(self.data.lines, np.int64))
        f.attrs["kind"], f.attrs["format"] = KIND, FORMAT
        f.attrs["meta"] = json.dumps(self.meta, sort_keys=True)
        f.flush()
        self.f = f
        self._record(0)
        return 0

    def write(self, start: int, rows: dict[str, np.ndarray]) -> None:
        """Rows ``start:start+len``, flushed, then the progress record that counts them."""
        assert self.f is not None and start == self.done, (start, self.done)
        stop = start + len(rows["scores"])
        for name in DATASETS:
            self.f[name][start:stop] = rows[name]
        self.f["checksums"][start:stop] = row_checksums(np.ascontiguousarray(rows["scores"], np.float32))
        self.f.flush()
        self.done = stop
        self._record(stop)

    def _record(self, done: int) -> None:
        write_progress(self.progress, done, len(self.data.ids))

    def finish(self) -> Path:
        self.close()
        os.replace(self.partial, self.out / SCORES)
        self.progress.unlink(missing_ok=True)
        return self.out / SCORES

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def write_progress(path: Path, done: int, total: int) -> None:
    atomic_write_text(path, json.dumps({"docs_done": done, "n_docs": total}))


def read_progress(out: Path, n_docs: int) -> int:
    try:
        record = json.loads((Path(out) / PROGRESS).read_text(encoding="utf-8"))
        done, total = int(record["docs_done"]), int(record["n_docs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ScreenError(f"{Path(out) / PROGRESS} cannot be read ({exc}); pass --overwrite to start over") from None
    if total != n_docs or not 0 <= done <= n_docs:
        raise ScreenError(f"{Path(out) / PROGRESS} records {done} of {total} documents, the data has {n_docs}; "
                          "pass --overwrite to start over")  # fmt: skip
    return done


def run_scores(loaded: LoadedModel, store: ScoreStore, batch_size: int, progress: bool = True) -> Path:
    """Score every document not yet in ``store`` (chunk by chunk), then publish ``scores.h5``."""
    from tqdm.auto import tqdm

    data, plan = store.data, store.plan
    chunk = 4 * batch_size
    done = store.done
    bar = tqdm(total=len(data.ids), initial=done, unit="doc", desc="screen", disable=None if progress else True)
    try:
        texts: list[str] = []
        for i, text in iter_texts(data, start=done):
            texts.append(text)
            if len(texts) == chunk or i == len(data.ids) - 1:
                start = i + 1 - len(texts)
                store.write(start, score_texts(loaded, plan, texts, batch_size))
                bar.update(len(texts))
                texts = []
    finally:
        bar.close()
        store.close()
    if store.done != len(data.ids):  # the file changed under us between the passes
        raise ScreenError(f"{data.path} changed while it was screened; rerun with --resume")
    return store.finish()
