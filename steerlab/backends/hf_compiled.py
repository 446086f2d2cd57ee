"""The HF backend's compiled decode path: a static KV cache and a ``torch.compile``d decode step.

Eager decoding pays Python and one kernel launch per op on every step; on a GPU that, not the weights'
memory traffic, bounds a decode step. Here every tensor a decode step touches keeps its shape and
address from one batch to the next, so the step compiles once and (``mode="reduce-overhead"`` on CUDA)
replays as a CUDA graph:

- the KV cache is a transformers ``StaticCache`` of ``[batch_size, length]`` for every batch of a call
  (``length``: the worst batch's widest prompt plus its largest token budget, rounded up to a power of two;
  a later call that needs more allocates a longer one, which compiles once more);
- the attention mask is one ``[batch_size, length]`` buffer, rewritten in place per batch: 0 on a row's
  left padding, 1 elsewhere (positions not yet written are hidden by the causal mask);
- a batch smaller than ``batch_size`` (the last one of a call) is filled up with one-token rows that are
  never decoded into results, so the shape never changes;
- steering is one :class:`~steerlab.steer.Steerer` over every layer, owned here and installed for each
  call: its per-row buffers are static, a call loads its own table into them
  (:meth:`~steerlab.steer.Steerer.retable`) and each batch its rows (``set_rows``), so neither a new setting
  nor a new batch recompiles or re-captures (an unsteered call adds row 0, exact zeros).

The prefill pass (whose length varies) runs eagerly on a batch's real rows, exactly as the eager path does,
and its keys and values are copied into the static cache; the first decode step (whose hidden states are
checked after steering, see :meth:`steerlab.backends.hf.HFBackend._decode`) runs eagerly too. Greedy tokens
equal the eager path's (tested on CPU, float32 and bfloat16: inductor rounds bf16/fp16 as eager does); the
numbers can differ from it only by the compiler's order of floating-point sums.
"""

from __future__ import annotations

import logging
import math
import sys
import types
from typing import Any

import torch

from steerlab.conditions import ConditionGate
from steerlab.errors import ConfigError
from steerlab.loci import Position
from steerlab.steer import Steerer, SteeringSetting, build_projection, build_table

log = logging.getLogger(__name__)
MIN_LENGTH = 128  # shortest static cache: short calls share one compiled graph


def cache_length(needed: int, context: int | None) -> int:
    """Static cache length for a call that needs ``needed`` positions: the next power of two (at least
    ``MIN_LENGTH``), not past the model's context unless the call needs more."""
    length = max(MIN_LENGTH, 1 << max(needed - 1, 0).bit_length())
    if context is not None:
        length = min(length, max(context, needed))
    return length


def cache_of(out: Any) -> Any:
    """The KV cache a forward returned, read under the current name (the old one warns in transformers 5)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def compile_blocker(loaded: Any) -> str | None:
    """Why ``loaded``'s model cannot take the compiled path, or None when it can."""
    model = loaded.model
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not declare static-cache support (transformers' _can_compile_fullgraph)"
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        return "the model is quantized"
    devices = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    if len(devices) > 1:
        return f"the model is sharded over {len(devices)} devices"
    try:
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer
    except ImportError:  # pragma: no cover - transformers < 4.56
        return "the installed transformers has no StaticLayer"
    if not isinstance(getattr(StaticLayer(8), "cumulative_length", None), torch.Tensor):
        return "the installed transformers' static cache needs cache positions (use transformers >= 5.0)"
    kinds = {type(layer).__name__ for layer in StaticCache(config=model.config, max_cache_len=8).layers}
    if kinds != {"StaticLayer"}:
        # transformers' static sliding-window layer keeps its length as a Python int, so the step recompiles each time
        return f"its static cache has {', '.join(sorted(kinds - {'StaticLayer'}))} layers (sliding-window attention)"
    return None


def resolve_compile(loaded: Any, compile: bool | None) -> bool:
    """``compile=None`` (auto): on for a model on a CUDA device that can take it; ``True`` refuses, with one
    line, a model that cannot."""
    if compile is None:
        return loaded.device.type == "cuda" and compile_blocker(loaded) is None
    if compile and (blocker := compile_blocker(loaded)) is not None:
        raise ConfigError(f"--compile: {blocker}; use --no-compile")
    return compile


def _own_code(method: Any) -> Any:
    """``method`` rebuilt on its own copy of its code object. Dynamo counts compiled graphs per code object, at
    most ``recompile_limit`` (8) of them (those of deleted backends included), and past it runs that code eagerly
    without a word: every decoder's step would otherwise share one code object, so a process that made a few
    backends (a model and a local judge, a notebook, a test session) would end up decoding eagerly."""
    fn = method.__func__
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{id(method.__self__):x}")
    own = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return types.MethodType(own, method.__self__)


class CompiledDecoder:
    """Static cache, mask and steering buffers of one :class:`~steerlab.backends.hf.HFBackend`, and its compiled
    decode step. ``compiler``: a ``torch.compile`` backend (default inductor; tests pass a counting one)."""

    def __init__(
        self, loaded: Any, batch_size: int, position: Position, cache_kw: str, keep_kw: str | None,
        compiler: Any = None,
    ):  # fmt: skip
        self.loaded, self.batch_size = loaded, batch_size
        self.cache_kw, self.keep_kw = cache_kw, keep_kw
        device = loaded.device
        n_layers, d_model = loaded.n_layers, loaded.d_model
        self.steerer = Steerer(
            loaded.blocks, list(range(n_layers)), torch.zeros(1, n_layers, d_model),
            position=position, max_batch=batch_size,
        )  # fmt: skip
        self.cache: Any = None
        self.length = 0
        self.mask: torch.Tensor | None = None  # [batch_size, length] long
        self.cuda = device.type == "cuda"
        if self.cuda:
            for buffer in self.steerer._per_row:
                torch._dynamo.mark_static_address(buffer)
        mode = "reduce-overhead" if self.cuda and compiler is None else None
        # dynamic=False: every shape gets its own static graph (a second batch size or cache length must not turn
        # the step into a dynamic-shape graph, which inductor runs far slower on CPU)
        self._compiled = torch.compile(
            _own_code(self._forward), backend=compiler or "inductor", mode=mode, dynamic=False
        )
        self.failed: str | None = None  # why compiling failed, once it has (decoding goes on eagerly)

    def load(self, settings: list[SteeringSetting]) -> None:
        """Put a call's settings into the steering table (row i + 1: ``settings[i]``; row 0: unsteered)."""
        n_layers, d_model = self.loaded.n_layers, self.loaded.d_model
        full = torch.zeros(1 + len(settings), n_layers, d_model)  # [rows, all layers, d_model]
        projection, gate = None, None
        if settings:
            table, layers = build_table(settings, d_model)
            if not layers:  # as steerer_for refuses it on the eager path
                raise ConfigError("no layer to steer: every setting has an empty layer list")
            full[:, layers] = table
            if (part := build_projection(settings, layers)) is not None:  # over every layer, as the table
                units, lo, hi = (
                    torch.zeros_like(full),
                    torch.full(full.shape[:2], -math.inf),
                    torch.full(full.shape[:2], math.inf),
                )
                units[:, layers], lo[:, layers], hi[:, layers] = part
                projection = (units, lo, hi)
            gate = ConditionGate.of(settings, d_model)
        self.steerer.retable(full, [s.describe() for s in settings], projection, gate)

    def prepare(self, needed: int, context: int | None) -> None:
        """Make the static cache hold ``needed`` positions (allocating a longer one when the current is short)."""
        if self.cache is not None and needed <= self.length:
            return
        from transformers import StaticCache

        self.length = cache_length(needed, context)
        self.cache = StaticCache(config=self.loaded.model.config, max_cache_len=self.length)
        self.mask = torch.zeros(self.batch_size, self.length, dtype=torch.long, device=self.loaded.device)
        if self.cuda:
            torch._dynamo.mark_static_address(self.mask)

    def prefill(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The eager prefill of a batch's real rows (``ids``, ``mask``, ``positions``: ``[rows, width]``, left padded),
        into the static cache; returns (logits ``[batch_size, vocab]``, float32, and each row's last position
        ``[batch_size, 1]``), the rows past the real ones filled in (their logits zero: they are never decoded).

        The real rows are prefilled as the eager path does (the same mask, the same numbers, no compute spent on
        filler rows) and their keys and values copied into the static cache (every layer of which is a
        full-attention ``StaticLayer``: :func:`compile_blocker` sees to that).
        Call under inference mode (the cache's tensors are inference tensors)."""
        assert self.mask is not None
        rows, width = ids.shape
        batch, fill = self.batch_size, self.batch_size - rows
        self.cache.reset()
        self.mask.zero_()
        self.mask[:rows, :width] = mask
        self.mask[:, width:] = 1
        self.mask[rows:, width - 1] = 1  # a filler row sees one (zero) key: no row is fully masked
        last = torch.cat([positions[:, -1:], positions.new_zeros(fill, 1)])  # [batch, 1]
        keep = {self.keep_kw: 1} if self.keep_kw else {}
        out = self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **keep)
        # done.keys: [rows, heads, width, dim], the prompt's keys as the eager path would keep them
        for layer, done in zip(self.cache.layers, cache_of(out).layers, strict=True):
            if not layer.is_initialized:
                shape = (batch, done.keys.shape[1], 0)
                layer.lazy_initialization(done.keys.new_empty(*shape, done.keys.shape[-1]),
                                          done.values.new_empty(*shape, done.values.shape[-1]))  # fmt: skip
            layer.keys[:rows, :, :width] = done.keys
            layer.values[:rows, :, :width] = done.values
            layer.cumulative_length.fill_(width)
        logits = out.logits[:, -1, :].float()  # [rows, vocab]
        return torch.cat([logits, logits.new_zeros(fill, logits.shape[-1])]), last

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        keep = {self.keep_kw: 1} if self.keep_kw else {}
        out = self.loaded.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
            **{self.cache_kw: self.cache}, **keep,
        )  # fmt: skip
        return out.logits[:, -1, :]  # [batch, vocab]

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, eager: bool = False) -> torch.Tensor:
        """Logits ``[batch, vocab]`` (float32, a fresh tensor) at ``ids`` ``[batch, q]`` placed at ``positions``."""
        assert self.mask is not None
        if eager or self.failed is not None:
            return self._forward(ids, self.mask, positions).to(torch.float32, copy=True)
        try:
            if self.cuda:
                torch.compiler.cudagraph_mark_step_begin()
            # Compiled (or recompiled) with eager's rounding: inductor would otherwise keep a fused chain of bf16/fp16
            # ops in float32 and round once, which changes greedy tokens. The copy: a CUDA-graph replay overwrites
            # its outputs.
            with torch._inductor.config.patch(emulate_precision_casts=True):
                return self._compiled(ids, self.mask, positions).to(torch.float32, copy=True)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: decode on, eagerly, and say so once
            self.failed = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            log.warning("compiled decoding failed, decoding eagerly from here: %s", self.failed)
            print(f"steerlab: compiled decoding failed ({self.failed}); decoding eagerly", file=sys.stderr)
            return self._forward(ids, self.mask, positions).to(torch.float32, copy=True)
