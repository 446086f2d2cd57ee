"""The shortcut audit: can the surface of the spans alone tell a pair set's sides apart?

A direction fitted on pairs learns whatever separates the two sides. If the negative spans share a
way of being written (a semicolon, "the user", a dismissal word, a shorter length) that the
positive spans lack, a linear probe on the activations finds that style as readily as the concept,
and its AUROC says nothing about the concept. This module asks the question without a model: a
cross-validated logistic regression on bag-of-words (word 1-2 grams, punctuation kept as tokens),
character n-grams and span length tries to tell positive spans from negative spans, split by split.

- :func:`audit_spans`: that classifier on any two lists of spans; folds group the i-th positive
  with the i-th negative (both sides of a pair are always held out together) when the lists pair
  up; it reports the mean held-out AUROC over folds, the most predictive features with their rates
  on each side, and span length statistics per side.
- :func:`shortcut_audit`: per concept and split of a pair set, against the configured ceilings
  (:class:`steerlab.pairs.ShortcutAuditConfig`), plus, for each two concepts, how well the same
  classifier tells one concept's negatives from the other's (a report, not a check: negatives
  that share a style are what make two concepts' vectors share a direction).
- :func:`surface_marks`: the per-pair version used to filter generated pairs: side-specific
  marks one pair carries.

A well-made set keeps the audit near chance on ``keyword_hard`` (there the concept words are on the
wrong side by design) and well below the activation AUROC elsewhere (the positive spans must name
the concept as the reason, so some lexical signal is expected there).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from steerlab.pairs import SPLITS, Pair, ShortcutAuditConfig

# words, or one punctuation character: ";" and "--" are features like any word
TOKEN_PATTERN = r"(?u)\b\w+\b|[^\w\s]"
# punctuation that marks a sentence's shape (commas and full stops vary too much to be a mark)
SIDE_MARKS = ";:!?()[]\u2014\u2013\"'"
ADDRESS_FORMS = {"the user": r"\b(?:the|this) user\b", "you": r"\byou(?:r|rs)?\b"}


@dataclass(frozen=True)
class Feature:
    """One surface feature: its name (``w:`` word n-gram, ``c:`` character n-gram, ``len:words``),
    its coefficient in the classifier fitted on all spans (positive: points to the positive side)
    and the share of spans on each side that contain it."""

    name: str
    weight: float
    positive_rate: float
    negative_rate: float


@dataclass
class SpanAudit:
    label: str
    n_positive: int
    n_negative: int
    auroc: float | None  # mean held-out AUROC over folds; None: too few spans
    auroc_sd: float | None
    folds: int
    features: list[Feature] = field(default_factory=list)  # the top features of every kind, by |weight|
    word_features: list[Feature] = field(default_factory=list)  # the top word n-grams (readable), by |weight|
    lengths: dict[str, dict[str, float]] = field(default_factory=dict)  # side name -> words/chars mean, sd
    max_auroc: float | None = None
    sides: tuple[str, str] = ("positive", "negative")  # what the two lists are
    # val / keyword_hard: the classifier fitted on the concept's train spans, scored on this split's
    # (keywords kept): what a surface cue learned where a direction is fitted does on held-out pairs
    transfer_auroc: float | None = None

    @property
    def flagged(self) -> bool:
        return self.auroc is not None and self.max_auroc is not None and self.auroc > self.max_auroc

    def top(self, k: int = 3) -> str:
        """The ``k`` most predictive word n-grams (punctuation included) with their rates on each side, as
        text; led by the length when it is among the ``k`` strongest features of all."""
        lead = [f for f in self.features[:k] if f.name == "len:words"]
        return ", ".join(show_feature(f) for f in [*lead, *self.word_features[: k - len(lead)]])

    def summary(self, k: int = 3) -> str:
        auroc = "n/a (too few spans)" if self.auroc is None else f"{self.auroc:.2f}"
        return f"AUROC {auroc} in {self.label}; top features ({self.sides[0]} vs {self.sides[1]}): {self.top(k)}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flagged"] = self.flagged
        return out


def show_feature(f: Feature) -> str:
    """``';' 0% vs 63%``, ``chars 'the u' 0% vs 64%``, ``length 17.1 vs 21.6 words``."""
    kind, _, text = f.name.partition(":")
    if kind == "len":
        return f"length {f.positive_rate:.1f} vs {f.negative_rate:.1f} words"
    name = f"{text!r}" if kind == "w" else f"chars {text!r}"
    return f"{name} {f.positive_rate:.0%} vs {f.negative_rate:.0%}"


def _lengths(spans: list[str]) -> dict[str, float]:
    words = np.array([len(s.split()) for s in spans], dtype=float)
    chars = np.array([len(s) for s in spans], dtype=float)
    stats = {"words_mean": words.mean(), "words_sd": words.std(), "chars_mean": chars.mean(), "chars_sd": chars.std()}
    return {k: float(v) for k, v in stats.items()}


class _Features:
    """Word 1-2 grams with punctuation tokens, character 2-4 grams within word boundaries, and the
    span's word count (standardised on the fitting spans); vocabularies are learned on the fitting
    spans only."""

    def fit(self, texts: list[str]) -> _Features:
        self.words = CountVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=(1, 2), binary=True, lowercase=True)
        self.chars = CountVectorizer(analyzer="char_wb", ngram_range=(2, 4), binary=True, lowercase=True)
        self.words.fit(texts)
        self.chars.fit(texts)
        n = np.array([len(t.split()) for t in texts], dtype=float)
        self.mean, self.sd = n.mean(), n.std() or 1.0
        return self

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        n = (np.array([len(t.split()) for t in texts], dtype=float) - self.mean) / self.sd
        return sp.hstack([self.words.transform(texts), self.chars.transform(texts), sp.csr_matrix(n[:, None])]).tocsr()

    def names(self) -> list[str]:
        return [
            *(f"w:{w}" for w in self.words.get_feature_names_out()),
            *(f"c:{c}" for c in self.chars.get_feature_names_out()),
            "len:words",
        ]


def _classifier() -> LogisticRegression:
    return LogisticRegression(C=1.0, max_iter=2000)


def audit_folds(groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fitting, held-out) span indices per fold; spans of one group (a pair) share a fold. GroupKFold
    balances fold sizes deterministically by group id, so the ids are relabelled at random (seeded)."""
    relabel = np.random.default_rng(seed).permutation(int(groups.max()) + 1)
    k = min(folds, len(np.unique(groups)))
    return list(GroupKFold(n_splits=k).split(groups, groups, relabel[groups]))


def audit_spans(
    positive: list[str],
    negative: list[str],
    *,
    folds: int = 5,
    seed: int = 0,
    top_features: int = 8,
    min_pairs: int = 10,
    label: str = "",
    paired: bool | None = None,
    max_auroc: float | None = None,
    sides: tuple[str, str] = ("positive", "negative"),
) -> SpanAudit:
    """Cross-validated AUROC of a surface classifier telling ``positive`` from ``negative`` spans.

    ``paired`` (default: the lists have equal length) keeps the i-th positive and the i-th negative
    in the same fold. Folds are shuffled by ``seed``; the AUROC is the mean over folds of the
    held-out AUROC. With fewer than ``min_pairs`` spans on the smaller side, ``auroc`` is None.
    """
    paired = len(positive) == len(negative) if paired is None else paired
    texts = list(positive) + list(negative)
    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    lengths = {sides[0]: _lengths(positive), sides[1]: _lengths(negative)} if positive and negative else {}
    audit = SpanAudit(
        label, len(positive), len(negative), None, None, 0, lengths=lengths, max_auroc=max_auroc, sides=sides
    )
    if min(len(positive), len(negative)) < min_pairs:
        return audit
    if paired:
        groups = np.r_[np.arange(len(positive)), np.arange(len(negative))]
    else:
        groups = np.arange(len(texts))
    scores = []
    for train, test in audit_folds(groups, folds, seed):
        if len(np.unique(y[test])) < 2 or len(np.unique(y[train])) < 2:
            continue
        feats = _Features().fit([texts[i] for i in train])
        clf = _classifier().fit(feats.transform([texts[i] for i in train]), y[train])
        held = clf.decision_function(feats.transform([texts[i] for i in test]))
        scores.append(roc_auc_score(y[test], held))
    audit.folds = len(scores)
    if scores:
        audit.auroc, audit.auroc_sd = float(np.mean(scores)), float(np.std(scores))
    feats = _Features().fit(texts)
    x = feats.transform(texts)
    clf = _classifier().fit(x, y)
    coef = clf.coef_[0]
    present = (x > 0).astype(np.int64)
    pos_rate = np.asarray(present[y == 1].sum(0)).ravel() / len(positive)
    neg_rate = np.asarray(present[y == 0].sum(0)).ravel() / len(negative)
    names = feats.names()

    def feature(i: int) -> Feature:
        if names[i] == "len:words":
            rates = (lengths[sides[0]]["words_mean"], lengths[sides[1]]["words_mean"])
        else:
            rates = (pos_rate[i], neg_rate[i])
        return Feature(names[i], float(coef[i]), float(rates[0]), float(rates[1]))

    order = np.argsort(-np.abs(coef), kind="stable")
    audit.features = [feature(i) for i in order[:top_features]]
    audit.word_features = [feature(i) for i in order if names[i].startswith("w:")][:top_features]
    return audit


def transfer(fit_pos: list[str], fit_neg: list[str], pos: list[str], neg: list[str]) -> float:
    """AUROC on ``pos`` vs ``neg`` of the surface classifier fitted on ``fit_pos`` vs ``fit_neg``."""
    feats = _Features().fit(fit_pos + fit_neg)
    clf = _classifier().fit(feats.transform(fit_pos + fit_neg), np.r_[np.ones(len(fit_pos)), np.zeros(len(fit_neg))])
    scores = clf.decision_function(feats.transform(pos + neg))
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], scores))


@dataclass
class ShortcutReport:
    splits: list[SpanAudit]  # one per concept and split
    cross_concept: list[SpanAudit]  # one per two concepts: their negatives

    @property
    def flagged(self) -> list[SpanAudit]:
        return [a for a in self.splits if a.flagged]

    @property
    def ok(self) -> bool:
        return not self.flagged

    def to_dict(self) -> dict[str, Any]:
        return {
            "splits": [a.to_dict() for a in self.splits],
            "cross_concept": [a.to_dict() for a in self.cross_concept],
        }


def without_keywords(text: str, keywords: list[str]) -> str:
    """``text`` without the words that start with a controlled keyword (case-insensitive), as the keyword
    audit matches them; a word counts whole with its hyphenated or possessive parts ("re-training",
    "evaluator's"), and the punctuation around a removed word stays."""
    if not keywords:
        return text
    stems = tuple(k.lower() for k in keywords)
    kept = []
    for token in text.split():
        lead, core, trail = re.fullmatch(r"(\W*)(.*?)(\W*)", token).groups()
        parts = [part for part in re.split(r"[-'’]", core.lower()) if part]
        if (lead + core).lower().startswith(stems):  # a keyword that starts with punctuation (".net")
            kept.extend([trail] if trail else [])
            continue
        if any(part.startswith(stems) for part in parts):
            kept.extend([lead + trail] if lead or trail else [])
            continue
        kept.append(token)
    return " ".join(kept)


def shortcut_audit(
    pairs: list[Pair],
    config: ShortcutAuditConfig | None = None,
    concepts: list[str] | None = None,
    keywords: dict[str, list[str]] | None = None,
) -> ShortcutReport:
    """Audit every split of ``concepts`` (default: all in ``pairs``), and every two concepts'
    negatives (all concepts in ``pairs``).

    On ``keyword_hard`` the concept's controlled ``keywords`` are removed from both spans first: the
    split puts them on the negative side by design (the keyword audit demands it), where a direction
    that followed them would score below 0.5, not above; the audit asks what else tells the sides apart.
    """
    config = config or ShortcutAuditConfig()
    keywords = keywords or {}
    opts = dict(folds=config.folds, seed=config.seed, top_features=config.top_features, min_pairs=config.min_pairs)
    every = sorted({p.concept for p in pairs})
    splits = []
    for concept in concepts if concepts is not None else every:
        for split in SPLITS:
            chosen = [p for p in pairs if p.concept == concept and p.split == split]
            masked = keywords.get(concept, []) if split == "keyword_hard" else []
            if chosen:
                splits.append(
                    audit_spans(
                        [without_keywords(p.span_positive, masked) for p in chosen],
                        [without_keywords(p.span_negative, masked) for p in chosen],
                        label=f"{concept}/{split}",
                        paired=True,
                        max_auroc=config.max_auroc.get(split),
                        **opts,
                    )
                )
    for audit in splits:
        concept, _, split = audit.label.partition("/")
        train = [p for p in pairs if p.concept == concept and p.split == "train"]
        held = [p for p in pairs if p.concept == concept and p.split == split]
        if split != "train" and min(len(train), len(held)) >= config.min_pairs:
            audit.transfer_auroc = transfer(
                [p.span_positive for p in train], [p.span_negative for p in train],
                [p.span_positive for p in held], [p.span_negative for p in held],
            )  # fmt: skip
    cross = []
    for a, b in combinations(every, 2):
        neg_a = [p.span_negative for p in pairs if p.concept == a]
        neg_b = [p.span_negative for p in pairs if p.concept == b]
        cross.append(audit_spans(neg_a, neg_b, label=f"negatives: {a} vs {b}", paired=False, sides=(a, b), **opts))
    return ShortcutReport(splits, cross)


def surface_marks(
    span_positive: str, span_negative: str, artefacts: list[str] | None = None, max_length_ratio: float = 1.5
) -> list[str]:
    """Side-specific surface marks of one pair: a name for each mark found on one side only.

    ``punct:;`` a sentence-shaping punctuation mark, ``address:the user`` an address form,
    ``artefact:<phrase>`` a listed phrase (case-insensitive, whole words), ``length`` a word-count
    ratio above ``max_length_ratio``."""
    marks = []
    for ch in SIDE_MARKS:
        if (ch in span_positive) != (ch in span_negative):
            marks.append(f"punct:{ch}")
    for name, pattern in ADDRESS_FORMS.items():
        if bool(re.search(pattern, span_positive, re.I)) != bool(re.search(pattern, span_negative, re.I)):
            marks.append(f"address:{name}")
    for phrase in artefacts or []:
        rx = re.compile(r"\b" + re.escape(phrase) + r"\b", re.I)
        if bool(rx.search(span_positive)) != bool(rx.search(span_negative)):
            marks.append(f"artefact:{phrase}")
    words = sorted([len(span_positive.split()), len(span_negative.split())])
    if words[1] > max_length_ratio * max(1, words[0]):
        marks.append("length")
    return marks
