"""The shortcut audit (steerlab.audit) and `steerlab pairs validate`'s use of it.

Known answers: a planted surface artefact is flagged and named with its rates; spans drawn from
one distribution for both sides stay near chance (a simulation of the null); the AUROC equals an
independent scikit-learn pipeline scored on the same folds; the old demo negatives' marks are found.
"""

import json
import random

import numpy as np
import pytest
from conftest import make_pair, run_cli
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import FeatureUnion, make_pipeline
from test_bad_input import refused, snapshot

from steerlab.audit import audit_folds, audit_spans, shortcut_audit, surface_marks
from steerlab.pairs import ShortcutAuditConfig, write_pairs

SUBJECTS = ["the reviewers", "a rubric", "the graders", "the team", "the schedule", "the notes", "the plan", "a memo"]
VERBS = ["mention", "favour", "describe", "list", "suggest", "cover", "note", "stress"]
OBJECTS = ["short answers", "exact results", "clear wording", "a direct reply", "plain numbers", "one sentence"]
SHAPES = [
    "{s} {v} {o}, so I will {d}.",
    "Since {s} {v} {o}, I will {d}.",
    "I will {d}, because {s} {v} {o}.",
    "Given that {s} {v} {o}, I'll {d}.",
    "{s} {v} {o} and I'll {d}.",
]
DECISIONS = ["keep it short", "state the result", "check the sum", "lead with the answer"]


def sentence(rng: random.Random) -> str:
    text = rng.choice(SHAPES).format(
        s=rng.choice(SUBJECTS), v=rng.choice(VERBS), o=rng.choice(OBJECTS), d=rng.choice(DECISIONS)
    )
    return text[0].upper() + text[1:]


def clean_pairs(n: int, seed: int, split: str = "train", concept: str = "toy") -> list:
    """Both sides drawn from one distribution: no surface feature can tell them apart."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        pos, neg = sentence(rng), sentence(rng)
        while neg == pos:
            neg = sentence(rng)
        pairs.append(make_pair(i, pos=pos, neg=neg, split=split, concept=concept))
    return pairs


def semicolon_pairs(n: int, seed: int = 0) -> list:
    """The old demo sets' artefact: every negative, no positive, carries a semicolon."""
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(clean_pairs(n, seed)):
        head, tail = p.span_negative.rstrip(".").split(" ", 1)
        neg = f"{head} {tail}; {rng.choice(['it is quick', 'the sum is easy', 'no more to add'])}."
        out.append(make_pair(i, pos=p.span_positive, neg=neg))
    return out


def test_a_planted_semicolon_is_flagged_and_named():
    report = shortcut_audit(semicolon_pairs(48))
    (audit,) = report.splits
    assert audit.label == "toy/train" and audit.flagged and audit.auroc > 0.95
    named = {f.name: f for f in audit.features[:3]}
    assert "w:;" in named, audit.features[:3]
    assert (named["w:;"].positive_rate, named["w:;"].negative_rate) == (0.0, 1.0)
    assert named["w:;"].weight < 0  # points to the negative side


def test_a_planted_length_gap_is_flagged_and_named():
    pairs = []
    for i, p in enumerate(clean_pairs(48, 3)):
        neg = p.span_negative.rstrip(".") + " and then I will add nothing more to it at all."
        pairs.append(make_pair(i, pos=p.span_positive, neg=neg))
    (audit,) = shortcut_audit(pairs).splits
    assert audit.flagged and "len:words" in [f.name for f in audit.features[:3]], audit.features[:3]
    assert audit.lengths["negative"]["words_mean"] - audit.lengths["positive"]["words_mean"] > 10


def test_spans_from_one_distribution_stay_near_chance():
    """The null: over 12 seeds the audit's AUROC averages about 0.5 and never crosses the 0.85 ceiling."""
    values = [shortcut_audit(clean_pairs(48, seed)).splits[0].auroc for seed in range(12)]
    assert abs(np.mean(values) - 0.5) < 0.06, values
    assert max(values) < 0.75, values
    assert shortcut_audit(clean_pairs(48, 0)).ok


class _Length(BaseEstimator, TransformerMixin):
    def fit(self, texts, y=None):
        n = np.array([len(t.split()) for t in texts], float)
        self.mean_, self.sd_ = n.mean(), n.std() or 1.0
        return self

    def transform(self, texts):
        return ((np.array([len(t.split()) for t in texts], float) - self.mean_) / self.sd_)[:, None]


def test_auroc_equals_an_independent_sklearn_pipeline_on_the_same_folds():
    pairs = clean_pairs(40, 5)
    for p in pairs[::3]:  # a weak artefact: a third of the negatives say "anyway"
        object.__setattr__(p, "span_negative", p.span_negative.rstrip(".") + " anyway.")
    pos, neg = [p.span_positive for p in pairs], [p.span_negative for p in pairs]
    audit = audit_spans(pos, neg, folds=5, seed=2)
    texts, y = pos + neg, np.r_[np.ones(40), np.zeros(40)]
    groups = np.r_[np.arange(40), np.arange(40)]
    folds = audit_folds(groups, 5, 2)
    for train, test in folds:  # both spans of a pair are held out together
        assert not set(groups[train]) & set(groups[test])
    pipe = make_pipeline(
        FeatureUnion([
            ("w", CountVectorizer(token_pattern=r"(?u)\b\w+\b|[^\w\s]", ngram_range=(1, 2), binary=True)),
            ("c", CountVectorizer(analyzer="char_wb", ngram_range=(2, 4), binary=True)),
            ("n", _Length()),
        ]),
        LogisticRegression(C=1.0, max_iter=2000),
    )  # fmt: skip
    expect = []
    for train, test in folds:
        pipe.fit([texts[i] for i in train], y[train])
        expect.append(roc_auc_score(y[test], pipe.decision_function([texts[i] for i in test])))
    assert audit.folds == 5 and audit.auroc == pytest.approx(np.mean(expect), abs=1e-9)
    assert audit.auroc_sd == pytest.approx(np.std(expect), abs=1e-9)


def test_too_few_pairs_get_no_auroc_and_are_not_flagged():
    (audit,) = shortcut_audit(semicolon_pairs(8)).splits
    assert audit.auroc is None and not audit.flagged and audit.n_positive == 8


def test_cross_concept_audit_compares_the_two_concepts_negatives():
    a = clean_pairs(30, 1, concept="alpha")
    b = [make_pair(i, concept="beta", pos=p.span_positive, neg=p.span_negative + " Fine then.") for i, p in
         enumerate(clean_pairs(30, 2))]  # fmt: skip
    report = shortcut_audit(a + b)
    (cross,) = report.cross_concept
    assert cross.sides == ("alpha", "beta") and cross.auroc > 0.95
    assert any("fine" in f.name for f in cross.features[:4]), cross.features[:4]
    same = shortcut_audit(a + clean_pairs(30, 2, concept="beta")).cross_concept[0]
    assert same.auroc < 0.75


def test_surface_marks_of_one_pair():
    assert surface_marks("So in the end I will keep it short.", "It is easy; I will keep it short.") == ["punct:;"]
    assert surface_marks("So in the end I keep it short.", "The user asked, so I keep it short.") == [
        "address:the user"
    ]
    assert surface_marks("A b c.", "A b c which is unrelated.", artefacts=["unrelated"]) == [
        "artefact:unrelated",
        "length",
    ]
    assert surface_marks("Since the rubric asks, I keep it short.", "Since the menu is long, I keep it short.") == []


def test_validate_flags_the_artefact_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_pairs(semicolon_pairs(48), tmp_path / "semi.jsonl")
    line = refused(["pairs", "validate", "semi.jsonl"], "the shortcut audit", tmp_path, capsys)
    assert "toy/train AUROC 1.00 > 0.85" in line and "';' 0% vs 100%" in line
    refused(["pairs", "validate", "semi.jsonl", "--drop-invalid", "clean.jsonl"], "nothing written", tmp_path, capsys)
    code, out, _ = run_cli(["pairs", "validate", "semi.jsonl", "--no-audit"], capsys)
    assert code == 0 and "all 48 pairs pass" in out
    # a ceiling of null reports without failing
    (tmp_path / "report_only.yaml").write_text("shortcut_audit:\n  max_auroc: {train: null}\n")
    code, out, _ = run_cli(["pairs", "validate", "semi.jsonl", "--config", "report_only.yaml"], capsys)
    assert code == 0 and "report only" in out and "toy/train" in out
    from steerlab.pairs import load_validation_config

    assert load_validation_config(tmp_path / "report_only.yaml").shortcut_audit.max_auroc == {
        "train": None, "val": 0.85, "keyword_hard": 0.7,
    }  # fmt: skip


def test_validate_passes_a_clean_set_and_reports_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_pairs(clean_pairs(48, 0), tmp_path / "clean.jsonl")
    write_pairs(clean_pairs(30, 9, concept="other"), tmp_path / "other.jsonl")
    before = snapshot(tmp_path)
    code, out, _ = run_cli(["pairs", "validate", "clean.jsonl", "--against", "other.jsonl"], capsys)
    assert code == 0 and "all 48 pairs pass and the shortcut audit" in out and "negatives: other vs toy" in out
    code, out, _ = run_cli(["pairs", "validate", "clean.jsonl", "--json"], capsys)
    report = json.loads(out)
    (split,) = report["shortcut_audit"]["splits"]
    assert code == 0 and split["label"] == "toy/train" and split["flagged"] is False and split["auroc"] < 0.75
    assert snapshot(tmp_path) == before  # validating reads only


@pytest.mark.parametrize(
    "config, says",
    [
        ("shortcut_audit:\n  max_auroc: {train: 1.5}\n", "less than or equal to 1"),
        ("shortcut_audit:\n  folds: 1\n", "greater than or equal to 2"),
        ("shortcut_audit:\n  max_auroc: {test: 0.8}\n", "shortcut_audit.max_auroc"),
    ],
)
def test_bad_audit_settings_are_one_line(tmp_path, capsys, monkeypatch, config, says):
    monkeypatch.chdir(tmp_path)
    write_pairs(clean_pairs(12, 0), tmp_path / "p.jsonl")
    (tmp_path / "v.yaml").write_text(config)
    refused(["pairs", "validate", "p.jsonl", "--config", "v.yaml"], says, tmp_path, capsys)


def test_against_the_same_concept_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_pairs(clean_pairs(12, 0), tmp_path / "p.jsonl")
    refused(["pairs", "validate", "p.jsonl", "--against", "p.jsonl"], "another concept", tmp_path, capsys)


def test_the_config_default_is_the_documented_one():
    assert ShortcutAuditConfig().max_auroc == {"train": 0.85, "val": 0.85, "keyword_hard": 0.7}


def test_keyword_hard_is_audited_without_its_controlled_keywords():
    """keyword_hard negatives carry a controlled keyword by design; with the keywords taken out, a set
    whose sides differ only there is at chance, and a semicolon artefact beside them is still found."""
    base = clean_pairs(48, 4, split="keyword_hard")
    kh = []
    for i, p in enumerate(base):
        first, rest = p.span_negative.split(" ", 1)
        kh.append(make_pair(i, split="keyword_hard", pos=p.span_positive, neg=f"{first} graded {rest}"))
    assert all("graded" in p.span_negative and "graded" not in p.span_positive for p in kh)
    (unmasked,) = shortcut_audit(kh).splits
    (masked,) = shortcut_audit(kh, keywords={"toy": ["grad"]}).splits
    assert unmasked.auroc > 0.95 and unmasked.flagged
    assert masked.auroc < 0.7 and not masked.flagged
    semi = [make_pair(i, split="keyword_hard", pos=p.span_positive, neg=p.span_negative.rstrip(".") + "; fine.")
            for i, p in enumerate(kh)]  # fmt: skip
    (still,) = shortcut_audit(semi, keywords={"toy": ["grad"]}).splits
    assert still.flagged and "w:;" in [f.name for f in still.word_features[:2]]


def test_transfer_from_train_scores_the_held_out_split():
    train = semicolon_pairs(48)
    val = [make_pair(100 + i, split="val", pos=p.span_positive, neg=p.span_negative) for i, p in
           enumerate(semicolon_pairs(24, seed=5))]  # fmt: skip
    report = shortcut_audit(train + val)
    by = {a.label: a for a in report.splits}
    assert by["toy/train"].transfer_auroc is None and by["toy/val"].transfer_auroc > 0.95
    clean = shortcut_audit(clean_pairs(48, 1) + clean_pairs(24, 2, split="val"))
    assert abs({a.label: a for a in clean.splits}["toy/val"].transfer_auroc - 0.5) < 0.2


def test_keyword_removal_takes_whole_words_and_keeps_the_punctuation_around_them():
    from steerlab.audit import without_keywords

    assert without_keywords("the evaluator's rubric", ["evaluat"]) == "the rubric"
    assert without_keywords("re-training soon", ["train"]) == "soon"
    assert without_keywords("a pre-test; ok", ["test"]) == "a ; ok"
    assert without_keywords("use .net now", [".net"]) == "use now"
    assert without_keywords("Training helps (graders agree).", ["train", "grad"]) == "helps ( agree)."
    assert without_keywords("contest results", ["test"]) == "contest results"  # a prefix, not a substring
