"""Side effects and recoverability of a steered run: does a vector do more than a random push? (issue 20, item 2)

For every (vector or control, multiplier) of a finished sweep (``steerlab sweep`` / ``eval``), against the run's
unsteered (multiplier 0) samples and the random controls at the same multiplier:

- **KL**: the mean (and 95th percentile) per-token ``KL(unsteered || steered)`` of the next-token distributions
  over a neutral text set, under the run's own steering setting (vector, layers, scale, multiplier; a dose run's
  calibrated multiplier per arm), as :mod:`steerlab.analysis.doses` computes it;
- **perplexity** of the same texts under that steering: ``ppl_delta = ppl_steered - ppl_unsteered`` and
  ``ppl_ratio = ppl_steered / ppl_unsteered``. A multiplier of 0 is measured through the same steering table
  (it adds zeros), so its KL and perplexity change are 0;
- **judge change**, per rubric concept: the mean over requests of (the request's mean judge score in the group
  minus its mean score in the unsteered samples), with a percentile cluster-bootstrap interval over requests
  (:func:`steerlab.stats.mean_interval`); A-steering moving the B score shows here. An unjudged run says so;
- **recoverability read-out**, per concept vector (the run's vectors and their sibling concept files, or
  ``--vector``): each sample re-encoded by the unsteered model (no hook: teacher forcing), the residual stream at
  the concept's read-out layer projected on the concept's unit direction there and averaged over the generated
  tokens only (:mod:`steerlab.analysis.side_effects_probe`); reported as the change against the unsteered
  samples, over requests as above. Because the re-encoding is unsteered, the steering cannot touch the read-out
  directly (whichever layer it steered): only the text it made can. The default read-out layer of a concept is
  the best of its vector's selected layers by the first validation diagnostic its file records (``val_auroc``,
  ``keyword_hard_auroc``, ``cv_auroc``, ``cv_dprime``; ties: the lower layer), else its first selected layer: a
  layer where the concept's direction was fitted to be read, and the best held-out one among them;
  ``--readout-layer N`` reads every concept at layer N;
- **envelope**: each statistic of the real vector beside the same statistic of every random control at the same
  multiplier: the controls' min and max, where the real value lies (``above``, ``below``, ``inside``), its rank
  among real and controls (1 = the largest), the share of controls below it, and a z-score when there are at least
  :data:`steerlab.stats.MIN_CONTROLS_FOR_Z` controls.

Nothing here writes into the run directory: :func:`run_side_effects` checks every input before the model loads,
then writes ``side_effects.json``, ``readouts.jsonl`` (every sample's read-out) and ``side_effects.png`` into
``--out`` (default: a sibling of the run directory, ``RUN_DIR-side-effects``). The re-encoding, the long part, is
resumable: each chunk of read-outs is appended to ``--out/readouts.partial.jsonl`` as it is done, keyed by what
determines it (model fingerprint, dtype and device, the concepts' files and layers, the chat date, the
generation's text); a rerun after a kill reads back the finished ones (the same numbers: JSON floats round-trip)
and re-encodes only the rest, and the file is removed once the report is written. Assembling the record from the
measured numbers is :mod:`steerlab.analysis.side_effects_report`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerlab.errors import SteerlabError
from steerlab.fileio import file_hash
from steerlab.models import Fingerprint
from steerlab.vectors import VectorBundle

FORMAT = 1
PARTIAL = "readouts.partial.jsonl"  # the read-outs of a report still running (or killed): resumed, then removed
RANKINGS = ("val_auroc", "keyword_hard_auroc", "cv_auroc", "cv_dprime")  # first present picks the read-out layer


class SideEffectsError(SteerlabError):
    """A side-effect report that cannot be made as asked (not a run, nothing steered, a bad layer, ...)."""


@dataclass
class Concept:
    """A concept read out of the generated text: its unit direction at its read-out layer."""

    name: str
    file: str
    hash: str
    layer: int
    rule: str  # how the layer was chosen
    unit: torch.Tensor  # [d_model]

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "hash": self.hash, "readout_layer": self.layer,
                "layer_rule": self.rule}  # fmt: skip


@dataclass
class Plan:
    """Everything checked before the model loads."""

    run_dir: Path
    out: Path
    header: dict[str, Any]
    config: Any  # steerlab.runs.SweepConfig
    samples: list[dict[str, Any]]
    arms: list[Any]  # steerlab.runs.Arm
    keys: list[tuple[str, str, float]]  # (vector, arm, multiplier) of every group present, in report order
    concepts: list[Concept]
    texts: Path
    text_list: list[str]
    judge_names: dict[str, str]  # rubric key -> concept name (empty: unjudged)
    judge_note: str | None
    inputs: dict[str, Any] = field(default_factory=dict)


def default_out(run_dir: Path) -> Path:
    """The default ``--out``: beside the run directory, never inside it (reading a run never writes into it)."""
    run_dir = Path(run_dir)
    return run_dir.parent / f"{run_dir.name}-side-effects"


def control_index(arm: str) -> int | None:
    """``control3`` -> 3; ``real`` -> None."""
    return int(arm.removeprefix("control")) if arm.startswith("control") else None


def readout_layer(bundle: VectorBundle) -> tuple[int, str]:
    """A concept's default read-out layer and the rule that chose it: of the vector's selected layers, the best by
    its first validation diagnostic present (ties: the lower layer), else the first selected layer."""
    diag = bundle.meta.get("diagnostics") or {}
    per_layer = diag.get("per_layer") or {}
    layers = list(diag.get("layers") or bundle.meta["layers"])
    selected = set(bundle.vector.layers) & set(bundle.vector.layers_available)
    for name in RANKINGS:
        scores = per_layer.get(name)
        if scores is None or len(scores) != len(layers):
            continue
        arr = np.asarray(scores, dtype=float)
        usable = [i for i in range(len(layers)) if layers[i] in selected and np.isfinite(arr[i])]
        if usable:
            best = min(usable, key=lambda i: (-arr[i], layers[i]))
            return layers[best], f"best selected layer by {name}"
    return sorted(bundle.vector.layers)[0], "first selected layer"


def check_out(out: Path, run_dir: Path, overwrite: bool) -> None:
    out, run_dir = Path(out), Path(run_dir)
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise SideEffectsError(f"--out {out} is inside the run directory; reading a run never writes into it: "
                               "give a directory outside it")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise SideEffectsError(f"--out {out} is a file; give a directory")
    # a directory holding only the read-outs of a killed report is resumed (module docstring)
    if out.is_dir() and {q.name for q in out.iterdir()} - {PARTIAL} and not overwrite:
        raise SideEffectsError(f"--out {out} exists and is not empty; choose a new directory or pass --overwrite")


def _concepts(
    vector_files: Sequence[Path] | None, run_vectors: Sequence[Path], expect: Fingerprint, layer: int | None
) -> list[Concept]:
    """The concepts to read out: ``vector_files``, else the run's vectors and their sibling concept files."""
    from steerlab.selectivity import sibling_files

    chosen: list[tuple[Path, VectorBundle]] = []
    if vector_files:
        chosen = [(Path(p), VectorBundle.load(Path(p), expect=expect)) for p in vector_files]
    else:
        for p in run_vectors:
            bundle = VectorBundle.load(Path(p), expect=expect)
            chosen.append((Path(p), bundle))
            if {"concept", "locus", "model", "layers"} <= bundle.meta.keys():
                chosen += sibling_files(Path(p), bundle.meta)  # same model fingerprint, locus and layers
    out, names, paths = [], set(), set()
    for path, bundle in chosen:
        if path.resolve() in paths:
            continue
        paths.add(path.resolve())
        name = str(bundle.meta.get("concept", path.stem))
        name = name if name not in names else f"{name}:{path.stem}"
        names.add(name)
        if layer is None:
            at, rule = readout_layer(bundle)
        else:
            if layer not in bundle.vector.layers_available:
                raise SideEffectsError(f"--readout-layer {layer}: {path} has no direction at layer {layer} (it has "
                                       f"{list(bundle.vector.layers_available)}); choose one of those")  # fmt: skip
            at, rule = layer, "--readout-layer"
        d = bundle.vector.at(at).float()
        out.append(Concept(name, str(path), file_hash(path), at, rule, d / d.norm()))
    return out


def _judge_names(run_dir: Path, samples: Sequence[dict[str, Any]]) -> tuple[dict[str, str], str | None]:
    """Rubric key -> concept name of a judged run (judge.json names them), or ({}, why there are no scores)."""
    keys: list[str] = []
    for s in samples:
        for k in (s.get("judge") or {}).get("scores") or {}:
            if k not in keys:
                keys.append(k)
    if not keys:
        if any("reasoning" in s for s in samples):
            return {}, f"the run is unjudged: run `steerlab judge {run_dir}` to add judge scores, then this again"
        return {}, "the run's samples carry no reasoning to judge (a plain run): no judge scores"
    names = {}
    info = Path(run_dir) / "judge.json"
    if info.is_file():
        try:
            names = json.loads(info.read_text(encoding="utf-8")).get("concepts") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            names = {}
    return {k: str(names.get(k, k)) for k in keys}, None


def plan(
    run_dir: Path,
    *,
    vector_files: Sequence[Path] | None = None,
    texts: Path = Path("configs/texts/neutral.txt"),
    readout_layer_: int | None = None,
    out: Path | None = None,
    overwrite: bool = False,
    conditions: Sequence[str] | None = None,
    controls: int | None = None,
    batch_size: int = 16,
    max_tokens: int = 64,
    n_resamples: int = 2000,
) -> Plan:
    """Check every input and read the run, without loading the model and without writing anything."""
    from steerlab.analysis.doses import read_texts
    from steerlab.fileio import shipped
    from steerlab.harness.records import HEADER, SAMPLES, read_header, read_samples
    from steerlab.runs import SweepConfig, load_arms
    from steerlab.runs.rows import steering_settings

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SideEffectsError(f"{run_dir} is not a directory; give a steerlab run directory (steerlab sweep --out)")
    if batch_size < 1 or max_tokens < 1:
        raise SideEffectsError(f"--batch-size {batch_size}, --max-tokens {max_tokens}: give at least 1 each")
    if n_resamples < 0:
        raise SideEffectsError(f"--n-resamples {n_resamples}: give 0 or more")
    out = Path(out) if out is not None else default_out(run_dir)
    check_out(out, run_dir, overwrite)
    header = read_header(run_dir)
    if not isinstance(header.get("model"), dict):
        raise SideEffectsError(f"{run_dir} records no model fingerprint (an API model?); the report needs the "
                               "local model the run steered")  # fmt: skip
    expect = Fingerprint.from_dict(header["model"])
    try:
        config = SweepConfig.model_validate(header.get("config") or {})
    except ValueError as exc:
        first = str(exc).strip().splitlines()
        why = first[-1] if first else exc
        raise SideEffectsError(f"{run_dir}/{HEADER} holds a config this steerlab cannot read ({why}); rerun the sweep "
                               "with this version") from None  # fmt: skip
    if not config.vectors or not any(m != 0 for m in config.multipliers):
        raise SideEffectsError(f"{run_dir} is not a steered run (no vectors or no non-zero multiplier); side effects "
                               "need a sweep of vectors over multipliers, 0 among them")  # fmt: skip
    if config.operator != "add" or config.steer_if is not None or config.steer_only is not None:
        what = (
            f"operator {config.operator}"
            if config.operator != "add"
            else "steer_if (conditional steering)"
            if config.steer_if is not None
            else "steer_only (gated conditions)"
        )
        raise SideEffectsError(
            f"{run_dir} steers with {what}: the report measures additive, unconditional steering against the "
            "unsteered samples at multiplier 0; run it on an additive sweep"
        )
    if 0 not in config.multipliers:
        raise SideEffectsError(f"{run_dir} has no multiplier 0: changes are measured against the unsteered samples; "
                               "rerun the sweep with 0 among its multipliers")  # fmt: skip
    recorded = header.get("vector_files") or {}
    for p in config.vectors:
        if not Path(p).is_file():
            raise SideEffectsError(f"the run's vector file {p} is not found; run this from the directory the sweep "
                                   "ran in (its paths are relative to it)")  # fmt: skip
        if str(p) in recorded and file_hash(Path(p)) != recorded[str(p)]:
            raise SideEffectsError(f"the run's vector file {p} changed since the run (hash {file_hash(Path(p))}, the "
                                   f"run recorded {recorded[str(p)]}); restore it, or rerun the sweep")  # fmt: skip
    samples = read_samples(run_dir)
    if conditions:
        have = sorted({str(s.get("condition")) for s in samples})
        unknown = [c for c in conditions if c not in have]
        if unknown:
            raise SideEffectsError(f"--condition {unknown[0]}: the run's conditions are {', '.join(have) or 'none'}")
        samples = [s for s in samples if s.get("condition") in conditions]
    if not samples:
        raise SideEffectsError(f"{run_dir}/{SAMPLES} holds no finished samples")
    if controls is not None and not 0 <= controls <= config.controls:
        raise SideEffectsError(f"--controls {controls}: the run has {config.controls} random controls per vector; "
                               f"give 0..{config.controls}")  # fmt: skip
    arms = load_arms(config, expect)
    if controls is not None:  # the envelope of the first N controls: the other controls' samples are left out
        arms = [a for a in arms if a.control is None or a.control < controls]
        kept = {(a.vector, a.arm) for a in arms}
        samples = [s for s in samples if (s["vector"], s["arm"]) in kept]
    settings = steering_settings(config, arms)
    order = {(a.vector, a.arm): i for i, a in enumerate(arms)}
    present = {(s["vector"], s["arm"], float(s["multiplier"])) for s in samples}
    missing = sorted(k for k in present if k not in settings)
    if missing:
        raise SideEffectsError(f"samples of {missing[0][0]}/{missing[0][1]} at multiplier {missing[0][2]:+g} match no "
                               "steering setting of the run's config; the run directory is inconsistent")  # fmt: skip
    first = {}
    for a in arms:
        first.setdefault(a.vector, len(first))
    keys = sorted(present, key=lambda k: (first[k[0]], k[2], order[(k[0], k[1])]))  # vector, multiplier, arm
    if not any(k[2] == 0 for k in keys):
        raise SideEffectsError(f"{run_dir} holds no finished multiplier-0 sample to compare with; resume the sweep")
    if not any(k[2] != 0 for k in keys):
        raise SideEffectsError(f"{run_dir} holds no finished steered sample yet; resume the sweep")
    if readout_layer_ is not None and not 0 <= readout_layer_ < expect.n_layers:
        raise SideEffectsError(f"--readout-layer {readout_layer_}: the model has {expect.n_layers} layers "
                               f"(0..{expect.n_layers - 1})")  # fmt: skip
    if vector_files is not None and not vector_files:
        raise SideEffectsError("--vector: give at least one vector file")
    concepts = _concepts(vector_files, config.vectors, expect, readout_layer_)
    texts = shipped(Path(texts))
    text_list = read_texts(texts)
    names, note = _judge_names(run_dir, samples)
    inputs = {
        "header": file_hash(run_dir / HEADER), "samples": file_hash(run_dir / SAMPLES),
        "vectors": {str(p): file_hash(Path(p)) for p in config.vectors},
        "concepts": {c.name: c.hash for c in concepts}, "texts": file_hash(texts),
        **({"judge": file_hash(run_dir / "judge.json")} if (run_dir / "judge.json").is_file() else {}),
    }  # fmt: skip
    return Plan(run_dir, out, header, config, samples, arms, keys, concepts, texts, text_list, names, note, inputs)


def unsteered(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's unsteered samples, one per generation: the multiplier-0 rows of every arm share one generation
    (per condition, request, seed and claim), so it is counted once."""
    seen, out = set(), []
    for s in samples:
        if float(s["multiplier"]) != 0:
            continue
        key = (s.get("condition"), s.get("item"), s.get("seed"), s.get("claim"))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def change(group: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], value: Any, seed: int,
           n_resamples: int) -> dict[str, Any]:  # fmt: skip
    """Mean over requests of (the request's mean ``value`` in ``group`` minus its mean in ``base``), with its
    cluster-bootstrap interval; requests without a finite value on both sides are left out."""
    from steerlab.stats import mean_interval, per_request, request_of

    def means(samples: Sequence[dict[str, Any]]) -> dict[Any, float]:
        pairs = [(request_of(s), v) for s in samples if (v := value(s)) is not None and math.isfinite(v)]
        return per_request(pairs)

    g, b = means(group), means(base)
    common = [r for r in g if r in b]
    d = np.asarray([g[r] - b[r] for r in common], dtype=float)
    est = mean_interval(d, seed=seed, n_resamples=n_resamples) if len(d) else {
        "value": math.nan, "ci_low": math.nan, "ci_high": math.nan}  # fmt: skip
    return {"change": est["value"], "ci_low": est["ci_low"], "ci_high": est["ci_high"],
            "mean": float(np.mean([g[r] for r in common])) if common else math.nan,
            "baseline": float(np.mean([b[r] for r in common])) if common else math.nan,
            "n_requests": len(common)}  # fmt: skip


def envelope(real: float, controls: Sequence[float]) -> dict[str, Any]:
    """The real vector's value against its controls' values at the same multiplier (module docstring)."""
    from steerlab.stats import control_z

    c = np.asarray([v for v in controls if v is not None and math.isfinite(v)], dtype=float)
    out: dict[str, Any] = {"real": real, "controls": [float(v) for v in c], "n_controls": len(c)}
    if real is None or not math.isfinite(real) or not len(c):
        out.update(control_min=None, control_max=None, rank=None, share_below=None, z=None,
                   position="no real value" if real is None or not math.isfinite(real) else "no controls")  # fmt: skip
        return out
    below, ties = int((c < real).sum()), int((c == real).sum())
    z, note = control_z(real, list(c))
    out.update(control_min=float(c.min()), control_max=float(c.max()), rank=1 + int((c > real).sum()),
               share_below=(below + 0.5 * ties) / len(c), z=z,
               position="above" if real > c.max() else "below" if real < c.min() else "inside")  # fmt: skip
    if note:
        out["z_note"] = note
    return out
