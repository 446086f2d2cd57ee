"""Steering inside vLLM's workers (imported in every worker process; no vLLM import at module level).

How a request's steering reaches its tokens, with stock vLLM and no fork:

1. :func:`patch_runner` wraps the V1 model runner's ``load_model`` and ``_model_forward``. It is
   applied in the driver process for in-process engines and, through the ``vllm.general_plugins``
   entry point (:func:`register`, active when ``STEERLAB_VLLM_STEERING=1``), in every worker
   process that vLLM spawns (multiprocessing, tensor parallel).
2. After the weights load, and before vLLM compiles or captures the model, :func:`install` gives
   every decoder layer a static table ``[max_settings, d_model]`` (row 0 zeros) and a shared
   static ``rows`` buffer ``[max_num_tokens]`` of per-token table rows, and a forward hook that
   returns ``(hidden_states + table[rows[:n]], residual)``: one gather-add per layer. vLLM's
   decoder layers return ``(hidden_states, residual)`` and the residual stream is their sum, so
   this adds the vector to the residual stream, like steerlab's HF hook on a block's output.
   The hooks exist when torch.compile traces the model, so the compiled graph contains them; they
   read only buffers, so graph capture and compilation see fixed shapes.
3. Before every forward, the wrapped ``_model_forward`` maps each token of the flattened batch to
   its request's row (batch order from ``input_batch.req_ids``, token spans from
   ``query_start_loc``, the row from the request's ``SamplingParams.extra_args["steerlab_row"]``)
   and writes ``rows``; padding tokens read row 0.
4. :func:`set_table` (sent to every worker with ``LLM.collective_rpc``) fills the tables for a
   ``generate`` call: each tensor-parallel rank adds the same full vector to its replicated
   hidden states.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

ENV = "STEERLAB_VLLM_STEERING"
MAX_SETTINGS_ENV = "STEERLAB_VLLM_MAX_SETTINGS"
ROW_KEY = "steerlab_row"
DEFAULT_MAX_SETTINGS = 128


def decoder_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(index, layer) of every real decoder layer (pipeline stages hold stubs for the others)."""
    for path in ("model.layers", "language_model.model.layers", "model.language_model.layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return [(i, m) for i, m in enumerate(obj) if type(m).__name__ != "PPMissingLayer"]
    raise RuntimeError(f"steerlab cannot find the decoder layers of {type(model).__name__}")


def _hook(module: nn.Module, args: Any, output: Any) -> Any:
    rows = module.steerlab_rows
    if isinstance(output, tuple):
        hidden = output[0]
        delta = module.steerlab_table.index_select(0, rows[: hidden.shape[0]])  # [num_tokens, d_model]
        return (hidden + delta, *output[1:])
    return output + module.steerlab_table.index_select(0, rows[: output.shape[0]])


def install(model: nn.Module, max_tokens: int, max_settings: int) -> None:
    """Static buffers and one forward hook per decoder layer (idempotent)."""
    if getattr(model, "steerlab_installed", False):
        return
    layers = decoder_layers(model)
    param = next(model.parameters())
    d_model = getattr(getattr(model, "config", None), "hidden_size", None) or layers[0][1].mlp.down_proj.weight.shape[0]
    rows = torch.zeros(max_tokens, dtype=torch.long, device=param.device)
    for _, layer in layers:
        layer.register_buffer("steerlab_table", torch.zeros(max_settings, d_model, dtype=param.dtype,
                                                            device=param.device), persistent=False)  # fmt: skip
        layer.register_buffer("steerlab_rows", rows, persistent=False)
        layer.register_forward_hook(_hook)
    model.steerlab_installed = True
    model.steerlab_layers = [i for i, _ in layers]
    model.steerlab_rows = rows
    model.steerlab_row_of_req: dict[str, int] = {}


def set_table(worker: Any, layers: Sequence[int], table: torch.Tensor) -> int:
    """Fill every layer's table: ``table`` ``[n_rows, len(layers), d_model]`` (row 0 zeros); other
    layers and rows are zeroed. Returns the number of hooked layers on this worker."""
    model = worker.model_runner.model
    if not getattr(model, "steerlab_installed", False):
        raise RuntimeError(f"steerlab steering is not installed in this vLLM worker (set {ENV}=1 before start)")
    index = {layer: j for j, layer in enumerate(layers)}
    for i, layer in decoder_layers(model):
        buf = layer.steerlab_table
        if table.shape[0] > buf.shape[0]:
            raise RuntimeError(f"{table.shape[0]} steering rows exceed the table's {buf.shape[0]} ({MAX_SETTINGS_ENV})")
        buf.zero_()
        if i in index:
            buf[: table.shape[0]].copy_(table[:, index[i]].to(buf.dtype))
    return len(decoder_layers(model))


def fill_rows(runner: Any) -> None:
    """Per-token table rows for the batch the runner is about to run."""
    model = runner.model
    rows = model.steerlab_rows
    num_reqs = runner.input_batch.num_reqs
    starts = runner.query_start_loc.np[: num_reqs + 1]
    host = torch.zeros(rows.shape[0], dtype=torch.long)
    for i, req_id in enumerate(runner.input_batch.req_ids[:num_reqs]):
        params = runner.requests[req_id].sampling_params  # None for pooling requests
        row = int(((params.extra_args if params is not None else None) or {}).get(ROW_KEY, 0))
        if row:
            host[int(starts[i]) : int(starts[i + 1])] = row
    rows.copy_(host, non_blocking=True)


def patch_runner() -> None:
    """Wrap the V1 model runners so loaded models get steering and every forward fills the rows."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner, "_steerlab_patched", False):
        return

    def with_steering(load_model: Any) -> Any:
        def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
            out = load_model(self, *args, **kwargs)
            max_settings = int(os.environ.get(MAX_SETTINGS_ENV, DEFAULT_MAX_SETTINGS))
            install(self.model, self.scheduler_config.max_num_batched_tokens + 512, max_settings)
            return out

        return patched

    model_forward = GPUModelRunner._model_forward

    def patched_forward(self: Any, input_ids: Any = None, positions: Any = None, *args: Any, **kwargs: Any) -> Any:
        if getattr(self.model, "steerlab_installed", False):
            fill_rows(self)
        return model_forward(self, input_ids, positions, *args, **kwargs)

    for runner in (GPUModelRunner, CPUModelRunner):  # the CPU runner has a load_model of its own
        if "load_model" in vars(runner):
            runner.load_model = with_steering(vars(runner)["load_model"])
    GPUModelRunner._model_forward = patched_forward
    GPUModelRunner._steerlab_patched = True


def register() -> None:
    """The ``vllm.general_plugins`` entry point: patch the runner in every vLLM process when asked."""
    if os.environ.get(ENV) == "1":
        patch_runner()


class SteerWorkerExtension:
    """Mixed into every vLLM worker (``LLM(worker_extension_cls=...)``); its methods are what the
    backend calls on all workers by name through ``LLM.collective_rpc``."""

    def steerlab_set_table(self, layers: list[int], shape: list[int], data: bytes) -> int:
        """The table travels as float32 bytes (vLLM's message encoder turns tensors into lists)."""
        import numpy as np

        table = torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(shape).copy())
        return set_table(self, layers, table)

    def steerlab_embed_hash(self) -> str:
        from steerlab.models import embed_rows_hash

        model = self.model_runner.model
        embed = next(m for name, m in model.named_modules() if name.endswith("embed_tokens"))
        return embed_rows_hash(embed.weight)  # rank 0's vocabulary shard starts at row 0

    def steerlab_engine_info(self) -> dict[str, Any]:
        """The settings this worker really runs with (after vLLM's platform defaults and overrides)."""
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        cfg = self.vllm_config
        runner = self.model_runner
        model = runner.model
        comp = cfg.compilation_config
        mode = getattr(comp, "mode", None)
        cudagraph = getattr(comp, "cudagraph_mode", None)
        return {
            "steering_installed": bool(getattr(model, "steerlab_installed", False)),
            "model_runner": "v1" if isinstance(runner, GPUModelRunner) else "v2",  # the CPU runner is a V1 subclass
            "model_runner_class": f"{type(runner).__module__}.{type(runner).__qualname__}",
            "dtype": str(cfg.model_config.dtype).removeprefix("torch."),
            "device": str(next(model.parameters()).device),
            "tensor_parallel_size": cfg.parallel_config.tensor_parallel_size,
            "pipeline_parallel_size": cfg.parallel_config.pipeline_parallel_size,
            "enforce_eager": bool(cfg.model_config.enforce_eager),
            "compilation_mode": getattr(mode, "name", None if mode is None else str(mode)),
            "cudagraph_mode": getattr(cudagraph, "name", None if cudagraph is None else str(cudagraph)),
            "enable_prefix_caching": bool(cfg.cache_config.enable_prefix_caching),
            "block_size": cfg.cache_config.block_size,
            "kv_cache_dtype": str(cfg.cache_config.cache_dtype),
            "max_model_len": cfg.model_config.max_model_len,
            "quantization": cfg.model_config.quantization,
            "enable_chunked_prefill": bool(cfg.scheduler_config.enable_chunked_prefill),
            "max_num_batched_tokens": cfg.scheduler_config.max_num_batched_tokens,
            "max_num_seqs": cfg.scheduler_config.max_num_seqs,
            "enable_lora": cfg.lora_config is not None,
        }

    def steerlab_remove_hooks(self) -> int:
        """Take steerlab's hooks off every layer (how the tests prove the self-check works)."""
        n = 0
        for _, layer in decoder_layers(self.model_runner.model):
            for key, fn in list(layer._forward_hooks.items()):
                if fn is _hook:
                    del layer._forward_hooks[key]
                    n += 1
        return n
