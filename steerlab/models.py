"""Load a causal LM and its tokenizer, find its decoder blocks, fingerprint it.

A model is named by a Hugging Face hub id, a local directory written by ``save_pretrained``,
a ``.gguf`` file, or ``smollm2`` (the embedded default); :mod:`steerlab.model_files` finds and
checks its files and :mod:`steerlab.chat` renders chats with its template. Their public names
(and the two private ones the tests use) are re-exported here, so ``steerlab.models`` stays the
one import for everything about a model.

The *fingerprint* is what caches and vectors record so that a vector is never silently
applied to another model: architecture, layer count, width, a hash of the config and a hash
of the first rows of the embedding matrix.
"""

from __future__ import annotations

import hashlib
import json
import pickle  # noqa: S403 (only to name its error: steerlab never unpickles itself)
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# re-exported: the chat rendering (steerlab.chat) and the model files (steerlab.model_files)
from steerlab.chat import DEFAULT_CHAT_DATE as DEFAULT_CHAT_DATE
from steerlab.chat import FALLBACK_CHAT_TEMPLATE as FALLBACK_CHAT_TEMPLATE
from steerlab.chat import chat_template_hash as chat_template_hash
from steerlab.chat import check_chat_date as check_chat_date
from steerlab.chat import fixed_date_template as fixed_date_template
from steerlab.chat import generation_lead as generation_lead
from steerlab.chat import render_chat as render_chat
from steerlab.chat import template_system_prompt as template_system_prompt
from steerlab.errors import ConfigError, ModelLoadError
from steerlab.model_files import EMBEDDED_DEFAULT as EMBEDDED_DEFAULT
from steerlab.model_files import _host as _host
from steerlab.model_files import _remove_stale_conversions as _remove_stale_conversions
from steerlab.model_files import cache_dir as cache_dir
from steerlab.model_files import convert_gguf as convert_gguf
from steerlab.model_files import embedded_gguf_path as embedded_gguf_path
from steerlab.model_files import embedded_snapshot as embedded_snapshot
from steerlab.model_files import resolve_source as resolve_source

# Where the decoder blocks live, tried in order. Each entry is an attribute path from the
# *CausalLM object; the residual stream after block l is that block's output.
_BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma/Gemma2, OLMo/OLMo2, Phi3
    "model.language_model.layers",  # Gemma3 and other multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
)

# Config keys that change with how a model was loaded or saved, not with what it computes.
# (`architectures` is filled in only on save; the fingerprint records the class separately.)
_VOLATILE_CONFIG_KEYS = {
    "architectures",
    "_name_or_path",
    "_model_name_or_path",
    "name_or_path",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "quantization_config",
    "use_cache",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "_commit_hash",
}

_EMBED_ROWS = 8


@dataclass(frozen=True)
class Fingerprint:
    """Identity of a model's weights and shape, recorded by every cache and vector file."""

    architecture: str
    n_layers: int
    d_model: int
    config_hash: str
    embed_hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})

    def differences(self, other: Fingerprint) -> list[str]:
        """Names of the fields on which two fingerprints differ (empty when they match)."""
        return [k for k in self.__dataclass_fields__ if getattr(self, k) != getattr(other, k)]


@dataclass
class LoadedModel:
    """A model ready for steerlab: weights, tokenizer, decoder blocks and fingerprint."""

    model: nn.Module
    tokenizer: Any
    source: str
    blocks: nn.ModuleList
    fingerprint: Fingerprint

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        return self.fingerprint.d_model

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def chat_template(self) -> str:
        return self.tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM, in order; the residual stream is each block's output."""
    expected = _n_layers(model.config)
    for path in _BLOCK_PATHS:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            if expected is None or len(obj) == expected:
                return obj
    raise ModelLoadError(
        f"cannot find the decoder blocks of {type(model).__name__} "
        f"(looked for {', '.join(_BLOCK_PATHS)}); steerlab supports Llama, Qwen2, Mistral, "
        "Gemma/Gemma2, GPT-2, GPT-NeoX and OLMo families"
    )


def _n_layers(config: Any) -> int | None:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _d_model(config: Any) -> int:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ModelLoadError(f"cannot read the model width from {type(config).__name__}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def config_hash(config: Any) -> str:
    """Hash of the config fields that define the computation (load-time fields dropped)."""
    items = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    return _sha(json.dumps(items, sort_keys=True, default=str).encode())


def embed_hash(model: nn.Module) -> str:
    """Hash of the first embedding rows, rounded through bfloat16 so fp32/bf16 loads agree."""
    weight = model.get_input_embeddings().weight
    if weight.is_meta:
        return "unavailable"
    return embed_rows_hash(weight)


def embed_rows_hash(weight: torch.Tensor) -> str:
    """Hash of the first embedding rows rounded through bf16 (fp32 and bf16 loads agree)."""
    rows = weight[:_EMBED_ROWS].detach().to(torch.bfloat16).to(torch.float32).cpu()
    return _sha(rows.numpy().tobytes())


def fingerprint(model: nn.Module) -> Fingerprint:
    config = model.config
    arch = type(model).__name__
    return Fingerprint(
        architecture=arch,
        n_layers=len(find_blocks(model)),
        d_model=_d_model(config),
        config_hash=config_hash(config),
        embed_hash=embed_hash(model),
    )


def _torch_dtype(dtype: str, device: str) -> Any:
    if dtype == "auto":
        # The checkpoint's own dtype on an accelerator; float32 on CPU, where half precision
        # is slow and lossy.
        return "auto" if device != "cpu" else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?", device):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N, mps or xpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device 'mps' asked for but this torch has no MPS support here; use --device cpu")
    if device.startswith("xpu") and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ModelLoadError(f"device {device!r} asked for but no XPU is available; use --device cpu")
    return device


def load_model(
    name: str | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | int | dict[str, Any] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    trust_remote_code: bool = False,
    lora: str | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer by hub id, local path, ``.gguf`` file or ``smollm2``.

    ``device_map="auto"`` spreads a model larger than one GPU over all of them (accelerate);
    then ``device`` is ignored. ``device_map`` may also be a strategy accelerate knows (``balanced``,
    ``sequential``, ...) or an explicit ``{module name: device}`` map, honoured with accelerate's
    dispatch hooks even when it names one device; ``max_memory`` (``{0: "70GiB", "cpu": ...}``)
    caps each device under a strategy (given alone it implies ``device_map="auto"``). ``lora``: a peft
    adapter directory, merged into the weights (so steering hooks and fingerprints see one plain model).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = name or EMBEDDED_DEFAULT
    if lora is not None:
        check_adapter(lora)  # before any weights load
    resolved_device = resolve_device(device)
    kwargs: dict[str, Any] = {
        "dtype": _torch_dtype(dtype, resolved_device),
        "trust_remote_code": trust_remote_code,
    }
    where, gguf_file = resolve_source(name)
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    try:
        config = AutoConfig.from_pretrained(where, **{k: v for k, v in kwargs.items() if k != "dtype"})
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if gguf_file is not None or Path(str(where)).is_dir():
            raise ModelLoadError(f"cannot read the model at {name!r} ({first})") from exc
        raise ModelLoadError(
            f"cannot load model {name!r}: not a local model and not on the hub or in its cache "
            f"({first}); check the id, or download it and pass its local path"
        ) from exc
    if max_memory is not None and device_map is None:
        device_map = "auto"
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    try:
        model = AutoModelForCausalLM.from_pretrained(where, config=config, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            where, trust_remote_code=trust_remote_code, gguf_file=kwargs.get("gguf_file")
        )
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model {name!r} as a causal LM: {first}") from exc
    if lora is not None:
        model = merge_lora(model, lora)
    if device_map is None:
        model.to(resolved_device)
    elif isinstance(device_map, dict) and not any(hasattr(m, "_hf_hook") for m in model.modules()):
        # transformers dispatches a map that names one device without hooks; add them, so an
        # explicit map runs the same way (and is tested the same way) whatever devices it names
        from accelerate import dispatch_model

        model = dispatch_model(model, device_map=device_map, force_hooks=True)
    model.eval()
    return prepare(model, tokenizer, source=str(name) + (f"+{lora}" if lora else ""))


STACK_FILE = "steerlab_stack.json"  # what an SDF adapter sits on (written by sdf_addon.train)


def check_adapter(adapter: str | Path) -> None:
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")


def merge_lora(model: nn.Module, adapter: str | Path) -> nn.Module:
    """``model`` with the peft LoRA adapter in ``adapter`` merged into its weights.

    An adapter trained by the SDF add-on records its base model's fingerprint and the adapters it
    was trained on top of (``steerlab_stack.json``): the base must match, and those adapters are
    merged first, in order, so the whole stack is rebuilt.
    """
    from peft import PeftModel

    check_adapter(adapter)
    stack_path = Path(adapter) / STACK_FILE
    if stack_path.is_file():
        stack = json.loads(stack_path.read_text())
        expected = Fingerprint.from_dict(stack["base_fingerprint"])
        differ = expected.differences(fingerprint(model))
        if differ:
            raise ModelLoadError(
                f"adapter {adapter} was trained on {stack['base_model']}, and this model differs from it in "
                f"{', '.join(differ)}; load the adapter on that model"
            )
        for parent in stack.get("parents", []):
            model = merge_lora(model, parent)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def prepare(model: nn.Module, tokenizer: Any, source: str) -> LoadedModel:
    """Wrap an already loaded model and tokenizer (also the entry point for tests)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"the tokenizer of {source!r} is a slow tokenizer; steerlab needs a fast one "
            "(offset mappings); install `tokenizers` or convert it"
        )
    blocks = find_blocks(model)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, blocks=blocks, fingerprint=fingerprint(model))


def context_length(loaded: LoadedModel) -> int | None:
    """The longest sequence the model's positions cover (``max_position_embeddings``), if it says."""
    config = loaded.model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_layers(layers: list[int] | None, n_layers: int) -> list[int]:
    """Validate a layer selection against a model; ``None`` means every layer."""
    if layers is None:
        return list(range(n_layers))
    if not layers:
        raise ConfigError("the layer list is empty; name at least one layer or omit --layers")
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ConfigError(f"layer(s) {bad} out of range: this model has {n_layers} layers, numbered 0..{n_layers - 1}")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layer list {layers} names a layer twice")
    return sorted(layers)
