"""Bad input to ``steerlab pairs generate``: one line that says what is wrong and how to fix it, exit
status 2, and nothing created or changed on disk, all before any model loads (the model named is one
that does not exist, so a row that got as far as loading would fail with another line)."""

import json

import pytest
from test_bad_input import refused

GEN = ["pairs", "generate", "spec.yaml", "--out", "p.jsonl", "--model", "no/such-model"]
SPEC = {
    "concept": "toy_concept", "definition": "d", "decision_relevant": "r", "background": "b",
    "keywords": ["review"], "task_families": ["sums"], "pairs": {"train": 2, "val": 1, "keyword_hard": 1},
}  # fmt: skip


def _inputs(root, spec=None, **files):
    (root / "spec.yaml").write_text(json.dumps(spec or SPEC))
    for name, text in files.items():
        path = root / name.replace("__", ".")
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)


def _without(key):
    return {k: v for k, v in SPEC.items() if k != key}


def journal(**change):
    """The journal header of a run of ``GEN`` with ``change`` made to its settings."""
    from steerlab.pairgen import GenSettings
    from steerlab.pairgen_prompt import ConceptSpec

    identity = GenSettings(model="no/such-model", **change).identity(ConceptSpec.model_validate(SPEC))
    return json.dumps({"kind": "header", "identity": identity, "backend": {}}) + "\n"


JOURNAL = journal()
TABLE = [
    # (spec, files in the folder, extra arguments, what the one line must say)
    (_without("definition"), {}, [], "spec.yaml: definition: Field required"),
    (_without("task_families"), {}, [], "task_families: Field required"),
    ({**SPEC, "task_families": []}, {}, [], "task_families: List should have at least 1 item"),
    ({**SPEC, "colour": "red"}, {}, [], "colour: Extra inputs are not permitted"),
    ({**SPEC, "pairs": {"train": 0, "val": 0, "keyword_hard": 0}}, {}, [], "zero pairs asked for"),
    (None, {}, ["--train", "0", "--val", "0", "--keyword-hard", "0"], "zero pairs asked for"),
    (None, {}, ["--train", "-1"], "--train -1: give 0 or more pairs"),
    (
        {**SPEC, "pairs": {"train": True, "val": 1, "keyword_hard": 1}},
        {},
        [],
        "pairs.train: Input should be a valid integer",
    ),
    ({**SPEC, "pairs": {"train": 10**11, "val": 1, "keyword_hard": 1}}, {}, [], "less than or equal to 100000"),
    ({**SPEC, "keywords": []}, {}, [], "keyword_hard pairs need controlled keywords"),
    ({**SPEC, "concept": "Toy Concept"}, {}, [], "concept: String should match pattern"),
    (None, {}, ["--backend", "openai"], "--backend 'openai': use hf, vllm, nnsight, anthropic"),
    (None, {}, ["--max-attempts", "3"], "--max-attempts 3 is fewer than the 4 pairs asked for"),
    (None, {}, ["--batch-size", "0"], "--batch-size 0: give at least 1"),
    (None, {}, ["--temperature", "-1"], "temperature must be a finite number >= 0"),
    (None, {}, ["--max-new-tokens", "0"], "max_new_tokens must be at least 1"),
    (None, {}, ["--chat-date", "July"], "give it as YYYY-MM-DD"),
    (None, {}, ["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
    (None, {"p__jsonl": "{}\n"}, [], "p.jsonl exists; pass --overwrite"),
    (None, {"p__jsonl__partial": JOURNAL}, [], "holds an interrupted run; pass --resume"),
    (None, {"p__jsonl": "{}\n"}, ["--resume"], "p.jsonl is complete"),
    (None, {"p__jsonl__partial": journal(run_seed=7)}, ["--resume"], "other settings (run_seed 7 there, 0 here)"),
    (None, {"p__jsonl__partial": JOURNAL}, ["--resume", "--temperature", "0.5"], "temperature 1.0 there, 0.5 here"),
    ({**SPEC, "definition": "e"}, {"p__jsonl__partial": JOURNAL}, ["--resume"], "other settings (spec)"),
    (None, {"p__jsonl__partial": '{"kind": "reply"}\n'}, ["--resume"], "is not a pairs generate journal"),
    (None, {"p__jsonl__partial": "{]\n{}\n"}, ["--resume"], "p.jsonl.partial:1: not a JSON line"),
    (None, {"p__jsonl/x": ""}, [], "--out p.jsonl is a folder"),
]


@pytest.mark.parametrize("spec, files, extra, says", TABLE, ids=[f"{i}: {row[-1][:40]}" for i, row in
                                                                enumerate(TABLE)])  # fmt: skip
def test_bad_input_is_one_line_exit_2_and_writes_nothing(spec, files, extra, says, tmp_path, capsys, monkeypatch):
    _inputs(tmp_path, spec, **files)
    monkeypatch.chdir(tmp_path)
    refused([*GEN, *extra], says, tmp_path, capsys)


def test_a_missing_spec_and_an_unknown_concept_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused([*GEN[:2], "no_such_concept", *GEN[3:]], "concept spec no_such_concept does not exist", tmp_path, capsys)
    refused([*GEN[:2], "missing.yaml", *GEN[3:]], "concept spec missing.yaml does not exist", tmp_path, capsys)


def test_the_shipped_specs_load_by_name_and_by_path(tmp_path, monkeypatch):
    from steerlab.pairgen_prompt import load_spec

    monkeypatch.chdir(tmp_path)  # from any folder: the package's own copies
    for name in ("researcher_expectations", "retraining_consequences"):
        spec = load_spec(name)
        assert spec.concept == name and spec.pairs.asked() == {"train": 400, "val": 100, "keyword_hard": 100}
        assert load_spec(f"configs/concepts/{name}.yaml") == spec
        assert len(spec.task_families) >= 8 and spec.keywords
