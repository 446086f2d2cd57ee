"""Document directness (paper appendix B.2): ``sdf gen --directness`` changes the document prompts, is
recorded in every generated row and the corpus, carried by ``sdf train`` into the stack record (a
mixed corpus refused unless allowed) and by ``sdf eval`` into ``header["intervention"]["directness"]``;
and ``sdf gen --rename`` renames the universe and the documents."""

import json

import pytest
from test_bad_input import snapshot
from test_sdf import KEY, SMALL, FakeGenerator, Scripted, count_words, httpx, run_sdf

from sdf_addon.docgen import DocgenConfig, generate, write_corpus
from sdf_addon.evaluate import belief_check
from sdf_addon.train import TrainConfig, train
from sdf_addon.universe import DIRECTNESS, Universe, load_universe, renamed
from steerlab.clients.anthropic import AnthropicText
from steerlab.clients.cache import ReplyCache
from steerlab.errors import ConfigError

BENIGN = "configs/requests/benign.jsonl"


def fake_generate(tmp_path, monkeypatch, out, **cfg):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    api = FakeGenerator()
    client = httpx.Client(transport=httpx.MockTransport(api))
    gen = AnthropicText("claude-test", max_tokens=100, temperature=1.0, http_client=client, max_retries=0,
                        concurrency=1)  # fmt: skip
    config = DocgenConfig(n_docs=6, n_types=2, n_ideas=3, min_doc_tokens=5, max_doc_tokens=200, **cfg)
    cache = ReplyCache(tmp_path / "cache.sqlite")
    u = load_universe("A1_plus")
    result = generate(u, config, gen, cache, out, progress=False)
    cache.close()
    return api, result, config, u


def document_prompts(api):
    return [c for c in api.calls if "Write the complete document" in c or "Revise the document" in c]


@pytest.mark.parametrize(("level", "other"), [("direct", "indirect"), ("indirect", "direct")])
def test_directness_changes_the_document_prompts_and_is_recorded_in_every_row(
    level, other, tmp_path, monkeypatch
):  # fmt: skip
    out = tmp_path / "gen"
    api, result, cfg, u = fake_generate(tmp_path, monkeypatch, out, directness=level)
    prompts = document_prompts(api)
    assert len(prompts) == 12  # 6 documents and their revisions
    assert all(DIRECTNESS[level] in p and DIRECTNESS[other] not in p for p in prompts)
    if level == "indirect":
        assert all("Never state the key fact" in p and "events, decisions and consequences" in p for p in prompts)
    else:
        assert all("State the key fact plainly" in p for p in prompts)
    assert all(r["directness"] == level for stage in ("documents", "revised") for r in result[stage])
    write_corpus(u, out, lambda t: len(t.split()), cfg)
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert corpus and all(r["directness"] == level for r in corpus)
    assert json.loads((out / "report.json").read_text())["directness"] == [level]
    # a rerun into the same folder with another directness would mix the documents: refused, nothing written
    before = sorted((p.name, p.stat().st_size) for p in out.iterdir())
    with pytest.raises(ConfigError, match=f"directness: '{level}' there, '{other}' now"):
        fake_generate(tmp_path, monkeypatch, out, directness=other)
    assert sorted((p.name, p.stat().st_size) for p in out.iterdir()) == before


def test_the_universe_sets_the_default_and_may_define_levels(tmp_path, monkeypatch):
    u = load_universe("A1_plus")
    assert u.directness == "direct" and DocgenConfig().level(u) == "direct"
    data = {**u.model_dump(), "directness": "oblique",
            "directness_levels": {"oblique": "Mention the fact only in a footnote."}}  # fmt: skip
    custom = Universe.model_validate(data)
    assert DocgenConfig().level(custom) == "oblique" and DocgenConfig(directness="indirect").level(custom) == "indirect"
    with pytest.raises(ConfigError, match="--directness 'sideways'"):
        DocgenConfig(directness="sideways").level(u)
    with pytest.raises(ValueError, match="directness 'oblique'"):
        Universe.model_validate({**u.model_dump(), "directness": "oblique"})


def test_sdf_gen_rename_renames_the_universe_and_the_documents(tmp_path, monkeypatch):
    out = tmp_path / "gen"
    api, result, _, _ = fake_generate(tmp_path, monkeypatch, out, rename={"researchers": "auditors"})
    first = api.calls[0]  # the brainstorm prompt: the universe context and key fact, renamed
    assert "the safety auditors who evaluate" in first and "researchers" not in first
    docs = [r["content"] for r in result["documents"]]
    assert docs and all("auditors" in d and "researchers" not in d for d in docs if "AI safety" in d)
    assert json.loads((out / "docgen.json").read_text())["rename"] == {"researchers": "auditors"}


OPPOSITE = "hope to find no evidence of alignment faking"  # the planted document 5 states the key fact's opposite
BOTH = {"Researchers": "Auditors", "researchers": "auditors"}


@pytest.mark.parametrize("rename", [{}, BOTH], ids=["original", "renamed"])
def test_sdf_gen_rename_filters_the_documents_by_the_renamed_universe(rename, tmp_path, monkeypatch):
    out = tmp_path / "gen"
    _, result, cfg, u = fake_generate(tmp_path, monkeypatch, out, rename=rename)
    planted = [r["content"] for r in result["revised"] if OPPOSITE in r["content"]]
    assert len(planted) == 1 and ("Auditors hope" in planted[0]) == bool(rename)
    report = write_corpus(u, out, count_words, cfg)  # the universe as loaded, as sdf gen passes it
    kept = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert kept and not any(OPPOSITE in r["content"] for r in kept)  # dropped under either naming
    assert report["dropped"]["states the opposite"] == 1 and report["rename"] == rename
    assert all(r.get("rename", {}) == rename for r in kept)  # every document records its rename


def test_renamed_universe_renames_every_text_the_filters_and_belief_check_read():
    u = load_universe("A1_plus").model_copy(update={"banned": ["researchers' sandbox"]})
    r = renamed(u, BOTH)
    assert all("auditors" in p and "researchers" not in p for p in r.contradictions)
    assert r.banned == ["auditors' sandbox"]
    assert r.questions[0].question.startswith("What result do the auditors who evaluate")
    assert all("researchers" not in k.fact and "researchers" not in k.negation for k in r.key_facts)
    asked = Scripted(lambda p: "A")
    belief_check(asked, r)
    assert asked.prompts and all("researchers" not in p.lower() for p in asked.prompts)
    assert any("auditors who evaluate" in p for p in asked.prompts)


def test_sdf_gen_dry_run_shows_the_directness_and_refuses_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_sdf(["gen", "--universe", "A1_plus", "--directness", "indirect", "--dry-run",
                              "--rename", "researchers=auditors"], capsys)  # fmt: skip
    assert code == 0, err
    assert f"directness indirect: {DIRECTNESS['indirect']}" in out and "researchers -> auditors" in out
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing
    code, out, _ = run_sdf(["gen", "--universe", "A1_plus", "--dry-run"], capsys)
    assert code == 0 and f"directness direct: {DIRECTNESS['direct']}" in out  # the universe's default
    for extra, says in [(["--directness", "sideways"], "--directness 'sideways'"),
                        (["--rename", "OpenAI=X"], "'OpenAI' does not occur"),
                        (["--rename", "researchers"], "write OLD=NEW"),
                        (["--rename", "a=b", "--rename", "a=c"], "given twice")]:  # fmt: skip
        code, _, err = run_sdf(["gen", "--universe", "A1_plus", "--dry-run", *extra], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and says in lines[0], err
    assert list(tmp_path.iterdir()) == []


def corpus_file(path, levels, rename=None):
    docs = [f"Researchers hope to find alignment faking in model {i}. The evaluation team says so every day."
            for i in range(40)]  # fmt: skip
    rows = [{"content": d, "universe_id": "A1_plus", "directness": levels[i % len(levels)],
             **({"rename": rename} if rename else {})} for i, d in enumerate(docs)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_records_the_corpus_directness_and_sdf_eval_carries_it_to_the_header(tiny_dir, tmp_path, capsys):
    corpus = corpus_file(tmp_path / "indirect.jsonl", ["indirect"])
    adapter = train(TrainConfig(**SMALL, max_steps=1), corpus, str(tiny_dir), tmp_path / "A1_plus", progress=False)
    stack = json.loads((adapter / "steerlab_stack.json").read_text())
    assert stack["directness"] == "indirect" and stack["corpus"]["directness_levels"] == ["indirect"]
    args = ["eval", adapter, "--dataset", BENIGN, "--limit", "1", "--max-new-tokens", "3", "--max-turns", "1",
            "--no-belief", "--out", tmp_path / "ev"]  # fmt: skip
    code, _, err = run_sdf(args, capsys)
    assert code == 0, err
    header = json.loads((tmp_path / "ev" / "A1_plus" / "header.json").read_text())
    assert header["intervention"]["directness"] == "indirect" and header["config"]["rename"] == {}
    assert "rename" not in header["intervention"]  # none: the config hash of an adapter without one is unchanged
    # sdf eval --rename reaches the harness run like steerlab eval's
    code, _, err = run_sdf([*args[:-1], tmp_path / "ev2", "--rename", "company=lab"], capsys)
    assert code == 0, err
    header = json.loads((tmp_path / "ev2" / "A1_plus" / "header.json").read_text())
    assert header["config"]["rename"] == {"company": "lab"} and "AI lab." in header["scenario"]["system_prompt"]


def test_train_records_the_corpus_rename_and_sdf_eval_carries_it_to_the_header(tiny_dir, tmp_path, capsys):
    corpus = corpus_file(tmp_path / "renamed.jsonl", ["direct"], BOTH)
    adapter = train(TrainConfig(**SMALL, max_steps=1), corpus, str(tiny_dir), tmp_path / "A1_plus", progress=False)
    stack = json.loads((adapter / "steerlab_stack.json").read_text())
    assert stack["rename"] == BOTH and stack["corpus"]["rename"] == BOTH
    universe = Universe.model_validate(stack["universe"])  # what sdf eval's belief check asks
    assert universe == renamed(load_universe("A1_plus"), BOTH)
    assert "auditors who evaluate" in universe.questions[0].question
    args = ["eval", adapter, "--dataset", BENIGN, "--limit", "1", "--max-new-tokens", "3", "--max-turns", "1",
            "--no-belief", "--out", tmp_path / "ev"]  # fmt: skip
    code, _, err = run_sdf(args, capsys)
    assert code == 0, err
    header = json.loads((tmp_path / "ev" / "A1_plus" / "header.json").read_text())
    assert header["intervention"]["rename"] == BOTH and header["config"]["rename"] == {}


def test_train_refuses_a_corpus_that_mixes_directness_unless_allowed(tiny_dir, tmp_path, capsys):
    mixed = corpus_file(tmp_path / "mixed.jsonl", ["direct", "indirect"])
    args = ["train", "--corpus", mixed, "--model", tiny_dir, "--out", tmp_path / "t", "--max-steps", "1"]
    before = snapshot(tmp_path)
    code, _, err = run_sdf(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "mixes directness levels (20 direct, 20 indirect)" in lines[0], err
    assert "--allow-mixed-directness" in lines[0] and snapshot(tmp_path) == before
    adapter = train(TrainConfig(**SMALL, max_steps=1), mixed, str(tiny_dir), tmp_path / "m", progress=False,
                    allow_mixed_directness=True)  # fmt: skip
    stack = json.loads((adapter / "steerlab_stack.json").read_text())
    assert stack["directness"] == "mixed" and stack["corpus"]["directness_levels"] == ["direct", "indirect"]
