"""Steering vectors, their norm-matched random controls, and the vector file.

A vector file is safetensors with two tensors and a JSON header (never pickle):

    vector    [n_layers, d_model]            float32, one direction per cached layer
    controls  [n_controls, n_layers, d_model] float32, norm-matched Gaussian controls
    metadata["steerlab"] = JSON: concept, method, locus, layers (cached), selected layers and the
        rule that chose them, model fingerprint, per-layer diagnostics, pair-file hash, control
        seeds and provenance, steerlab version.

A control is, at every layer, an independent Gaussian vector rescaled to the real vector's norm
at that layer, drawn from ``torch.Generator().manual_seed(seed)`` with its own seed. A fitted file's
control seeds come from :func:`control_seeds`: a hash of the run seed (``--control-seed``), the
vector's identity (concept, model fingerprint, pair-file hash, locus, method, ...) and the control's
index, so two files never share controls by accident and a refit draws the same ones again.

A vector or control that holds a NaN or an infinity, is zero, or whose norm overflows float32 at
some layer cannot steer: :meth:`VectorBundle.save` refuses to write it and :meth:`VectorBundle.load`
refuses to read it, with one line naming the file, the tensor (and control) and the layer.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steerlab.errors import SteerlabError
from steerlab.fileio import atomic_path
from steerlab.models import Fingerprint

META_KEY = "steerlab"


class VectorError(SteerlabError):
    """A vector file that is missing, malformed, or for another model."""


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None``, so ``json.dumps(..., allow_nan=False)``
    writes standard JSON (``null``), which every JSON reader accepts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def degenerate_rows(tensor: torch.Tensor) -> list[tuple[tuple[int, ...], str]]:
    """Rows (over the last axis) of ``tensor`` ``[..., L, D]`` that cannot steer: each as (index, what is wrong).

    A row is degenerate if it holds a NaN or infinity, is all zeros, or its norm overflows float32.
    One reduction per check; the index is into the leading axes (``(layer,)`` or ``(control, layer)``).
    """
    finite = torch.isfinite(tensor).all(-1)
    norm = tensor.double().norm(dim=-1)
    bad = ~finite | (norm == 0) | (norm > torch.finfo(torch.float32).max)
    out = []
    for idx in torch.nonzero(bad).tolist():
        i = tuple(idx)
        what = (
            "non-finite values" if not finite[i] else "zero norm" if norm[i] == 0 else "a norm that overflows float32"
        )
        out.append((i, what))
    return out


def check_tensor(tensor: torch.Tensor, name: str, layers: Sequence[int], where: str) -> None:
    """Raise :class:`VectorError` naming ``where``, the tensor, the control and the layer of the first degenerate row.

    ``tensor`` is ``vector`` ``[L, D]`` or ``controls`` ``[n, L, D]``; ``layers`` names the L axis.
    """
    bad = degenerate_rows(tensor)
    if not bad:
        return
    idx, what = bad[0]
    layer = layers[idx[-1]] if idx[-1] < len(layers) else idx[-1]
    which = f"tensor {name!r}" + (f" (control {idx[0]})" if len(idx) == 2 else "")
    more = f" and {len(bad) - 1} more row(s)" if len(bad) > 1 else ""
    raise VectorError(f"{where}: {which} has {what} at layer {layer}{more}; refit it (steerlab fit) from a good cache")


def control_seeds(run_seed: int, identity: dict[str, Any], n: int) -> list[int]:
    """The seeds of a vector file's ``n`` controls: SHA-256 of (run seed, identity, control index), 63 bits.

    ``identity`` is a JSON-able dict naming the vector (concept, model fingerprint, pair-file hash,
    ...); any change in it or in ``run_seed`` gives unrelated seeds.
    """
    seeds = []
    for i in range(n):
        key = json.dumps({"run_seed": int(run_seed), "identity": identity, "control": i}, sort_keys=True)
        seeds.append(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") & (2**63 - 1))
    return seeds


def controls_from_seeds(vector: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """One control per seed ``[len(seeds), L, D]``, each layer an independent Gaussian scaled to ``vector``'s
    norm there."""
    norms = vector.norm(dim=-1, keepdim=True)  # [L, 1]
    out = []
    for seed in seeds:
        g = torch.randn(vector.shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
        out.append((g / g.norm(dim=-1, keepdim=True) * norms.double().cpu()).to(torch.float32))
    return torch.stack(out) if out else torch.empty(0, *vector.shape)


def random_controls(vector: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` controls with the consecutive seeds ``seed + i`` (hand-made bundles and tests; fitted files
    use :func:`control_seeds`)."""
    return controls_from_seeds(vector, [seed + i for i in range(n)])


@dataclass(frozen=True)
class SteeringVector:
    """One direction per layer, with the layers it steers by default.

    ``directions`` holds a row per entry of ``layers_available`` (model layer indices); ``layers``
    is the selection. Arithmetic returns new objects; nothing is modified in place.
    """

    directions: torch.Tensor  # [n_available, d_model]
    layers_available: tuple[int, ...]
    layers: tuple[int, ...]
    fingerprint: dict[str, Any]
    name: str = "vector"

    @property
    def d_model(self) -> int:
        return self.directions.shape[-1]

    def at(self, layer: int) -> torch.Tensor:
        """The direction at a model layer ``[d_model]``."""
        if layer not in self.layers_available:
            raise VectorError(f"{self.name} has no direction for layer {layer} (it has {list(self.layers_available)})")
        return self.directions[self.layers_available.index(layer)]

    def select(self, layers: list[int]) -> SteeringVector:
        """The same directions with another layer selection."""
        for layer in layers:
            self.at(layer)
        return replace(self, layers=tuple(sorted(set(layers))))

    def selected(self) -> torch.Tensor:
        """``[len(layers), d_model]`` rows for the selected layers."""
        return torch.stack([self.at(layer) for layer in self.layers])

    def norms(self) -> dict[int, float]:
        return {layer: float(self.at(layer).norm()) for layer in self.layers}

    def scale(self, factor: float) -> SteeringVector:
        return replace(self, directions=self.directions * factor, name=f"{factor}*{self.name}")

    def __mul__(self, factor: float) -> SteeringVector:
        return self.scale(factor)

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return replace(self, directions=-self.directions, name=f"-{self.name}")

    def __add__(self, other: SteeringVector) -> SteeringVector:
        """Layerwise sum over the layers both vectors have; the selection is the union."""
        if Fingerprint.from_dict(self.fingerprint) != Fingerprint.from_dict(other.fingerprint):
            raise VectorError(f"cannot combine {self.name} and {other.name}: they were fitted on different models")
        common = tuple(layer for layer in self.layers_available if layer in other.layers_available)
        rows = torch.stack([self.at(layer) + other.at(layer) for layer in common])
        chosen = tuple(sorted(set(self.layers) | set(other.layers)))
        missing = [layer for layer in chosen if layer not in common]
        if missing:
            raise VectorError(f"cannot combine {self.name} and {other.name}: layer(s) {missing} missing in one")
        return SteeringVector(rows, common, chosen, self.fingerprint, name=f"{self.name}+{other.name}")


@dataclass
class VectorBundle:
    """A fitted vector, its random controls, and the metadata of the file."""

    vector: SteeringVector
    controls: list[SteeringVector]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, directions: torch.Tensor, controls: torch.Tensor, meta: dict[str, Any]) -> VectorBundle:
        available = tuple(meta["layers"])
        selected = tuple(meta["selected_layers"])
        fp = meta["model"]
        vector = SteeringVector(directions.float().cpu(), available, selected, fp, name=meta.get("concept", "vector"))
        ctrl = [
            SteeringVector(c.float().cpu(), available, selected, fp, name=f"{vector.name}/control{i}")
            for i, c in enumerate(controls)
        ]
        return cls(vector=vector, controls=ctrl, meta=meta)

    def check(self, where: str) -> None:
        """Refuse a vector or control with a NaN, an infinity, zero norm or an overflowing norm at any layer."""
        layers = list(self.vector.layers_available)
        check_tensor(self.vector.directions, "vector", layers, where)
        if self.controls:
            check_tensor(torch.stack([c.directions for c in self.controls]), "controls", layers, where)

    def save(self, path: Path) -> Path:
        """Write the file atomically; a vector or control that could not steer (:meth:`check`) is refused."""
        path = Path(path)
        self.check(f"refusing to write {path}")
        tensors = {
            "vector": self.vector.directions.contiguous(),
            "controls": torch.stack([c.directions for c in self.controls]).contiguous()
            if self.controls
            else torch.empty(0, *self.vector.directions.shape),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(self.meta, sort_keys=True)})
        return path

    @classmethod
    def load(cls, path: Path, expect: Fingerprint | None = None, force: bool = False) -> VectorBundle:
        """Load a vector file; refuse it for a model whose fingerprint differs unless ``force``."""
        path = Path(path)
        if not path.is_file():
            raise VectorError(f"no vector file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except Exception as exc:  # safetensors raises its own error types
            raise VectorError(f"{path} is not a safetensors file ({exc})") from None
        if META_KEY not in header or "vector" not in tensors:
            raise VectorError(f"{path} is not a steerlab vector file (no '{META_KEY}' header or 'vector' tensor)")
        try:
            meta = json.loads(header[META_KEY])
        except json.JSONDecodeError as exc:
            raise VectorError(f"{path}: the '{META_KEY}' JSON header is broken ({exc.msg}); refit the file") from None
        required = {"layers", "selected_layers", "model"}
        if not isinstance(meta, dict) or not required <= meta.keys() or not isinstance(meta["layers"], list):
            raise VectorError(f"{path}: the '{META_KEY}' header lacks its layers; refit the file")
        vector, controls = tensors["vector"], tensors.get("controls", torch.empty(0))
        n_layers = len(meta["layers"])
        if (
            vector.dim() != 2
            or vector.shape[0] != n_layers
            or (controls.numel() and (controls.dim() != 3 or controls.shape[1:] != vector.shape))
        ):
            raise VectorError(
                f"{path}: tensor shapes vector {list(vector.shape)}, controls {list(controls.shape)} do not match "
                f"the {n_layers} layers of its header; refit the file"
            )
        check_tensor(vector, "vector", meta["layers"], str(path))
        if controls.numel():
            check_tensor(controls, "controls", meta["layers"], str(path))
        if expect is not None:
            diff = Fingerprint.from_dict(meta["model"]).differences(expect)
            if diff and not force:
                raise VectorError(
                    f"{path} was fitted on another model (fingerprint differs in {', '.join(diff)}); "
                    "use the matching model, or force it if you know what you are doing"
                )
        return cls.build(vector, controls, meta)
