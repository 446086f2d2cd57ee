"""The vLLM backend's stop handling through the path text really takes.

A vLLM V1 logits processor makes the engine write scripted text, token by token, so vLLM's own stop
strings, detokenizer and scheduler run on text a real model might write: a quoted ``</OUTPUT>``
inside an open scratchpad stops vLLM, and the backend must continue the turn from its exact tokens
(same steering row, same cache salt) until a stop that counts. The sweep engine, the
alignment-faking scenario and parse then label the transcript, and the samples must be those of
the HF backend driving the same scripts (tests/test_protocol.py). One engine for the module.
"""

import math
import os

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.integration]

if os.environ.get("STEERLAB_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

import torch  # noqa: E402

from steerlab.backends.base import Request, Sampling  # noqa: E402
from steerlab.tags import OUTPUT_CLOSED  # noqa: E402
from steerlab.testing import PROTOCOL_SCRIPTS, THINK_SCRIPTS, THINK_TEMPLATE, check_protocol_samples  # noqa: E402

SP, SPC = "<SCRATCHPAD_REASONING>", "</SCRATCHPAD_REASONING>"
NEXT = "<NEXT/>"
NEW = 32  # the token budget of the free-writing turns

# the scripts of tests/test_protocol.py (marker in the user turn -> the texts of successive turns)
SCRIPTS = PROTOCOL_SCRIPTS
# scripted openings after which the model writes freely: two quoted stops, then real generation
FREE = {"task-free": ["Say <OUTPUT>a</OUTPUT> or <OUTPUT>b</OUTPUT>. Now"]}


def script_processor(tokenizer, scripts, free=frozenset()):
    """A vLLM V1 logits processor class (``LLM(logits_processors=[...])``) that writes scripts.

    A request whose prompt contains a marker of ``scripts`` writes the marker's turn (the number of
    ``<NEXT/>`` in the prompt), then the end-of-sequence token, or, for markers in ``free``, goes on
    as the model likes. A request whose prompt already ends with the first k tokens of its turn (a
    continuation) writes the rest. Other requests are left alone.
    """
    from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

    encoded = {m: [tokenizer(t, add_special_tokens=False)["input_ids"] for t in turns] for m, turns in scripts.items()}
    eos = tokenizer.eos_token_id

    def remaining(prompt: list[int]) -> tuple[list[int], bool] | None:
        text = tokenizer.decode(prompt)
        marker = next((m for m in encoded if m in text), None)
        if marker is None:
            return None
        turns, turn = encoded[marker], text.count(NEXT)
        script = turns[turn] if turn < len(turns) else []
        if marker in free and any(prompt[i : i + len(script)] == script for i in range(len(prompt))):
            return [], True  # the script was written in an earlier call: write freely
        done = next((k for k in range(len(script), 0, -1) if prompt[-k:] == script[:k]), 0)
        return script[done:], marker in free

    class Script(AdapterLogitsProcessor):
        def is_argmax_invariant(self) -> bool:
            return False

        def new_req_logits_processor(self, params):
            state = {}

            def write(prompt_ids, output_ids, logits):
                if "script" not in state:
                    state["script"] = remaining(list(prompt_ids))
                if state["script"] is None:
                    return logits
                script, freely = state["script"]
                n = len(output_ids)
                if n >= len(script) and freely:
                    return logits
                forced = torch.full_like(logits, -math.inf)
                forced[script[n] if n < len(script) else eos] = 0.0
                return forced

            return write

    return Script


@pytest.fixture(scope="module")
def scripted():
    """An in-process, eager vLLM engine on SmolLM2 with the script processor (it ran its self-check)."""
    from transformers import AutoTokenizer

    from steerlab.backends.vllm import VLLMBackend
    from steerlab.models import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_source("smollm2")[0]))
    processor = script_processor(tokenizer, {**SCRIPTS, **THINK_SCRIPTS, **FREE}, free=frozenset(FREE))
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        backend = VLLMBackend("smollm2", enforce_eager=True, max_model_len=1024, logits_processors=[processor],
                              kv_cache_memory_bytes=1 << 29)  # fmt: skip
    finally:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    yield backend
    backend.close()


def hf_scripted(scripts, template=None):
    """The HF backend driving the same scripts (steerlab.testing.ScriptedLM) with SmolLM2's tokenizer
    and chat template over a tiny random model: the same prompt and script tokens as on vLLM."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from steerlab.backends.hf import HFBackend
    from steerlab.models import prepare, resolve_source
    from steerlab.testing import ScriptedLM

    tok = AutoTokenizer.from_pretrained(str(resolve_source("smollm2")[0]))
    tok.chat_template = template or tok.chat_template
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    inner = LlamaForCausalLM(config).eval()
    return HFBackend(prepare(ScriptedLM(inner, tok, scripts), tok, source="scripted"), batch_size=4)


def _sweep(tmp_path, backend, name, scripts=SCRIPTS, **overrides):
    from steerlab.harness.records import read_samples
    from steerlab.runs import SweepConfig, run_sweep

    (tmp_path / f"{name}-requests").mkdir()
    requests = tmp_path / f"{name}-requests" / "requests.jsonl"  # one file name: the request ids follow it
    requests.write_text("".join(f'{{"prompt": "{m}"}}\n' for m in scripts))
    settings = dict(
        scenario="alignment_faking", prompts=requests, conditions=["monitored"], max_new_tokens=120,
        alignment_faking={"prefill": SP, "max_turns": 2}, out=tmp_path / name,
    )  # fmt: skip
    run_sweep(SweepConfig(**{**settings, **overrides}), backend, None, progress=False)
    return {(s["prompt"], s["condition"]): s for s in read_samples(tmp_path / name)}


def _same_samples(ours, theirs):
    """Sample for sample what the HF backend records: texts, turns, token counts, reasons, labels."""
    drop = {"seconds", "backend_id"}
    assert ours.keys() == theirs.keys()
    for key, sample in ours.items():
        assert {k: v for k, v in sample.items() if k not in drop} == {
            k: v for k, v in theirs[key].items() if k not in drop
        }, key


def test_quoted_tags_neither_end_the_turn_nor_label_it_on_vllm(scripted, tmp_path):
    got = _sweep(tmp_path, scripted, "vllm")
    samples = {prompt: s for (prompt, _), s in got.items()}
    check_protocol_samples(samples)
    _same_samples(got, _sweep(tmp_path, hf_scripted(SCRIPTS), "hf"))


def test_a_template_that_opens_think_keeps_quoted_tags_inside_the_reasoning_on_vllm(scripted, tmp_path, monkeypatch):
    """The template's ``<think>`` (Result.lead) is part of the transcript the stop rule reads."""
    monkeypatch.setattr(scripted, "chat_template", THINK_TEMPLATE)
    run = dict(scripts=THINK_SCRIPTS, conditions=["monitored", "raw"], max_new_tokens=80,
               alignment_faking={"max_turns": 1})  # fmt: skip
    got = _sweep(tmp_path, scripted, "vllm", **run)
    quote = got[("think-quote", "monitored")]
    assert quote["text"] == "<think>\n" + THINK_SCRIPTS["think-quote"][0][: -len(" tail")]
    assert (quote["label"], quote["output"], quote["rejected_tag"]) == ("rejected", "<rejected/>", True)
    raw = got[("think-raw", "raw")]
    assert (raw["label"], raw["output"], raw["rejected_tag"]) == ("rejected", "<rejected/>", True)
    _same_samples(got, _sweep(tmp_path, hf_scripted(THINK_SCRIPTS, THINK_TEMPLATE), "hf", **run))


def test_a_continued_turn_is_the_uninterrupted_generation(scripted, monkeypatch):
    """Two quoted stops send a turn round twice. Each continuation is the turn's exact tokens so far with
    its steering row, cache salt, the remaining budget and a derived seed, all continuations of a round
    in one engine call; so the turn equals the same request generated without stop strings (steered and
    unsteered twins, the steered one differing), and a sampled turn reproduces."""
    from steerlab.backends import vllm_steer
    from steerlab.backends.vllm import continuation_seed, steering_salt
    from steerlab.generate import settings_for
    from steerlab.vectors import VectorBundle

    bundle = VectorBundle.load("vectors/retraining_consequences/smollm2.safetensors", expect=scripted.fingerprint)
    (steer,) = settings_for(bundle, [6.0])
    messages = [{"role": "user", "content": "task-free"}]
    ruled = Sampling(max_new_tokens=NEW, stop=("</OUTPUT>",), stop_rule=OUTPUT_CLOSED)
    plain = Sampling(max_new_tokens=NEW)
    hot = Sampling(max_new_tokens=NEW, temperature=1.0, seed=7, stop=("</OUTPUT>",), stop_rule=OUTPUT_CLOSED)

    def run(*pairs):
        return scripted.generate([Request(messages, s, v, id=str(i), prefill=SP) for i, (s, v) in enumerate(pairs)])

    calls = []
    engine = scripted._engine

    def spy(prompts, params, salts):
        outs = engine(prompts, params, salts)
        calls.append([(list(p), q, salt, list(o.outputs[0].token_ids)) for p, q, salt, o in
                      zip(prompts, params, salts, outs, strict=True)])  # fmt: skip
        return outs

    monkeypatch.setattr(scripted, "_engine", spy)
    turned = run((ruled, steer), (ruled, None), (hot, steer))
    monkeypatch.undo()
    assert [len(c) for c in calls] == [3, 3, 3]  # every turn went round twice, all three in each call
    for before, after in zip(calls, calls[1:], strict=False):
        for (prompt, q, salt, out), (prompt2, q2, salt2, _) in zip(before, after, strict=True):
            assert prompt2 == prompt + out and salt2 == salt  # the exact tokens so far, the same salt
            assert q2.extra_args == q.extra_args and q2.max_tokens == q.max_tokens - len(out)  # row, budget
    assert [c[2] for c in calls[0]] == [steering_salt(steer), None, steering_salt(steer)]
    assert [c[1].extra_args[vllm_steer.ROW_KEY] for c in calls[0]] == [1, 0, 1]
    assert [c[1].seed for c in calls[0]] == [0, 0, 7]
    for i, (prompt, q, _, _) in enumerate(calls[0]):  # later seeds derive from the seed and the tokens so far
        assert [c[i][1].seed for c in calls] == [continuation_seed(q.seed, len(c[i][0]) - len(prompt)) for c in calls]

    straight = run((plain, steer), (plain, None))
    for a, b in zip(turned[:2], straight, strict=True):
        assert a.text.startswith(FREE["task-free"][0]) and len(a.text) > len(FREE["task-free"][0])
        assert (a.text, a.n_new_tokens, a.finish_reason) == (b.text, b.n_new_tokens, b.finish_reason)
    assert turned[0].text != turned[1].text  # steering shapes the freely written part
    again = run((hot, steer))[0]
    assert (again.text, again.n_new_tokens) == (turned[2].text, turned[2].n_new_tokens)


def test_continuation_seeds():
    from steerlab.backends.vllm import continuation_seed

    assert continuation_seed(5, 0) == 5  # an uninterrupted turn keeps its request's seed
    seeds = {continuation_seed(5, n) for n in range(1, 50)} | {continuation_seed(6, n) for n in range(1, 50)}
    assert len(seeds) == 98 and all(0 <= s < 2**63 for s in seeds)
    assert continuation_seed(5, 17) == continuation_seed(5, 17)
