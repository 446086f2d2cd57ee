"""Steered generation from a vector file: prompts in, completions per multiplier out.

What ``steerlab steer`` runs; the sweep engine of the same issue builds on the same pieces.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from steerlab.backends.base import Backend, Request, Sampling
from steerlab.errors import ConfigError
from steerlab.steer import Scale, SteeringSetting
from steerlab.vectors import VectorBundle

Messages = list[dict[str, str]]


def parse_multipliers(spec: str) -> list[float]:
    """``"-4,0,4"`` -> ``[-4.0, 0.0, 4.0]``; refuses non-numbers and non-finite values."""
    try:
        values = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--alpha {spec!r} is not a comma-separated list of numbers") from None
    if not values:
        raise ConfigError("--alpha needs at least one multiplier")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"--alpha {bad[0]} is not a finite number")
    return values


def load_prompts(path: Path, system: str | None = None) -> list[Messages]:
    """A prompt file: ``.jsonl`` with ``prompt`` (or ``messages``) per line, else one prompt per line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist")
    chats: list[Messages] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: malformed JSON ({exc.msg})") from None
            if "messages" in row:
                chats.append(list(row["messages"]))
                continue
            if "prompt" not in row:
                raise ConfigError(f"{path}:{lineno}: expected a 'prompt' or 'messages' field")
            line = row["prompt"]
        chats.append(as_chat(line, system))
    if not chats:
        raise ConfigError(f"prompt file {path} holds no prompts")
    return chats


def as_chat(prompt: str, system: str | None = None) -> Messages:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def settings_for(
    bundle: VectorBundle,
    multipliers: Sequence[float],
    layers: Sequence[int] | None = None,
    scale: Scale = "absolute",
    control: int | None = None,
) -> list[SteeringSetting]:
    """One setting per multiplier, for the file's vector (or its random control ``control``).

    ``scale="relative"``: the multiplier is a fraction of the layer's ``token_norm`` recorded in the
    vector file (the mean over the locus's tokens of the residual norm ||h_t||, on the train pairs),
    so alpha adds a vector of norm alpha * token_norm at every steered token.
    """
    if control is not None and not 0 <= control < len(bundle.controls):
        raise ConfigError(
            f"--control {control}: the file has {len(bundle.controls)} controls (0..{len(bundle.controls) - 1})"
        )
    vec = bundle.vector if control is None else bundle.controls[control]
    if layers is not None:
        vec = vec.select(list(layers))
    norms = None
    if scale == "relative":
        per_layer = bundle.meta.get("diagnostics", {}).get("per_layer", {})
        if "token_norm" not in per_layer:
            raise ConfigError(
                f"vector {bundle.vector.name!r} records no per-token residual norm (token_norm) for --scale relative; "
                "refit it from a cache made by this steerlab (steerlab extract ... --overwrite) or use --scale absolute"
            )
        norms = dict(zip(bundle.meta["layers"], per_layer["token_norm"], strict=True))
    return [SteeringSetting(vec, m, scale=scale, token_norms=norms) for m in multipliers]


@dataclass
class Completion:
    prompt: Messages
    label: str  # "alpha=+0.03" or "unsteered"
    text: str
    finish_reason: str


def completions(
    backend: Backend,
    prompts: Sequence[Messages],
    settings: Sequence[SteeringSetting],
    sampling: Sampling,
    compare: bool = False,
) -> list[list[Completion]]:
    """For each prompt, the completion under each setting (and unsteered first with ``compare``)."""
    requests, labels = [], []
    for i, prompt in enumerate(prompts):
        arms = ([(None, "unsteered")] if compare else []) + [(s, f"alpha={s.multiplier:+g}") for s in settings]
        for setting, label in arms:
            requests.append(Request(prompt, sampling, setting, id=f"{i}:{label}"))
            labels.append((i, label))
    results = backend.generate(requests)
    grouped: list[list[Completion]] = [[] for _ in prompts]
    for (i, label), result in zip(labels, results, strict=True):
        grouped[i].append(Completion(prompts[i], label, result.text, result.finish_reason))
    return grouped
