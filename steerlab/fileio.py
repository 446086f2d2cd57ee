"""Small file helpers: atomic writes, content hashes, append-only JSONL that survives a kill."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits), streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The finished lines of an append-only JSONL file; a torn last line (a kill mid-write) is
    dropped and cut from the file, so appending can resume."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    keep, rows = 0, []
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        keep += len(line)
    if keep != len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return rows
