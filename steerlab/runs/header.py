"""The run header: what a run was, recorded once in ``RUN_DIR/header.json``.

:func:`build_header` describes the config, scenario, model, vector and prompt files, requests,
seeds, backend and dose file; a resumed run must agree with the header on :data:`RESUME_KEYS`
(:func:`steerlab.harness.records.check_run`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerlab import prompts
from steerlab.backends.base import Backend, backend_identity
from steerlab.fileio import file_hash
from steerlab.harness.datasets import Item
from steerlab.harness.records import FORMAT, git_commit, versions
from steerlab.harness.scenario import Scenario
from steerlab.runs.config import SweepConfig
from steerlab.runs.rows import dose_file


def config_hash(config: SweepConfig) -> str:
    data = config.model_dump(mode="json", exclude={"out", "batch_size", "scorer", "judge"})
    if not data.get("rename"):  # no rename: the hash of a run made before renames existed
        data.pop("rename", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def items_hash(items: Sequence[Item]) -> str:
    data = [(i.id, i.prompt, i.messages) for i in items]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def build_header(
    config: SweepConfig, scenario: Scenario, items: Sequence[Item], fingerprint, n_rows: int,
    backend: dict[str, Any] | None = None,
) -> dict:  # fmt: skip
    prompt_path = Path(config.prompts)
    system_file = scenario.describe().get("system_prompt_file")
    return {
        "kind": "steerlab-run",
        "format": FORMAT,
        "config": config.model_dump(mode="json"),
        "config_hash": config_hash(config),
        "scenario": scenario.describe(),
        "model": fingerprint.to_dict() if fingerprint else None,
        "vector_files": {str(p): file_hash(Path(p)) for p in config.vectors},
        "prompt_files": {
            **({str(prompt_path): file_hash(prompt_path)} if prompt_path.is_file() else {}),
            **({system_file: file_hash(Path(system_file))} if system_file else {}),
        },
        "claims": prompts.describe(config.claims) if config.claims else None,
        # the dose file's path, content hash and targets (None without one): a resume with another is refused
        "dose_file": table.describe() if (table := dose_file(config)) is not None else None,
        # the steer_if condition file and its content hash (None without one): a resume with another is refused
        "steer_if_file": {str(config.steer_if): file_hash(Path(config.steer_if))} if config.steer_if else None,
        "intervention": config.intervention,
        "requests_hash": items_hash(items),
        "items": [i.id for i in items],
        "seeds": config.seeds,
        "run_seed": config.seed,
        "sampling_seeds": "per sample: sha256([run_seed, request id, sample seed]); shared by the arms, "
        "multipliers, claims and conditions of one request (a paired design); turn t > 0 derives its own",
        "backend": backend,
        "backend_identity": backend_identity(backend) if backend else None,
        "chat_date": config.chat_date,
        "versions": versions(),
        "git_commit": git_commit(),
        "n_rows": n_rows,
    }


def describe_backend(backend: Backend) -> dict[str, Any]:
    """The backend's description for the run header; a backend that gives none (a test double, a user's
    own) is recorded as undescribed, and resumes are then not checked against it."""
    describe = getattr(backend, "describe", None)
    return describe() if callable(describe) else {"backend": "undescribed"}


RESUME_KEYS = (
    "config_hash", "model", "vector_files", "requests_hash", "scenario", "claims", "backend_identity", "dose_file",
    "steer_if_file",
)  # fmt: skip
