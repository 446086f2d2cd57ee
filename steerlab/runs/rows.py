"""Rows of a run and the generations they share.

Every combination of (vector arm, signed multiplier, claim, condition, request, seed) is a *row*
(:func:`expand`); the arms are each vector file's real vector and its random controls
(:func:`load_arms`). Rows at multiplier 0 are the same generation whatever the vector, so rows
are keyed by the generation they need (:func:`generation_key`) and the engine generates each key
once (:mod:`steerlab.runs.engine`). With no vectors the run has one arm named ``none``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlab.errors import ConfigError
from steerlab.harness.datasets import Item
from steerlab.models import Fingerprint
from steerlab.runs.config import SweepConfig
from steerlab.steer import SteeringSetting
from steerlab.vectors import VectorBundle

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
        arms.append(Arm(name, "real", bundle, None))
        arms += [Arm(name, f"control{i}", bundle, i) for i in range(config.controls)]
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
ROW_FIELDS = ("id", "vector", "arm", "multiplier", "condition", "item", "seed", "claim", "prompt")


def row_fields(row: Row) -> dict[str, Any]:
    """The row's fields as a sample records them (``claim`` only in a prompt-intervention run)."""
    return {k: v for k, v in row.__dict__.items() if v is not None or k != "claim"}


def row_of(sample: dict[str, Any]) -> Row:
    """The row a written sample belongs to."""
    return Row(sample["id"], sample["vector"], sample["arm"], sample["multiplier"], sample["condition"],
               sample["item"], sample["seed"], sample.get("claim"))  # fmt: skip


def generation_key(row: Row) -> str:
    """The generation ``row`` needs: every arm at multiplier 0 shares its condition's unsteered one."""
    steer = "none" if row.multiplier == 0 else f"{row.vector}/{row.arm}|{row.multiplier:+g}"
    claim = f"{row.claim}|" if row.claim else ""
    return f"{steer}|{claim}{row.condition}|{row.item}|s{row.seed}"


def steering_settings(config: SweepConfig, arms: Sequence[Arm]) -> dict[tuple[str, str, float], SteeringSetting]:
    """Every (vector, arm, non-zero multiplier)'s steering setting; refuses layers a vector file lacks."""
    from steerlab.generate import settings_for

    out = {}
    for arm in arms:
        if arm.bundle is None:
            continue
        for setting in settings_for(arm.bundle, config.multipliers, config.layers, config.scale, arm.control):
            out[(arm.vector, arm.arm, setting.multiplier)] = setting
    return out
