"""Generation backends behind one small interface (:class:`steerlab.backends.base.Backend`).

A backend takes a list of requests (messages, sampling parameters, an optional steering
setting) and returns one result per request, in order: ``hf`` (transformers, :mod:`.hf`) and
``vllm`` (stock vLLM with steerlab's per-request steering, :mod:`.vllm`) and ``anthropic`` (the
Messages API, :mod:`.anthropic`: closed models, no steering). :func:`make_backend` builds any of
them from command-line settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steerlab.backends.base import Backend, Request, Result, Sampling
from steerlab.errors import ConfigError

if TYPE_CHECKING:
    from steerlab.models import Fingerprint, LoadedModel

BACKENDS = ("hf", "vllm", "anthropic")


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
    **vllm_kwargs: Any,
) -> tuple[Backend, Fingerprint | None, LoadedModel | None]:
    """(backend, the model's fingerprint (None for an API model), the HF model when ``kind == "hf"``)."""
    if kind not in BACKENDS:
        raise ConfigError(f"--backend {kind!r}: use hf, vllm or anthropic")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: give at least 1")
    if kind == "anthropic":
        if lora is not None or tensor_parallel_size != 1 or position != "all":
            raise ConfigError("--lora, --tensor-parallel-size and --position do not apply to --backend anthropic")
        from steerlab.backends.anthropic import AnthropicBackend

        return AnthropicBackend(model), None, None
    if kind == "hf":
        if tensor_parallel_size != 1:
            raise ConfigError("--tensor-parallel-size needs --backend vllm")
        from steerlab.backends.hf import HFBackend
        from steerlab.models import load_model

        loaded = load_model(model, dtype=dtype, device=device, lora=lora)
        hf = HFBackend(
            loaded, batch_size=batch_size, position=position, **({"chat_date": chat_date} if chat_date else {})
        )
        return hf, loaded.fingerprint, loaded  # type: ignore[return-value]
    if position != "all":
        raise ConfigError(f"--position {position}: the vLLM backend steers every position (use --backend hf)")
    from steerlab.backends.vllm import VLLMBackend

    if chat_date:
        vllm_kwargs["chat_date"] = chat_date
    backend = VLLMBackend(model, dtype=dtype, tensor_parallel_size=tensor_parallel_size, lora=lora, **vllm_kwargs)
    return backend, backend.fingerprint, None


__all__ = ["BACKENDS", "Backend", "Request", "Result", "Sampling", "make_backend"]
