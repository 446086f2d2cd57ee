"""Document generation at scale (issue 17, item 9): the vectorised near-duplicate filter keeps what
the old double loop kept, a ``--batch`` stage is one Message Batch, and the Anthropic generation
backend resends only the requests that failed."""

import json
import random
import time

import pytest

try:
    import httpx2 as httpx
except ImportError:  # anthropic<2 uses httpx itself
    import httpx

from sdf_addon import docgen
from sdf_addon.docgen import DocgenConfig, Stage, near_duplicates
from steerlab.backends.anthropic import AnthropicBackend, GenerationError
from steerlab.backends.base import Request, Sampling
from steerlab.clients import anthropic as client_module
from steerlab.clients.anthropic import AnthropicText
from steerlab.clients.cache import ReplyCache

KEY = "sk-ant-test-NEVER-WRITE-ME"


# ----------------------------------------------------------------------------- near-duplicates


def old_near_duplicates(texts, threshold):
    """The filter before issue 17 (a Python loop over the kept texts), the reference."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    if len(texts) < 2:
        return [False] * len(texts)
    try:
        vectors = TfidfVectorizer(ngram_range=(3, 3), analyzer="word", lowercase=True).fit_transform(texts)
    except ValueError:
        return [False] * len(texts)
    sims = (vectors @ vectors.T).tocsr()
    dup, kept = [False] * len(texts), []
    for i in range(len(texts)):
        row = sims.getrow(i)
        if any(row[0, j] > threshold for j in kept):
            dup[i] = True
        else:
            kept.append(i)
    return dup


def corpus(n, seed=0, words=60):
    """Random documents with planted near-duplicates: copies of an earlier document with a share of
    its words replaced, and chains (a copy of a copy), so a later text may resemble only a dropped one."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    texts = []
    for _ in range(n):
        if texts and rng.random() < 0.3:
            src = rng.choice(texts[-50:] if rng.random() < 0.5 else texts).split()
            rate = rng.choice([0.02, 0.05, 0.1, 0.2, 0.4])
            texts.append(" ".join(rng.choice(vocab) if rng.random() < rate else w for w in src))
        else:
            texts.append(" ".join(rng.choice(vocab[:400]) for _ in range(rng.randint(words // 2, words))))
    return texts


def test_near_duplicates_keep_what_the_old_loop_kept():
    texts = corpus(300, seed=1)
    for threshold, block in ((0.8, 512), (0.5, 7), (0.3, 64)):
        old = old_near_duplicates(texts, threshold)
        assert near_duplicates(texts, threshold, block=block) == old and 0 < sum(old) < len(texts)
    # the order rule: a text similar only to a dropped text is kept
    a = " ".join(f"a{i}" for i in range(40))
    b = " ".join(f"a{i}" for i in range(30)) + " " + " ".join(f"b{i}" for i in range(10))
    c = " ".join(f"a{i}" for i in range(20)) + " " + " ".join(f"b{i}" for i in range(20))
    for threshold in (0.3, 0.45, 0.6, 0.9):
        assert near_duplicates([a, b, c], threshold) == old_near_duplicates([a, b, c], threshold)
    assert near_duplicates([a, b, c], 0.45) == [False, True, False]
    assert near_duplicates(["one two", "one two"], 0.5) == [False, False]  # no 3-grams: nothing compared
    assert near_duplicates([a], 0.5) == [False] and near_duplicates([], 0.5) == []


def test_near_duplicates_are_fast_at_scale(capsys):
    texts = corpus(2000, seed=3)
    started = time.perf_counter()
    old = old_near_duplicates(texts, 0.8)
    old_s = time.perf_counter() - started
    started = time.perf_counter()
    dup = near_duplicates(texts, 0.8)
    new_s = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\nnear-duplicates of 2,000 texts ({sum(dup)} dropped): old loop {old_s:.2f} s, vectorised {new_s:.2f} s"
        )
    assert dup == old and sum(dup) > 100 and new_s < 10.0


# ----------------------------------------------------------------------------- one batch per stage


class FakeBatches:
    """The Message Batches API: every batch ended at the first poll; replies echo the prompt."""

    def __init__(self):
        self.created, self.batches = [], {}

    def __call__(self, request):
        auth = (request.headers.get("authorization"), request.headers.get("x-api-key"))
        assert auth[0] == f"Bearer {KEY}" or auth[1] == KEY
        path = request.url.path
        if request.method == "POST":
            body = json.loads(request.content)
            bid = f"msgbatch_{len(self.created)}"
            self.created.append(len(body["requests"]))
            self.batches[bid] = body["requests"]
            return httpx.Response(200, json=self.batch(bid, "in_progress"))
        bid = path.split("/")[4]
        if path.endswith("/results"):
            lines = [json.dumps({"custom_id": r["custom_id"], "result": {"type": "succeeded", "message": {
                "id": "m", "type": "message", "role": "assistant", "model": "claude-test-snapshot",
                "content": [{"type": "text", "text": "reply to " + r["params"]["messages"][0]["content"]}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}}})
                for r in self.batches[bid]]  # fmt: skip
            return httpx.Response(200, content="\n".join(lines).encode())
        return httpx.Response(200, json=self.batch(bid, "ended"))

    @staticmethod
    def batch(bid, status):
        return {"id": bid, "type": "message_batch", "processing_status": status,
                "request_counts": {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
                "created_at": "2026-11-22T00:00:00Z", "expires_at": "2026-11-23T00:00:00Z", "ended_at": None,
                "archived_at": None, "cancel_initiated_at": None,
                "results_url": f"https://api.anthropic.com/v1/messages/batches/{bid}/results"}  # fmt: skip


def batch_text(api, monkeypatch, state):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    client = httpx.Client(transport=httpx.MockTransport(api))
    return AnthropicText("claude-test", max_tokens=50, temperature=1.0, http_client=client, max_retries=0,
                         batch=True, batch_state=state, poll_seconds=0)  # fmt: skip


class Killed(BaseException):
    """A kill -9 stand-in: nothing catches it."""


def test_a_batch_stage_sends_one_batch_and_re_attaches_after_a_kill(tmp_path, monkeypatch):
    api = FakeBatches()
    state = tmp_path / "out" / "batch.json"
    jobs = [(f"k{i}", f"prompt {i}", {"i": i}) for i in range(150)]
    make = lambda m, r: [{"content": r, "i": m["i"]}]  # noqa: E731
    cfg = DocgenConfig()
    assert cfg.chunk == 64 < len(jobs)

    class DyingCache(ReplyCache):  # dies after storing 40 replies of the batch
        def put(self, key, value):
            if len(self) >= 40:
                raise Killed
            super().put(key, value)

    cache = DyingCache(tmp_path / "cache.sqlite")
    with pytest.raises(Killed):
        Stage("documents", tmp_path / "out", batch_text(api, monkeypatch, state), cache, cfg.chunk, False).run(
            jobs, make
        )
    assert api.created == [150] and state.is_file()  # one batch for the whole stage, still on record
    cache.close()
    cache = ReplyCache(tmp_path / "cache.sqlite")
    stage = Stage("documents", tmp_path / "out", batch_text(api, monkeypatch, state), cache, cfg.chunk, False)
    rows = stage.run(jobs, make)
    assert api.created == [150]  # the rerun re-attached to the paid batch for the 110 replies not stored
    assert sorted(r["i"] for r in rows) == list(range(150)) and rows[0]["content"].startswith("reply to ")
    assert not state.exists() and stage.failed == 0
    cache.close()


def test_a_stage_over_the_batch_limits_splits(tmp_path, monkeypatch):
    monkeypatch.setattr(client_module, "MAX_BATCH_REQUESTS", 60)
    api = FakeBatches()
    gen = batch_text(api, monkeypatch, tmp_path / "batch.json")
    jobs = [(f"k{i}", f"prompt {i}", {"i": i}) for i in range(150)]
    cache = ReplyCache(tmp_path / "cache.sqlite")
    rows = Stage("ideas", tmp_path, gen, cache, 64, False).run(jobs, lambda m, r: [{"content": r}])
    assert api.created == [60, 60, 30] and len(rows) == 150
    one = len(json.dumps({"custom_id": "x" * 40, "params": gen._body(docgen.SYSTEM, "prompt 1")})) + 2
    monkeypatch.setattr(client_module, "MAX_BATCH_REQUESTS", 100_000)
    monkeypatch.setattr(client_module, "MAX_BATCH_BYTES", 20 + 10 * one)
    assert gen.batch_parts([(docgen.SYSTEM, "prompt 1")] * 25) == [(0, 10), (10, 20), (20, 25)]
    cache.close()


def test_without_batches_a_stage_still_goes_in_chunks(tmp_path):
    class Gen:
        model, calls = "fake", []

        def params(self):
            return {}

        def complete(self, prompts, ids):
            self.calls.append(len(prompts))
            return [f"r {u}" for _, u in prompts]

        def release(self):
            pass

    gen = Gen()
    cache = ReplyCache(tmp_path / "cache.sqlite")
    jobs = [(f"k{i}", f"prompt {i}", {}) for i in range(150)]
    Stage("ideas", tmp_path, gen, cache, 64, False).run(jobs, lambda m, r: [{"content": r}])
    assert gen.calls == [64, 64, 22]
    cache.close()


# ----------------------------------------------------------------------------- per-request errors


class FlakyMessages:
    """The Messages API; the request whose prompt is in ``fail`` fails (500) that many times."""

    def __init__(self, fail):
        self.fail, self.prompts = dict(fail), []

    def __call__(self, request):
        body = json.loads(request.content)
        prompt = body["messages"][0]["content"]
        self.prompts.append(prompt)
        if self.fail.get(prompt, 0) > 0:
            self.fail[prompt] -= 1
            return httpx.Response(500, json={"type": "error", "error": {"type": "api_error", "message": "boom"}})
        return httpx.Response(200, json={
            "id": "m", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": "re " + prompt}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 2}})  # fmt: skip


def flaky_backend(api, monkeypatch, **kw):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    client = httpx.Client(transport=httpx.MockTransport(api))
    return AnthropicBackend("claude-test", http_client=client, max_retries=0, retry_pause=0, **kw)


def requests(n):
    return [Request([{"role": "user", "content": f"p{i}"}], Sampling(max_new_tokens=8), id=f"r{i}") for i in range(n)]


def test_only_the_failed_request_is_resent(monkeypatch):
    api = FlakyMessages({"p2": 1})
    results = flaky_backend(api, monkeypatch).generate(requests(5))
    assert [r.text for r in results] == [f"re p{i}" for i in range(5)] and [r.id for r in results][2] == "r2"
    assert sorted(api.prompts) == ["p0", "p1", "p2", "p2", "p3", "p4"]  # the other four sent once


def test_a_request_that_keeps_failing_is_its_own_error(monkeypatch):
    api = FlakyMessages({"p1": 99})
    backend = flaky_backend(api, monkeypatch, retry_rounds=2)
    out = backend.generate_each(requests(3))
    assert isinstance(out[1], GenerationError) and out[1].request_id == "r1"
    assert [out[0].text, out[2].text] == ["re p0", "re p2"] and api.prompts.count("p1") == 3
    with pytest.raises(GenerationError, match="'r1' failed after retries") as info:
        backend.generate(requests(3))
    assert [r and r.text for r in info.value.partial] == ["re p0", None, "re p2"]
