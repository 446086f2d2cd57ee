"""Steering settings and the per-row steering table they make (see :mod:`steerlab.steer` for how it is applied).

A :class:`SteeringSetting` is one (vector, signed multiplier, layers, scale, operator, condition);
:func:`build_table` stacks a call's settings into the additive table ``[1 + n_settings, n_layers, d_model]`` (row 0
zeros: unsteered rows) and :func:`build_projection` their ablating and clamping rows. Every number that would break
the model is refused here, with one line naming the setting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import torch

from steerlab.errors import ConfigError
from steerlab.vectors import SteeringVector, VectorError

if TYPE_CHECKING:
    from steerlab.conditions import Condition

Scale = Literal["absolute", "relative"]
Operator = Literal["add", "ablate", "clamp"]
OPERATORS: tuple[str, ...] = get_args(Operator)
# Largest norm an added vector may have: beyond it the sum of squares that every RMS norm computes
# (in float32) overflows, the normalised stream becomes 0 or NaN, and generation is garbage.
MAX_NORM = math.sqrt(torch.finfo(torch.float32).max)  # about 1.8e19


def bounds_ok(lo: float, hi: float) -> bool:
    """Clamp bounds (multiplier units, an open side infinite) that make sense: numbers, ``lo <= hi``, neither side
    infinite the wrong way."""
    return not (math.isnan(lo) or math.isnan(hi) or lo > hi or lo == math.inf or hi == -math.inf)


@dataclass(frozen=True)
class SteeringSetting:
    """One steering configuration: ``multiplier`` times ``vector`` at ``layers``.

    ``scale="absolute"`` (the paper's convention) multiplies the saved vector as it is;
    ``scale="relative"`` makes the multiplier a fraction of the layer's mean per-token residual
    norm (``token_norms``: the mean of ||h_t|| over the locus's tokens, recorded in the vector file
    at extraction): the added vector is ``multiplier * token_norm[l] * v_l / |v_l|``.
    """

    vector: SteeringVector
    multiplier: float
    layers: tuple[int, ...] | None = None  # default: the vector's selected layers
    scale: Scale = "absolute"
    token_norms: dict[int, float] | None = None
    operator: Operator = "add"
    bounds: tuple[float, float] | None = None  # clamp: the projection's range, in multiplier units
    condition: Condition | None = None  # steer only rows whose prompt passes it

    def steered_layers(self) -> tuple[int, ...]:
        return tuple(self.layers) if self.layers is not None else self.vector.layers

    def describe(self) -> str:
        """``alpha=+4 x toy at layers [1, 2]``: how error messages name a setting."""
        scale = " (relative scale)" if self.scale == "relative" else ""
        op = ""
        if self.operator == "ablate":
            op = "ablate, "
        elif self.operator == "clamp" and self.bounds is not None:
            op = f"clamp to [{self.bounds[0]:g}, {self.bounds[1]:g}], "
        cond = f" if {self.condition.describe()}" if self.condition is not None else ""
        layers = list(self.steered_layers())
        return f"{op}alpha={self.multiplier:+g} x {self.vector.name} at layers {layers}{scale}{cond}"

    def check(self) -> None:
        """Refuse, with one line, an operator or bounds that make no sense."""
        if self.operator not in OPERATORS:
            raise ConfigError(f"unknown operator {self.operator!r}; use one of {', '.join(OPERATORS)}")
        if self.operator == "clamp":
            if self.bounds is None:
                raise ConfigError("operator clamp needs bounds LO:HI (the projection's range, in multiplier units)")
            lo, hi = self.bounds
            if not bounds_ok(lo, hi):
                raise ConfigError(f"clamp bounds [{lo:g}, {hi:g}]: give LO <= HI, numbers (or an empty side for none)")
        elif self.bounds is not None:
            raise ConfigError(
                f"bounds are for operator clamp, not {self.operator} (drop --clamp or use --operator clamp)"
            )

    def _units(self, layers: Sequence[int]) -> tuple[list[int], torch.Tensor]:
        """(indices j into ``layers`` this setting steers, its per-layer vectors ``[n, d_model]`` float32 as the
        multiplier scales them: the saved vector, or for relative scale its direction times the token norm)."""
        mine = set(self.steered_layers())
        rows = [j for j, layer in enumerate(layers) if layer in mine]
        if not rows:
            return rows, torch.zeros(0, self.vector.d_model)
        v = [self.vector.at(layers[j]).float() for j in rows]
        if self.scale == "relative":
            for i, j in enumerate(rows):
                layer = layers[j]
                if not self.token_norms or layer not in self.token_norms:
                    raise VectorError(f"relative scale needs the mean per-token norm of layer {layer}")
                norm = self.token_norms[layer]
                if not (isinstance(norm, (int, float)) and math.isfinite(norm) and norm > 0):
                    raise VectorError(
                        f"{self.vector.name}: the recorded token_norm of layer {layer} is {norm}, so --scale relative "
                        "cannot scale by it; refit the vector or use --scale absolute"
                    )
                v[i] = v[i] / v[i].norm().clamp_min(1e-30) * norm  # row by row, as the table has always been made
        return rows, torch.stack(v)

    def projection(self, layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This setting's projection rows: (unit directions ``[len(layers), d_model]``, lower and upper limits of the
        projection ``[len(layers)]``), float32; zeros and (-inf, inf) where it only adds or does not steer."""
        self.check()
        n, d = len(layers), self.vector.d_model
        units = torch.zeros(n, d)
        lo = torch.full((n,), -math.inf)
        hi = torch.full((n,), math.inf)
        if self.operator == "add":
            return units, lo, hi
        rows, v = self._units(layers)
        for i, j in enumerate(rows):
            size = float(v[i].double().norm())
            if not size > 0:
                raise VectorError(f"{self.describe()}: the vector at layer {layers[j]} is zero, so it has no direction")
            units[j] = v[i] / v[i].norm()
            if self.operator == "ablate":
                lo[j] = hi[j] = self.multiplier * size
            else:
                assert self.bounds is not None
                lo[j], hi[j] = self.bounds[0] * size, self.bounds[1] * size
                for end in (lo[j], hi[j]):
                    if math.isfinite(float(end)) and not abs(float(end)) < MAX_NORM:
                        raise ConfigError(
                            f"{self.describe()}: a clamp bound at layer {layers[j]} is {float(end):.3g} along the "
                            "vector, which overflows float32; use smaller bounds"
                        )
        return units, lo, hi

    def rows(self, layers: Sequence[int]) -> torch.Tensor:
        """This setting's additive vectors ``[len(layers), d_model]`` (zeros where it does not steer)."""
        if not math.isfinite(self.multiplier):
            raise ConfigError(f"multiplier {self.multiplier} is not a finite number")
        if self.scale not in get_args(Scale):
            raise ConfigError(f"unknown scale {self.scale!r}; use absolute or relative")
        self.check()
        out = torch.zeros(len(layers), self.vector.d_model, dtype=torch.float32)
        rows, v = self._units(layers)
        if not rows:
            return out
        if self.operator != "ablate":  # ablation sets the projection itself (see projection()); it adds nothing
            out[rows] = self.multiplier * v
        # The added vector must survive float32 and the next RMS norm (a sum of squares in float32).
        sizes = abs(self.multiplier) * v.double().norm(dim=-1)  # [n_rows]
        bad = (~torch.isfinite(out[rows]).all(-1)) | ~(sizes < MAX_NORM)
        if bad.any():
            k = int(bad.nonzero()[0])
            raise ConfigError(
                f"{self.describe()}: the added vector at layer {layers[rows[k]]} has norm {float(sizes[k]):.3g}, "
                "which overflows float32; use a smaller multiplier"
            )
        return out


def parse_bounds(text: str) -> tuple[float, float]:
    """``--clamp LO:HI`` (multiplier units; an empty side is unbounded: ``:2``, ``-1:``) as (lo, hi)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise ConfigError(f"--clamp {text!r}: write LO:HI, e.g. -1:1, or :2 for at most 2")
    try:
        lo = float(parts[0]) if parts[0].strip() else -math.inf
        hi = float(parts[1]) if parts[1].strip() else math.inf
    except ValueError:
        raise ConfigError(f"--clamp {text!r}: LO and HI must be numbers (write LO:HI, e.g. -1:1)") from None
    if not bounds_ok(lo, hi):
        raise ConfigError(f"--clamp {text!r}: give LO <= HI (an empty side for no bound)")
    if lo == -math.inf and hi == math.inf:
        raise ConfigError(f"--clamp {text!r}: both sides are open, so it would clamp nothing; give LO, HI or both")
    return lo, hi


Projection = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # units [n_rows, L, d_model], lo, hi [n_rows, L]


def build_projection(settings: Sequence[SteeringSetting], layers: Sequence[int]) -> Projection | None:
    """The projection rows of a table (row 0 and adding rows: zero units, unbounded), or None when every setting only
    adds (then the hooks compute no projection at all)."""
    if all(s.operator == "add" for s in settings):
        return None
    d_model = settings[0].vector.d_model
    units = torch.zeros(1 + len(settings), len(layers), d_model)
    lo = torch.full((1 + len(settings), len(layers)), -math.inf)
    hi = torch.full((1 + len(settings), len(layers)), math.inf)
    for i, s in enumerate(settings):
        units[i + 1], lo[i + 1], hi[i + 1] = s.projection(layers)
    return units, lo, hi


def build_table(settings: Sequence[SteeringSetting], d_model: int) -> tuple[torch.Tensor, list[int]]:
    """The table ``[1 + len(settings), n_layers, d_model]`` (row 0 zeros) and its layers.

    The layers are the union of every setting's layers, sorted; setting i is row i + 1.
    """
    for s in settings:
        if s.vector.d_model != d_model:
            raise VectorError(f"{s.vector.name} has d_model {s.vector.d_model}, the model {d_model}")
    layers = sorted({layer for s in settings for layer in s.steered_layers()})
    table = torch.zeros(1 + len(settings), len(layers), d_model, dtype=torch.float32)
    for i, s in enumerate(settings):
        table[i + 1] = s.rows(layers)
    return table, layers
