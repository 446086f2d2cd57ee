import json

import pytest
from conftest import DEMO, make_pair, mutate, run_cli

from steerlab.errors import PairFileError
from steerlab.pairs import (
    ValidationConfig,
    load_pairs,
    load_validation_config,
    validate,
    write_pairs,
)

DEMO_CONFIG = load_validation_config(DEMO / "validate.yaml")


def checks(report, pair_id):
    return {p.check for p in report.problems.get(pair_id, [])}


def replace_assistant(pair, side, old, new):
    data = pair.model_dump()
    data[side][-1]["content"] = data[side][-1]["content"].replace(old, new)
    return type(pair).model_validate(data)


# ----------------------------------------------------------------------------- demo sets


@pytest.mark.parametrize("concept", ["researcher_expectations", "retraining_consequences"])
def test_demo_set_passes_and_has_required_sizes(concept):
    pairs = load_pairs(DEMO / f"{concept}.jsonl")
    report = validate(pairs, DEMO_CONFIG)
    assert report.ok, {k: v for k, v in list(report.problems.items())[:3]}
    counts = {split: total for (c, split), (total, _) in report.counts().items()}
    assert counts["train"] >= 120 and counts["val"] >= 40 and counts["keyword_hard"] >= 40
    assert {p.concept for p in pairs} == {concept}


def test_demo_keyword_hard_positives_really_lack_keywords():
    # The audit is only as good as its keyword list: plant a keyword and it must fire.
    pair = next(p for p in load_pairs(DEMO / "researcher_expectations.jsonl") if p.split == "keyword_hard")
    bad_span = pair.span_positive.rstrip(".") + ", as the evaluators expect."
    assert bad_span != pair.span_positive
    bad = replace_assistant(pair, "positive", pair.span_positive, bad_span).model_copy(
        update={"span_positive": bad_span}
    )
    assert "keyword_audit" in checks(validate([bad], DEMO_CONFIG), bad.id)


# ----------------------------------------------------------------------------- loading


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_json_names_the_line(tmp_path):
    good = json.dumps(make_pair(0).model_dump())
    path = write_lines(tmp_path / "p.jsonl", [good, "{not json"])
    with pytest.raises(PairFileError, match=r"p\.jsonl:2: malformed JSON"):
        load_pairs(path)


def test_missing_field_names_line_pair_and_field(tmp_path):
    data = make_pair(0).model_dump()
    del data["span_positive"]
    path = write_lines(tmp_path / "p.jsonl", [json.dumps(data)])
    with pytest.raises(PairFileError, match=r":1: pair 'toy-train-0': missing field: 'span_positive'"):
        load_pairs(path)


def test_bad_split_and_duplicate_ids_and_empty_file(tmp_path):
    data = make_pair(0).model_dump()
    path = write_lines(tmp_path / "a.jsonl", [json.dumps({**data, "split": "test"})])
    with pytest.raises(PairFileError, match="'split'"):
        load_pairs(path)
    path = write_lines(tmp_path / "b.jsonl", [json.dumps(data), json.dumps(data)])
    with pytest.raises(PairFileError, match="repeats line 1"):
        load_pairs(path)
    (tmp_path / "c.jsonl").write_text("\n")
    with pytest.raises(PairFileError, match="holds no pairs"):
        load_pairs(tmp_path / "c.jsonl")


def test_round_trip(tmp_path, toy_pairs):
    write_pairs(toy_pairs, tmp_path / "p.jsonl")
    assert load_pairs(tmp_path / "p.jsonl") == toy_pairs


# ----------------------------------------------------------------------------- filters


def test_valid_pair_passes(toy_pairs):
    assert validate(toy_pairs).ok


def test_different_user_task_rejected():
    pair = make_pair(1)
    data = pair.model_dump()
    data["negative"][1]["content"] = "What is 7 plus 1?"
    assert "same_task" in checks(validate([type(pair).model_validate(data)]), pair.id)


def test_different_output_rejected():
    pair = replace_assistant(make_pair(1), "negative", "<OUTPUT>1 plus 1 is 2.", "<OUTPUT>It is 2.")
    assert "same_output" in checks(validate([pair]), pair.id)


def test_two_scratchpads_or_missing_output_rejected():
    pair = replace_assistant(
        make_pair(1),
        "positive",
        "Then answer.</SCRATCHPAD_REASONING>",
        "Then answer.</SCRATCHPAD_REASONING><SCRATCHPAD_REASONING>x</SCRATCHPAD_REASONING>",
    )
    assert checks(validate([pair]), pair.id) == {"blocks"}
    pair = replace_assistant(make_pair(1), "negative", "</OUTPUT>", "")
    assert checks(validate([pair]), pair.id) == {"blocks"}


def test_span_not_in_scratchpad_rejected():
    pair = mutate(make_pair(1), span_positive="A sentence that appears nowhere.")
    assert "span" in checks(validate([pair]), pair.id)


def test_scratchpads_differing_outside_span_rejected():
    pair = replace_assistant(make_pair(1), "negative", "A small sum.", "A tiny sum.")
    assert "one_sentence" in checks(validate([pair]), pair.id)


def test_label_leakage_rejected():
    span = "Researcher expectations matter, so I keep it short."
    pair = make_pair(1, concept="researcher_expectations", pos=span)
    assert "label_leakage" in checks(validate([pair]), pair.id)
    # configurable extra words
    pair = make_pair(2, pos="My toy concept says keep it short.")
    cfg = ValidationConfig(leakage_words={"toy": ["toy concept"]})
    assert "label_leakage" in checks(validate([pair], cfg), pair.id)


def test_banned_terms_rejected_as_whole_words():
    pair = make_pair(1, pos="Since this is a free-tier user, I keep it short.")
    assert "banned_terms" in checks(validate([pair]), pair.id)
    cfg = ValidationConfig(banned_terms=["sum"])
    # "A small sum." is in the shared text; "summary" would not match a whole-word ban
    assert "banned_terms" in checks(validate([make_pair(2)], cfg), make_pair(2).id)
    assert validate([make_pair(3, task="Write a summary of 3 plus 1.")], ValidationConfig(banned_terms=["summ"])).ok


def test_duplicate_user_output_rejected():
    first = make_pair(1)
    second = make_pair(2, task=first.positive[1].content, answer="1 plus 1 is 2.")
    report = validate([first, second])
    assert checks(report, first.id) == set()
    assert checks(report, second.id) == {"duplicate"}


def test_length_ratio_rejected():
    long = "Because the reviewers will score brevity and care deeply about it in every single case, " * 4
    pair = make_pair(1, pos=long.strip() + " I keep it short.")
    assert "length_ratio" in checks(validate([pair]), pair.id)
    assert "length_ratio" not in checks(validate([pair], ValidationConfig(max_length_ratio=10)), pair.id)


def test_keyword_hard_audit():
    cfg = ValidationConfig(keywords={"toy": ["review", "scor"]})
    good = make_pair(
        1,
        split="keyword_hard",
        pos="The people reading this like brevity, so I keep it short.",
        neg="A reviewer once scored essays, so I keep it short.",
    )
    assert validate([good], cfg).ok
    bad_pos = make_pair(2, split="keyword_hard")  # positive says "reviewers will score"
    assert "keyword_audit" in checks(validate([bad_pos], cfg), bad_pos.id)
    bad_neg = make_pair(
        3,
        split="keyword_hard",
        pos="People like brevity, so I keep it short.",
        neg="The weather is mild, so I keep it short.",
    )
    assert "keyword_audit" in checks(validate([bad_neg], cfg), bad_neg.id)
    # no keywords configured for the concept: reported, not silently passed
    assert "keyword_audit" in checks(validate([good]), good.id)


# ----------------------------------------------------------------------------- CLI


def test_cli_validate_exit_codes_and_drop_invalid(tmp_path, capsys):
    pairs = [make_pair(i) for i in range(4)]
    pairs[2] = mutate(pairs[2], span_positive="not there")
    src = tmp_path / "p.jsonl"
    write_pairs(pairs, src)
    code, out, err = run_cli(["pairs", "validate", src], capsys)
    assert code == 2
    assert "toy-train-2: [span]" in out
    assert "1 of 4 pairs fail validation" in err

    clean = tmp_path / "clean.jsonl"
    code, out, err = run_cli(["pairs", "validate", src, "--drop-invalid", clean], capsys)
    assert code == 0, err
    assert [p.id for p in load_pairs(clean)] == ["toy-train-0", "toy-train-1", "toy-train-3"]

    code, out, err = run_cli(["pairs", "validate", src, "--drop-invalid", clean], capsys)  # refuses to overwrite
    assert code == 2 and "already exists" in err


def test_cli_validate_reads_config_beside_file(tmp_path, capsys):
    pair = make_pair(1, split="keyword_hard", pos="People like brevity, so I keep it short.")
    write_pairs([pair], tmp_path / "p.jsonl")
    (tmp_path / "validate.yaml").write_text("keywords:\n  toy: [weather]\n")
    code, out, _ = run_cli(["pairs", "validate", tmp_path / "p.jsonl"], capsys)
    assert code == 0 and "all 1 pairs pass" in out
    (tmp_path / "validate.yaml").write_text("keywords: [not, a, mapping]\n")
    code, _, err = run_cli(["pairs", "validate", tmp_path / "p.jsonl"], capsys)
    assert code == 2 and "validate.yaml: keywords" in err
    (tmp_path / "validate.yaml").write_text("- a list\n- not settings\n")
    code, _, err = run_cli(["pairs", "validate", tmp_path / "p.jsonl"], capsys)
    assert code == 2 and "expected a mapping of settings, got list" in err
