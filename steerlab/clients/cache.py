"""The reply cache: replies on disk (SQLite), keyed by a hash of (model, task, input, parameters).

The judge stores its judgements here (the task is the rubric's hash) and the SDF add-on's
document generation its replies (the task is ``docgen:<stage>``), so a rerun asks only for what
is missing. The format (tables ``judgements`` and ``models``) and the keys are those of the
former ``JudgeCache``: existing cache files read unchanged.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from steerlab.clients.base import ClientError


class ReplyCache:
    """Replies on disk (SQLite), keyed by a hash of (model, task, input, parameters); see the module docstring."""

    def __init__(self, path: Path, readonly: bool = False):
        """``readonly``: only look things up (a dry run); a missing file is an empty cache, and nothing
        is created."""
        self.path = Path(path)
        self._lock = threading.Lock()
        if readonly:
            try:
                if self.path.is_file():
                    uri = f"file:{self.path.resolve()}?mode=ro"
                    self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
                    self._db.execute("SELECT 1 FROM judgements LIMIT 1")
                else:
                    self._db = sqlite3.connect(":memory:", check_same_thread=False)
                    self._db.execute("CREATE TABLE judgements (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    self._db.execute("CREATE TABLE models (requested TEXT PRIMARY KEY, reported TEXT NOT NULL)")
            except sqlite3.Error as exc:
                raise ClientError(
                    f"cannot read {self.path} as a reply cache ({exc}); move the damaged file away"
                ) from None
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS judgements (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS models (requested TEXT PRIMARY KEY, reported TEXT NOT NULL)")
            self._db.commit()
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ClientError(
                f"cannot use {self.path} as a reply cache ({reason}); pass --cache with a writable path, "
                "or move the damaged file away"
            ) from None

    @staticmethod
    def key(model: str, task: str, text: str, params: dict[str, Any]) -> str:
        """The key of ``text`` asked of ``model`` for ``task`` (a rubric's hash, ``docgen:<stage>``)
        with ``params``; the JSON field is named ``rubric`` as it always was, so old keys still match."""
        blob = json.dumps({"model": model, "rubric": task, "input": text, "params": params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM judgements WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO judgements VALUES (?, ?)", (key, json.dumps(value)))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def note_model(self, requested: str, reported: str) -> None:
        """Remember the model that ``requested`` (an alias) reached when it was last resolved."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO models VALUES (?, ?)", (requested, reported))
            self._db.commit()

    def last_model(self, requested: str) -> str | None:
        """The model ``requested`` reached when last resolved (for estimates that make no call)."""
        with self._lock:
            row = self._db.execute("SELECT reported FROM models WHERE requested = ?", (requested,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self._db.close()
