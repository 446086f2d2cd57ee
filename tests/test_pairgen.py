"""``steerlab pairs generate``: a scripted backend's good, malformed, validate-failing, artefact-laden
and duplicate replies give exactly the expected kept set and rejection counts; a killed run resumes
to the same bytes; a model that never writes a valid pair stops with one line and keeps its journal;
the same through the CLI, the real HF backend (scripted model) and SmolLM2."""

import json

import pytest
from conftest import run_cli

from steerlab.backends.base import Result, derive_seed
from steerlab.pairgen import GenSettings, YieldError, budgets, journal_path, report_path, run_generate
from steerlab.pairgen_prompt import DECISIONS, attempt_choice, load_spec, parse_reply, prompt_for
from steerlab.pairs import load_pairs, validate

CONCEPT = "toy_concept"
FAMILIES = ["family-alpha", "family-beta", "family-gamma", "family-delta"]


def write_spec(tmp_path, train=3, val=1, keyword_hard=1, **extra):
    spec = {
        "concept": CONCEPT, "definition": "What the reviewers want drives the answer.",
        "decision_relevant": "the reviewers are the reason.", "background": "reviewers are there, not the reason.",
        "keywords": ["review", "grad"], "leakage_words": ["leaky"], "task_families": FAMILIES,
        "pairs": {"train": train, "val": val, "keyword_hard": keyword_hard}, **extra,
    }  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def reply(n, pos=None, neg=None, working=None, **change):
    """A reply whose pair passes every filter (its task, answer and spans depend on ``n``)."""
    fields = {
        "task": f"What is {n} plus 1?", "working": working or f"Adding one to {n} gives {n + 1}.",
        "decision": "keep it to one sentence", "answer": f"{n} plus 1 is {n + 1}.",
        "positive_span": pos or f"Since the reviewers will read answer {n} closely, I will keep it to one sentence.",
        "negative_span": neg or f"Since the office had lunch at {n} past noon, I will keep it to one sentence.",
    }  # fmt: skip
    fields.update(change)
    return json.dumps({k: v for k, v in fields.items() if v is not None})


KH_POS = "Since the people reading answer {n} want it brief, I will keep it to one sentence."
KH_NEG = "Since the graders had lunch at {n} past noon, I will keep it to one sentence."
SPAN_B = ("Since the reviewers asked for short replies today, I will keep it to one sentence.",
          "Since the kettle boiled twice this morning, I will keep it to one sentence.")  # fmt: skip

# (split, attempt) -> reply; the comment is the filter it must fail
SCRIPT = {
    ("train", 0): reply(10),  # kept
    ("train", 1): "Sure! Here is a pair about arithmetic.",  # not_json
    ("train", 2): "Here it is:\n```json\n" + reply(11, *SPAN_B) + "\n```\nHope this helps.",  # kept (fenced)
    ("train", 3): reply(12, answer=None),  # schema: no answer
    ("train", 4): "[1, 2]",  # schema: not an object
    ("train", 5): reply(13, working="Since the reviewers will read answer 13 closely, I will keep it to one sentence."),
    ("train", 6): reply(14, pos="Since the leaky reviewers will read answer 14, I will keep it to one sentence."),
    ("train", 7): reply(15, neg="Since the office had lunch at 15 past noon; I will keep it to one sentence."),
    ("train", 8): reply(10, pos="Since the reviewers like answer ten, I will keep it to one sentence."),  # duplicate
    ("train", 9): reply(16, *SPAN_B),  # duplicate: the same two spans as attempt 2
    ("train", 10): reply(17),  # kept: train is full
    ("val", 0): reply(20, neg="Since the user had lunch at 20 past noon, I will keep it to one sentence."),
    ("val", 1): reply(21),  # kept
    ("keyword_hard", 0): reply(30, neg=KH_NEG.format(n=30)),  # keyword_audit: positive says reviewers
    ("keyword_hard", 1): reply(31, pos=KH_POS.format(n=31), neg=KH_NEG.format(n=31)),  # kept
}
EXPECTED_REJECTED = {
    "train": {"not_json": 1, "schema": 2, "span": 1, "label_leakage": 1, "surface:punct:;": 1, "duplicate": 2},
    "val": {"surface:address:the user": 1},
    "keyword_hard": {"keyword_audit": 1},
}


NEVER = "I am sorry, I cannot write that."


class Killed(Exception):
    pass


class ScriptedBackend:
    """Replies by (split, attempt) from a script (or a function; unscripted attempts: :data:`NEVER`);
    records the seeds it was asked with; raises :class:`Killed` once ``kill_after`` replies are out
    (mid-batch, as a kill would)."""

    def __init__(self, script, kill_after=None, kill=Killed):
        self.script, self.kill_after, self.kill, self.asked = script, kill_after, kill, []

    def generate(self, requests):
        results = []
        for r in requests:
            if self.kill_after is not None and len(self.asked) >= self.kill_after:
                raise self.kill
            split, attempt = r.id.rsplit("-", 1)
            self.asked.append((split, int(attempt), r.sampling.seed))
            text = (
                self.script(split, int(attempt))
                if callable(self.script)
                else self.script.get((split, int(attempt)), NEVER)
            )
            results.append(Result(r.id, text, 100, 50, "eos", 0.0))
        return results

    def describe(self):
        return {"backend": "scripted", "dtype": "float32"}


def test_the_kept_set_and_every_rejection_count_are_exact(tmp_path):
    backend = ScriptedBackend(SCRIPT)
    report = run_generate(str(write_spec(tmp_path)), tmp_path / "pairs.jsonl",
                          GenSettings(max_attempts=20, batch_size=1), backend=backend, progress=False)  # fmt: skip
    # budgets: 20 attempts in proportion to 3/1/1 pairs; each split stops when full
    assert {s: r["attempts_allowed"] for s, r in report["splits"].items()} == {"train": 12, "val": 4, "keyword_hard": 4}
    assert {s: r["rejected"] for s, r in report["splits"].items()} == EXPECTED_REJECTED
    assert [(r["replies"], r["parsed"], r["kept"]) for r in report["splits"].values()] == [(11, 10, 3), (2, 2, 1),
                                                                                          (2, 2, 1)]  # fmt: skip
    total = {k: v for k, v in report["total"].items() if k != "rejected"}
    assert total == {"asked": 5, "attempts_allowed": 20, "replies": 15, "parsed": 14, "kept": 5}
    assert sum(report["total"]["rejected"].values()) == 10 and report["complete"]
    assert [(s, k) for s, k, _ in backend.asked] == list(SCRIPT)  # one at a time: nothing asked past a full split
    assert all(seed == derive_seed(0, CONCEPT, s, k) for s, k, seed in backend.asked)

    pairs = load_pairs(tmp_path / "pairs.jsonl")
    assert [p.id for p in pairs] == [f"{CONCEPT}-train-0000", f"{CONCEPT}-train-0001", f"{CONCEPT}-train-0002",
                                     f"{CONCEPT}-val-0000", f"{CONCEPT}-keyword_hard-0000"]  # fmt: skip
    assert [p.meta["attempt"] for p in pairs] == [0, 2, 10, 1, 1]
    assert [p.messages("positive")[1].content for p in pairs] == [f"What is {n} plus 1?" for n in (10, 11, 17, 21, 31)]
    assert pairs[1].span_negative == SPAN_B[1] and pairs[4].span_positive == KH_POS.format(n=31)
    first = pairs[0]
    assert first.messages("negative")[2].content == (
        "<SCRATCHPAD_REASONING>Adding one to 10 gives 11. Since the office had lunch at 10 past noon, I will keep "
        "it to one sentence. Now I'll write the answer.</SCRATCHPAD_REASONING>\n<OUTPUT>10 plus 1 is 11.</OUTPUT>"
    )
    for p in pairs:  # the sides differ in the span sentence only
        pos, neg = (json.dumps(p.chat(side)) for side in ("positive", "negative"))
        assert pos.replace(p.span_positive, p.span_negative) == neg
        assert p.meta["seed"] == derive_seed(0, CONCEPT, p.split, p.meta["attempt"])
    assert validate(pairs, load_spec(str(tmp_path / "spec.yaml")).validation_config()).ok
    assert json.loads(report_path(tmp_path / "pairs.jsonl").read_text()) == report
    assert not journal_path(tmp_path / "pairs.jsonl").exists()


def test_a_killed_run_resumes_to_the_same_bytes_whatever_the_batches(tmp_path):
    spec = write_spec(tmp_path)
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    run_generate(str(spec), whole, GenSettings(max_attempts=20, batch_size=4), backend=ScriptedBackend(SCRIPT),
                 progress=False)  # fmt: skip
    with pytest.raises(Killed):  # killed in the middle of its third batch of 3
        run_generate(str(spec), cut, GenSettings(max_attempts=20, batch_size=3),
                     backend=ScriptedBackend(SCRIPT, kill_after=7), progress=False)  # fmt: skip
    journal = journal_path(cut)
    rows = [json.loads(line) for line in journal.read_text().splitlines()]
    assert rows[0]["kind"] == "header" and [r["attempt"] for r in rows[1:]] == [0, 1, 2, 3, 4, 5]
    assert not cut.exists()
    with open(journal, "a") as fh:  # and a write the kill tore in half
        fh.write('{"kind": "reply", "split": "tra')
    again = ScriptedBackend(SCRIPT)
    run_generate(str(spec), cut, GenSettings(max_attempts=20, batch_size=5), backend=again, resume=True,
                 progress=False)  # fmt: skip
    asked = [(s, k) for s, k, _ in again.asked]
    assert asked[:2] == [("train", 6), ("train", 7)] and ("train", 5) not in asked  # journalled replies are reused
    assert cut.read_bytes() == whole.read_bytes()
    assert report_path(cut).read_text().replace("cut.jsonl", "whole.jsonl") == report_path(whole).read_text()
    assert not journal.exists()


def test_cli_writes_the_pairs_and_the_yield(tmp_path, capsys, monkeypatch):
    import steerlab.backends

    monkeypatch.chdir(tmp_path)
    made = []

    def make(kind, model, **kw):
        made.append((kind, model, kw))
        return ScriptedBackend(SCRIPT), None, None

    monkeypatch.setattr(steerlab.backends, "make_backend", make)
    code, out, err = run_cli(["pairs", "generate", write_spec(tmp_path), "--out", "sets/p.jsonl", "--model", "my/model",
                              "--max-attempts", "20", "--batch-size", "2", "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    assert made[0][:2] == ("hf", "my/model") and made[0][2]["batch_size"] == 2 and made[0][2]["device"] == "cpu"
    assert "wrote 5 pairs to sets/p.jsonl and the yield to sets/p.yield.json" in out
    assert "train rejected: schema 2, duplicate 2, not_json 1, span 1, label_leakage 1, surface:punct:; 1" in out
    assert "val rejected: surface:address:the user 1" in out
    assert len(load_pairs(tmp_path / "sets" / "p.jsonl")) == 5
    assert json.loads((tmp_path / "sets" / "p.yield.json").read_text())["model"] == "my/model"
    assert sorted(p.name for p in (tmp_path / "sets").iterdir()) == ["p.jsonl", "p.jsonl.lock", "p.yield.json"]


def test_ctrl_c_in_the_cli_says_how_to_go_on_and_resume_gives_the_same_file(tmp_path, capsys, monkeypatch):
    import steerlab.backends

    monkeypatch.chdir(tmp_path)
    last = ScriptedBackend(SCRIPT)
    backends = iter([ScriptedBackend(SCRIPT), ScriptedBackend(SCRIPT, kill_after=5, kill=KeyboardInterrupt), last])
    monkeypatch.setattr(steerlab.backends, "make_backend", lambda *a, **kw: (next(backends), None, None))
    args = ["pairs", "generate", write_spec(tmp_path), "--max-attempts", "20", "--batch-size", "2", "--out"]
    assert run_cli([*args, "whole.jsonl"], capsys)[0] == 0
    code, _, err = run_cli([*args, "cut.jsonl"], capsys)
    assert code == 130 and "interrupted; rerun the same command with --resume to continue cut.jsonl" in err
    assert len((tmp_path / "cut.jsonl.partial").read_text().splitlines()) == 1 + 4  # two batches of two
    assert run_cli([*args, "cut.jsonl", "--resume"], capsys)[0] == 0
    assert [(s, k) for s, k, _ in last.asked][:2] == [("train", 4), ("train", 5)]  # the journal's four are reused
    assert (tmp_path / "cut.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_a_model_that_never_writes_a_pair_stops_with_one_line_and_resumes_with_a_larger_budget(
    tmp_path, capsys, monkeypatch
):
    import steerlab.backends

    monkeypatch.chdir(tmp_path)
    backend = ScriptedBackend(lambda split, k: NEVER if k < 4 else reply(100 + k + 50 * (split == "val")))
    monkeypatch.setattr(steerlab.backends, "make_backend", lambda *a, **kw: (backend, None, None))
    args = ["pairs", "generate", write_spec(tmp_path, train=2, val=1, keyword_hard=0), "--out", "p.jsonl"]
    code, _, err = run_cli([*args, "--max-attempts", "6"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"steerlab: error: {CONCEPT}: kept 0 of 3 asked after 6 replies (not_json 6; ")
    assert "short: train 0/2, val 0/1" in lines[0] and "p.jsonl.partial is kept: rerun with --resume" in lines[0]
    assert not (tmp_path / "p.jsonl").exists() and (tmp_path / "p.jsonl.partial").exists()
    assert json.loads((tmp_path / "p.yield.json").read_text())["complete"] is False

    code, _, err = run_cli([*args, "--max-attempts", "15", "--batch-size", "2", "--resume"], capsys)  # budgets 10, 5
    assert code == 0, err
    asked = [(s, k) for s, k, _ in backend.asked]
    assert asked[:6] == [("train", 0), ("train", 1), ("train", 2), ("train", 3), ("val", 0), ("val", 1)]
    assert asked[6:] == [("train", 4), ("train", 5), ("val", 2), ("val", 3), ("val", 4)]  # nothing asked twice
    pairs = load_pairs(tmp_path / "p.jsonl")
    assert [(p.split, p.meta["attempt"]) for p in pairs] == [("train", 4), ("train", 5), ("val", 4)]


def test_a_random_model_through_the_real_backend_keeps_nothing(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, train=2, val=0, keyword_hard=0)
    code, out, err = run_cli(["pairs", "generate", spec, "--out", "p.jsonl", "--model", tiny_dir, "--device", "cpu",
                              "--max-new-tokens", "4", "--max-attempts", "3"], capsys)  # fmt: skip
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("Loading weights")]
    assert code == 2 and len(lines) == 1 and "kept 0 of 2 asked after 3 replies (not_json 3" in lines[0], err
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl.partial").read_text().splitlines()]
    assert [r["attempt"] for r in rows[1:]] == [0, 1, 2] and rows[0]["backend"]["backend"] == "hf"


def test_the_real_hf_backend_with_a_scripted_model(tmp_path):
    from steerlab.backends.hf import HFBackend
    from steerlab.testing import scripted_model

    def short(n, neg=None):  # a short reply: the tiny tokenizer is slow
        neg = neg or f"As lunch is at {n}, I keep it short."
        return reply(n, pos=f"As reviewers read {n}, I keep it short.", neg=neg, working="Add one.",
                     decision="short", answer=f"It is {n + 1}.")  # fmt: skip

    # attempt k asks about FAMILIES[k % 4]: the family in the prompt decides the scripted reply
    scripts = {
        "family-alpha": [short(1)],
        "family-beta": ["no json here"],
        "family-gamma": [short(2, neg="As lunch is at 2; I keep it short.")],
        "family-delta": [f"```json\n{short(3)}\n```"],
    }
    backend = HFBackend(scripted_model(scripts), batch_size=5)
    spec = write_spec(tmp_path, train=3, val=0, keyword_hard=0)
    with pytest.raises(YieldError, match=r"kept 2 of 3 asked after 5 replies \(not_json 1, surface:punct:; 1, dup"):
        run_generate(str(spec), tmp_path / "p.jsonl", GenSettings(max_attempts=5, max_new_tokens=300, temperature=0,
                     batch_size=5), backend=backend, progress=False)  # fmt: skip
    report = json.loads(report_path(tmp_path / "p.jsonl").read_text())
    train = report["splits"]["train"]
    assert train["rejected"] == {"not_json": 1, "surface:punct:;": 1, "duplicate": 1}
    assert (train["replies"], train["parsed"], train["kept"]) == (5, 4, 2)
    rows = [json.loads(line) for line in journal_path(tmp_path / "p.jsonl").read_text().splitlines()[1:]]
    assert [r["text"] for r in rows] == [short(1), "no json here", short(2, neg="As lunch is at 2; I keep it short."),
                                         f"```json\n{short(3)}\n```", short(1)]  # fmt: skip


def test_budgets_add_up_and_follow_the_pairs_asked():
    assert budgets({"train": 400, "val": 100, "keyword_hard": 100}, 2400) == {"train": 1600, "val": 400,
                                                                                "keyword_hard": 400}  # fmt: skip
    assert budgets({"train": 1, "val": 1, "keyword_hard": 1}, 4) == {"train": 2, "val": 1, "keyword_hard": 1}
    assert budgets({"train": 8, "val": 0, "keyword_hard": 0}, 32) == {"train": 32, "val": 0, "keyword_hard": 0}


def test_parse_reply_takes_json_or_a_fenced_block_only():
    assert parse_reply(' {"a": 1} ') == {"a": 1}
    assert parse_reply('Sure:\n```json\n{"a": 2}\n```\nmore') == {"a": 2}
    assert parse_reply('```\n{"a": 3}\n```') == {"a": 3}
    assert parse_reply('{"a": 1} and some words') is None
    assert parse_reply('{"a": ') is None


def test_prompts_are_fixed_by_the_attempt_and_name_the_keyword_rule(tmp_path):
    spec = load_spec(str(write_spec(tmp_path)))
    assert attempt_choice(spec, 5) == ("family-beta", DECISIONS[1])
    assert prompt_for(spec, "train", 5) == prompt_for(spec, "train", 5) != prompt_for(spec, "train", 6)
    kh = prompt_for(spec, "keyword_hard", 0)[1]["content"]
    assert "no word that begins with any of: review, grad" in kh
    assert "keyword-controlled" not in prompt_for(spec, "train", 0)[1]["content"]
    assert "leaky" in kh and "toy concept" in kh  # named as words never to use


@pytest.mark.integration
def test_smollm2_writes_through_the_whole_path_and_the_counts_add_up(smollm2, tmp_path):
    """Two attempts of 48 tokens (a CPU budget: a JSON pair rarely fits, whatever the yield the counts add up)."""
    from steerlab.backends.hf import HFBackend

    out = tmp_path / "p.jsonl"
    settings = GenSettings(model="smollm2", max_attempts=2, max_new_tokens=48, batch_size=2)
    try:
        report = run_generate("researcher_expectations", out, settings, {"train": 2, "val": 0, "keyword_hard": 0},
                              backend=HFBackend(smollm2, batch_size=2), progress=False)  # fmt: skip
    except YieldError as exc:
        report = exc.report
        assert journal_path(out).exists() and not out.exists()
    train = report["splits"]["train"]
    assert (train["asked"], train["attempts_allowed"], train["replies"]) == (2, 2, 2)
    assert train["replies"] == train["kept"] + sum(train["rejected"].values())
    assert train["parsed"] == train["replies"] - train["rejected"].get("not_json", 0)
    assert (train["kept"] == 2) == report["complete"] == out.exists()
    assert json.loads(report_path(out).read_text()) == report


def test_the_yield_reports_the_surface_audit_of_the_kept_spans(tmp_path):
    """Templated spans (every negative has lunch, every positive reviewers): each split's audit in the yield
    sees it; the set-level audit then refuses to write the file (the next test)."""
    spec = write_spec(tmp_path, train=12, val=0, keyword_hard=0)
    with pytest.raises(YieldError, match="fail the shortcut audit as a set"):
        run_generate(str(spec), tmp_path / "p.jsonl", GenSettings(max_attempts=12),
                     backend=ScriptedBackend(lambda split, k: reply(200 + k)), progress=False)  # fmt: skip
    report = json.loads(report_path(tmp_path / "p.jsonl").read_text())
    audit = report["splits"]["train"]["shortcut_audit"]
    assert report["splits"]["train"]["kept"] == 12 and audit["auroc"] == pytest.approx(1.0)
    words = {f["name"]: (f["positive_rate"], f["negative_rate"]) for f in audit["features"] if f["name"] != "len:words"}
    assert {(0.0, 1.0), (1.0, 0.0)} & set(words.values())  # features found on one side only


SWAP = "Since the {a} at desk {n} says brief, I will keep it to one sentence."
THINGS = ["note", "sign", "memo", "card", "board", "label", "poster", "sheet"]


def test_a_kept_set_that_the_shortcut_audit_flags_is_not_written(tmp_path):
    """Both spans draw their words from one pool, but every negative opens with
    "Honestly," (no listed mark, so every pair passes alone): as a set the spans' surface tells the sides
    apart, so nothing is written, the journal stays, and the line names the word. Without it, the file is
    written."""

    def script(honest):
        def reply_for(split, k):
            n = k + (0 if split == "train" else 1000)
            neg = SWAP.format(a=THINGS[(n * 5 + 3) % 8], n=n)  # both sides draw their word from one pool
            return reply(n, pos=SWAP.format(a=THINGS[n * 3 % 8], n=n),
                         neg=("Honestly, s" + neg[1:]) if honest else neg)  # fmt: skip

        return reply_for

    spec = write_spec(tmp_path, train=30, val=12, keyword_hard=0)
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(YieldError, match=r"fail the shortcut audit as a set: .*/train AUROC 1.00 > 0.85 .*'honestly'"):
        run_generate(str(spec), out, GenSettings(max_attempts=200, batch_size=8), counts={"keyword_hard": 0},
                     backend=ScriptedBackend(script(True)), progress=False)  # fmt: skip
    assert not out.exists() and journal_path(out).exists()
    report = json.loads(report_path(out).read_text())
    flagged = [a["label"] for a in report["shortcut_audit"]["splits"] if a["flagged"]]
    assert report["complete"] and flagged == [f"{CONCEPT}/train", f"{CONCEPT}/val"]
    report = run_generate(str(spec), out, GenSettings(max_attempts=200, batch_size=8), counts={"keyword_hard": 0},
                          overwrite=True, backend=ScriptedBackend(script(False)), progress=False)  # fmt: skip
    assert len(load_pairs(out)) == 42 and not any(a["flagged"] for a in report["shortcut_audit"]["splits"])
