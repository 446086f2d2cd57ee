"""``steerlab side-effects`` as a function: measure what :mod:`steerlab.analysis.side_effects` describes on the
run's model, assemble the record (every number, the inputs' hashes, the settings), and write it with its figure.

The record's ``figure`` block holds the plotted numbers as plain lists (the selectivity panel: steered concept x
measured concept, the real vector's change with its interval beside every control's, per multiplier; and the KL
and perplexity of each vector against its controls), so :mod:`steerlab.figures.side_effects` draws without
computing and the figure can be drawn again from ``side_effects.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from steerlab.analysis.side_effects import (
    FORMAT,
    PARTIAL,
    Plan,
    SideEffectsError,
    change,
    control_index,
    envelope,
    plan,
    unsteered,
)
from steerlab.analysis.side_effects_probe import PerplexityProbe, perplexity, readouts
from steerlab.fileio import open_append, read_jsonl
from steerlab.models import LoadedModel
from steerlab.vectors import finite_json

RECORD, READOUTS, FIGURE = "side_effects.json", "readouts.jsonl", "side_effects.png"
DIVERGENCE = ("kl_mean", "kl_p95", "ppl_delta", "ppl_ratio")
READOUT_CHUNK = 64  # distinct generations re-encoded between two appends to the partial read-outs


def _generation_key(s: dict[str, Any]) -> str:
    """Samples with the same generation (every arm's multiplier-0 rows) are re-encoded once."""
    return json.dumps([s.get("messages"), s.get("prefill"), [t.get("text") for t in s.get("turns") or []],
                       s.get("text")], sort_keys=True)  # fmt: skip


def sample_readouts(
    loaded: LoadedModel, p: Plan, batch_size: int, progress: bool
) -> dict[str, tuple[list[float], int]]:
    """Sample id -> (read-out per concept, generated tokens read), each distinct generation re-encoded once."""
    layers = sorted({c.layer for c in p.concepts})
    units = torch.zeros(len(p.concepts), len(layers), loaded.d_model)  # [n_concepts, n_layers, d_model]
    for r, c in enumerate(p.concepts):
        units[r, layers.index(c.layer)] = c.unit
    rows_layer = [layers.index(c.layer) for c in p.concepts]
    distinct: dict[str, dict[str, Any]] = {}
    for s in p.samples:
        distinct.setdefault(_digest(_generation_key(s)), s)
    chat_date = p.header.get("chat_date") or (p.header.get("backend") or {}).get("chat_date") or "2024-07-26"
    param = next(loaded.model.parameters())
    what = {"model": loaded.fingerprint.to_dict(), "dtype": str(param.dtype), "device": param.device.type,
            "chat_date": chat_date, "concepts": [[c.name, c.hash, c.layer] for c in p.concepts]}  # fmt: skip
    key = _digest(json.dumps(what, sort_keys=True))  # what the read-outs depend on, besides the generation
    partial = p.out / PARTIAL
    by_key: dict[str, tuple[list[float], int]] = {}
    for r in read_jsonl(partial, torn_tail=True):  # a killed report's finished read-outs
        if r.get("key") == key and r.get("generation") in distinct:
            by_key[r["generation"]] = ([math.nan if v is None else float(v) for v in r["values"]], int(r["count"]))
    todo = [g for g in distinct if g not in by_key]
    if todo:
        _make(p.out)
        with open_append(partial) as fh:
            for lo in range(0, len(todo), READOUT_CHUNK):
                chunk = todo[lo : lo + READOUT_CHUNK]
                values, counts = readouts(loaded, [distinct[g] for g in chunk], units, layers, rows_layer, chat_date,
                                          batch_size=batch_size, progress=progress)  # fmt: skip
                for i, g in enumerate(chunk):
                    by_key[g] = ([float(v) for v in values[i]], int(counts[i]))
                    line = {"key": key, "generation": g, "values": by_key[g][0], "count": by_key[g][1]}
                    fh.write(json.dumps(finite_json(line), allow_nan=False) + "\n")
                fh.flush()
    return {s["id"]: by_key[_digest(_generation_key(s))] for s in p.samples}


def _make(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SideEffectsError(f"cannot make {out} ({exc.strerror}); choose another --out") from None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def judge_score(s: dict[str, Any], key: str) -> float | None:
    value = (((s.get("judge") or {}).get("scores") or {}).get(key) or {}).get("score")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def measure(loaded: LoadedModel, p: Plan, *, max_tokens: int = 64, batch_size: int = 16, seed: int = 0,
            n_resamples: int = 2000, progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """The record and the per-sample read-outs of a checked plan (:func:`steerlab.analysis.side_effects.plan`)."""
    from steerlab.analysis.doses import summarise
    from steerlab.runs.rows import steering_settings
    from steerlab.stats import describe, per_request, request_of

    settings = steering_settings(p.config, p.arms)
    probe = PerplexityProbe(loaded, p.text_list, max_tokens=max_tokens, batch_size=batch_size)
    # every arm's multiplier 0 adds zeros: one such row (through the same steering table) stands for them all
    zero = next(k for k in p.keys if k[2] == 0)
    measured = [k for k in p.keys if k[2] != 0 or k == zero]
    kl, nll = probe.measure([settings[k] for k in measured])  # [n_measured, n_tokens], [n_measured, n_predicted]
    at = [measured.index(k if k[2] != 0 else zero) for k in p.keys]
    kl_mean, kl_p95 = [summarise(kl, s)[at].tolist() for s in ("mean", "p95")]
    ppl, base_ppl = [perplexity(nll)[i] for i in at], probe.base_perplexity()
    got = sample_readouts(loaded, p, batch_size, progress)
    base = unsteered(p.samples)
    names = [c.name for c in p.concepts]
    dosed = getattr(p.config, "doses", None) is not None  # the multipliers are doses in KL units
    rows = []
    for i, (vector, arm, m) in enumerate(p.keys):
        group = [s for s in p.samples if (s["vector"], s["arm"], float(s["multiplier"])) == (vector, arm, m)]
        setting = settings[(vector, arm, m)]
        row: dict[str, Any] = {
            "vector": vector, "arm": arm, "control": control_index(arm), "multiplier": m,
            "applied_multiplier": setting.multiplier, "dose_kl": m if dosed else None,
            "layers": list(setting.steered_layers()), "scale": setting.scale,
            "n_samples": len(group), "n_requests": len({request_of(s) for s in group}),
            "kl_mean": kl_mean[i], "kl_p95": kl_p95[i], "ppl": ppl[i], "ppl_delta": ppl[i] - base_ppl,
            "ppl_ratio": ppl[i] / base_ppl,
            "readout": {n: change(group, base, lambda s, j=j: got[s["id"]][0][j], seed, n_resamples)
                        for j, n in enumerate(names)},
            "judge": {name: change(group, base, lambda s, k=k: judge_score(s, k), seed, n_resamples)
                      for k, name in p.judge_names.items()} if p.judge_names else None,
        }  # fmt: skip
        rows.append(row)
    record = {
        "format": FORMAT, "kind": "steerlab-side-effects", "run_dir": str(p.run_dir), "inputs": p.inputs,
        "model": loaded.fingerprint.to_dict(), "model_source": loaded.source,
        "texts": {"file": str(p.texts), "hash": p.inputs["texts"], "n_texts": len(probe.seqs),
                  "n_tokens": probe.n_tokens, "n_predicted": probe.n_predicted},
        "settings": {"dose_file": str(p.config.doses) if dosed else None, "max_tokens": max_tokens,
                     "batch_size": batch_size, "conditions": sorted({str(s.get("condition")) for s in p.samples}),
                     "statistics": describe(seed, n_resamples),
                     "divergence": "KL(unsteered || steered) per token over the neutral texts, nats; perplexity: "
                     "exp(mean next-token NLL) over the same texts",
                     "readout": "unsteered re-encoding (teacher forcing), residual (block output) at the concept's "
                     "read-out layer, projection on its unit direction, mean over the generated tokens only",
                     "envelope": "the real vector against every random control of the run at the same multiplier"},
        "concepts": [c.record() for c in p.concepts],
        "judge": {"judged": bool(p.judge_names), "concepts": p.judge_names, "note": p.judge_note},
        "baseline": {
            "n_samples": len(base), "n_requests": len({request_of(s) for s in base}), "ppl": base_ppl,
            "readout": {n: _mean_over_requests(base, lambda s, j=j: got[s["id"]][0][j], per_request)
                        for j, n in enumerate(names)},
            "judge": {name: _mean_over_requests(base, lambda s, k=k: judge_score(s, k), per_request)
                      for k, name in p.judge_names.items()} if p.judge_names else None,
        },
        "rows": rows,
    }  # fmt: skip
    record["envelope"] = envelopes(rows)
    record["figure"] = figure_data(rows, names, list(p.judge_names.values()))
    per_sample = [
        {"id": s["id"], "vector": s["vector"], "arm": s["arm"], "multiplier": s["multiplier"],
         "condition": s.get("condition"), "item": s.get("item"), "seed": s.get("seed"),
         "n_generated": got[s["id"]][1], "readout": dict(zip(names, got[s["id"]][0], strict=True))}
        for s in p.samples
    ]  # fmt: skip
    return record, per_sample


def _mean_over_requests(samples: Sequence[dict[str, Any]], value: Any, per_request: Any) -> float:
    pairs = [(s["item"], v) for s in samples if (v := value(s)) is not None and math.isfinite(v)]
    means = list(per_request(pairs).values())
    return float(sum(means) / len(means)) if means else math.nan


def statistic(row: dict[str, Any], name: str) -> float | None:
    """A row's value of ``kl_mean`` ... ``ppl_ratio``, ``readout:<concept>`` or ``judge:<concept>`` (the change)."""
    if ":" not in name:
        return row[name]
    kind, concept = name.split(":", 1)
    block = row.get(kind) or {}
    return block[concept]["change"] if concept in block else None


def envelopes(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every statistic of each real vector at each multiplier against its controls there."""
    out = []
    for real in (r for r in rows if r["control"] is None):
        controls = [r for r in rows if r["vector"] == real["vector"] and r["multiplier"] == real["multiplier"]
                    and r["control"] is not None]  # fmt: skip
        names = [*DIVERGENCE, *(f"readout:{c}" for c in real["readout"]),
                 *(f"judge:{c}" for c in (real["judge"] or {}))]  # fmt: skip
        for name in names:
            entry = envelope(statistic(real, name), [statistic(c, name) for c in controls])
            out.append({"vector": real["vector"], "multiplier": real["multiplier"], "statistic": name, **entry})
    return out


def _panel(rows: Sequence[dict[str, Any]], kind: str, measured: Sequence[str]) -> dict[str, Any] | None:
    """Steered vector x measured concept: per multiplier the real change, its interval, and every control's."""
    if not measured:
        return None
    steered = list(dict.fromkeys(r["vector"] for r in rows))
    cells = []
    for v in steered:
        line = []
        for c in measured:
            mults = sorted({r["multiplier"] for r in rows if r["vector"] == v})
            real = {r["multiplier"]: r[kind][c] for r in rows if r["vector"] == v and r["control"] is None}
            ctrl = {m: [r[kind][c]["change"] for r in rows if r["vector"] == v and r["multiplier"] == m
                        and r["control"] is not None] for m in mults}  # fmt: skip
            nan = {"change": math.nan, "ci_low": math.nan, "ci_high": math.nan}
            line.append({"multipliers": mults, "real": [real.get(m, nan)["change"] for m in mults],
                         "ci_low": [real.get(m, nan)["ci_low"] for m in mults],
                         "ci_high": [real.get(m, nan)["ci_high"] for m in mults],
                         "controls": [ctrl[m] for m in mults]})  # fmt: skip
        cells.append(line)
    return {"steered": steered, "measured": list(measured), "cells": cells}


def figure_data(rows: Sequence[dict[str, Any]], concepts: Sequence[str], judged: Sequence[str]) -> dict[str, Any]:
    """The plotted numbers (module docstring)."""
    divergence = {}
    for v in dict.fromkeys(r["vector"] for r in rows):
        mults = sorted({r["multiplier"] for r in rows if r["vector"] == v})
        entry: dict[str, Any] = {"multipliers": mults}
        for key in ("kl_mean", "ppl_ratio"):
            entry[key] = [next((r[key] for r in rows if r["vector"] == v and r["multiplier"] == m and
                                r["control"] is None), math.nan) for m in mults]  # fmt: skip
            entry[f"{key}_controls"] = [[r[key] for r in rows if r["vector"] == v and r["multiplier"] == m and
                                         r["control"] is not None] for m in mults]  # fmt: skip
        divergence[v] = entry
    return {"readout": _panel(rows, "readout", concepts), "judge": _panel(rows, "judge", judged),
            "divergence": divergence}  # fmt: skip


def run_side_effects(
    run_dir: Path,
    *,
    vector_files: Sequence[Path] | None = None,
    texts: Path = Path("configs/texts/neutral.txt"),
    readout_layer: int | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    conditions: Sequence[str] | None = None,
    controls: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 16,
    max_tokens: int = 64,
    seed: int = 0,
    n_resamples: int = 2000,
    progress: bool = True,
) -> tuple[dict[str, Any], Path]:
    """The command: check every input (nothing loaded, nothing written), load the run's model (refused unless its
    fingerprint is the run's), measure, then write ``side_effects.json``, ``readouts.jsonl`` and ``side_effects.png``
    into ``out``. Returns the record and the output directory."""
    from steerlab.fileio import atomic_write_text
    from steerlab.models import Fingerprint, load_model

    p = plan(run_dir, vector_files=vector_files, texts=texts, readout_layer_=readout_layer, out=out,
             overwrite=overwrite, conditions=conditions, controls=controls, batch_size=batch_size,
             max_tokens=max_tokens, n_resamples=n_resamples)  # fmt: skip
    loaded = load_model(p.config.model, device=device, dtype=dtype, lora=p.config.lora)
    diff = Fingerprint.from_dict(p.header["model"]).differences(loaded.fingerprint)
    if diff:
        raise SideEffectsError(f"the model loaded from {p.config.model!r} is not the run's (fingerprint differs in "
                               f"{', '.join(diff)})")  # fmt: skip
    record, per_sample = measure(loaded, p, max_tokens=max_tokens, batch_size=batch_size, seed=seed,
                                 n_resamples=n_resamples, progress=progress)  # fmt: skip
    from steerlab.figures.side_effects import draw_side_effects
    from steerlab.plots import save

    fig = draw_side_effects(record)  # drawn before anything is written: a failure leaves nothing behind
    _make(p.out)
    atomic_write_text(p.out / READOUTS, "".join(json.dumps(finite_json(r), allow_nan=False) + "\n" for r in per_sample))
    save(fig, p.out / FIGURE)
    atomic_write_text(p.out / RECORD, json.dumps(finite_json(record), indent=1, allow_nan=False) + "\n")
    (p.out / PARTIAL).unlink(missing_ok=True)  # everything it held is in readouts.jsonl now
    return record, p.out
