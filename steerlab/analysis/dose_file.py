"""Dose files as runs read them (``sweep --dose-file``, ``eval --dose-file``, ``doses:`` in a run config): a
:mod:`steerlab.analysis.doses` calibration record, checked whole on load and looked up per run arm and signed dose.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlab.analysis.doses import FORMAT, DoseError
from steerlab.fileio import read_text
from steerlab.models import Fingerprint


def _same_file(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


@dataclass(frozen=True)
class DoseFile:
    """A calibration record as a run reads it (``--dose-file``, ``doses:``): checked whole on load (JSON, kind,
    format, every dose's fields, finite multipliers), then looked up per run arm and dose (:meth:`lookup`)."""

    path: Path
    hash: str
    statistic: str
    targets: tuple[float, ...]
    model: dict[str, Any]
    doses: tuple[dict[str, Any], ...]

    @classmethod
    def load(cls, path: Path) -> DoseFile:

        from steerlab.fileio import file_hash

        path = Path(path)
        where = f"dose file {path}"
        try:
            data = json.loads(read_text(path, "dose file"))
        except json.JSONDecodeError as exc:
            raise DoseError(
                f"{where} is not JSON ({exc.msg}, line {exc.lineno}); give a calibrate-dose --out file"
            ) from None
        if not isinstance(data, dict) or data.get("kind") != "dose_calibration":
            raise DoseError(f"{where} is not a calibrate-dose record (no kind: dose_calibration)")
        old = isinstance(data.get("doses"), list) and any(
            isinstance(d, dict) and "file_hash" not in d for d in data["doses"]
        )
        if data.get("format") == 1 or old:
            raise DoseError(f"{where} records no vector-file hashes (an older calibrate-dose), so a vector changed "
                            "since cannot be caught; re-run calibrate-dose")  # fmt: skip
        if data.get("format") != FORMAT:
            raise DoseError(
                f"{where} has format {data.get('format')!r}, this steerlab reads {FORMAT}; re-run calibrate-dose"
            )
        try:
            targets = tuple(float(t) for t in data["targets"])
            statistic, model, doses = str(data["statistic"]), dict(data["model"]), tuple(data["doses"])
            Fingerprint.from_dict(model)
            for d in doses:
                _check_dose(d, targets, where)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DoseError(f"{where} is malformed ({type(exc).__name__}: {exc}); re-run calibrate-dose") from None
        if not targets or not doses or not all(math.isfinite(t) and t > 0 for t in targets):
            raise DoseError(
                f"{where} is malformed (no dose, or a target that is not a KL above 0); re-run calibrate-dose"
            )
        return cls(path, file_hash(path), statistic, targets, model, doses)

    def describe(self) -> dict[str, Any]:
        """What a run header records of the file (its hash is part of the run's identity)."""
        return {"path": str(self.path), "hash": self.hash, "statistic": self.statistic, "targets": list(self.targets),
                "unit": "multipliers are signed doses: KL(unsteered || steered) in nats"}  # fmt: skip

    def check_model(self, fingerprint: Fingerprint, what: str = "the run's model") -> None:
        """Refuse the file for a model whose fingerprint differs from the one it was calibrated on."""
        diff = Fingerprint.from_dict(self.model).differences(fingerprint)
        if diff:
            raise DoseError(f"dose file {self.path} was calibrated on another model than {what} (fingerprint differs "
                            f"in {', '.join(diff)}); run calibrate-dose on this model")  # fmt: skip

    def lookup(self, vector_file: Path, control: int | None, dose: float) -> dict[str, Any]:
        """The calibrated dose record of ``vector_file``'s vector (``control`` None) or random control at the
        signed ``dose`` (KL units: target ``|dose|``, sign of ``dose``); refused in one line if the file has none,
        the vector file changed since, or that dose did not converge."""
        from steerlab.fileio import file_hash

        target = next((t for t in self.targets if math.isclose(t, abs(dose), rel_tol=1e-9)), None)
        if target is None:
            have = ", ".join(f"{t:g}" for t in self.targets)
            raise DoseError(f"multiplier {dose:+g} is a dose in KL units, but dose file {self.path} holds doses at KL "
                            f"{have} only; use those or run calibrate-dose with --target-kl {abs(dose):g}")  # fmt: skip
        h = file_hash(Path(vector_file))
        mine = [d for d in self.doses if d["file_hash"] == h]
        if not mine:
            then = next((d["file_hash"] for d in self.doses if _same_file(d["file"], vector_file)), None)
            if then is not None:
                raise DoseError(f"vector file {vector_file} changed since dose file {self.path} was calibrated (sha256 "
                                f"{then} then, {h} now); re-run calibrate-dose on it")  # fmt: skip
            files = ", ".join(sorted({d["file"] for d in self.doses}))
            raise DoseError(f"dose file {self.path} holds no dose for vector file {vector_file} (it holds {files}); "
                            "run calibrate-dose on it")  # fmt: skip
        sign = "+" if dose > 0 else "-"
        what = "the vector" if control is None else f"control {control}"
        found = [d for d in mine if d["control"] == control and d["sign"] == sign and d["target_kl"] == target]
        if not found:
            n = len({d["control"] for d in mine if d["control"] is not None})
            fix = (
                "run calibrate-dose on it" if control is None
                else f"use controls: {n} or fewer, or re-run calibrate-dose with --controls {control + 1}"
            )  # fmt: skip
            raise DoseError(f"dose file {self.path} holds no dose for {what} of {vector_file} at KL {target:g} "
                            f"({sign}); {fix}")  # fmt: skip
        record = found[0]
        if not record["converged"]:
            raise DoseError(f"the dose of {what} of {vector_file} at KL {target:g} ({sign}) did not converge in "
                            f"{self.path} (KL {record['kl']:.4g} at multiplier {record['multiplier']:+g}); re-run "
                            "calibrate-dose with a larger --max-iter or --rtol")  # fmt: skip
        return record


def _check_dose(d: dict[str, Any], targets: Sequence[float], where: str) -> None:
    """Refuse a dose record whose fields a run needs are missing, mistyped or not finite."""
    for key, kind in (("file", str), ("file_hash", str), ("sign", str), ("layers", list), ("converged", bool)):
        if not isinstance(d[key], kind):
            raise TypeError(f"dose {d.get('name')!r}: {key} is not a {kind.__name__}")
    if d["sign"] not in ("+", "-") or not all(isinstance(x, int) for x in d["layers"]):
        raise ValueError(f"dose {d.get('name')!r}: sign or layers")
    if d["control"] is not None and not isinstance(d["control"], int):
        raise TypeError(f"dose {d.get('name')!r}: control is not an index")
    for key in ("multiplier", "kl", "target_kl"):
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DoseError(f"{where}: dose {d.get('name')!r} ({d['sign']}) has no finite {key} ({value!r}); re-run "
                            "calibrate-dose")  # fmt: skip
    if float(d["target_kl"]) not in targets or (d["multiplier"] > 0) != (d["sign"] == "+") or d["multiplier"] == 0:
        raise ValueError(f"dose {d.get('name')!r}: its target or the sign of its multiplier disagrees with the file")
