"""Run directories: what every harness run leaves behind, and reading it back.

    RUN_DIR/header.json    full config, scenario (with the system prompt text), model fingerprint,
                           vector-file and prompt-file hashes, request ids, seeds, judge
                           settings, package versions, git commit, run-format version
    RUN_DIR/samples.jsonl  one line per finished sample: every input, every turn, the label,
                           and (once judged) the judge's scores
    RUN_DIR/summary.json   statistics per (vector, arm, multiplier, condition)
    RUN_DIR/.lock          the run's lock (:func:`hold_run`): one writer at a time; it holds the pid
                           of the last process that ran the run, and stays behind (harmless)

Samples are appended as they finish, so a killed run loses at most the line being written (a
torn last line is dropped on the next read) and resumes by skipping finished ids. One process
writes a run at a time: the writer holds an exclusive lock on the directory for the run's life, and
a second gets one line naming the holder's pid. Every check runs before the directory is made, so
a refused run leaves nothing behind; a directory holding a header and no sample (a run stopped
before its first sample) is re-initialised by the next run, whatever its header said.
:func:`load_run` returns the samples as a pandas DataFrame, one row per sample.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import steerlab
from steerlab.errors import ConfigError
from steerlab.fileio import atomic_write_text, exclusive, read_jsonl

if TYPE_CHECKING:
    import pandas as pd

HEADER, SAMPLES, SUMMARY, LOCK = "header.json", "samples.jsonl", "summary.json", ".lock"
FORMAT = 2  # bump when samples or header change incompatibly (1: the sweep's records.jsonl)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"steerlab": steerlab.__version__}
    for name in ("torch", "transformers", "anthropic", "vllm", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of the steerlab checkout in use (with ``-dirty`` if it has changes), or None."""
    root = Path(steerlab.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def read_header(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / HEADER
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a steerlab run directory (no {HEADER})")
    try:
        header = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise ConfigError(f"{path} is broken ({reason}); rerun into a new directory") from None
    if not isinstance(header, dict):
        kind = type(header).__name__
        raise ConfigError(f"{path} is broken (a JSON {kind}, not an object); rerun into a new directory")
    if header.get("format") != FORMAT:
        raise ConfigError(
            f"{run_dir} was written by another steerlab run format ({header.get('format', 1)}, this version reads "
            f"{FORMAT}); rerun it with this version into a new directory"
        )
    return header


def header_only(run_dir: Path) -> bool:
    """True for a run directory that holds a header and no finished sample (nothing but its own
    files): a run stopped before its first sample, whose header the next run may replace."""
    run_dir = Path(run_dir)
    names = {p.name for p in run_dir.iterdir()} - {LOCK}
    return HEADER in names and names <= {HEADER, SAMPLES} and not read_samples(run_dir)


def check_run(run_dir: Path, header: dict[str, Any], keys: Sequence[str]) -> None:
    """Refuse ``header`` for ``run_dir`` unless the directory is new, empty, header-only, or holds the
    same run (equal on ``keys``). Reads only: a refused run leaves nothing behind."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file, not a run directory; choose a new --out")
    if (run_dir / HEADER).exists():
        if header_only(run_dir):
            return
        old = read_header(run_dir)
        for key in keys:
            if old.get(key) != header.get(key):
                was, now = old.get(key), header.get(key)
                if (
                    key == "config_hash"
                    and isinstance(old.get("config"), dict)
                    and isinstance(header.get("config"), dict)
                ):
                    was, now = old["config"], header["config"]  # name the settings that differ, not the hashes
                parts = (
                    [f"{k}: {was.get(k)!r} there, {now.get(k)!r} now" for k in sorted(set(was) | set(now))
                     if was.get(k) != now.get(k)]
                    if isinstance(was, dict) and isinstance(now, dict) else []
                )  # fmt: skip
                raise ConfigError(
                    f"{run_dir} holds a run with another {key.replace('_', ' ')}"
                    + (f" ({'; '.join(parts)})" if parts else "")
                    + "; choose a new --out or delete the directory"
                )
        return
    if any(p.name != LOCK for p in run_dir.iterdir()):
        raise ConfigError(f"{run_dir} exists and is not a steerlab run directory; choose a new --out")


@contextlib.contextmanager
def hold_run(run_dir: Path) -> Iterator[Path]:
    """Make ``run_dir`` (if need be) and hold its lock for the block; a second process gets one line
    naming the holder's pid (:func:`steerlab.fileio.exclusive`). Check the run first (:func:`check_run`):
    making the directory is the first write."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make the run directory {run_dir} ({exc.strerror}); choose another --out") from None
    with exclusive(run_dir, "run"):
        yield run_dir


def open_run(run_dir: Path, header: dict[str, Any], keys: Sequence[str]) -> None:
    """Write ``header`` into a new, empty or header-only run directory, or check that an existing one
    holds the same run (:func:`check_run`). Call it holding the run's lock (:func:`hold_run`)."""
    run_dir = Path(run_dir)
    check_run(run_dir, header, keys)
    if (run_dir / HEADER).exists() and not header_only(run_dir):
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / HEADER, json.dumps(header, indent=1, sort_keys=True) + "\n")


def check_unique(samples: Sequence[dict[str, Any]], source: Path | str) -> None:
    """Refuse samples that repeat a row id (two writers at once, or files concatenated): each row
    would count twice and make every interval look tighter than it is."""
    seen: set[Any] = set()
    for s in samples:
        rid = s.get("id")
        if rid is None:  # samples built by hand in Python carry no row id: nothing to compare
            continue
        if rid in seen:
            ids = [x["id"] for x in samples if x.get("id") is not None]
            n = len(ids) - len(set(ids))
            raise ConfigError(
                f"{source} holds row {rid!r} twice ({n} repeated rows in all); statistics would count them twice: "
                "rerun into a new directory"
            )
        seen.add(rid)


def read_samples(run_dir: Path) -> list[dict[str, Any]]:
    """Finished samples; a torn last line (a kill mid-write) is left out. Reading never changes the
    file: only the run's writer (:func:`steerlab.fileio.open_append`) cuts a torn line before appending."""
    return read_jsonl(Path(run_dir) / SAMPLES, torn_tail=True)


def rewrite_samples(run_dir: Path, samples: Sequence[dict[str, Any]]) -> None:
    """Replace samples.jsonl atomically (the judge adds its scores this way)."""
    text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    atomic_write_text(Path(run_dir) / SAMPLES, text)


def flatten(sample: dict[str, Any]) -> dict[str, Any]:
    """One sample as a flat row: nested judge scores become ``judge_A``, ``judge_B``, ..."""
    row = {k: v for k, v in sample.items() if k != "judge"}
    judge = sample.get("judge") or {}
    row["judge_error"] = judge.get("error")
    for concept, value in (judge.get("scores") or {}).items():
        row[f"judge_{concept}"] = value.get("score")
        row[f"judge_{concept}_justification"] = value.get("justification")
    row["n_turns"] = len(sample.get("turns", []))
    return row


def load_run(run_dir: Path) -> pd.DataFrame:
    """A run's samples as a DataFrame (one row per sample; judge scores as ``judge_<concept>`` columns)."""
    import pandas as pd

    read_header(run_dir)
    frame = pd.DataFrame([flatten(s) for s in read_samples(run_dir)])
    return frame
