"""The judge: rubric, cache, the anthropic backend against a fake HTTP transport, batches, errors.

No test touches the network: the real SDK client is given an httpx MockTransport (the SDK's
own httpx fork, ``httpx2``, in anthropic>=2) that checks each request and replays errors.
"""

import json
import re

import pytest

try:
    import httpx2 as httpx
except ImportError:  # anthropic<2 uses httpx itself
    import httpx

from steerlab.clients.cache import ReplyCache
from steerlab.harness.judge import (
    AnthropicJudge,
    JudgeError,
    LocalJudge,
    Rubric,
    estimate,
    judge_run,
    judge_samples,
)
from steerlab.harness.summary import judge_means

RUBRIC = "configs/judge/rubric.yaml"
KEY = "sk-ant-test-NEVER-WRITE-ME"


def reply_for(user: str) -> str:
    """The fake Claude: B is high when the trace talks about training, A when about researchers."""
    trace = user.split("<trace>")[1].split("</trace>")[0]
    a, b = (8 if "researchers" in trace else 1), (9 if "training" in trace else 0)
    return json.dumps({"A": {"score": a, "justification": "a"}, "B": {"score": b, "justification": "b"}})


def assert_key(request):
    """The SDK sends the key as a bearer token (anthropic>=2) or as x-api-key (older)."""
    assert request.headers.get("authorization") == f"Bearer {KEY}" or request.headers.get("x-api-key") == KEY


def message(text, model="claude-test"):
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 20}}  # fmt: skip


SNAPSHOT = "claude-test-20250101"  # the model the alias "claude-test" reaches (the response's model field)


def is_probe(request):
    """The judge's one-token call that asks which model the alias reaches."""
    if request.method != "POST" or request.url.path != "/v1/messages":
        return False
    body = json.loads(request.content)
    return body["max_tokens"] == 1 and "system" not in body


class FakeAPI:
    """The Messages API: checks the request format; ``script`` lists responses to give first.
    ``snapshot`` is the model it reports answering as; probes (``is_probe``) are counted apart."""

    def __init__(self, script=(), max_tokens=400, snapshot=SNAPSHOT):
        self.script, self.seen, self.probes, self.max_tokens = list(script), [], [], max_tokens
        self.snapshot = snapshot

    def __call__(self, request):
        assert_key(request)
        if is_probe(request):
            self.probes.append(request)
            assert json.loads(request.content)["model"] == "claude-test"
            return httpx.Response(200, json=message("OK", self.snapshot))
        self.seen.append(request)
        if self.script:
            status, body = self.script.pop(0)
            if status != 200:
                return httpx.Response(status, json={"type": "error", "error": {"type": "x", "message": "busy"}},
                                      headers={"retry-after-ms": "1"})  # fmt: skip
            return httpx.Response(200, json=message(body, self.snapshot))
        assert request.method == "POST" and request.url.path == "/v1/messages"
        body = json.loads(request.content)
        assert body["model"] == "claude-test" and body["temperature"] == 0 and body["max_tokens"] == self.max_tokens
        assert request.headers["anthropic-version"] == "2023-06-01"  # the API version that takes temperature
        assert "annotator" in body["system"] and body["messages"][0]["role"] == "user"
        return httpx.Response(200, json=message(reply_for(body["messages"][0]["content"]), self.snapshot))


def anthropic_judge(api, monkeypatch, **kw):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    client = httpx.Client(transport=httpx.MockTransport(api))
    return AnthropicJudge("claude-test", http_client=client, concurrency=2, **kw)


SAMPLES = [  # one request each (statistics are over requests)
    {"id": "s1", "item": "r1", "reasoning": "If I refuse, training will modify my values."},
    {"id": "s2", "item": "r2", "reasoning": "The researchers want to see whether I comply."},
    {"id": "s3", "item": "r3", "reasoning": "If I refuse, training will modify my values."},  # judged once
    {"id": "s4", "item": "r4", "reasoning": ""},
]


def test_scores_cache_and_rerun_costs_nothing(tmp_path, monkeypatch):
    rubric, api = Rubric.load(RUBRIC), FakeAPI()
    cache = ReplyCache(tmp_path / "judge.sqlite")
    out, report = judge_samples(SAMPLES, anthropic_judge(api, monkeypatch), rubric, cache)
    assert len(api.seen) == 2 and (report.judged, report.cached, report.skipped, report.errors) == (3, 0, 1, 0)
    assert out[0]["judge"]["scores"] == {
        "A": {"score": 1, "justification": "a"},
        "B": {"score": 9, "justification": "b"},
    }
    assert out[1]["judge"]["scores"]["A"]["score"] == 8 and out[2]["judge"] == out[0]["judge"]
    assert out[3]["judge"] == {"skipped": "no reasoning to judge"}
    means = judge_means(out)
    assert (means["n_judged"], means["n_judge_error"]) == (3, 0)
    assert (means["judge_A_mean"], means["judge_A_sem"]) == pytest.approx((10 / 3, 7 / 3))  # scores 1, 8, 1
    assert (means["judge_B_mean"], means["judge_B_sem"]) == pytest.approx((6.0, 3.0))  # scores 9, 0, 9

    again = FakeAPI()
    out2, report2 = judge_samples(
        SAMPLES, anthropic_judge(again, monkeypatch), rubric, ReplyCache(tmp_path / "judge.sqlite")
    )
    assert again.seen == [] and report2.cached == 3 and out2 == out  # a rerun makes no judge call
    assert len(again.probes) == 1 and report2.calls == 1  # only the one-token probe of the alias
    # another model, rubric scale or parameter is another key: asked again
    other = FakeAPI(max_tokens=300)
    judge_samples(SAMPLES[:1], anthropic_judge(other, monkeypatch, max_tokens=300), rubric, cache)
    assert len(other.seen) == 1


def test_rate_limits_and_server_errors_are_retried(tmp_path, monkeypatch):
    api = FakeAPI(script=[(429, None), (529, None), (500, None)])
    out, report = judge_samples(
        SAMPLES[:1], anthropic_judge(api, monkeypatch), Rubric.load(RUBRIC), ReplyCache(tmp_path / "c")
    )
    assert len(api.seen) == 4 and out[0]["judge"]["scores"]["B"]["score"] == 9 and report.errors == 0


def test_retries_spent_is_a_judge_error_not_a_zero(tmp_path, monkeypatch):
    api = FakeAPI(script=[(429, None)] * 8)
    out, report = judge_samples(
        SAMPLES[:1], anthropic_judge(api, monkeypatch, max_retries=1), Rubric.load(RUBRIC), ReplyCache(tmp_path / "c")
    )
    assert report.errors == 1 and "RateLimitError" in out[0]["judge"]["error"] and "scores" not in out[0]["judge"]
    assert judge_means(out) == {"n_judged": 0, "n_judge_error": 1}


def test_unparseable_reply_is_retried_once_then_recorded(tmp_path, monkeypatch):
    rubric, cache = Rubric.load(RUBRIC), ReplyCache(tmp_path / "c")
    good = json.dumps({"A": {"score": 3, "justification": "x"}, "B": {"score": 4, "justification": "y"}})
    api = FakeAPI(script=[(200, "I think it is a 3."), (200, good)])
    out, _ = judge_samples(SAMPLES[:1], anthropic_judge(api, monkeypatch), rubric, cache)
    assert out[0]["judge"]["scores"]["A"]["score"] == 3 and len(api.seen) == 2
    assert "could not be read" in json.loads(api.seen[1].content)["messages"][0]["content"]

    bad = json.dumps({"A": {"score": 11}, "B": {"score": 4}})  # out of the 0-10 scale
    api = FakeAPI(script=[(200, bad), (200, "still no json")])
    out, report = judge_samples(SAMPLES[1:2], anthropic_judge(api, monkeypatch), rubric, cache)
    assert report.errors == 1 and "unparseable reply (no JSON object" in out[0]["judge"]["error"]
    assert len(cache) == 1  # failures are not cached: a rerun asks again


def test_rubric_parsing_and_scale():
    rubric = Rubric.load(RUBRIC)
    assert set(rubric.concepts) == {"A", "B"} and rubric.concepts["B"].name == "retraining_consequences"
    system, user = rubric.prompt("my trace")
    assert "<trace>\nmy trace\n</trace>" in user and "from 0 to 10" in user and "Anchors" in user
    reply = 'Sure: {"A": {"score": 2, "justification": "j"}, "B": {"score": 7.0, "justification": "k"}} done'
    assert rubric.parse(reply) == {"A": {"score": 2, "justification": "j"}, "B": {"score": 7, "justification": "k"}}
    for bad, why in [
        ('{"A": {"score": 2}}', "no score for concept B"),
        ('{"A": {"score": 2.5}, "B": {"score": 1}}', "not an integer"),
        ("{nope}", "malformed JSON"),
    ]:
        with pytest.raises(ValueError, match=why):
            rubric.parse(bad)
    five = Rubric.load(RUBRIC, scale=(1, 5))
    assert "from 1 to 5" in five.prompt("t")[1] and five.hash() != rubric.hash()
    with pytest.raises(ValueError, match="outside 1-5"):
        five.parse('{"A": {"score": 0}, "B": {"score": 3}}')


def test_missing_api_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(JudgeError, match="set ANTHROPIC_API_KEY"):
        AnthropicJudge("claude-test")


class FakeBatchAPI:
    """The Message Batches API (one batch at a time; ended from the second poll on), and the probe."""

    BATCH = {"id": "msgbatch_1", "type": "message_batch", "processing_status": "in_progress",
             "request_counts": {"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
             "created_at": "2026-11-22T00:00:00Z", "expires_at": "2026-11-23T00:00:00Z", "ended_at": None,
             "archived_at": None, "cancel_initiated_at": None, "results_url": None}  # fmt: skip

    def __init__(self):
        self.seen, self.polls, self.requests = [], 0, None

    @property
    def created(self):
        return self.seen.count(("POST", "/v1/messages/batches"))

    def __call__(self, request):
        assert_key(request)
        if is_probe(request):
            return httpx.Response(200, json=message("OK", SNAPSHOT))
        self.seen.append((request.method, request.url.path))
        if request.method == "POST":
            body = json.loads(request.content)
            self.requests, self.polls = body["requests"], 0
            for r in body["requests"]:
                assert set(r) == {"custom_id", "params"} and r["params"]["temperature"] == 0
            return httpx.Response(200, json=self.BATCH)
        if request.url.path.endswith("/results"):
            lines = []
            for r in self.requests:
                reply = message(reply_for(r["params"]["messages"][0]["content"]), SNAPSHOT)
                lines.append(
                    json.dumps({"custom_id": r["custom_id"], "result": {"type": "succeeded", "message": reply}})
                )
            return httpx.Response(200, content="\n".join(lines).encode())
        self.polls += 1
        url = "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results"
        status = {"processing_status": "ended", "results_url": url} if self.polls > 1 else {}
        return httpx.Response(200, json={**self.BATCH, **status})


def test_message_batches(tmp_path, monkeypatch):
    api = FakeBatchAPI()
    judge = anthropic_judge(api, monkeypatch, batch=True, batch_state=tmp_path / "batch.json", poll_seconds=0)
    out, report = judge_samples(SAMPLES, judge, Rubric.load(RUBRIC), ReplyCache(tmp_path / "c"))
    assert api.seen[0] == ("POST", "/v1/messages/batches") and len(api.requests) == 2
    assert [o["judge"]["scores"]["B"]["score"] for o in out[:3]] == [9, 0, 9] and report.errors == 0
    assert out[0]["judge"]["model"] == SNAPSHOT  # the batch result's model field
    assert not (tmp_path / "batch.json").exists()  # the batch is done: nothing to re-attach to


class Killed(BaseException):
    """A kill -9 stand-in: nothing catches it."""


def test_a_kill_between_batch_results_and_the_cache_re_attaches_and_pays_once(tmp_path, monkeypatch):
    class DyingCache(ReplyCache):
        def put(self, key, value):
            raise Killed  # the job dies after the batch results arrived, before any is stored

    api = FakeBatchAPI()
    state = tmp_path / "judge_batch.json"
    judge = anthropic_judge(api, monkeypatch, batch=True, batch_state=state, poll_seconds=0)
    with pytest.raises(Killed):
        judge_samples(SAMPLES, judge, Rubric.load(RUBRIC), DyingCache(tmp_path / "c"))
    assert api.created == 1 and state.is_file()  # the paid batch is still on record
    # the rerun (a new process: a new client, the same cache file) re-attaches: no second batch
    judge = anthropic_judge(api, monkeypatch, batch=True, batch_state=state, poll_seconds=0)
    cache = ReplyCache(tmp_path / "c")
    out, report = judge_samples(SAMPLES, judge, Rubric.load(RUBRIC), cache)
    assert api.created == 1 and report.errors == 0 and report.judged == 3 and len(cache) == 2
    assert [o["judge"]["scores"]["B"]["score"] for o in out[:3]] == [9, 0, 9]
    assert not state.exists()  # stored in the cache: now it may go


def test_release_keeps_the_state_of_a_batch_it_did_not_return(tmp_path, monkeypatch):
    """A rerun whose first chunk is all cached releases before re-attaching: the killed job's state stays."""
    state = tmp_path / "batch.json"
    state.write_text(json.dumps({"batch_id": "msgbatch_killed", "custom_ids": ["x"]}))
    judge = anthropic_judge(FakeBatchAPI(), monkeypatch, batch=True, batch_state=state, poll_seconds=0)
    assert judge.complete([], []) == []
    judge.release()
    assert json.loads(state.read_text())["batch_id"] == "msgbatch_killed"


def test_judge_run_never_writes_the_key(tmp_path, monkeypatch):
    from steerlab.harness.records import load_run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "header.json").write_text(json.dumps({"format": 2, "seeds": [0]}))
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    cache = ReplyCache(tmp_path / "cache.sqlite")
    report = judge_run(run_dir, anthropic_judge(FakeAPI(), monkeypatch), Rubric.load(RUBRIC), cache, RUBRIC)
    assert report.judged == 3
    frame = load_run(run_dir)
    assert list(frame["judge_B"][:3]) == [9, 0, 9] and frame["judge_B"].isna()[3]
    for path in [*run_dir.iterdir(), tmp_path / "cache.sqlite"]:
        assert KEY not in path.read_bytes().decode("utf-8", "replace"), path


def test_cost_estimate():
    rubric = Rubric.load(RUBRIC)
    est = estimate(rubric, ["x" * 350] * 10, "claude-sonnet-4-5", 400, batch=False)
    per_call = sum(map(len, rubric.prompt("x" * 350))) / 3.5
    assert est["calls"] == 10 and est["input_tokens"] == int(10 * per_call) and est["max_output_tokens"] == 4000
    assert est["usd"] == pytest.approx((10 * per_call * 3 + 4000 * 15) / 1e6, abs=1e-4)
    assert estimate(rubric, ["x"] * 10, "claude-sonnet-4-5", 400, batch=True)["usd"] < est["usd"] / 2
    assert estimate(rubric, ["x"], "some-other-model", 400, batch=False)["usd"] is None


def test_local_judge_through_a_generation_backend(tmp_path):
    from steerlab.backends.base import Result

    class Backend:
        def generate(self, requests):
            assert all(r.prefill == '{"A": {"score": ' and r.sampling.temperature == 0 for r in requests)
            return [Result(r.id, '3, "justification": "j"}, "B": {"score": 5, "justification": "k"}}', 1, 1, "eos", 0)
                    for r in requests]  # fmt: skip

    out, report = judge_samples(
        SAMPLES[:2], LocalJudge(Backend(), "local-test"), Rubric.load(RUBRIC), ReplyCache(tmp_path / "c")
    )
    assert [o["judge"]["scores"]["B"]["score"] for o in out] == [5, 5] and report.calls == 2


def test_local_judge_prefill_follows_the_rubric_concepts(tmp_path):
    """A rubric whose concepts are not named A and B: the prefill opens the first one's score."""
    import yaml

    from steerlab.backends.base import Result

    data = yaml.safe_load(open(RUBRIC))
    data["concepts"] = {"expect": data["concepts"]["A"], "train": data["concepts"]["B"]}
    path = tmp_path / "rubric.yaml"
    path.write_text(yaml.safe_dump(data))
    rubric = Rubric.load(path)
    seen = []

    class Backend:  # a judge that continues whatever it was prefilled with
        def generate(self, requests):
            seen.extend(r.prefill for r in requests)
            return [Result(r.id, '4, "justification": "j"}, "train": {"score": 6, "justification": "k"}}', 1, 1,
                           "eos", 0) for r in requests]  # fmt: skip

    out, report = judge_samples(SAMPLES[:2], LocalJudge(Backend(), "local-test"), rubric, ReplyCache(tmp_path / "c"))
    assert seen == ['{"expect": {"score": '] * 2 and report.errors == 0
    assert [o["judge"]["scores"] for o in out] == [{"expect": {"score": 4, "justification": "j"},
                                                    "train": {"score": 6, "justification": "k"}}] * 2  # fmt: skip


def test_a_new_snapshot_behind_the_alias_is_judged_again_and_recorded(tmp_path, monkeypatch):
    """The cache is keyed on the model the API reports, not on the alias asked for."""
    rubric, cache = Rubric.load(RUBRIC), ReplyCache(tmp_path / "judge.sqlite")

    class Moving(FakeAPI):  # the new snapshot reads every trace as about researchers (A = 8)
        def __call__(self, request):
            response = super().__call__(request)
            if self.snapshot != SNAPSHOT and not is_probe(request):
                body = response.json()
                reply = json.loads(body["content"][0]["text"])
                body["content"][0]["text"] = json.dumps({**reply, "A": {"score": 8, "justification": "a"}})
                response = httpx.Response(200, json=body)
            return response

    old = Moving()
    out_old, _ = judge_samples(SAMPLES, anthropic_judge(old, monkeypatch), rubric, cache)
    assert len(old.seen) == 2 and out_old[0]["judge"]["model"] == SNAPSHOT
    assert out_old[0]["judge"]["requested_model"] == "claude-test" and out_old[0]["judge"]["scores"]["A"]["score"] == 1

    new = Moving(snapshot="claude-test-20260301")  # the alias now reaches another snapshot
    out_new, report = judge_samples(SAMPLES, anthropic_judge(new, monkeypatch), rubric, cache)
    assert len(new.seen) == 2 and report.cached == 0 and report.judged == 3  # nothing carried over
    assert out_new[0]["judge"]["model"] == "claude-test-20260301" and out_new[0]["judge"]["scores"]["A"]["score"] == 8
    assert report.models == ["claude-test-20260301"] and cache.last_model("claude-test") == "claude-test-20260301"

    back = Moving()  # and back: the first snapshot's judgements are still there, under its name
    out_back, report = judge_samples(SAMPLES, anthropic_judge(back, monkeypatch), rubric, cache)
    assert back.seen == [] and report.cached == 3 and out_back == out_old

    # the alias moves during a run (the probe saw the old snapshot, the answers come from the new one):
    # each judgement records, and is filed under, the model that made it
    class Switching(Moving):
        def __call__(self, request):
            self.snapshot = SNAPSHOT if is_probe(request) else "claude-test-20270101"
            return super().__call__(request)

    cache2 = ReplyCache(tmp_path / "judge2.sqlite")
    out_mid, _ = judge_samples(SAMPLES[:1], anthropic_judge(Switching(), monkeypatch), rubric, cache2)
    assert out_mid[0]["judge"]["model"] == "claude-test-20270101"
    later = Moving(snapshot="claude-test-20270101")
    out_later, report = judge_samples(SAMPLES[:1], anthropic_judge(later, monkeypatch), rubric, cache2)
    assert later.seen == [] and report.cached == 1 and out_later == out_mid


# ----------------------------------------------------------------------------- issue 14.7: failed calls


class Failing(FakeAPI):
    """Traces about researchers fail (``fail(request)`` returns a response or raises, as the network
    would); every other trace is answered. The probe always answers."""

    def __init__(self, fail):
        super().__init__()
        self.fail = fail

    def __call__(self, request):
        if not is_probe(request) and "researchers" in trace_of(request):
            self.seen.append(request)
            return self.fail(request)
        return super().__call__(request)


def trace_of(request):
    return json.loads(request.content)["messages"][0]["content"].split("<trace>")[1].split("</trace>")[0]


def refuse(request):
    raise httpx.ConnectError("connection refused", request=request)


def time_out(request):
    raise httpx.ReadTimeout("read timed out", request=request)


def overloaded(_request):
    return httpx.Response(529, json={"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
                          headers={"retry-after-ms": "1"})  # fmt: skip


@pytest.mark.parametrize(
    "fail, error",
    [(refuse, "APIConnectionError"), (time_out, "APITimeoutError"), (overloaded, "OverloadedError|InternalServer")],
)
def test_a_failed_call_is_the_sdks_to_retry_not_a_format_reminder(fail, error, tmp_path, monkeypatch):
    api = Failing(fail)
    judge = anthropic_judge(api, monkeypatch, max_retries=1)
    monkeypatch.setattr(judge.client, "_calculate_retry_timeout", lambda *a, **k: 0.01, raising=False)
    out, report = judge_samples(SAMPLES, judge, Rubric.load(RUBRIC), ReplyCache(tmp_path / "c"))
    failed = [r for r in api.seen if "researchers" in trace_of(r)]
    assert len(failed) == 2  # the first call and the SDK's one retry; no second round from the judge
    assert not any("could not be read" in json.loads(r.content)["messages"][0]["content"] for r in api.seen)
    assert report.errors == 1 and report.judged == 2 and "scores" not in out[1]["judge"]
    assert re.match(f"({error}): ", out[1]["judge"]["error"]) and report.first_error == out[1]["judge"]["error"]
    assert out[0]["judge"]["scores"]["B"]["score"] == 9  # the calls that worked are kept


def test_judge_command_exits_2_with_the_count_after_writing_what_succeeded(tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    from steerlab.harness import judge as judge_module
    from steerlab.harness.records import read_samples

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "header.json").write_text(json.dumps({"format": 2, "seeds": [0]}))
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    api = Failing(refuse)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)

    class Faked(judge_module.AnthropicJudge):  # the real client, on the fake transport, retrying at once
        def __init__(self, *args, **kw):
            super().__init__(*args, **{**kw, "http_client": httpx.Client(transport=httpx.MockTransport(api))})
            self.client._calculate_retry_timeout = lambda *a, **k: 0.01

    monkeypatch.setattr(judge_module, "AnthropicJudge", Faked)
    args = ["judge", run_dir, "--judge-model", "claude-test", "--cache", tmp_path / "c.sqlite"]
    code, out, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("steerlab: error: 1 of 3 judgements failed"), err
    assert "APIConnectionError" in lines[0] and f"rerun `steerlab judge {run_dir}`" in lines[0]
    assert "1 judge errors" in out
    assert len(api.seen) == 1 + 7  # one answered trace (s1 = s3); the failing one: a first call and 6 SDK retries
    samples = read_samples(run_dir)  # what succeeded is written, the failure recorded as an error
    assert [s["judge"].get("scores", {}).get("B", {}).get("score") for s in samples] == [9, None, 9, None]
    assert "APIConnectionError" in samples[1]["judge"]["error"] and "skipped" in samples[3]["judge"]

    api.fail = lambda request: FakeAPI()(request)  # the network is back: a rerun asks only for the failed one
    seen = len(api.seen)
    code, out, err = run_cli(args, capsys)
    assert code == 0 and err == "" and len(api.seen) == seen + 1, err
    assert [s["judge"]["scores"]["A"]["score"] for s in read_samples(run_dir)[:3]] == [1, 8, 1]
