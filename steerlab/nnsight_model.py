"""Models behind nnsight, locally or on NDIF (the National Deep Inference Fabric), and the traces steerlab runs.

nnsight runs intervention code written against a model's module tree either here (a wrapped, loaded model) or on
NDIF's servers (``remote``: the code is serialized, the weights never leave the server). steerlab uses it for two
things, each written once as a trace body that runs the same way here and there:

- :func:`pool_trace`: one forward pass over a batch of pair sides; each selected block's output is pooled over the
  locus's tokens inside the trace, so only ``[batch, n_layers, d_model]`` (and the mean per-token norms) is saved
  and sent back, never per-token activations; the pass stops after the deepest selected block.
- :mod:`steerlab.backends.nnsight`: steered generation (one ``generate`` trace per batch).

Trace bodies use nothing but torch and the tensors they close over: NDIF rebuilds them from their source, where
steerlab is not installed.

Remote runs. The API key is read from ``NDIF_API_KEY`` and nowhere else (not nnsight's config files), checked
before anything loads, handed to nnsight's request object in memory and never written anywhere steerlab writes.
Each remote request is retried on a connection error or an answer that says to try again (HTTP 408, 429, 5xx;
backoff 2, 4, 8, 16 s; :data:`RETRIES` tries in all), then one line; any other answer of the service (a model it
does not host, a bad key, a job that failed on the server) is one line with the service's own words.

Fingerprint of a remote model. Weights are not local, so :func:`remote_fingerprint` covers: ``architecture`` (the
class the config builds), ``n_layers`` and ``d_model`` (the config's), ``config_hash`` (the config's fields that
define the computation, as for a local model) and ``embed_hash``: the first 8 rows of the input embedding,
read back through one remote trace (the embedding module's output for token ids 0..7) and hashed as a local
model's are. For models whose embedding module returns its weight rows (Llama, Mistral, Qwen, OLMo) that is the
same hash a local copy of the checkpoint gets, so remote and local caches and vectors mix exactly when the five
fields agree; models that scale inside the embedding module (Gemma) get a different hash and do not mix.
The tokenizer is recorded by every cache as ``chat_template_hash`` and travels with the prompts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from steerlab.errors import ConfigError, ModelLoadError, SteerlabError
from steerlab.models import Fingerprint, LoadedModel, embed_rows_hash, load_model, prepare

KEY_ENV = "NDIF_API_KEY"
RETRIES = 5  # tries per remote request, the first included
BACKOFF_S = 2.0  # wait before the second try; doubles after each failed try
_EMBED_ROWS = 8
T = TypeVar("T")


class NDIFError(SteerlabError):
    """NDIF refused a request, or could not be reached."""


def api_key() -> str:
    """The NDIF API key from ``NDIF_API_KEY``; one line where it is missing (call before any work)."""
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise ConfigError(
            f"--remote runs on NDIF and needs an API key in {KEY_ENV}; get one at https://login.ndif.us and "
            f"export {KEY_ENV}=..."
        )
    return key


def check_remote_options(*, lora: str | None = None, device_map: Any = None, max_memory: Any = None,
                         compile: bool | None = None, dtype: str = "auto", device: str = "auto") -> None:  # fmt: skip
    """Refuse options that place or change the weights: on NDIF the model, its dtype and its devices are NDIF's."""
    if lora is not None:
        raise ConfigError("--remote with --lora: NDIF serves its own weights; merge the adapter into a checkpoint "
                          "NDIF hosts, or run the adapter locally without --remote")  # fmt: skip
    if device_map is not None or max_memory is not None:
        raise ConfigError("--remote with --device-map/--max-memory: NDIF places the model itself; drop them")
    if dtype != "auto" or device != "auto":
        raise ConfigError("--remote with --dtype/--device: NDIF runs the model in its own dtype on its own GPUs; "
                          "drop them")  # fmt: skip
    if compile is not None:
        raise ConfigError("--compile/--no-compile choose the HF backend's decode path, not the nnsight engine's")


RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}  # HTTP answers that say "try again", not "no"


def _is_network_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a failure to reach the service, or an answer that says to try again
    (HTTP 408/429/5xx, also from a proxy during the websocket handshake), rather than the service's refusal."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)):  # socket errors: refused, reset, timed out
            return True
        if (
            isinstance(exc, OSError)
            and exc.errno is not None
            and not isinstance(exc, (FileNotFoundError, PermissionError))
        ):
            return True  # "network is unreachable", name resolution (socket.gaierror), ...
        module = type(exc).__module__ or ""
        if module.startswith("httpx"):
            import httpx

            if isinstance(exc, httpx.TransportError):  # connect, read, write, pool, proxy, protocol errors
                return True
            if isinstance(exc, httpx.HTTPStatusError):
                return exc.response.status_code in RETRY_STATUS
        if module.startswith("websocket"):
            import websocket

            status = getattr(exc, "status_code", None)
            if isinstance(exc, websocket.WebSocketBadStatusException):
                return status in RETRY_STATUS
            if isinstance(exc, websocket.WebSocketException):  # closed, timed out, address, protocol
                return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _is_service_answer(exc: BaseException) -> bool:
    """Whether ``exc`` comes from talking to NDIF (nnsight's RemoteError, an HTTP or websocket error), as opposed
    to a bug here, which keeps its traceback."""
    module = type(exc).__module__ or ""
    return type(exc).__name__ == "RemoteError" or module.startswith(("httpx", "websocket"))


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


@dataclass
class NNsightModel:
    """A model wrapped by nnsight. ``loaded`` is the steerlab view (tokenizer, blocks, fingerprint); for a remote
    model its weights are on the meta device (only the config and tokenizer are here). ``model_id``: the NDIF
    model id (the hub repo id) of a remote model."""

    envoy: Any  # nnsight.modeling.transformers.TransformersModel
    loaded: LoadedModel
    remote: bool = False
    model_id: str | None = None
    retries: int | None = None  # default RETRIES
    backoff_s: float | None = None  # default BACKOFF_S
    _key: str | None = field(default=None, repr=False)
    _model_key: str | None = None  # nnsight's key of the remote model (the hub's canonical repo id, the task)

    @property
    def input_device(self) -> torch.device:
        """Where a trace's input tensors go: the model's device here, the CPU for a remote model (the request
        carries them)."""
        return torch.device("cpu") if self.remote else self.loaded.device

    def engine_meta(self) -> dict[str, Any]:
        """What caches and run records say about the engine (never the key)."""
        meta: dict[str, Any] = {"engine": "nnsight", "nnsight": _nnsight_version(), "remote": self.remote}
        if self.remote:
            meta["ndif_model"] = self.model_id
        return meta

    def backend(self) -> Any:
        """The nnsight execution backend of a trace: None (run here) or a remote one carrying the key."""
        if not self.remote:
            return None
        from nnsight.intervention.backends.remote import RemoteBackend

        return RemoteBackend(self._model_key, api_key=self._key, env=self.envoy._remoteable_get_env())

    def run(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(backend)``, where ``fn`` opens and runs one trace with that nnsight backend; remote connection
        errors are retried with backoff, the service's refusals are one line (:class:`NDIFError`)."""
        if not self.remote:
            return fn(None)
        retries = RETRIES if self.retries is None else self.retries
        backoff = BACKOFF_S if self.backoff_s is None else self.backoff_s
        wait = backoff
        for attempt in range(1, retries + 1):
            try:
                return fn(self.backend())
            except SteerlabError:
                raise
            except Exception as exc:  # noqa: BLE001 - network errors are retried, the service's answers one line
                if not _is_network_error(exc):
                    if _is_service_answer(exc):
                        raise NDIFError(f"NDIF answered {what} for {self.model_id} with an error: "
                                        f"{_first_line(exc)}") from None  # fmt: skip
                    raise  # a bug here, not the service's answer: keep the traceback
                if attempt == retries:
                    raise NDIFError(
                        f"NDIF could not be reached for {what} ({retries} tries over "
                        f"{backoff * (2 ** (retries - 1) - 1):.0f}s: {_first_line(exc)}); check the connection "
                        "and rerun (an extraction with --resume keeps the batches already cached; a run directory "
                        "keeps its finished samples)"
                    ) from None
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")


def _nnsight_version() -> str | None:
    from steerlab.backends.base import package_version

    return package_version("nnsight")


def _need_nnsight() -> None:
    try:
        import nnsight  # noqa: F401
    except ImportError:
        raise ConfigError("the nnsight engine needs the nnsight package: pip install 'steerlab[nnsight]'") from None


def wrap_local(loaded: LoadedModel) -> NNsightModel:
    """An nnsight wrapper around an already loaded model (the weights are shared, nothing is copied)."""
    _need_nnsight()
    from nnsight.modeling.transformers import TransformersModel

    envoy = TransformersModel(loaded.model, tokenizer=loaded.tokenizer, task="text-generation")
    return NNsightModel(envoy=envoy, loaded=loaded)


def open_model(
    name: str,
    *,
    remote: bool = False,
    dtype: str = "auto",
    device: str = "auto",
    device_map: Any = None,
    max_memory: Any = None,
    lora: str | None = None,
    trust_remote_code: bool = False,
) -> NNsightModel:
    """The model ``name`` behind nnsight: loaded here as :func:`steerlab.models.load_model` loads it, or (``remote``)
    NDIF's copy of the hub repo ``name``, of which only the config and tokenizer are read here (on the meta device)."""
    _need_nnsight()
    if not remote:
        return wrap_local(load_model(name, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                                     lora=lora, trust_remote_code=trust_remote_code))  # fmt: skip
    check_remote_options(lora=lora, device_map=device_map, max_memory=max_memory, dtype=dtype, device=device)
    key = api_key()
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        envoy = TransformersModel(
            name, task="text-generation", tokenizer=tokenizer, dispatch=False, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001 - the hub's or transformers' answer, in one line
        raise ModelLoadError(
            f"cannot read the config and tokenizer of {name!r} from the hub ({_first_line(exc)}); NDIF models are "
            "named by their hub id, e.g. meta-llama/Llama-3.1-70B-Instruct (a gated repo needs `hf auth login`)"
        ) from None
    if envoy.tokenizer is None:
        raise ModelLoadError(f"{name!r} has no tokenizer on the hub; steerlab needs one to render prompts")
    try:
        model_key = envoy.to_model_key()  # asks the hub for the canonical repo id
    except Exception as exc:  # noqa: BLE001 - the hub's answer, in one line
        raise ModelLoadError(f"cannot resolve {name!r} on the hub ({_first_line(exc)}); NDIF models are named by "
                             "their hub id") from None  # fmt: skip
    loaded = prepare(envoy._module, envoy.tokenizer, source=name)
    model = NNsightModel(envoy=envoy, loaded=loaded, remote=True, model_id=name, _key=key, _model_key=model_key)
    loaded.fingerprint = remote_fingerprint(model)
    return model


def module_path(model: torch.nn.Module, target: torch.nn.Module) -> str:
    """The name of ``target`` in ``model``'s module tree (what nnsight's ``envoy.get`` takes)."""
    for path, module in model.named_modules():
        if module is target:
            return path
    raise ModelLoadError(f"cannot find {type(target).__name__} in the model's module tree")


def remote_fingerprint(model: NNsightModel) -> Fingerprint:
    """The fingerprint of a remote model (see the module docstring for what it covers): one remote trace reads the
    first embedding rows, which also tells at once whether NDIF serves the model."""
    base = model.loaded.fingerprint
    envoy = model.envoy
    path = module_path(model.loaded.model, model.loaded.model.get_input_embeddings())
    ids = torch.arange(_EMBED_ROWS, dtype=torch.long)[None]  # [1, 8]: token ids 0..7

    def read(backend: Any) -> torch.Tensor:
        with envoy.trace({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, backend=backend) as tracer:
            rows = envoy.get(path).output[0].detach().cpu().save()  # [8, d_model]
            tracer.stop()
        return rows

    rows = model.run("the fingerprint request", read)
    return Fingerprint(
        architecture=base.architecture, n_layers=base.n_layers, d_model=base.d_model,
        config_hash=base.config_hash, embed_hash=embed_rows_hash(rows),
    )  # fmt: skip


def pool_trace(
    model: NNsightModel, ids: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor, layers: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass through nnsight: ``(pooled [batch, len(layers), d_model], norms [batch, len(layers)])``,
    float32 on the CPU. ``weights`` ``[batch, seq]`` pool each selected block's output inside the trace (as
    :func:`steerlab.extract.pooling_hooks` does), and the pass stops after the deepest selected block."""
    envoy = model.envoy
    blocks = envoy.get(module_path(model.loaded.model, model.loaded.blocks))
    order = list(layers)

    def trace(backend: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with envoy.trace({"input_ids": ids, "attention_mask": mask}, backend=backend) as tracer:
            pooled_parts, norm_parts = [], []
            for layer in order:  # in execution order: nnsight reads modules in the order the model runs them
                out = blocks[layer].output
                hidden = out[0] if isinstance(out, tuple) else out  # [batch, seq, d_model]
                w = weights.to(hidden.device)
                h = hidden.float()
                pooled_parts.append(torch.bmm(w.unsqueeze(1), h).squeeze(1))  # [batch, d_model]
                norm_parts.append((w * torch.linalg.vector_norm(h, dim=-1)).sum(-1))  # [batch]
            pooled = torch.stack(pooled_parts, 1).cpu().save()  # [batch, n_layers, d_model]: all that comes back
            norms = torch.stack(norm_parts, 1).cpu().save()  # [batch, n_layers]
            tracer.stop()
        return pooled, norms

    with torch.inference_mode():
        pooled, norms = model.run("an extraction batch", trace)
    return pooled.float(), norms.float()
