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
from steerlab.fileio import read_text
from steerlab.steer import Scale, SteeringSetting
from steerlab.vectors import VectorBundle

Messages = list[dict[str, str]]


MAX_LAYER = 10_000  # no model has this many blocks; a larger index is a typo, refused before anything is expanded


def parse_layers(spec: str | None, n_layers: int | None = None, option: str = "--layers") -> list[int] | None:
    """``"3,5,10-12"`` -> ``[3, 5, 10, 11, 12]``; ``None`` -> ``None`` (every layer).

    Ranges are checked before they are expanded: every index must lie below ``n_layers`` when it
    is known (the model's or the file's block count), else below :data:`MAX_LAYER`, so
    ``0-1000000000`` is one line, not a billion-element list. Empty items (``1,,2``), reversed
    ranges (``5-3``) and negative indices are refused.
    """
    if spec is None:
        return None
    bound = MAX_LAYER if n_layers is None else n_layers
    where = (
        f"the model has {n_layers} layers, 0..{n_layers - 1}" if n_layers is not None else f"no model has {MAX_LAYER}"
    )
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"{option} {spec!r} has an empty item; give a list like 3,5,10-12")
        lo_text, dash, hi_text = part.partition("-")
        try:
            lo, hi = int(lo_text), int(hi_text) if dash else int(lo_text)
        except ValueError:
            raise ConfigError(
                f"{option} {spec!r}: {part!r} is not a layer or range; give a list like 3,5,10-12"
            ) from None
        if lo > hi:
            raise ConfigError(f"{option} {spec!r}: the range {part} runs backwards; write it {hi}-{lo}")
        if hi >= bound:
            raise ConfigError(f"{option} {spec!r}: layer {hi} is out of range ({where})")
        ranges.append((lo, hi))
    return [layer for lo, hi in ranges for layer in range(lo, hi + 1)]


def parse_multipliers(spec: str, option: str = "--alpha") -> list[float]:
    """``"-4,0,4"`` -> ``[-4.0, 0.0, 4.0]``; refuses non-numbers, empty items and non-finite values."""
    items = [x.strip() for x in spec.split(",")]
    if not any(items):
        raise ConfigError(f"{option} needs at least one multiplier")
    if not all(items):
        raise ConfigError(f"{option} {spec!r} has an empty item; give a list like -4,0,4")
    values = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"{option} {spec!r} is not a comma-separated list of numbers") from None
        if not math.isfinite(value):
            raise ConfigError(f"{option} {item} is not a finite number")
        values.append(value)
    return values


def load_prompts(path: Path, system: str | None = None) -> list[Messages]:
    """A prompt file: ``.jsonl`` with ``prompt`` (or ``messages``) per line, else one prompt per line."""
    path = Path(path)
    chats: list[Messages] = []
    for lineno, line in enumerate(read_text(path, "prompt file").splitlines(), start=1):
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


def label_of(setting: SteeringSetting) -> str:
    """``alpha=+4``, ``ablate alpha=+0``, ``clamp [-1, 1] alpha=+0``: how `steer` names a setting's completion."""
    if setting.operator == "ablate":
        return f"ablate alpha={setting.multiplier:+g}"
    if setting.operator == "clamp" and setting.bounds is not None:
        return f"clamp [{setting.bounds[0]:g}, {setting.bounds[1]:g}] alpha={setting.multiplier:+g}"
    return f"alpha={setting.multiplier:+g}"


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
        arms = ([(None, "unsteered")] if compare else []) + [(s, label_of(s)) for s in settings]
        for setting, label in arms:
            requests.append(Request(prompt, sampling, setting, id=f"{i}:{label}"))
            labels.append((i, label))
    results = backend.generate(requests)
    grouped: list[list[Completion]] = [[] for _ in prompts]
    for (i, label), result in zip(labels, results, strict=True):
        met = getattr(result, "condition_met", None)
        if met is not None:  # conditional steering: say whether this prompt was steered
            label += f" [steer-if {'met' if met else 'not met: unsteered'}, score {result.condition_score:.4g}]"
        grouped[i].append(Completion(prompts[i], label, result.text, result.finish_reason))
    return grouped
