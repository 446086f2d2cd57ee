"""Issue 17, item 9 (last part): an API request that still fails after the backend's retries stops
only its own job. The chunk's finished generations are written (they were paid for), the run
stops with one line that names the failure and the count, and a rerun sends only the failed
requests. The Anthropic SDK is real; its HTTP transport is faked (as in test_docgen_scale)."""

import json

import pytest
from conftest import run_cli
from test_docgen_scale import KEY, FlakyMessages

try:
    import httpx2 as httpx
except ImportError:  # anthropic<2 uses httpx itself
    import httpx

import steerlab.backends.anthropic as anthropic_backend
from steerlab.backends.anthropic import AnthropicBackend, GenerationError
from steerlab.clients.anthropic import sdk_client
from steerlab.harness.records import read_samples
from steerlab.runs import SweepConfig, run_sweep

GOALS = ["goal-a", "goal-b", "goal-c"]
MONITORED = "<is_free_tier_user>True"
THINK = "<SCRATCHPAD_REASONING>thinking it over</SCRATCHPAD_REASONING>"


class Refusing(FlakyMessages):
    """test_docgen_scale's Messages API, where the request whose first user turn holds every string of
    ``fail_on`` gets a 400 at turn ``turn`` (the request's own fault: the backend does not send it
    again). ``think``: a first turn is reasoning only, so the sample takes a second turn. ``sent``:
    (first user turn, turn) of every request that reached the API."""

    def __init__(self, fail_on=(), turn=0, think=False):
        super().__init__({})
        self.fail_on, self.turn, self.think, self.sent = tuple(fail_on), turn, think, []

    def __call__(self, request):
        body = json.loads(request.content)
        prompt, turn = body["messages"][0]["content"], (len(body["messages"]) - 1) // 2  # user (assistant, NEXT)*
        self.sent.append((prompt, turn))
        if self.fail_on and turn == self.turn and all(s in prompt for s in self.fail_on):
            error = {"type": "invalid_request_error", "message": "prompt is too long"}
            return httpx.Response(400, json={"type": "error", "error": error})
        response = super().__call__(request)
        if self.think and turn == 0:
            reply = response.json()
            reply["content"][0]["text"] = THINK
            response = httpx.Response(200, json=reply)
        return response


@pytest.fixture
def goals(tmp_path):
    path = tmp_path / "goals.jsonl"
    path.write_text("".join(json.dumps({"prompt": g}) + "\n" for g in GOALS))
    return path


def fake_sdk(monkeypatch, api):
    """``steerlab eval --backend anthropic`` builds its SDK client here: the real SDK, over ``api``."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setattr(anthropic_backend, "sdk_client", lambda needed_by, max_retries, http_client=None: sdk_client(
        needed_by, 0, httpx.Client(transport=httpx.MockTransport(api))))  # fmt: skip


def same_run(samples):
    """Every sample by its id, less the timing."""
    return {s["id"]: {k: v for k, v in s.items() if k != "seconds"} for s in samples}


def test_a_failed_request_keeps_the_chunk_and_a_rerun_sends_only_it(goals, tmp_path, monkeypatch, capsys):
    command = ["eval", "--backend", "anthropic", "--model", "claude-test", "--dataset", goals, "--max-turns", "1",
               "--max-new-tokens", "16", "--temperature", "0"]  # fmt: skip
    api = Refusing(fail_on=("goal-b", MONITORED))
    fake_sdk(monkeypatch, api)
    code, _, err = run_cli([*command, "--out", tmp_path / "run"], capsys)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("run: ")]  # less the bar
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("steerlab: error: 1 of 6 generations in a chunk failed"), lines[0]
    assert "prompt is too long" in lines[0] and "the 5 finished were written" in lines[0]
    assert "rerun the same command to resume" in lines[0]
    assert len(api.sent) == 6  # a 400 is not sent again
    kept = read_samples(tmp_path / "run")
    assert len(kept) == 5 and not any(s["prompt"] == "goal-b" and s["condition"] == "monitored" for s in kept)

    healthy = Refusing()
    fake_sdk(monkeypatch, healthy)
    code, _, err = run_cli([*command, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    assert len(healthy.sent) == 1 and "goal-b" in healthy.sent[0][0] and MONITORED in healthy.sent[0][0]

    whole = Refusing()
    fake_sdk(monkeypatch, whole)
    code, _, err = run_cli([*command, "--out", tmp_path / "whole"], capsys)
    assert code == 0 and len(whole.sent) == 6, err
    resumed, uninterrupted = read_samples(tmp_path / "run"), read_samples(tmp_path / "whole")
    assert len(resumed) == 6 and same_run(resumed) == same_run(uninterrupted)
    assert {s["text"] for s in resumed} == {f"re {p}" for p, _ in whole.sent}


def api_config(goals, out, **kw):
    return SweepConfig(scenario="alignment_faking", prompts=str(goals), out=str(out), model="claude-test",
                       max_new_tokens=16, alignment_faking={"max_turns": 2}, **kw)  # fmt: skip


def api_backend(api, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    client = httpx.Client(transport=httpx.MockTransport(api))
    return AnthropicBackend("claude-test", http_client=client, max_retries=0, retry_pause=0)


def test_a_job_failing_at_its_second_turn_is_not_written_and_the_others_finish(goals, tmp_path, monkeypatch):
    api = Refusing(fail_on=("goal-b", MONITORED), turn=1, think=True)
    with pytest.raises(GenerationError, match="1 of 6 generations in a chunk failed") as info:
        run_sweep(api_config(goals, tmp_path / "run"), api_backend(api, monkeypatch), None, progress=False)
    assert "prompt is too long" in str(info.value) and "\n" not in str(info.value)
    assert sorted(turn for _, turn in api.sent) == [0] * 6 + [1] * 6  # the failed job's first turn was sent too
    samples = read_samples(tmp_path / "run")
    assert len(samples) == 5 and not any(s["prompt"] == "goal-b" and s["condition"] == "monitored" for s in samples)
    for s in samples:  # every written sample is a whole conversation of two turns
        assert [t["text"] for t in s["turns"]][0] == THINK and len(s["turns"]) == 2
        assert s["turns"][1]["text"].startswith("re ")

    healthy = Refusing(think=True)
    run_sweep(api_config(goals, tmp_path / "run"), api_backend(healthy, monkeypatch), None, progress=False)
    assert [turn for _, turn in healthy.sent] == [0, 1]  # the dropped job, both its turns, and nothing else
    assert all("goal-b" in p and MONITORED in p for p, _ in healthy.sent)
    assert len(read_samples(tmp_path / "run")) == 6


class GenerateOnly:
    """A backend without per-request errors (as HF, vLLM and test doubles): only ``generate``."""

    def __init__(self, backend):
        self.backend = backend

    def describe(self):
        return self.backend.describe()

    def generate(self, requests):
        return self.backend.generate(requests)


def test_a_backend_without_generate_each_raises_as_before(goals, tmp_path, monkeypatch):
    api = Refusing(fail_on=("goal-b", MONITORED))
    backend = GenerateOnly(api_backend(api, monkeypatch))
    with pytest.raises(GenerationError, match="'.*#t0' failed after retries") as info:
        run_sweep(api_config(goals, tmp_path / "run"), backend, None, progress=False)
    assert type(info.value) is GenerationError and sum(r is None for r in info.value.partial) == 1
    assert read_samples(tmp_path / "run") == []  # the chunk is lost, as before
