"""Matched doses: the signed multiplier at which each vector (and each of its random controls) moves the model
a given distance from the unsteered model (issue 20, item 1).

The distance is the KL divergence ``KL(unsteered || steered)`` of the next-token distributions at every real
token of a neutral text set, summarised over all tokens of all texts by the mean (default) or the 95th
percentile (``statistic="p95"``, linear interpolation, :func:`torch.quantile`). Steering is the paper's:
``multiplier x`` the saved vector added at the vector's selected layers at every position (absolute scale).

The search, per (vector or control, sign): start at ``start``, double until the divergence reaches the target
or ``max_multiplier`` is passed (then the target is unreachable: one line naming the item, the largest KL
reached and where), then bisect between the last multiplier below and the first above until the divergence is
within ``rtol x target`` of the target (or ``max_iter`` evaluations: then the closest one is kept and marked
not converged). Bisection assumes the divergence grows with ``|multiplier|`` (``tests/test_doses.py`` checks
it on the tiny model; the recorded ``history`` shows every point evaluated).

Every step evaluates every unfinished item's current candidate in one pass over rows = items x texts through
one per-row steering table (:func:`steerlab.steer.steerer_for`): row ``(item i, text t)`` uses table row
``i + 1``. The pass is cut into forward batches of ``batch_size`` rows only to bound memory (the logits are
``[rows, tokens, vocab]``); a row's value does not depend on its batch. The unsteered log-probabilities are
computed once, by the same forward with no hook installed.

One calibration may hold several targets (``--target-kl`` given more than once): each is searched on its own,
and every dose records its ``target_kl`` and the sha256 (first 16 hex digits) of its vector file, so a sweep
can tell a vector file that changed since (:class:`DoseFile`, what ``--dose-file`` and ``doses:`` read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from steerlab.backends.hf import left_pad
from steerlab.errors import ConfigError, SteerlabError
from steerlab.fileio import read_text
from steerlab.models import LoadedModel
from steerlab.steer import SteeringSetting, steerer_for
from steerlab.vectors import SteeringVector, VectorBundle

FORMAT = 2  # 2: several targets per file, a target and a vector-file hash per dose
STATISTICS = ("mean", "p95")


class DoseError(SteerlabError):
    """A dose calibration that cannot be done as asked (unreachable target, no text, bad setting)."""


def read_texts(path: Path) -> list[str]:
    """The texts of a file: paragraphs separated by blank lines (a line-wrapped paragraph is one text)."""
    raw = read_text(Path(path), "text file")
    paragraphs, current = [], []
    for line in raw.splitlines():
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    if not paragraphs:
        raise DoseError(f"text file {path} holds no text; give paragraphs separated by blank lines")
    return paragraphs


def summarise(kl: torch.Tensor, statistic: str) -> torch.Tensor:
    """Per row of ``kl`` ``[n, n_tokens]``: the mean or the 95th percentile over its tokens ``[n]``."""
    if statistic == "mean":
        return kl.mean(-1)
    if statistic == "p95":
        return torch.quantile(kl, 0.95, dim=-1)
    raise DoseError(f"--statistic {statistic!r}: use mean or p95")


class KLProbe:
    """Per-token ``KL(unsteered || steered)`` over a fixed text set, for many steering settings at once.

    The texts are tokenised (the tokenizer's defaults, at most ``max_tokens`` tokens each) and left-padded to
    one width, as the HF backend lays out its batches; the unsteered log-probabilities ``[n_texts, width,
    vocab]`` are kept, in float32, on the model's device.
    """

    def __init__(self, loaded: LoadedModel, texts: Sequence[str], max_tokens: int = 64, batch_size: int = 32):
        if max_tokens < 1:
            raise DoseError(f"--max-tokens {max_tokens}: give at least 1")
        if batch_size < 1:
            raise DoseError(f"--batch-size {batch_size}: give at least 1")
        self.loaded, self.batch_size = loaded, batch_size
        tok = loaded.tokenizer
        self.seqs = [list(tok(t)["input_ids"])[:max_tokens] for t in texts]
        empty = [i for i, s in enumerate(self.seqs) if not s]
        if empty:
            raise DoseError(f"text {empty[0] + 1} encodes to no token")
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.ids, self.mask, self.positions = left_pad(self.seqs, pad)  # [n_texts, width] each, CPU
        self.real = self.mask.bool()  # [n_texts, width]
        self.n_tokens = int(self.real.sum())
        self.base = self._unsteered()  # [n_texts, width, vocab]

    @torch.inference_mode()
    def _forward(self, texts: Sequence[int]) -> torch.Tensor:
        """Log-probabilities ``[len(texts), width, vocab]`` (float32) of one forward batch over these texts."""
        dev = self.loaded.device
        t = torch.as_tensor(list(texts), dtype=torch.long)
        logits = self.loaded.model(input_ids=self.ids[t].to(dev), attention_mask=self.mask[t].to(dev),
                                   position_ids=self.positions[t].to(dev), use_cache=False).logits  # fmt: skip
        return logits.float().log_softmax(-1)

    def _unsteered(self) -> torch.Tensor:
        """Unsteered log-probabilities of every text ``[n_texts, width, vocab]``, batch by batch (no hooks)."""
        out = [self._forward(range(lo, min(lo + self.batch_size, len(self.seqs))))
               for lo in range(0, len(self.seqs), self.batch_size)]  # fmt: skip
        return torch.cat(out)

    @torch.inference_mode()
    def per_token(self, settings: Sequence[SteeringSetting]) -> torch.Tensor:
        """``[len(settings), n_tokens]``: per-token KL of each setting over every real token of every text (text
        by text, left to right), from one pass over the rows settings x texts."""
        n_texts, width = self.ids.shape
        n_rows = len(settings) * n_texts
        out = torch.zeros(n_rows, width)  # [settings * texts, width]
        steerer = steerer_for(self.loaded.blocks, settings, self.loaded.d_model, position="all",
                              max_batch=min(self.batch_size, n_rows))  # fmt: skip
        with steerer:
            for lo in range(0, n_rows, self.batch_size):
                rows = range(lo, min(lo + self.batch_size, n_rows))
                steerer.set_rows([r // n_texts + 1 for r in rows])  # table row of (setting s, text t): s + 1
                texts = [r % n_texts for r in rows]
                logq = self._forward(texts)  # [batch, width, vocab]
                logp = self.base[torch.as_tensor(texts, device=self.base.device)]
                p = logp.exp()
                kl = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)  # [batch, width]
                out[lo : rows.stop] = kl.cpu()
        return out.view(len(settings), n_texts, width)[:, self.real]  # [settings, n_tokens]


@dataclass
class Dose:
    """One (vector or control, sign): the multiplier found and how it was found."""

    name: str
    vector: str
    file: str
    control: int | None
    sign: int
    layers: list[int]
    multiplier: float = math.nan
    kl: float = math.nan  # the statistic at ``multiplier``
    kl_mean: float = math.nan
    kl_p95: float = math.nan
    iterations: int = 0
    converged: bool = False
    history: list[tuple[float, float, float]] = field(default_factory=list)  # (multiplier, mean, p95)
    target_kl: float = math.nan
    file_hash: str = ""  # the vector file's sha256 (first 16 hex digits)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "vector": self.vector, "file": self.file, "control": self.control,
                "sign": "+" if self.sign > 0 else "-", "layers": self.layers, "multiplier": self.multiplier,
                "kl": self.kl, "kl_mean": self.kl_mean, "kl_p95": self.kl_p95, "iterations": self.iterations,
                "converged": self.converged, "target_kl": self.target_kl, "file_hash": self.file_hash,
                "history": [{"multiplier": m, "kl_mean": a, "kl_p95": b} for m, a, b in self.history]}  # fmt: skip


def items(bundles: Sequence[tuple[Path, VectorBundle]], n_controls: int | None) -> list[tuple[Dose, SteeringVector]]:
    """A (dose, vector) per vector file's vector and first ``n_controls`` controls (default all), each sign."""
    out, seen = [], set()
    for path, bundle in bundles:
        k = len(bundle.controls) if n_controls is None else n_controls
        if k < 0 or k > len(bundle.controls):
            raise DoseError(f"--controls {k}: {path} carries {len(bundle.controls)} random controls")
        name = bundle.vector.name if bundle.vector.name not in seen else f"{bundle.vector.name}:{path.stem}"
        seen.add(name)
        for c, sv in [(None, bundle.vector), *enumerate(bundle.controls[:k])]:
            label = name if c is None else f"{name}/control{c}"
            for sign in (1, -1):
                out.append((Dose(label, name, str(path), c, sign, list(sv.layers)), sv))
    return out


def calibrate(
    probe: KLProbe,
    todo: Sequence[tuple[Dose, SteeringVector]],
    target: float,
    statistic: str = "mean",
    max_multiplier: float = 64.0,
    start: float = 1.0,
    rtol: float = 0.05,
    max_iter: int = 30,
    progress: bool = True,
) -> list[Dose]:
    """Find every dose (module docstring): one pass over all unfinished items per step."""
    check_settings(target, statistic, max_multiplier, start, rtol, max_iter)
    for dose, _ in todo:
        dose.target_kl = target
    state = {i: [0.0, None, min(start, max_multiplier)] for i in range(len(todo))}  # i -> [lo, hi, candidate]
    # on a terminal only (disable=None), and wiped when done or refused, so an error stays one line
    bar = tqdm(total=len(todo), unit="dose", desc="calibrate-dose", disable=None if progress else True, leave=False)
    try:
        _search(probe, todo, state, target, statistic, max_multiplier, rtol, max_iter, bar)
    finally:
        bar.close()
    return [d for d, _ in todo]


def _search(probe: KLProbe, todo: Sequence[tuple[Dose, SteeringVector]], state: dict[int, list[Any]], target: float,
            statistic: str, max_multiplier: float, rtol: float, max_iter: int, bar: Any) -> None:  # fmt: skip
    """The steps of :func:`calibrate` until every item is done (``state``: item -> [lo, hi, candidate])."""
    while state:
        active = sorted(state)
        settings = [SteeringSetting(todo[i][1], todo[i][0].sign * state[i][2]) for i in active]
        kl = probe.per_token(settings)  # [n_active, n_tokens]
        means, p95s = summarise(kl, "mean").tolist(), summarise(kl, "p95").tolist()
        for i, mean, p95 in zip(active, means, p95s, strict=True):
            dose, (lo, hi, cand) = todo[i][0], state[i]
            value = mean if statistic == "mean" else p95
            dose.history.append((dose.sign * cand, mean, p95))
            dose.iterations += 1
            if math.isnan(value):
                raise DoseError(f"{dose.name} ({'+-'[dose.sign < 0]}): steering at multiplier {dose.sign * cand:+g} "
                                "makes the model's output NaN; lower --max-multiplier")  # fmt: skip
            if abs(value - target) <= rtol * target:
                dose.converged = True
            elif value < target:
                lo = cand
                if hi is None and cand >= max_multiplier:
                    k = max(range(len(dose.history)), key=lambda j: dose.history[j][1 if statistic == "mean" else 2])
                    m, a, b = dose.history[k]
                    raise DoseError(f"{dose.name} ({'+-'[dose.sign < 0]}): no multiplier up to --max-multiplier "
                                    f"{max_multiplier:g} reaches --target-kl {target:g} ({statistic} KL); the largest "
                                    f"reached is {a if statistic == 'mean' else b:.4g} at multiplier {m:+g}; raise "
                                    "--max-multiplier or lower the target")  # fmt: skip
            else:
                hi = cand
            if dose.converged or dose.iterations >= max_iter:
                pick = 1 if statistic == "mean" else 2
                m, a, b = min(dose.history, key=lambda h: abs(h[pick] - target))
                dose.multiplier, dose.kl_mean, dose.kl_p95 = m, a, b
                dose.kl = a if statistic == "mean" else b
                del state[i]
                bar.update(1)
                continue
            state[i] = [lo, hi, min(2 * cand, max_multiplier) if hi is None else (lo + hi) / 2]


def check_settings(target: float, statistic: str, max_multiplier: float, start: float, rtol: float,
                   max_iter: int) -> None:  # fmt: skip
    """Refuse, in one line, a setting the search cannot use."""
    if not (math.isfinite(target) and target > 0):
        raise DoseError(f"--target-kl {target:g}: give a KL divergence above 0 (in nats)")
    if statistic not in STATISTICS:
        raise DoseError(f"--statistic {statistic!r}: use mean or p95")
    if not (math.isfinite(max_multiplier) and max_multiplier > 0):
        raise DoseError(f"--max-multiplier {max_multiplier:g}: give a number above 0")
    if not (math.isfinite(start) and start > 0):
        raise DoseError(f"--start {start:g}: give a number above 0")
    if not 0 < rtol < 1:
        raise DoseError(f"--rtol {rtol:g}: give a fraction between 0 and 1")
    if max_iter < 1:
        raise DoseError(f"--max-iter {max_iter}: give at least 1")


def calibration_record(doses: Sequence[Dose], loaded: LoadedModel, texts: Path, probe: KLProbe,
                       settings: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The JSON record of a calibration: settings, model fingerprint, text file hash, and every dose."""
    from steerlab import __version__
    from steerlab.fileio import file_hash

    return {
        "format": FORMAT, "kind": "dose_calibration", **settings, "divergence": "KL(unsteered || steered), nats",
        "position": "all", "scale": "absolute", "model": loaded.fingerprint.to_dict(), "model_source": loaded.source,
        "texts": {"file": str(texts), "hash": file_hash(texts), "n_texts": len(probe.seqs),
                  "n_tokens": probe.n_tokens},
        "steerlab_version": __version__, "doses": [d.record() for d in doses],
    }  # fmt: skip


def run_calibration(
    vector_files: Sequence[Path],
    texts: Path,
    target: float | Sequence[float],
    *,
    statistic: str = "mean",
    model: str = "smollm2",
    out: Path | None = None,
    max_multiplier: float = 64.0,
    start: float = 1.0,
    rtol: float = 0.05,
    max_iter: int = 30,
    n_controls: int | None = None,
    max_tokens: int = 64,
    batch_size: int = 32,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
) -> tuple[list[Dose], dict[str, Any]]:
    """The command: check every input, load the model and the vectors (refused if fitted on another model),
    calibrate at each target (``target``: one KL or several), then write ``out`` atomically (if given). Bad
    input is refused before anything is written."""
    from steerlab.fileio import atomic_write_text, file_hash
    from steerlab.models import load_model
    from steerlab.vectors import finite_json

    targets = [float(target)] if isinstance(target, (int, float)) else [float(t) for t in target]
    if not targets:
        raise DoseError("give at least one --target-kl")
    for t in targets:
        check_settings(t, statistic, max_multiplier, start, rtol, max_iter)
    if len(set(targets)) != len(targets):
        raise DoseError(f"--target-kl {', '.join(f'{t:g}' for t in targets)} names a target twice")
    if not vector_files:
        raise DoseError("give at least one vector file")
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name ending in .json")
    if max_tokens < 1 or batch_size < 1:
        raise DoseError(f"--max-tokens {max_tokens}, --batch-size {batch_size}: give at least 1 each")
    texts = Path(texts)
    text_list = read_texts(texts)
    # a broken file or a --controls it cannot give is refused before the model loads
    items([(Path(p), VectorBundle.load(Path(p))) for p in vector_files], n_controls)
    loaded = load_model(model, device=device, dtype=dtype)
    bundles = [(Path(p), VectorBundle.load(Path(p), expect=loaded.fingerprint)) for p in vector_files]
    hashes = {str(p): file_hash(Path(p)) for p in vector_files}
    probe = KLProbe(loaded, text_list, max_tokens=max_tokens, batch_size=batch_size)
    doses: list[Dose] = []
    for t in targets:  # each target searched on its own (a fresh item per vector, control and sign)
        todo = items(bundles, n_controls)
        for dose, _ in todo:
            dose.file_hash = hashes[dose.file]
        doses += calibrate(probe, todo, t, statistic, max_multiplier, start, rtol, max_iter, progress)
    # ``target_kl`` (one target) as format 1 wrote it; ``targets`` always
    one = {"target_kl": targets[0]} if len(targets) == 1 else {}
    settings = {**one, "targets": targets, "statistic": statistic, "max_multiplier": max_multiplier, "start": start,
                "rtol": rtol, "max_iter": max_iter, "max_tokens": max_tokens}  # fmt: skip
    record = calibration_record(doses, loaded, texts, probe, settings)
    if out is not None:
        import json

        atomic_write_text(Path(out), json.dumps(finite_json(record), indent=1, allow_nan=False) + "\n")
    return doses, record
