"""Generation backends behind one small interface (:class:`steerlab.backends.base.Backend`).

A backend takes a list of requests (messages, sampling parameters, an optional steering
setting) and returns one result per request, in order: ``hf`` (transformers, :mod:`.hf`),
``vllm`` (stock vLLM with steerlab's per-request steering, :mod:`.vllm`), ``nnsight`` (steering as nnsight
interventions, here or on NDIF: :mod:`.nnsight`) and ``anthropic`` (the Messages API, :mod:`.anthropic`:
closed models, no steering). :func:`make_backend` builds any of
them from command-line settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steerlab.backends.base import Backend, Request, Result, Sampling, check_steering_support
from steerlab.errors import ConfigError

if TYPE_CHECKING:
    from steerlab.models import Fingerprint, LoadedModel

BACKENDS = ("hf", "vllm", "nnsight", "anthropic")


def make_backend(
    kind: str,
    model: str,
    *,
    batch_size: int = 16,
    dtype: str = "auto",
    device: str = "auto",
    position: str = "all",
    tensor_parallel_size: int = 1,
    lora: str | None = None,
    chat_date: str | None = None,
    device_map: str | int | dict[str, Any] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    enable_prefix_caching: bool | None = None,
    vllm_args: dict[str, Any] | None = None,
    compile: bool | None = None,
    remote: bool | None = None,
    **vllm_kwargs: Any,
) -> tuple[Backend, Fingerprint | None, LoadedModel | None]:
    """(backend, the model's fingerprint (None for an API model), the HF model when it is loaded here (``hf``, local
    ``nnsight``)).

    ``device_map``/``max_memory`` shard an HF model with accelerate (see :func:`steerlab.models.load_model`);
    ``max_model_len`` (default 4096), ``gpu_memory_utilization``, ``enable_prefix_caching`` (default:
    vLLM's) and ``vllm_args`` (any further ``vllm.LLM`` keyword) configure the vLLM engine; ``compile`` turns the HF
    backend's compiled decode path on or off (default: on for a model on one CUDA device); ``remote`` runs the
    ``nnsight`` backend on NDIF.
    """
    if kind not in BACKENDS:
        raise ConfigError(f"--backend {kind!r}: use hf, vllm, nnsight or anthropic")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: give at least 1")
    engine = {"max_model_len": max_model_len, "gpu_memory_utilization": gpu_memory_utilization,
              "enable_prefix_caching": enable_prefix_caching}  # fmt: skip
    engine = {k: v for k, v in engine.items() if v is not None}
    check_backend_options(
        kind, device_map=device_map, max_memory=max_memory, vllm_args=vllm_args, compile=compile, remote=remote,
        lora=lora, **engine,
    )  # fmt: skip
    if kind == "anthropic":
        if lora is not None or tensor_parallel_size != 1 or position != "all":
            raise ConfigError("--lora, --tensor-parallel-size and --position do not apply to --backend anthropic")
        from steerlab.backends.anthropic import AnthropicBackend

        return AnthropicBackend(model), None, None
    if kind == "nnsight":
        if tensor_parallel_size != 1:
            raise ConfigError("--tensor-parallel-size needs --backend vllm (on NDIF the service shards the model)")
        from steerlab.backends.nnsight import NNsightBackend
        from steerlab.nnsight_model import open_model

        nn = open_model(model, remote=bool(remote), dtype=dtype, device=device, device_map=device_map,
                        max_memory=max_memory, lora=lora)  # fmt: skip
        backend = NNsightBackend(
            nn, batch_size=batch_size, position=position, **({"chat_date": chat_date} if chat_date else {})
        )
        return backend, nn.loaded.fingerprint, (None if nn.remote else nn.loaded)  # type: ignore[return-value]
    if kind == "hf":
        if tensor_parallel_size != 1:
            raise ConfigError("--tensor-parallel-size needs --backend vllm")
        from steerlab.backends.hf import HFBackend
        from steerlab.models import load_model

        loaded = load_model(model, dtype=dtype, device=device, lora=lora, device_map=device_map, max_memory=max_memory)
        hf = HFBackend(
            loaded, batch_size=batch_size, position=position, compile=compile,
            **({"chat_date": chat_date} if chat_date else {}),
        )  # fmt: skip
        return hf, loaded.fingerprint, loaded  # type: ignore[return-value]
    if position != "all":
        raise ConfigError(f"--position {position}: the vLLM backend steers every position (use --backend hf)")
    from steerlab.backends.vllm import VLLMBackend

    if chat_date:
        vllm_kwargs["chat_date"] = chat_date
    named = {"model", "dtype", "tensor_parallel_size", "lora", "chat_date", "max_model_len", "gpu_memory_utilization",
             "enable_prefix_caching", *vllm_kwargs}  # fmt: skip
    clash = sorted(set(vllm_args or {}) & named)
    if clash:
        raise ConfigError(f"--vllm-arg {clash[0]}=...: set it with its own option")
    vllm_kwargs = {**(vllm_args or {}), **vllm_kwargs, **engine}
    backend = VLLMBackend(model, dtype=dtype, tensor_parallel_size=tensor_parallel_size, lora=lora, **vllm_kwargs)
    return backend, backend.fingerprint, None


def check_backend_options(kind: str, **given: Any) -> None:
    """Refuse (one line) sharding and engine options (make_backend's keywords) that ``kind`` does not take."""
    given = {k: v for k, v in given.items() if v is not None and v != {}}
    check_engine_options(given.get("max_model_len"), given.get("gpu_memory_utilization"))
    if given.get("remote"):
        if kind != "nnsight":
            raise ConfigError(f"--remote runs the nnsight backend on NDIF; use --backend nnsight, not {kind}")
        from steerlab.nnsight_model import api_key, check_remote_options

        check_remote_options(**{k: given.get(k) for k in ("lora", "device_map", "max_memory", "compile")})
        api_key()  # before any work: the key is in NDIF_API_KEY
    if kind not in ("hf", "nnsight") and ("device_map" in given or "max_memory" in given):
        raise ConfigError(
            f"--device-map and --max-memory shard a model of --backend hf, not --backend {kind}"
            + (" (vLLM shards with --tensor-parallel-size)" if kind == "vllm" else "")
        )
    if kind != "hf" and "compile" in given:
        raise ConfigError(
            f"--compile/--no-compile choose the HF backend's decode path, not --backend {kind}'s"
            + (" (vLLM compiles by default; --vllm-arg enforce_eager=true turns it off)" if kind == "vllm" else "")
        )
    vllm_only = {"max_model_len", "gpu_memory_utilization", "enable_prefix_caching", "vllm_args"}
    if kind != "vllm" and vllm_only & set(given):
        raise ConfigError(
            "--max-model-len, --gpu-memory-utilization, --enable-prefix-caching and --vllm-arg configure "
            f"--backend vllm, not --backend {kind}"
        )


def check_engine_options(max_model_len: int | None, gpu_memory_utilization: float | None) -> None:
    if max_model_len is not None and max_model_len < 1:
        raise ConfigError(f"--max-model-len {max_model_len}: give a positive number of tokens")
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
        raise ConfigError(f"--gpu-memory-utilization {gpu_memory_utilization}: give a fraction in (0, 1]")


__all__ = ["BACKENDS", "Backend", "Request", "Result", "Sampling", "check_steering_support", "make_backend"]
