"""Steering: add vectors to the residual stream through one fused, per-row hook object.

For every selected layer l, every row b of the batch and every position t (``position="all"``,
the paper's setting)::

    h_l[b, t] += T[row[b], j(l)]

``T`` ``[n_settings + 1, n_layers_selected, d_model]`` holds pre-scaled vectors (multiplier
times direction; row 0 is zeros, for unsteered rows), built once by :func:`build_table`.
``row[b]`` says which setting row b of the batch uses, so one batch can mix vectors, signed
multipliers and unsteered rows: a sweep over 7 multipliers x 21 vectors is one stream of full
batches, not 147 generation runs.

Per forward step each selected layer does one in-place add of a precomputed, device-resident,
dtype-matched ``[batch, d_model]`` buffer (gathered from ``T`` once per batch in
:meth:`Steerer.set_rows`): no allocation, no ``.item()``, no host-device sync. The buffers are
static, so the same hooks work under ``torch.compile``.

The table and buffers are kept in the block's compute dtype (its first float parameter of 16 bits or
more: a bitsandbytes 4-bit block stores its weights as uint8 and an FP8 block as float8, but keeps its
norms in the compute dtype), else float32; never in a storage dtype, which would turn 1.7 into 1 and
-2.2 into 254. Should the hidden states arrive in another dtype, the hook casts the layer's table and
buffer to it once, on that first pass, and adds without casting from then on.

``position`` (the :mod:`steerlab.loci` position language): ``"all"`` (prompt and generated
tokens), ``"prompt"`` (the prefill pass only) or ``"generation"`` (decode steps only: the
generated tokens' positions). Under ``"generation"`` the first generated token is never
affected: it is chosen from the prefill pass's logits, before any decode step runs; steering
reaches the second token onward (each decode step adds at the position of the token it reads).

Operators (``SteeringSetting.operator``), each per row through the same table, with ``u = v_l / |v_l|`` and the
setting's unit ``s_l = |v_l|`` (absolute scale) or the layer's ``token_norm`` (relative scale), so a multiplier
means the same length along ``u`` for every operator::

    add     h += alpha * s_l * u                          (the paper's steering)
    ablate  h += (alpha * s_l - h.u) * u                  projection onto u set to alpha * s_l:
                                                          alpha = 0 is directional ablation (Arditi et al.),
                                                          alpha != 0 ablation then addition
    clamp   h += alpha * s_l * u, then the projection onto u is clamped to [lo * s_l, hi * s_l]

All three are ``h' = h + A + (clamp(q, lo, hi) - q) * u`` with ``q = (h + A).u``: a row that only adds has
``u = 0`` (so nothing moves along it) and unbounded limits. The projection is computed in float32. A table
without ablation or clamping rows runs no projection at all: plain addition costs what it always did.

A setting may carry a :class:`steerlab.conditions.Condition` (conditional steering, after Lee et al.): the row is
steered only if its prompt's mean cosine (or projection) with a condition direction at a condition layer passes a
threshold, decided on the prefill pass and kept for the row's decode steps (see :mod:`steerlab.conditions`).

Numbers that would break the model are refused, each with one line naming the setting: a row whose
added vector is not finite in float32 or whose norm is at least ``MAX_NORM`` (its squares, summed by
every RMS norm in float32, would overflow) when the table is built; a row that overflows the model's
dtype (float16: 65504) when the :class:`Steerer` is built (or, where the hidden states' dtype differs from
the block's compute dtype, on the first pass that shows it). What only the model can show (the sum of
several layers' additions overflowing) is watched by :meth:`Steerer.watch` on the first two passes
of each batch (see :meth:`steerlab.backends.hf.HFBackend._decode`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from steerlab.errors import ConfigError
from steerlab.loci import POSITIONS, Position

# the settings and the table they make live in steerlab.table; imported here, where most callers look for them
from steerlab.table import (  # noqa: F401
    MAX_NORM,
    OPERATORS,
    Operator,
    Projection,
    Scale,
    SteeringSetting,
    bounds_ok,
    build_projection,
    build_table,
    parse_bounds,
)

if TYPE_CHECKING:
    from steerlab.conditions import ConditionGate


def is_compute_dtype(dtype: torch.dtype) -> bool:
    """A float dtype hidden states are kept in (float16, bfloat16, float32, float64), not a storage format
    (bitsandbytes' uint8, float8)."""
    return dtype.is_floating_point and torch.finfo(dtype).bits >= 16


def block_device_dtype(block: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a block's steering table lives: its first parameter's device and its compute dtype.

    The compute dtype is that of its first parameter in a float dtype of 16 bits or more (quantized models keep
    their norms in it, while linear weights are stored as uint8 or float8), else float32. It is a guess: the
    hook casts to the hidden states' dtype, once, when they differ.
    """
    params = list(block.parameters())
    device = params[0].device if params else torch.device("cpu")
    dtype = next((p.dtype for p in params if is_compute_dtype(p.dtype)), torch.float32)
    return device, dtype


def check_finite_rows(table: torch.Tensor, layer: int, labels: Sequence[str]) -> None:
    """Refuse, with one line naming the setting, a layer's table ``[n_rows, d_model]`` (already in the model's dtype)
    whose row is not finite there; ``labels[i]`` names row ``i + 1`` (row 0 is unsteered)."""
    bad = (~torch.isfinite(table).all(-1)).nonzero().flatten().tolist()
    if bad:
        row = bad[0]
        name = labels[row - 1] if 0 < row <= len(labels) else f"table row {row}"
        dtype = str(table.dtype).removeprefix("torch.")
        raise ConfigError(
            f"{name}: the added vector at layer {layer} overflows the model's {dtype}; "
            "use a smaller multiplier (or a wider --dtype)"
        )


class _Decided(Exception):
    """Ends a condition pre-pass once every condition layer has been read."""


class Steerer:
    """Owns the hooks of all selected layers; install and remove with one call (or ``with``).

    ``table`` ``[n_rows, len(layers), d_model]``; call :meth:`set_rows` with the table row of
    each batch row before a forward pass or a ``generate`` call.
    """

    def __init__(
        self,
        blocks: nn.ModuleList,
        layers: Sequence[int],
        table: torch.Tensor,
        position: Position = "all",
        max_batch: int = 256,
        labels: Sequence[str] | None = None,
        projection: Projection | None = None,
        gate: ConditionGate | None = None,
    ):
        """``labels[i]`` names table row ``i + 1`` in error messages (row 0 is unsteered); ``projection`` holds the
        ablating and clamping rows (:func:`build_projection`), ``gate`` the rows' conditions."""
        if position not in POSITIONS:
            raise ConfigError(f"unknown position {position!r}; use one of {', '.join(POSITIONS)}")
        if table.dim() != 3 or table.shape[1] != len(layers):
            raise ConfigError(f"table shape {tuple(table.shape)} does not match {len(layers)} layers")
        bad = [layer for layer in layers if not 0 <= layer < len(blocks)]
        if bad:
            raise ConfigError(f"layer(s) {bad} out of range: the model has {len(blocks)} layers")
        self.blocks, self.layers, self.position = blocks, list(layers), position
        self._tables: list[torch.Tensor] = []  # per layer [n_rows, d_model], on the block's device, a float dtype
        self._per_row: list[torch.Tensor] = []  # per layer [max_batch, d_model], static buffers
        self._labels = list(labels) if labels else []
        self._source = table  # [n_rows, len(layers), d_model] as given, what a later cast starts from
        for j, layer in enumerate(self.layers):
            device, dtype = block_device_dtype(blocks[layer])
            self._tables.append(self._layer_table(table, j, device, dtype))  # once per layer, at setup
            self._per_row.append(torch.zeros(max_batch, table.shape[-1], device=device, dtype=dtype))
        self.max_batch = max_batch
        # projection (ablate, clamp): per layer [n_rows, d_model] units, [n_rows] limits, and static per-row buffers
        self._units: list[torch.Tensor] = []
        self._limits: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._ubuf: list[torch.Tensor] = []  # per layer [max_batch, d_model] float32
        self._lbuf: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer ([max_batch], [max_batch]) float32
        self._projects: list[bool] = [False] * len(self.layers)  # a row of the table projects at this layer
        self._set_projection(projection)
        self.gate = gate
        self._check_gate()
        self._suspended = False  # a condition pre-pass: the steering hooks do nothing
        self._handles: list[Any] = []
        self._rows: list[int] = []  # the table row of each batch row, as last set
        self._watch: list[tuple[int, torch.Tensor]] | None = None  # (layer, ok [batch]) while watching

    def _set_projection(self, projection: Projection | None) -> None:
        """Take a table's projection rows; the per-row buffers are made once and kept (static addresses)."""
        if projection is None:
            if not self._ubuf:  # never projected: no buffers, no projection work
                self._units, self._limits = [], []
                self._projects = [False] * len(self.layers)
                return
            # buffers made by an earlier table stay (static addresses): this table's rows project nothing
            n_rows = self._source.shape[0]
            shape = (n_rows, len(self.layers))
            projection = (torch.zeros_like(self._source), torch.full(shape, -math.inf), torch.full(shape, math.inf))
        units, lo, hi = projection
        n_rows = self._source.shape[0]
        if units.shape != self._source.shape or lo.shape != (n_rows, len(self.layers)) or hi.shape != lo.shape:
            raise ConfigError(f"projection shape {tuple(units.shape)} does not match the table's {tuple(lo.shape)}")
        if not self._ubuf:
            for buffer in self._per_row:
                self._ubuf.append(torch.zeros(self.max_batch, buffer.shape[-1], device=buffer.device))
                self._lbuf.append((torch.zeros(self.max_batch, device=buffer.device),
                                   torch.zeros(self.max_batch, device=buffer.device)))  # fmt: skip
        self._units = [units[:, j].to(b.device).contiguous() for j, b in enumerate(self._per_row)]
        self._limits = [(lo[:, j].to(b.device).contiguous(), hi[:, j].to(b.device).contiguous())
                        for j, b in enumerate(self._per_row)]  # fmt: skip
        self._projects = [bool(u.any()) for u in self._units]

    def _check_gate(self) -> None:
        if self.gate is not None and any(not 0 <= layer < len(self.blocks) for layer in self.gate.layers):
            raise ConfigError(
                f"condition layer(s) {self.gate.layers} out of range: the model has {len(self.blocks)} layers"
            )

    def _layer_table(self, table: torch.Tensor, j: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Layer ``j``'s rows of ``table`` ``[n_rows, d_model]`` on ``device`` in ``dtype``, refused (one line naming
        the setting) where a row is not finite there."""
        cast = table[:, j].to(device=device, dtype=dtype).contiguous()
        check_finite_rows(cast, self.layers[j], self._labels)
        return cast

    def _adopt(self, j: int, dtype: torch.dtype) -> torch.Tensor:
        """Layer ``j``'s table and buffer cast to the hidden states' ``dtype``, once, when a pass first shows it
        differs from the dtype guessed at setup; later passes and :meth:`set_rows` use the cast copies."""
        table = self._layer_table(self._source, j, self._tables[j].device, dtype)
        self._tables[j] = table
        buffer = torch.zeros_like(self._per_row[j], dtype=dtype)  # [max_batch, d_model]
        rows = torch.as_tensor(self._rows, dtype=torch.long, device=table.device)
        buffer[: rows.numel()] = table[rows]  # the rows last set, gathered again from the wider source
        if self.gate is not None and self.gate.started:  # and gated again as they were
            buffer[: rows.numel()] *= self.gate.multiplier().to(device=buffer.device, dtype=dtype)[:, None]
        self._per_row[j] = buffer
        return buffer

    def retable(
        self, table: torch.Tensor, labels: Sequence[str] | None = None, projection: Projection | None = None,
        gate: ConditionGate | None = None,
    ) -> None:  # fmt: skip
        """Replace the table (``[n_rows, len(layers), d_model]``, same layers) and keep the per-row buffers: their
        shape, dtype and address stay, so a compiled graph that reads them neither recompiles nor re-captures.
        Every batch row is set to row 0 (unsteered) until :meth:`set_rows`."""
        if table.dim() != 3 or table.shape[1] != len(self.layers) or table.shape[2] != self._source.shape[2]:
            raise ConfigError(
                f"table shape {tuple(table.shape)} does not match {len(self.layers)} layers of {self._source.shape[2]}"
            )
        self._labels = list(labels) if labels else []
        tables = [self._layer_table(table, j, b.device, b.dtype) for j, b in enumerate(self._per_row)]
        self._source, self._tables = table, tables
        self._set_projection(projection)
        self.gate = gate
        self._check_gate()
        self.set_rows([])

    def set_rows(self, rows: torch.Tensor | Sequence[int]) -> None:
        """Table row per batch row ``[batch]``; gathers each layer's ``[batch, d_model]`` buffer once."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        if rows.numel() > self.max_batch:
            raise ConfigError(f"batch of {rows.numel()} rows exceeds max_batch={self.max_batch}")
        n_rows = self._tables[0].shape[0]
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
            raise ConfigError(f"table rows must lie in 0..{n_rows - 1}")
        n = rows.numel()
        for table, buffer in zip(self._tables, self._per_row, strict=True):
            buffer[:n] = table[rows.to(table.device)]
            buffer[n:] = 0
        for units, (lo, hi), ubuf, (lbuf, hbuf) in zip(self._units, self._limits, self._ubuf, self._lbuf, strict=True):
            index = rows.to(units.device)
            ubuf[:n], lbuf[:n], hbuf[:n] = units[index], lo[index], hi[index]
            ubuf[n:] = 0
            lbuf[n:], hbuf[n:] = -math.inf, math.inf
        self._rows = rows.tolist()

    def start_batch(self, mask: torch.Tensor) -> None:
        """Before a batch's prefill pass, with its prompt mask ``[batch, seq]`` (1 on real tokens; the rows as last
        set): the rows' conditions are decided on the coming pass (or in :meth:`prepass`). A no-op without
        conditions."""
        if self.gate is not None:
            self.gate.start(self._rows, mask)

    def prepass(self, forward: Any) -> None:
        """Decide the batch's conditions on an unsteered pass over the prompt (``forward()`` runs the model on it),
        cut after the deepest condition layer: for conditions read at a layer after a steered one."""
        if self.gate is None or not self.gate.pending:
            return
        self._suspended = True
        try:
            forward()
        except _Decided:
            pass
        finally:
            self._suspended = False
        if self.gate.pending:
            raise RuntimeError(f"the condition pre-pass never reached layer(s) {sorted(self.gate.pending)}")

    def decisions(self) -> list[tuple[bool | None, float | None]] | None:
        """The batch's condition decisions (passed, score) per row, or None without conditions."""
        return self.gate.decisions() if self.gate is not None else None

    def _apply_gate(self) -> None:
        """Zero the per-row buffers of the rows whose condition was just read and failed (kept so for the batch's
        decode steps)."""
        assert self.gate is not None
        g = self.gate.last_multiplier()  # [batch]
        n = g.numel()
        for buffer in self._per_row:
            buffer[:n] *= g.to(device=buffer.device, dtype=buffer.dtype)[:, None]
        for ubuf in self._ubuf:
            ubuf[:n] *= g.to(ubuf.device)[:, None]

    def watch(self) -> None:
        """Check the next forward passes: each steered layer records whether every row's hidden state at its last
        position is still usable (finite, with a mean square that does not overflow float32, which every RMS norm
        computes). One reduction per layer and pass, no sync; :meth:`watched` reads the result."""
        self._watch = []

    def unwatch(self) -> None:
        """Stop recording without reading what was recorded."""
        self._watch = None

    def watched(self) -> list[tuple[int, int]]:
        """(batch row, layer) of each steered row whose hidden state broke since :meth:`watch`; stops watching.

        One device-to-host copy. Rows with table row 0 (unsteered) are not reported.
        """
        entries, self._watch = self._watch or [], None
        if not entries:
            return []
        device = entries[0][1].device
        ok = torch.stack([flags.to(device) for _, flags in entries]).cpu()  # [n_entries, batch]
        return [
            (b, entries[i][0])
            for i, b in ok.logical_not().nonzero().tolist()
            if b < len(self._rows) and self._rows[b] != 0
        ]

    def _hook(self, j: int):
        buffer = self._per_row[j]
        position = self.position
        layer = self.layers[j]

        def hook(_module: Any, _args: Any, output: Any) -> None:
            nonlocal buffer
            if self._suspended:
                return
            hidden = output[0] if isinstance(output, tuple) else output  # [batch, seq, d_model]
            if hidden.dtype != buffer.dtype:  # the guess at setup was wrong: cast once, not per pass
                buffer = self._adopt(j, hidden.dtype)
            if position == "prompt" and hidden.shape[1] == 1:
                return
            if position == "generation" and hidden.shape[1] != 1:
                return
            n = hidden.shape[0]
            hidden.add_(buffer[:n].unsqueeze(1))
            if self._projects[j]:  # ablate / clamp rows: move the projection onto u into [lo, hi], in float32
                u = self._ubuf[j][:n]  # [batch, d_model]
                lo, hi = self._lbuf[j]
                q = torch.einsum("btd,bd->bt", hidden.float(), u)  # [batch, seq]
                shift = torch.clamp(q, lo[:n, None], hi[:n, None]) - q
                hidden.add_((shift.unsqueeze(-1) * u.unsqueeze(1)).to(hidden.dtype))
            if self._watch is not None:
                self._watch.append((layer, torch.isfinite(hidden[:, -1].float().pow(2).mean(-1))))  # [batch]

        return hook

    def _condition_hook(self, layer: int):
        gate = self.gate
        assert gate is not None

        def hook(_module: Any, _args: Any, output: Any) -> None:
            if not gate.pending:
                return
            hidden = output[0] if isinstance(output, tuple) else output  # [batch, seq, d_model], not yet steered
            done = gate.read(layer, hidden)
            self._apply_gate()  # at once: a row decided here is not steered at any later layer of this pass
            if done and self._suspended:
                raise _Decided

        return hook

    def install(self) -> Steerer:
        if self._handles:
            raise RuntimeError("steering hooks are already installed")
        # condition hooks first: on a block that is both, the condition reads the output before it is steered
        if self.gate is not None:
            self._handles = [self.blocks[c].register_forward_hook(self._condition_hook(c)) for c in self.gate.layers]
        self._handles += [self.blocks[i].register_forward_hook(self._hook(j)) for j, i in enumerate(self.layers)]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Steerer:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def steerer_for(
    blocks: nn.ModuleList,
    settings: Sequence[SteeringSetting],
    d_model: int,
    position: Position = "all",
    max_batch: int = 256,
) -> Steerer:
    """A :class:`Steerer` whose table row ``i + 1`` is ``settings[i]`` (row 0: unsteered)."""
    table, layers = build_table(settings, d_model)
    if not layers:
        raise ConfigError("no layer to steer: every setting has an empty layer list")
    labels = [s.describe() for s in settings]
    from steerlab.conditions import ConditionGate

    return Steerer(
        blocks, layers, table, position=position, max_batch=max_batch, labels=labels,
        projection=build_projection(settings, layers), gate=ConditionGate.of(settings, d_model),
    )  # fmt: skip
