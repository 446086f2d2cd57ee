"""Small file helpers: atomic writes, content hashes, append-only JSONL that survives a kill."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from steerlab.errors import ConfigError

log = logging.getLogger(__name__)


_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it), then put back
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A folder that cannot be made or written (under /proc, a file where a folder should be) is one
    line naming the path, before anything is written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc}); choose another path") from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600; give it what a plain open() would (the old file's mode, or 0666 less
        # the umask), so results on a shared folder stay readable by the group as before
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# The shipped defaults (claims registry, judge rubric, SDF training config) are package data under
# steerlab/resources/configs/, named by the relative paths users know (configs/claims/claims.yaml;
# the checkout's configs/ links to them).
RESOURCES = Path(__file__).resolve().parent / "resources"


def shipped(path: Path) -> Path:
    """``path`` as given when it exists; a relative ``configs/...`` path that does not exist here is
    steerlab's shipped file of that name, so defaults work from any folder and any kind of install."""
    path = Path(path)
    if path.exists() or path.is_absolute() or not path.parts or path.parts[0] != "configs":
        return path
    candidate = RESOURCES / path
    return candidate if candidate.exists() else path


def read_text(path: Path, what: str = "file", bom: bool = False) -> str:
    """A text file's contents as UTF-8; anything else (UTF-16, Latin-1 bytes) is one line naming it.

    ``bom``: accept (and drop) a UTF-8 byte-order mark, as spreadsheet exports of request files carry.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig" if bom else "utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8"
        ) from None


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits), streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _jsonl_rows(raw: bytes, path: Path, torn_tail: bool) -> tuple[list[dict[str, Any]], int]:
    """(rows, bytes they span). A line that does not parse is an error naming the file and line,
    except a last line without a newline when ``torn_tail``: that one is a write a kill cut short,
    and is left out. A last line without a newline that parses is a row like any other."""
    rows: list[dict[str, Any]] = []
    keep = 0
    lines = raw.splitlines(keepends=True)
    for lineno, line in enumerate(lines, start=1):
        last = lineno == len(lines)
        if not line.strip():
            keep += len(line)
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if torn_tail and last and not line.endswith(b"\n"):
                break
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
            raise ConfigError(f"{path}:{lineno}: not a JSON line ({reason}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{lineno}: expected a JSON object, found {type(row).__name__}")
        rows.append(row)
        keep += len(line)
    return rows, keep


def json_lines(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of a JSONL text; a line that is not JSON
    is one error naming the file, the line and the column."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}:{lineno}: malformed JSON, column {exc.colno}: {exc.msg}; fix or remove that line"
            ) from None


def read_jsonl(path: Path, torn_tail: bool = False) -> list[dict[str, Any]]:
    """Every row of a JSONL file; reading never changes the file.

    ``torn_tail=True`` is for append-only files that a killed writer may have left mid-line (run
    samples, generation stages): an unparseable last line without a newline is left out. Any other
    bad line is an error naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    return _jsonl_rows(path.read_bytes(), path, torn_tail)[0]


def open_append(path: Path):
    """Open an append-only JSONL file for appending, as its one writer.

    Only here may a file change before new rows go in: a torn last line (a kill mid-write) is cut,
    and a last row that parses but lacks its newline gets one, so the next row starts a line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        raw = path.read_bytes()
        _, keep = _jsonl_rows(raw, path, torn_tail=True)
        if keep != len(raw):
            with open(path, "r+b") as fh:
                fh.truncate(keep)
        elif raw and not raw.endswith(b"\n"):
            with open(path, "ab") as fh:
                fh.write(b"\n")
    return open(path, "a", encoding="utf-8")


class LockedError(ConfigError):
    """Another live process holds the lock of a run directory, cache or corpus."""


@contextlib.contextmanager
def exclusive(target: Path, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` (a directory or a file being written) for the block.

    The lock is ``fcntl.flock`` on ``<target>.lock`` (inside a directory: ``<dir>/.lock``), so the
    kernel releases it when the holder dies, even by ``kill -9``; a stale lock file is harmless.
    A second process gets one line naming the holder's pid. Nothing else is created or changed
    when the lock cannot be had (the lock file itself is created only in an existing folder).
    """
    import fcntl

    target = Path(target)
    lock_path = target / ".lock" if target.is_dir() else target.with_name(target.name + ".lock")
    if not lock_path.parent.is_dir():
        raise ConfigError(f"cannot lock {target}: its folder {lock_path.parent} does not exist")
    writable = True
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides: shared folders stay shared
    except PermissionError:  # another user's lock file: flock works on a read-only descriptor too
        try:
            fd, writable = os.open(lock_path, os.O_RDONLY), False
        except OSError as exc:
            raise ConfigError(f"cannot lock {target} ({exc.strerror}); check the folder's permissions") from None
    except OSError as exc:
        raise ConfigError(f"cannot lock {target} ({exc.strerror}); check the folder's permissions") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(
                f"{target} is in use by another steerlab process (pid {holder}); wait for it to finish, "
                "or stop it first"
            ) from None
        except OSError as exc:  # a filesystem without flock (some Lustre, FUSE, CIFS mounts)
            if exc.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise ConfigError(f"cannot lock {target} ({exc.strerror})") from None
            log.warning("%s: this filesystem has no locks (%s); make sure no other process writes it", target,
                        exc.strerror)  # fmt: skip
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield lock_path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def check_out(out: Path, overwrite: bool, inside: Sequence[Path] = (), writer: str = "this command") -> None:
    """Refuse, with one line, an ``--out`` file that lies inside one of the run directories ``inside`` (reading a run
    never writes into it, ``overwrite`` or not; symbolic links followed), is a folder, exists without ``overwrite``,
    or cannot be written; ``writer`` names who refuses ("a report")."""
    out = Path(out)
    target = out.resolve()
    for run in inside:
        where = Path(run).resolve()
        if target == where or where in target.parents:
            raise ConfigError(
                f"--out {out} is inside the run directory {run}, which {writer} never writes into; choose a path "
                "outside it"
            )
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out {out} exists; pass --overwrite to replace it, or choose another path")
    folder = out.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"cannot write --out {out}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write --out {out}: the folder {folder} is not writable; choose another path")
