"""Run directories: what every harness run leaves behind, and reading it back.

    RUN_DIR/header.json    full config, scenario (with the system prompt text), model fingerprint,
                           vector-file and prompt-file hashes, request ids, seeds, judge
                           settings, package versions, git commit, run-format version
    RUN_DIR/samples.jsonl  one line per finished sample: every input, every turn, the label,
                           and (once judged) the judge's scores
    RUN_DIR/summary.json   statistics per (vector, arm, multiplier, condition)

Samples are appended as they finish, so a killed run loses at most the line being written (a
torn last line is dropped on the next read) and resumes by skipping finished ids.
:func:`load_run` returns the samples as a pandas DataFrame, one row per sample.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import steerlab
from steerlab.errors import ConfigError
from steerlab.fileio import atomic_write_text, read_jsonl

if TYPE_CHECKING:
    import pandas as pd

HEADER, SAMPLES, SUMMARY = "header.json", "samples.jsonl", "summary.json"
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
    header = json.loads(path.read_text(encoding="utf-8"))
    if header.get("format") != FORMAT:
        raise ConfigError(
            f"{run_dir} was written by another steerlab run format ({header.get('format', 1)}, this version reads "
            f"{FORMAT}); rerun it with this version into a new directory"
        )
    return header


def open_run(run_dir: Path, header: dict[str, Any], keys: Sequence[str]) -> None:
    """Create the run directory with ``header``, or check that an existing one is the same run."""
    run_dir = Path(run_dir)
    if (run_dir / HEADER).exists():
        old = read_header(run_dir)
        for key in keys:
            if old.get(key) != header.get(key):
                raise ConfigError(
                    f"{run_dir} holds a run with another {key.replace('_', ' ')}; choose a new --out "
                    "or delete the directory"
                )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} exists and is not a steerlab run directory; choose a new --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / HEADER, json.dumps(header, indent=1, sort_keys=True) + "\n")


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
