"""Rows of a run and the generations they share.

Every combination of (vector arm, signed multiplier, claim, condition, request, seed) is a *row*
(:func:`expand`); the arms are each vector file's real vector and its random controls
(:func:`load_arms`). Rows at multiplier 0 are the same generation whatever the vector, so rows
are keyed by the generation they need (:func:`generation_key`) and the engine generates each key
once (:mod:`steerlab.runs.engine`). With no vectors the run has one arm named ``none``.

With a dose file (``doses:``, ``--dose-file``) a row's ``multiplier`` is a signed dose in KL units, the run's
coordinate: every arm (the real vector and each control) is steered at that dose by its *own* calibrated
multiplier (:func:`steering_settings`), so real and controls at one dose are a matched comparison, and rows,
their ids, generation keys and summaries are keyed by the dose. Samples record the multiplier applied beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab.conditions import load_condition
from steerlab.errors import ConfigError
from steerlab.harness.datasets import Item
from steerlab.models import Fingerprint
from steerlab.runs.config import SweepConfig
from steerlab.steer import SteeringSetting
from steerlab.vectors import VectorBundle

if TYPE_CHECKING:
    from steerlab.analysis.dose_file import DoseFile

NONE = "none"  # vector and arm name of unsteered rows in a run without vectors


@dataclass(frozen=True)
class Row:
    id: str
    vector: str  # the real vector's name (its concept), or "none"
    arm: str  # "real", "control<i>", or "none"
    multiplier: float
    condition: str
    item: str  # the request's id
    seed: int
    claim: str | None = None  # prompt interventions: "baseline" or a claim id


@dataclass
class Arm:
    vector: str
    arm: str
    bundle: VectorBundle | None
    control: int | None
    path: Path | None = None  # the vector file (a dose file's doses are looked up by its content)


def load_arms(config: SweepConfig, fingerprint: Fingerprint | None) -> list[Arm]:
    if not config.vectors:
        return [Arm(NONE, NONE, None, None)]
    arms = []
    names: set[str] = set()
    for path in config.vectors:
        bundle = VectorBundle.load(path, expect=fingerprint)
        name = bundle.meta.get("concept", Path(path).stem)
        if name in names:
            raise ConfigError(f"two vector files for {name!r}; a sweep takes one vector per concept")
        names.add(name)
        if config.controls > len(bundle.controls):
            raise ConfigError(f"{path} has {len(bundle.controls)} controls; the sweep asks for {config.controls}")
        arms.append(Arm(name, "real", bundle, None, Path(path)))
        arms += [Arm(name, f"control{i}", bundle, i, Path(path)) for i in range(config.controls)]
    return arms


def expand(
    config: SweepConfig, arms: Sequence[Arm], items: Sequence[Item], conditions: Sequence[str],
    claims: Sequence[str | None] = (None,),
) -> list[Row]:  # fmt: skip
    rows = []
    for arm in arms:
        for m in config.multipliers:
            for claim in claims:
                for cond in conditions:
                    for item in items:
                        for seed in config.seeds:
                            tag = f"{claim}|" if claim else ""
                            rid = f"{arm.vector}/{arm.arm}|{m:+g}|{tag}{cond}|{item.id}|s{seed}"
                            rows.append(Row(rid, arm.vector, arm.arm, m, cond, item.id, seed, claim))
    return rows


# the fields of a sample that belong to its row, not to the generation rows share
ROW_FIELDS = ("id", "vector", "arm", "multiplier", "condition", "item", "seed", "claim", "prompt", "gated", "dose_kl",
              "steering_multiplier")  # fmt: skip


def row_fields(row: Row) -> dict[str, Any]:
    """The row's fields as a sample records them (``claim`` only in a prompt-intervention run)."""
    return {k: v for k, v in row.__dict__.items() if v is not None or k != "claim"}


def row_of(sample: dict[str, Any]) -> Row:
    """The row a written sample belongs to."""
    return Row(sample["id"], sample["vector"], sample["arm"], sample["multiplier"], sample["condition"],
               sample["item"], sample["seed"], sample.get("claim"))  # fmt: skip


def _would_steer(row: Row, config: SweepConfig | None) -> bool:
    """A non-zero multiplier (under ablate or clamp any multiplier) of a vector: steered unless the gate says not."""
    if row.vector == NONE:
        return False
    return row.multiplier != 0 or (config is not None and config.operator != "add")


def _gated_off(row: Row, config: SweepConfig | None) -> bool:
    """The experimenter's gate (``steer_only``) leaves ``row``'s condition unsteered."""
    return config is not None and config.steer_only is not None and row.condition not in config.steer_only


def steers(row: Row, config: SweepConfig | None = None) -> bool:
    """Whether ``row``'s generation is steered: a non-zero multiplier (under ablate or clamp any multiplier), in a
    condition the experimenter's gate (``steer_only``) lets through."""
    return _would_steer(row, config) and not _gated_off(row, config)


def gated(row: Row, config: SweepConfig) -> dict[str, Any]:
    """The sample field of a row the experimenter's gate leaves unsteered (a row that would be steered without it):
    ``{"gated": "steer_only"}``."""
    return {"gated": "steer_only"} if _would_steer(row, config) and _gated_off(row, config) else {}


def generation_key(row: Row, config: SweepConfig | None = None) -> str:
    """The generation ``row`` needs: every unsteered row (multiplier 0 under addition, or gated off by
    ``steer_only``) shares its condition's unsteered one."""
    steer = f"{row.vector}/{row.arm}|{row.multiplier:+g}" if steers(row, config) else "none"
    claim = f"{row.claim}|" if row.claim else ""
    return f"{steer}|{claim}{row.condition}|{row.item}|s{row.seed}"


def steering_settings(config: SweepConfig, arms: Sequence[Arm]) -> dict[tuple[str, str, float], SteeringSetting]:
    """Every (vector, arm, non-zero multiplier)'s steering setting; refuses layers a vector file lacks.

    With ``config.doses`` the multiplier is a signed dose: the setting steers by the arm's calibrated multiplier
    at KL ``|m|`` in the direction ``sign(m)``, at the layers it was calibrated at (refused, one line, when the
    file has no converged dose for the arm and dose, or the vector file changed since, or ``layers:`` differ)."""
    from steerlab.generate import settings_for

    table = dose_file(config)
    condition = load_condition(config.steer_if) if config.steer_if is not None else None
    out = {}
    for arm in arms:
        if arm.bundle is None:
            continue
        for m in config.multipliers:
            if table is None or m == 0:
                alpha = m
            else:
                assert arm.path is not None
                record = table.lookup(arm.path, arm.control, m)
                alpha = float(record["multiplier"])
            (setting,) = settings_for(arm.bundle, [alpha], config.layers, config.scale, arm.control)
            setting = replace(setting, operator=config.operator, bounds=config.bounds(), condition=condition)
            if table is not None and m != 0 and list(setting.steered_layers()) != record["layers"]:
                raise ConfigError(
                    f"layers: {config.layers} steers {arm.path} at {list(setting.steered_layers())}, but its doses "
                    f"were calibrated at {record['layers']}; drop layers: or calibrate those layers"
                )
            out[(arm.vector, arm.arm, m)] = setting
    return out


def dose_file(config: SweepConfig) -> DoseFile | None:
    """The run's dose file (:class:`steerlab.analysis.dose_file.DoseFile`), checked whole; None without one."""
    if config.doses is None:
        return None
    from steerlab.analysis.dose_file import DoseFile

    return DoseFile.load(config.doses)
