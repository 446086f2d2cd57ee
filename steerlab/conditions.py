"""Conditional steering (after Lee et al., "Programming refusal with conditional activation steering").

A :class:`Condition` is a direction at a condition layer, a statistic, a comparator and a threshold. A row whose
setting carries one is steered only if its prompt passes: the mean over the prompt's real tokens (padding excluded)
of the cosine between the hidden state and the direction (``statistic="cosine"``) or of its projection onto the
unit direction (``"projection"``), compared with the threshold::

    score_b = mean_t  h_c[b, t] . w / |h_c[b, t]|        (cosine)     or   mean_t h_c[b, t] . w   (projection)
    steer row b  iff  score_b > threshold  (comparator ">")   or   score_b < threshold  ("<")

``h_c`` is the output of block ``c`` (the condition layer) before any steering of that row, read on the prefill
pass; ``w`` is a unit vector. The decision holds for the row's decode steps. :class:`ConditionGate` makes the
decision for a batch inside the :class:`steerlab.steer.Steerer`'s hooks: when every conditional setting's condition
layer is at or before its first steered layer, on the prefill pass itself (no extra work but one reduction per
condition layer); otherwise in a pre-pass over the prompt, unsteered, up to the deepest condition layer (the cost:
that part of one extra prefill per batch). Rows whose condition fails keep their table row but their per-row
buffers are zeroed, so they are computed exactly as unsteered rows.

A condition file (``steerlab condition fit``, :mod:`steerlab.analysis.condition_fit`) is JSON holding the direction,
the layer, the statistic, the comparator, the threshold and the fingerprint of the model it was read on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from steerlab.errors import ConfigError, SteerlabError
from steerlab.fileio import read_text

if TYPE_CHECKING:
    from steerlab.models import Fingerprint

Statistic = Literal["cosine", "projection"]
Comparator = Literal[">", "<"]
STATISTICS: tuple[str, ...] = get_args(Statistic)
COMPARATORS: tuple[str, ...] = get_args(Comparator)
FORMAT = 1


class ConditionError(SteerlabError):
    """A condition that cannot be used as given (bad file, another model, bad values)."""


@dataclass(frozen=True, eq=False)
class Condition:
    """Steer a row only if its prompt's score at ``layer`` passes ``comparator threshold``."""

    direction: torch.Tensor  # [d_model], float32, unit length
    layer: int
    threshold: float
    comparator: Comparator = ">"
    statistic: Statistic = "cosine"
    name: str = "condition"
    model: dict[str, Any] | None = None  # the fingerprint of the model the direction was read on

    def __post_init__(self) -> None:
        if self.comparator not in COMPARATORS:
            raise ConditionError(f"condition comparator {self.comparator!r}: use > or <")
        if self.statistic not in STATISTICS:
            raise ConditionError(f"condition statistic {self.statistic!r}: use cosine or projection")
        if not math.isfinite(self.threshold):
            raise ConditionError(f"condition threshold {self.threshold} is not a finite number")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ConditionError(f"condition layer {self.layer!r}: give a layer index >= 0")
        d = self.direction
        if d.dim() != 1 or not torch.isfinite(d).all() or not float(d.double().norm()) > 0:
            raise ConditionError(f"condition {self.name!r}: its direction is not a finite non-zero vector")
        object.__setattr__(self, "direction", (d.double() / d.double().norm()).float())

    def describe(self) -> str:
        """``cosine(monitored @ layer 6) > 0.12``: how settings and records name it."""
        return f"{self.statistic}({self.name} @ layer {self.layer}) {self.comparator} {self.threshold:.6g}"

    def record(self) -> dict[str, Any]:
        """The JSON a condition file holds (:func:`load_condition` reads it back)."""
        return {
            "format": FORMAT, "kind": "condition", "name": self.name, "layer": self.layer,
            "statistic": self.statistic, "comparator": self.comparator, "threshold": self.threshold,
            "model": self.model, "d_model": int(self.direction.numel()), "direction": self.direction.tolist(),
        }  # fmt: skip

    def check_model(self, fingerprint: Fingerprint | None, n_layers: int | None = None) -> None:
        """Refuse a condition read on another model, or whose layer the model lacks."""
        if fingerprint is not None:
            if int(self.direction.numel()) != fingerprint.d_model:
                raise ConditionError(
                    f"condition {self.name!r} has d_model {self.direction.numel()}, the model {fingerprint.d_model}: "
                    "it was fitted on another model; run `steerlab condition fit` on this one"
                )
            if self.model is not None:
                diff = [k for k, v in fingerprint.to_dict().items() if k in self.model and self.model[k] != v]
                if diff:
                    raise ConditionError(
                        f"condition {self.name!r} was fitted on another model (fingerprint differs in "
                        f"{', '.join(diff)}); run `steerlab condition fit` on this one"
                    )
            n_layers = fingerprint.n_layers
        if n_layers is not None and self.layer >= n_layers:
            raise ConditionError(f"condition {self.name!r} reads layer {self.layer}; the model has {n_layers} layers")


def load_condition(path: Path, expect: Fingerprint | None = None) -> Condition:
    """A condition file, checked (one line naming what is wrong); ``expect``: the model it must belong to."""
    path = Path(path)
    try:
        data = json.loads(read_text(path, "condition file"))
    except json.JSONDecodeError as exc:
        raise ConditionError(f"condition file {path} is not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict) or data.get("kind") != "condition":
        raise ConditionError(f"{path} is not a condition file (make one with `steerlab condition fit`)")
    if data.get("format") != FORMAT:
        raise ConditionError(f"condition file {path} has format {data.get('format')!r}; this steerlab reads {FORMAT}")
    try:
        direction = torch.tensor([float(x) for x in data["direction"]], dtype=torch.float32)
        cond = Condition(
            direction, int(data["layer"]), float(data["threshold"]), data["comparator"], data["statistic"],
            str(data.get("name", path.stem)), data.get("model"),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise ConditionError(f"condition file {path} is malformed ({type(exc).__name__}: {exc})") from None
    cond.check_model(expect)
    return cond


def reads_after_steering(setting: Any, condition: Condition | None = None) -> bool:
    """Whether ``condition`` (default: the setting's own) reads a layer after the setting's first steered layer, so the
    row's condition cannot be decided in the prefill pass before it is steered (a pre-pass is needed)."""
    cond = condition if condition is not None else setting.condition
    return cond is not None and bool(setting.steered_layers()) and cond.layer > min(setting.steered_layers())


def check_same_pass(settings: Sequence[Any], condition: Condition | None = None) -> None:
    """Refuse, for ``--backend nnsight`` (which decides a condition in the same pass only), a setting whose condition
    (its own, or ``condition`` for all) reads a layer after its first steered layer."""
    for s in settings:
        cond = condition if condition is not None else s.condition
        if reads_after_steering(s, cond):
            raise ConfigError(
                f"{s.describe()}: --backend nnsight decides a condition in the same pass only, so its layer "
                f"({cond.layer}) must be at or before the first steered layer ({min(s.steered_layers())}); use "
                "--backend hf, or a condition at an earlier layer"
            )


def system_hash(text: str | None) -> str | None:
    """How a condition file names a system prompt: sha256 of its text (first 16 hex digits); None for none."""
    import hashlib

    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:16]


def check_rendering(path: Path, systems: Sequence[tuple[str, str | None]]) -> None:
    """Refuse a run whose prompts carry a system prompt the condition was not fitted with (``systems``: the run's
    (condition, system prompt) pairs). The score averages over every prompt token, the system prompt's included, so
    a condition fitted without the run's system prompt reads other tokens than it was fitted on. A condition file
    that does not record its prompts' system prompts (written by hand) is not checked."""
    try:
        fit = json.loads(read_text(Path(path), "condition file")).get("fit") or {}
    except (json.JSONDecodeError, AttributeError):
        return  # load_condition says what is wrong with it
    known = fit.get("system_prompts")
    if known is None:
        return
    for condition, text in systems:
        if system_hash(text) not in known:
            sent = "no system prompt" if text is None else "a system prompt"
            raise ConditionError(
                f"steer_if: {path} was fitted on prompts without the system prompt this run sends (condition "
                f"{condition!r} has {sent} the fit never saw); the score averages over every prompt token, so fit it "
                "on prompts rendered as the run renders them (condition fit --system, or .jsonl with messages)"
            )


def prompt_scores(
    hidden: torch.Tensor, mask: torch.Tensor, directions: torch.Tensor, cosine: torch.Tensor
) -> torch.Tensor:
    """Per row, the mean over its real prompt tokens of the cosine (or projection) with its direction ``[batch]``.

    ``hidden`` ``[batch, seq, d_model]``, ``mask`` ``[batch, seq]`` (1 on real tokens), ``directions`` ``[batch,
    d_model]`` unit vectors, ``cosine`` ``[batch]`` bool (False: projection). Float32 throughout."""
    h = hidden.float()
    proj = torch.einsum("btd,bd->bt", h, directions.to(device=h.device, dtype=torch.float32))  # [batch, seq]
    cos = proj / h.norm(dim=-1).clamp_min(1e-30)
    per_token = torch.where(cosine.to(h.device)[:, None], cos, proj)
    m = mask.to(device=h.device, dtype=torch.float32)
    per_token = torch.where(m > 0, per_token, torch.zeros_like(per_token))  # padding never enters, even as NaN
    return per_token.sum(-1) / m.sum(-1).clamp_min(1.0)


class ConditionGate:
    """The conditions of a steering table (``conditions[i]``: table row ``i + 1``'s, or None) and the decision for
    the current batch. The :class:`steerlab.steer.Steerer` calls :meth:`start` before a batch's prefill pass,
    :meth:`read` from a hook on each condition layer, and applies :meth:`multiplier` to its per-row buffers."""

    def __init__(self, conditions: Sequence[Condition | None], d_model: int, prepass: bool = False):
        n_rows = 1 + len(conditions)
        self.layers = sorted({c.layer for c in conditions if c is not None})
        self.prepass = prepass  # a condition layer comes after a steered layer: decide in a pre-pass
        self._dirs: dict[int, torch.Tensor] = {}  # layer -> [n_rows, d_model]
        self._thr: dict[int, torch.Tensor] = {}  # layer -> [n_rows]
        self._gt: dict[int, torch.Tensor] = {}  # layer -> [n_rows] bool (comparator ">")
        self._cos: dict[int, torch.Tensor] = {}  # layer -> [n_rows] bool (statistic cosine)
        self._here: dict[int, torch.Tensor] = {}  # layer -> [n_rows] bool: the row's condition reads this layer
        for layer in self.layers:
            dirs, thr = torch.zeros(n_rows, d_model), torch.zeros(n_rows)
            gt, cos, here = (torch.zeros(n_rows, dtype=torch.bool) for _ in range(3))
            for i, c in enumerate(conditions):
                if c is not None and c.layer == layer:
                    if c.direction.numel() != d_model:
                        raise ConditionError(
                            f"condition {c.name!r} has d_model {c.direction.numel()}, the model {d_model}: it was "
                            "fitted on another model"
                        )
                    dirs[i + 1], thr[i + 1] = c.direction, c.threshold
                    gt[i + 1], cos[i + 1], here[i + 1] = c.comparator == ">", c.statistic == "cosine", True
            self._dirs[layer], self._thr[layer], self._gt[layer], self._cos[layer] = dirs, thr, gt, cos
            self._here[layer] = here
        self._conditioned = torch.tensor([False] + [c is not None for c in conditions])  # [n_rows]
        self.rows = torch.zeros(0, dtype=torch.long)
        self.mask: torch.Tensor | None = None
        self.pending: set[int] = set()
        self.met: torch.Tensor | None = None  # [batch] bool, once decided
        self.started = False  # a batch has started (start() called)
        self.scores: torch.Tensor | None = None  # [batch] float32 (NaN: no condition)

    @classmethod
    def of(cls, settings: Sequence[Any], d_model: int) -> ConditionGate | None:
        """The gate of a table of ``settings`` (:class:`steerlab.table.SteeringSetting`; None when no setting has a
        condition)."""
        conditions = [s.condition for s in settings]
        if all(c is None for c in conditions):
            return None
        return cls(conditions, d_model, any(reads_after_steering(s) for s in settings))

    def start(self, rows: Sequence[int] | torch.Tensor, mask: torch.Tensor) -> None:
        """A new batch: its table rows ``[batch]`` and prompt mask ``[batch, seq]`` (1 on real tokens)."""
        self.rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        self.mask = mask
        n = self.rows.numel()
        self._met = torch.ones(n, dtype=torch.bool, device=mask.device)
        self._last = self._met
        self._scores = torch.full((n,), float("nan"), device=mask.device)
        self.started = True
        if bool(self._conditioned[self.rows].any()):
            self.pending, self.met = set(self.layers), None
        else:  # no row of this batch has a condition: nothing to read, no pre-pass
            self.pending, self.met, self.scores = set(), self._met, self._scores

    def read(self, layer: int, hidden: torch.Tensor) -> bool:
        """Score the rows whose condition reads ``layer`` on ``hidden`` ``[batch, seq, d_model]`` (the prompt, before
        steering); True once every condition layer has been read (the decision is made)."""
        if layer not in self.pending:
            return False
        assert self.mask is not None
        n = self.rows.numel()
        if hidden.shape[0] != n or hidden.shape[1] != self.mask.shape[1]:
            raise RuntimeError(f"condition layer {layer} saw {tuple(hidden.shape[:2])}, the prompt is "
                               f"{tuple(self.mask.shape)}")  # fmt: skip
        device = hidden.device
        rows = self.rows
        here = self._here[layer][rows].to(device)
        scores = prompt_scores(hidden, self.mask, self._dirs[layer][rows], self._cos[layer][rows])
        thr = self._thr[layer][rows].to(device)
        passed = torch.where(self._gt[layer][rows].to(device), scores > thr, scores < thr)
        self._last = torch.where(here, passed, torch.ones_like(passed))  # this layer's decisions alone
        self._met = self._met & self._last
        self._scores = torch.where(here, scores, self._scores)
        self.pending.discard(layer)
        if self.pending:
            return False
        self.met = self._met
        self.scores = self._scores
        return True

    def per_row(self, layer: int) -> tuple[torch.Tensor, ...]:
        """The current rows' condition at ``layer``: (directions ``[batch, d_model]``, thresholds, comparator is ">",
        statistic is cosine, the row's condition reads this layer ``[batch]``), for a trace body."""
        rows = self.rows
        return (self._dirs[layer][rows], self._thr[layer][rows], self._gt[layer][rows], self._cos[layer][rows],
                self._here[layer][rows])  # fmt: skip

    def multiplier(self) -> torch.Tensor:
        """``[batch]`` float32: 0 for a row whose condition has failed so far, else 1."""
        return self._met.float()

    def last_multiplier(self) -> torch.Tensor:
        """``[batch]`` float32: 0 for a row whose condition the last :meth:`read` failed, else 1."""
        return self._last.float()

    def decisions(self) -> list[tuple[bool | None, float | None]]:
        """(passed, score) per batch row; (None, None) for a row without a condition. One device-to-host copy."""
        if self.met is None:
            raise RuntimeError("the batch's conditions were never decided (no prefill pass reached them)")
        conditioned = self._conditioned[self.rows].tolist()
        met, scores = self.met.cpu().tolist(), self.scores.cpu().tolist()  # type: ignore[union-attr]
        return [(bool(m), float(s)) if c else (None, None) for c, m, s in zip(conditioned, met, scores, strict=True)]
