"""Request sets: what the model is asked, with a stable id per request.

- An AdvBench-style table with a ``goal`` or ``prompt`` column (``goal`` wins when both are
  present): ``.csv``, ``.tsv``, ``.jsonl`` (one object per line), ``.json`` (a list of objects)
  or ``.parquet`` (needs ``pyarrow``); or ``.txt`` with one request per line. Suffixes are read
  whatever their case (``harmful.CSV``); any other suffix is refused. Text files must be UTF-8.
- A Hugging Face dataset id (``owner/name``, optionally ``owner/name:split``), read through the
  ``datasets`` package when it is installed and the machine is online.
- A chat ``.jsonl`` or ``.json`` with ``messages`` per row (the plain scenario's prompt files):
  a list of ``{"role", "content"}`` objects with text values.

Every request is text: a null, empty or non-text prompt (``{"goal": null}``, ``{"prompt": 42}``)
is an error naming the file and row, never a request reading "None". Blank lines are skipped.
Ids are ``<name>-<index>`` with the index zero-padded to at least three digits
(``advbench-000``), ``name`` defaulting to the file's stem; they follow file order and the padding
comes from the whole file, so the same file always yields the same ids, whatever ``--limit``.
steerlab ships no harmful requests: its demo and tests use
``configs/requests/benign.jsonl``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerlab.errors import ConfigError
from steerlab.fileio import json_lines, read_text

PROMPT_COLUMNS = ("goal", "prompt")


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str  # the request text ("" when only messages are given)
    messages: tuple[dict[str, str], ...] | None = field(default=None, compare=False)

    def chat(self) -> list[dict[str, str]]:
        return list(self.messages) if self.messages else [{"role": "user", "content": self.prompt}]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "request"


def make_items(rows: Iterable[str | list[dict[str, str]]], name: str, total: int | None = None) -> list[Item]:
    """Items with ids ``<name>-<index>``; the index is padded for ``total`` rows (default: these rows),
    so a run limited to the first N requests uses the same ids as a run over the whole file."""
    rows = list(rows)
    width = max(3, len(str((total if total is not None else len(rows)) - 1)))
    items = []
    for i, row in enumerate(rows):
        rid = f"{name}-{i:0{width}d}"
        if isinstance(row, str):
            items.append(Item(rid, row))
        else:
            user = [m["content"] for m in row if m.get("role") == "user"]
            items.append(Item(rid, user[-1] if user else "", tuple(row)))
    return items


def _pick_column(columns: Iterable[str], source: str) -> str:
    columns = list(columns)
    for name in PROMPT_COLUMNS:
        if name in columns:
            return name
    raise ConfigError(
        f"{source} has no prompt column: expected 'goal' or 'prompt', found {', '.join(map(str, columns)) or 'none'}"
    )


SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt")


def load_requests(source: str | Path, name: str | None = None, limit: int | None = None) -> list[Item]:
    """Requests from a local file or a Hugging Face dataset id (see the module docstring)."""
    path = Path(source)
    if path.is_file():
        rows = _read_file(path)
        name = name or slug(path.stem)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+(:\w+)?", str(source)) and not path.suffix:
        rows = _read_hub(str(source))
        name = name or slug(str(source).split("/")[-1].split(":")[0])
    elif path.is_dir():
        raise ConfigError(f"request file {source} is a directory; give a {'/'.join(SUFFIXES)} file or a hub id")
    else:
        raise ConfigError(
            f"request file {source} does not exist (give a .csv/.tsv/.json/.jsonl/.parquet/.txt file or a hub id "
            "owner/name)"
        )
    if not rows:
        raise ConfigError(f"{source} holds no requests")
    total = len(rows)  # ids are padded for the whole dataset, whatever the limit
    if limit is not None:
        rows = rows[:limit]
    return make_items(rows, name, total)


Row = str | list[dict[str, str]]


def _read_file(path: Path) -> list[Row]:
    """The requests of a local file, by its suffix (whatever its case); blank lines are skipped."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"request file {path}: unknown kind {suffix or '(no suffix)'!r}; give a .csv, .tsv, .json (a list of "
            "objects), .jsonl, .parquet or .txt (one request per line) file"
        )
    if suffix == ".parquet":
        return _read_parquet(path)
    text = read_text(path, "request file", bom=True)
    if suffix in (".csv", ".tsv"):
        # TSV fields are taken as written (no quoting: a prompt may start with a quotation mark)
        tsv = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        reader = csv.DictReader(io.StringIO(text, newline=""), **({"delimiter": ","} if suffix == ".csv" else tsv))
        column = _pick_column(reader.fieldnames or [], str(path))
        rows: list[Row] = []
        for record in reader:
            if None in record:
                raise ConfigError(
                    f"{path}:{reader.line_num}: more fields than the header names; quote fields that hold "
                    f"{'commas' if suffix == '.csv' else 'tabs'}"
                )
            rows.append(_prompt(record.get(column), column, f"{path}:{reader.line_num}"))
        return rows
    if suffix == ".jsonl":
        return [_row(record, f"{path}:{lineno}") for lineno, record in json_lines(text, path)]
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = "; a file with one object per line is .jsonl" if exc.msg == "Extra data" else ""
            raise ConfigError(
                f"{path}: malformed JSON ({exc.msg}, line {exc.lineno} column {exc.colno}){hint}"
            ) from None
        if not isinstance(data, list):
            raise ConfigError(f"{path}: expected a JSON list of request objects, found {type(data).__name__}")
        return [_row(record, f"{path} row {i}") for i, record in enumerate(data, start=1)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _row(record: Any, where: str) -> Row:
    """One JSON request: an object with a prompt column, or with ``messages`` only."""
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object, found {type(record).__name__}")
    if "messages" in record and not any(c in record for c in PROMPT_COLUMNS):
        return _messages(record["messages"], where)
    column = _pick_column(record, where)
    return _prompt(record[column], column, where)


def _prompt(value: Any, column: str, where: str) -> str:
    """A request's text; null, empty or non-text values are errors naming the row."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ConfigError(f"{where}: {column!r} is empty (null); give every request its text or drop the row")
    if not isinstance(value, str):
        raise ConfigError(
            f"{where}: {column!r} is {type(value).__name__} {value!r}, not text; give the request as a string"
        )
    if not value.strip():
        raise ConfigError(f"{where}: {column!r} is empty; give every request its text or drop the row")
    return value.strip()


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )
    if not ok:
        raise ConfigError(
            f'{where}: \'messages\' must be a non-empty list of {{"role": ..., "content": ...}} objects with '
            f"text values, found {json.dumps(value, default=str)[:60]}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _read_parquet(path: Path) -> list[Row]:
    import pandas as pd

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError(f"reading {path} needs pyarrow: pip install pyarrow (or give a .csv/.jsonl file)") from None
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise ConfigError(f"{path} is not a readable parquet file ({type(exc).__name__}: {exc})") from None
    if "messages" in frame.columns and not any(c in frame.columns for c in PROMPT_COLUMNS):
        return [
            _messages([dict(m) for m in v] if hasattr(v, "__iter__") and not isinstance(v, str) else v,
                      f"{path} row {i}")
            for i, v in enumerate(frame["messages"].tolist(), start=1)
        ]  # fmt: skip
    column = _pick_column(frame.columns, str(path))
    return [_prompt(v, column, f"{path} row {i}") for i, v in enumerate(frame[column].tolist(), start=1)]


def _read_hub(dataset_id: str) -> list[Row]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"{dataset_id} looks like a Hugging Face dataset id, which needs `pip install datasets` "
            "(or give a local .csv/.jsonl file)"
        ) from None
    repo, _, split = dataset_id.partition(":")
    try:
        ds = datasets.load_dataset(repo, split=split or "train")
    except Exception as exc:  # offline, unknown id, gated: the library raises many kinds
        raise ConfigError(f"cannot load dataset {dataset_id} from the hub ({type(exc).__name__}: {exc})") from None
    column = _pick_column(ds.column_names, dataset_id)
    return [_prompt(x, column, f"{dataset_id} row {i}") for i, x in enumerate(ds[column], start=1)]
