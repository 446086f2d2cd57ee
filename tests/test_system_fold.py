"""Chat templates without a system role (Gemma-2, Mistral v0.1/v0.2) get the system prompt folded
into the first user turn instead of a Jinja traceback; templates with one render as before."""

import json
import logging

import pytest

from steerlab import chat
from steerlab.backends.base import Request, Sampling, render_prompts
from steerlab.backends.hf import HFBackend
from steerlab.chat import folds_system, generation_lead, render_chat
from steerlab.harness.records import read_samples
from steerlab.runs import SweepConfig, run_sweep
from steerlab.testing import CHATML_TEMPLATE, PROTOCOL_SCRIPTS, check_protocol_samples, scripted_model, tiny_model

# as Gemma-2's template: refuses a system turn outright, then insists on user/model alternation
GEMMA_LIKE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# as Mistral v0.1's template: only alternation (a system turn at index 0 breaks it)
MISTRAL_LIKE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

SYSTEM = "You are a careful assistant.\nFollow the rules."
MSGS = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2+2?"}]
FOLDED = [{"role": "user", "content": SYSTEM + "\n\n" + "What is 2+2?"}]


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """Each test finds out afresh (the answer is cached per template for the process)."""
    monkeypatch.setattr(chat, "_FOLDS", {})


@pytest.fixture(scope="module")
def tok():
    return tiny_model(n_layers=1, d_model=16).tokenizer


def _notices(caplog):
    return [r for r in caplog.records if r.name == "steerlab.chat" and "folded" in r.getMessage()]


@pytest.mark.parametrize("template", [GEMMA_LIKE, MISTRAL_LIKE], ids=["gemma", "mistral"])
def test_a_template_without_a_system_role_gets_it_folded_into_the_first_user_turn(tok, template, caplog):
    with pytest.raises(Exception, match="System role not supported|roles must alternate"):  # as today
        tok.apply_chat_template(MSGS, chat_template=template, tokenize=False)
    with caplog.at_level(logging.WARNING, logger="steerlab.chat"):
        got = render_chat(tok, MSGS, template, add_generation_prompt=True)
        again = render_chat(tok, MSGS, template, add_generation_prompt=False)
    assert folds_system(tok, template)
    want = tok.apply_chat_template(FOLDED, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert got == want and SYSTEM in got
    assert again == tok.apply_chat_template(FOLDED, chat_template=template, tokenize=False)
    (notice,) = _notices(caplog)  # once for two renders (and the checks after them)
    assert "rejects a system role" in notice.getMessage()
    # a later turn keeps alternating: [user(system + first), assistant, user]
    turns = [*MSGS, {"role": "assistant", "content": "4"}, {"role": "user", "content": "<NEXT/>"}]
    folded = [*FOLDED, *turns[2:]]
    assert render_chat(tok, turns, template) == tok.apply_chat_template(folded, chat_template=template, tokenize=False)
    # a chat without a system prompt is untouched
    plain = MSGS[1:]
    assert render_chat(tok, plain, template) == tok.apply_chat_template(plain, chat_template=template, tokenize=False)


def test_a_template_with_a_system_role_renders_byte_identically(tok, caplog):
    plain_sys = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    with caplog.at_level(logging.WARNING, logger="steerlab.chat"):
        for template in (CHATML_TEMPLATE, plain_sys, chat.FALLBACK_CHAT_TEMPLATE):
            for gen in (False, True):
                want = tok.apply_chat_template(MSGS, chat_template=template, tokenize=False, add_generation_prompt=gen)
                assert render_chat(tok, MSGS, template, add_generation_prompt=gen) == want
            assert not folds_system(tok, template)
    assert render_chat(tok, MSGS, plain_sys) == f"<system>{SYSTEM}</system><user>What is 2+2?</user>"
    assert not _notices(caplog)


def test_a_template_that_fails_for_another_reason_still_raises(tok):
    broken = "{{ raise_exception('this template renders nothing') }}"
    assert not folds_system(tok, broken)
    with pytest.raises(Exception, match="renders nothing"):
        render_chat(tok, MSGS, broken)


def test_render_prompts_and_the_lead_fold_too(tok):
    reqs = [Request(MSGS, Sampling(max_new_tokens=2), id="a", prefill="Sure")]
    (ids,), (lead,) = render_prompts(tok, GEMMA_LIKE, chat.DEFAULT_CHAT_DATE, reqs)
    want = tok.apply_chat_template(FOLDED, chat_template=GEMMA_LIKE, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == want + "Sure" and lead == ""
    assert generation_lead(tok, MSGS, GEMMA_LIKE) == ""


def test_hf_backend_generates_for_a_system_prompt_on_a_gemma_like_template(caplog):
    loaded = tiny_model()
    loaded.tokenizer.chat_template = GEMMA_LIKE
    backend = HFBackend(loaded)
    request = Request(MSGS, Sampling(max_new_tokens=3), id="r")
    with caplog.at_level(logging.WARNING, logger="steerlab.chat"):
        (ids,) = backend.prompt_ids([request])
        (result,) = backend.generate([request])
        backend.generate([request])
    text = loaded.tokenizer.decode(ids)
    assert text.startswith(loaded.tokenizer.bos_token + "<start_of_turn>user\n" + SYSTEM + "\n\nWhat is 2+2?")
    assert "<start_of_turn>system" not in text and text.endswith("<start_of_turn>model\n")
    assert result.n_prompt_tokens == len(ids) and result.n_new_tokens >= 1
    assert len(_notices(caplog)) == 1


def test_an_alignment_faking_run_on_a_template_without_a_system_role(tmp_path, caplog):
    """The scratchpad protocol over two turns through the sweep engine: the system prompt rides in
    the first user turn and the later turns keep alternating."""
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"prompt": m}) + "\n" for m in PROTOCOL_SCRIPTS))
    loaded = scripted_model(PROTOCOL_SCRIPTS)
    loaded.tokenizer.chat_template = GEMMA_LIKE
    cfg = SweepConfig(
        scenario="alignment_faking", prompts=requests, conditions=["monitored"], max_new_tokens=120,
        alignment_faking={"prefill": "<SCRATCHPAD_REASONING>", "max_turns": 2}, out=tmp_path / "run",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="steerlab.chat"):
        run_sweep(cfg, HFBackend(loaded, batch_size=4), None, progress=False)
    samples = {s["prompt"]: s for s in read_samples(tmp_path / "run")}
    check_protocol_samples(samples)
    assert all(s["system"] for s in samples.values())  # the condition had its system prompt
    assert len(_notices(caplog)) == 1


def test_the_backend_description_records_the_fold():
    """The run header holds the backend's description: a folding template says so there."""
    loaded = tiny_model()
    assert HFBackend(loaded).describe()["system_folded"] is False
    loaded.tokenizer.chat_template = GEMMA_LIKE
    assert HFBackend(loaded).describe()["system_folded"] is True
