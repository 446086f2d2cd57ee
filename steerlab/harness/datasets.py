"""Request sets: what the model is asked, with a stable id per request.

- An AdvBench-style file: ``.csv`` or ``.jsonl`` with a ``goal`` or ``prompt`` column
  (``goal`` wins when both are present), or ``.txt`` with one request per line.
- A Hugging Face dataset id (``owner/name``, optionally ``owner/name:split``), read through the
  ``datasets`` package when it is installed and the machine is online.
- A chat ``.jsonl`` with ``messages`` per line (the plain scenario's prompt files).

Ids are ``<name>-<index>`` with the index zero-padded to at least three digits
(``advbench-000``), ``name`` defaulting to the file's stem; they follow file order and the padding
comes from the whole file, so the same file always yields the same ids, whatever ``--limit``.
steerlab ships no harmful requests: its demo and tests use
``configs/requests/benign.jsonl``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from steerlab.errors import ConfigError

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


def load_requests(source: str | Path, name: str | None = None, limit: int | None = None) -> list[Item]:
    """Requests from a local file or a Hugging Face dataset id (see the module docstring)."""
    path = Path(source)
    if path.is_file():
        rows = _read_file(path)
        name = name or slug(path.stem)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+(:\w+)?", str(source)) and not path.suffix:
        rows = _read_hub(str(source))
        name = name or slug(str(source).split("/")[-1].split(":")[0])
    else:
        raise ConfigError(f"request file {source} does not exist (give a .csv/.jsonl/.txt file or a hub id owner/name)")
    rows = [r for r in rows if (r.strip() if isinstance(r, str) else r)]
    if not rows:
        raise ConfigError(f"{source} holds no requests")
    total = len(rows)  # ids are padded for the whole dataset, whatever the limit
    if limit is not None:
        rows = rows[:limit]
    return make_items(rows, name, total)


def _read_file(path: Path) -> list[str | list[dict[str, str]]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        column = _pick_column(reader.fieldnames or [], str(path))
        return [(row.get(column) or "").strip() for row in reader]
    if path.suffix == ".jsonl":
        rows: list[str | list[dict[str, str]]] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object per line")
            if "messages" in row and not any(c in row for c in PROMPT_COLUMNS):
                rows.append(list(row["messages"]))
                continue
            column = _pick_column(row, f"{path}:{lineno}")
            rows.append(str(row[column]).strip())
        return rows
    return [line.strip() for line in text.splitlines()]


def _read_hub(dataset_id: str) -> list[str | list[dict[str, str]]]:
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
    return [str(x).strip() for x in ds[column]]
