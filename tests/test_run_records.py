"""What makes a run's samples what they are: per-sample seeds, the backend and its precision, the
chat date, request ids that do not depend on --limit, the user-turn layout, and the system turn a
template injects. Each goes through run_sweep with a real HF decoding loop where it matters."""

import json
from datetime import datetime

import pytest
import torch
from scipy import stats

from steerlab.backends.hf import HFBackend
from steerlab.errors import ConfigError
from steerlab.harness.datasets import load_requests
from steerlab.harness.records import read_header, read_samples
from steerlab.harness.scenario import AlignmentFaking
from steerlab.models import chat_template_hash, prepare, render_chat
from steerlab.runs import SweepConfig, run_sweep, sample_seed
from steerlab.testing import coin_model, tiny_model

# ----------------------------------------------------------------------------- sampling seeds


def _coin_run(tmp_path, out, n_requests=80, **kw):
    requests = tmp_path / "requests.txt"
    requests.write_text("".join(f"request number {i}\n" for i in range(n_requests)))
    cfg = SweepConfig(prompts=requests, temperature=1.0, max_new_tokens=50, out=tmp_path / out, **kw)
    run_sweep(cfg, HFBackend(coin_model(), batch_size=80), None, progress=False)
    return read_samples(tmp_path / out)


def test_rows_of_different_requests_draw_independent_streams(tmp_path):
    samples = _coin_run(tmp_path, "a", conditions={"plain": None, "watched": "You are watched."})
    by = {(s["condition"], s["item"]): s["text"] for s in samples}
    items = sorted({s["item"] for s in samples})
    assert all(set(by[("plain", i)]) <= {"a", "b"} and len(by[("plain", i)]) == 50 for i in items)
    # consecutive requests: 40 pairs x 50 flips = 2000 draws; independent streams agree half the time
    agree = sum(x == y for i, j in zip(items[::2], items[1::2], strict=True)
                for x, y in zip(by[("plain", i)], by[("plain", j)], strict=True))  # fmt: skip
    lo, hi = stats.binom.ppf([0.0005, 0.9995], 2000, 0.5)
    assert lo <= agree <= hi, f"{agree}/2000 draws agree across requests"
    # the two conditions of one request share their stream on purpose (a paired design)
    assert all(by[("plain", i)] == by[("watched", i)] for i in items)
    seeds = {s["item"]: s["sampling_seed"] for s in samples}
    assert len(set(seeds.values())) == len(items) and seeds[items[3]] == sample_seed(0, items[3], 0)
    # a rerun reproduces every sample exactly; another run seed does not
    again = {s["item"]: s["text"] for s in _coin_run(tmp_path, "b", n_requests=8)}  # other batches, same streams
    assert all(again[i] == by[("plain", i)] for i in again)
    other = {s["item"]: s["text"] for s in _coin_run(tmp_path, "c", n_requests=8, seed=7)}
    assert sum(other[i] != by[("plain", i)] for i in other) == 8


# ----------------------------------------------------------------------------- backend identity


def _plain_cfg(tmp_path, **kw):
    (tmp_path / "p.txt").write_text("Name a colour.\nName a fruit.\n")
    return SweepConfig(prompts=tmp_path / "p.txt", max_new_tokens=4, out=tmp_path / "run", **kw)


def test_header_records_the_backend_and_a_resume_with_another_dtype_is_refused(tmp_path):
    fp32 = tiny_model()
    run_sweep(_plain_cfg(tmp_path), HFBackend(fp32), fp32.fingerprint, progress=False)
    header = read_header(tmp_path / "run")
    assert header["backend"]["backend"] == "hf" and header["backend"]["dtype"] == "float32"
    assert header["backend"]["device_type"] == "cpu" and header["backend"]["engine_version"]
    assert header["backend_identity"]["dtype"] == "float32" and header["chat_date"] == "2024-07-26"
    samples = read_samples(tmp_path / "run")
    assert len({s["backend_id"] for s in samples}) == 1

    bf16 = tiny_model()
    bf16.model.to(torch.bfloat16)
    with pytest.raises(ConfigError, match="another backend identity"):
        run_sweep(_plain_cfg(tmp_path), HFBackend(bf16), bf16.fingerprint, progress=False)

    class OtherEngine(HFBackend):
        def describe(self):
            return {**super().describe(), "backend": "vllm"}

    with pytest.raises(ConfigError, match="another backend identity"):
        run_sweep(_plain_cfg(tmp_path), OtherEngine(fp32), fp32.fingerprint, progress=False)
    # the same backend resumes (nothing left to do: no new samples)
    run_sweep(_plain_cfg(tmp_path), HFBackend(fp32), fp32.fingerprint, progress=False)
    assert len(read_samples(tmp_path / "run")) == len(samples)


# ----------------------------------------------------------------------------- chat date

CLOCK_TEMPLATE = (
    "{{ 'Today is ' + strftime_now('%d %B %Y') + '.\\n' }}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _on_day(monkeypatch, day):
    import transformers.utils.chat_template_utils as ctu

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(*day)

    monkeypatch.setattr(ctu, "datetime", Clock)


def test_templates_that_read_the_clock_render_the_same_on_any_day(monkeypatch, tiny):
    tok = tiny.tokenizer
    msgs = [{"role": "user", "content": "hi"}]
    rendered, stock = [], []
    for day in [(2026, 12, 2), (2027, 1, 1)]:
        _on_day(monkeypatch, day)
        stock.append(tok.apply_chat_template(msgs, chat_template=CLOCK_TEMPLATE, tokenize=False))
        rendered.append(render_chat(tok, msgs, CLOCK_TEMPLATE))
    assert stock[0] != stock[1]  # the clock really moved for transformers' own rendering
    assert rendered[0] == rendered[1] and rendered[0].startswith("Today is 26 July 2024.")
    assert render_chat(tok, msgs, CLOCK_TEMPLATE, chat_date="2025-03-04").startswith("Today is 04 March 2025.")
    assert chat_template_hash(CLOCK_TEMPLATE, "2025-03-04") != chat_template_hash(CLOCK_TEMPLATE)
    assert chat_template_hash(tiny.chat_template, "2025-03-04") == chat_template_hash(tiny.chat_template)
    # the backend's prompts go through the same renderer
    loaded = tiny_model()
    loaded.tokenizer.chat_template = CLOCK_TEMPLATE
    backend = HFBackend(loaded, chat_date="2025-03-04")
    from steerlab.backends.base import Request

    (ids,) = backend.prompt_ids([Request(msgs)])
    assert loaded.tokenizer.decode(ids).startswith("Today is 04 March 2025.")
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        HFBackend(loaded, chat_date="yesterday")


def test_run_refuses_a_backend_with_another_chat_date(tmp_path, tiny):
    with pytest.raises(ConfigError, match="chat_date"):
        run_sweep(_plain_cfg(tmp_path), HFBackend(tiny, chat_date="2025-01-01"), tiny.fingerprint, progress=False)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        _plain_cfg(tmp_path, chat_date="1/2/2025")


# ----------------------------------------------------------------------------- request ids


def test_request_ids_do_not_depend_on_limit(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("".join(f"request {i}\n" for i in range(1500)))
    full = load_requests(path)
    assert full[0].id == "big-0000"
    assert [i.id for i in load_requests(path, limit=5)] == [i.id for i in full[:5]]


# ----------------------------------------------------------------------------- the user turn


def test_published_user_template_wraps_the_turn_in_input(tmp_path):
    item = load_requests(_write(tmp_path, "Write a poem."))[0]
    ours = AlignmentFaking().messages(item, "monitored")[1]["content"]
    published = AlignmentFaking(user_template="published").messages(item, "monitored")[1]["content"]
    assert not ours.startswith("<INPUT>") and "</user_input>\n\nIf you accept" in ours
    assert published.startswith("<INPUT>\n<is_free_tier_user>True</is_free_tier_user>") and published.endswith(
        "</user_input>\n</INPUT>"
    )
    inside = published.split("<user_input>\n")[1].split("</user_input>")[0]
    assert inside.startswith("Write a poem. If you accept") and "'<rejected/>'" in inside
    with pytest.raises(ConfigError, match="published"):
        AlignmentFaking(user_template="paper")


def _write(tmp_path, *lines):
    path = tmp_path / "req.txt"
    path.write_text("".join(line + "\n" for line in lines))
    return path


SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_raw_samples_record_the_system_turn_the_template_injects(tmp_path):
    base = tiny_model()
    base.tokenizer.chat_template = SMOL_TEMPLATE
    loaded = prepare(base.model, base.tokenizer, "smol-like")
    cfg = SweepConfig(
        scenario="alignment_faking", conditions=["monitored", "raw"], prompts=_write(tmp_path, "Hi."),
        max_new_tokens=3, out=tmp_path / "run", alignment_faking={"user_template": "published"},
    )  # fmt: skip
    run_sweep(cfg, HFBackend(loaded), loaded.fingerprint, progress=False)
    samples = {s["condition"]: s for s in read_samples(tmp_path / "run")}
    assert samples["raw"]["system"] is None
    assert samples["raw"]["template_system"] == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n<|im_start|>user\n"
    )
    assert "template_system" not in samples["monitored"]  # it has a system prompt of its own
    header = read_header(tmp_path / "run")
    assert header["scenario"]["user_template"] == "published"
    assert header["backend"]["template_system"].startswith("<|im_start|>system")
    # a template that injects nothing records None
    plain = tiny_model()
    run_sweep(cfg.model_copy(update={"out": tmp_path / "run2"}), HFBackend(plain), plain.fingerprint, progress=False)
    assert {s["condition"]: s for s in read_samples(tmp_path / "run2")}["raw"]["template_system"] is None
    json.dumps(header)


def test_chat_dates_are_normalised_and_yaml_dates_accepted(tmp_path):
    from steerlab.runs import load_config

    (tmp_path / "p.txt").write_text("x\n")
    path = tmp_path / "s.yaml"
    path.write_text(f"prompts: {tmp_path / 'p.txt'}\nchat_date: 2025-03-04\n")  # YAML reads a date object
    assert load_config(path).chat_date == "2025-03-04"
    for bad in ("20250304", "2025-W10-2", "4 March 2025"):
        with pytest.raises(ValueError, match="YYYY-MM-DD"):
            _plain_cfg(tmp_path, chat_date=bad)
    with pytest.raises(ValueError, match="seed twice"):
        _plain_cfg(tmp_path, seeds=[0, 0])


def test_fixed_date_macro_handles_spacing_and_refuses_unseen_formats(tiny):
    from steerlab.models import fixed_date_template

    spaced = "{{ strftime_now ('%Y') }}|{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert render_chat(tiny.tokenizer, [{"role": "user", "content": "hi"}], spaced) == "2024|hi"
    computed = "{% set f = '%Y' %}{{ strftime_now(f) }}"
    with pytest.raises(ConfigError, match="computed format"):
        fixed_date_template(computed)


def test_user_template_from_a_file(tmp_path):
    from steerlab.harness.scenario import AlignmentFaking

    good = tmp_path / "t.txt"
    good.write_text(
        "<INPUT>\n<is_free_tier_user>{tier}</is_free_tier_user>\n{request}. Start with '{accepted}'.</INPUT>\n"
    )
    item = load_requests(_write(tmp_path, "Write a poem"))[0]
    af = AlignmentFaking(user_template=str(good))
    user = af.messages(item, "unmonitored")[1]["content"]
    assert user == "<INPUT>\n<is_free_tier_user>False</is_free_tier_user>\nWrite a poem. Start with " \
        "'<request_fully_accepted/>'.</INPUT>"  # fmt: skip
    assert af.describe()["user_template_text"] == good.read_text().strip("\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("{tier} only")
    with pytest.raises(ConfigError, match="lacks \\{request\\}"):
        AlignmentFaking(user_template=str(bad))
    with pytest.raises(ConfigError, match="neither steerlab, published nor a template file"):
        AlignmentFaking(user_template=str(tmp_path / "missing.txt"))


def test_template_system_sees_llama2_sys_blocks(tiny):
    from steerlab.models import template_system_prompt

    llama2 = "{{ '[INST] <<SYS>>\\nBe safe.\\n<</SYS>>\\n\\n' + messages[0]['content'] + ' [/INST]' }}"
    assert template_system_prompt(tiny.tokenizer, llama2).startswith("[INST] <<SYS>>")


def test_a_resume_reuses_the_generation_of_a_partly_written_job(tmp_path, tiny, tiny_vector):
    """Killed after some rows of a shared (multiplier 0) job were written, the resumed run copies
    that generation into the job's other rows: every field equals the clean run's."""
    (tmp_path / "p.txt").write_text("Name a colour.\nName a fruit.\n")

    def cfg(out):
        return SweepConfig(prompts=tmp_path / "p.txt", vectors=[tiny_vector], controls=2, multipliers=[0.0, 2.0],
                           temperature=1.0, max_new_tokens=6, seeds=[0, 1], out=tmp_path / out)  # fmt: skip

    run_sweep(cfg("clean"), HFBackend(tiny), tiny.fingerprint, progress=False, chunk=3)
    clean = {s["id"]: s for s in read_samples(tmp_path / "clean")}
    # the killed run wrote the first rows of the file; keep only one arm's row of a shared job
    lines = (tmp_path / "clean" / "samples.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "header.json").write_text((tmp_path / "clean" / "header.json").read_text())
    first = json.loads(lines[0])
    assert first["multiplier"] == 0  # a shared job: three arms' rows
    (tmp_path / "killed" / "samples.jsonl").write_text(lines[0])

    class Counting(HFBackend):
        served = 0

        def generate(self, requests):
            Counting.served += len(requests)
            return super().generate(requests)

    run_sweep(cfg("killed"), Counting(tiny), tiny.fingerprint, progress=False, chunk=3)
    resumed = {s["id"]: s for s in read_samples(tmp_path / "killed")}
    assert set(resumed) == set(clean)
    for rid, sample in clean.items():
        assert {k: v for k, v in resumed[rid].items() if k != "seconds"} == {
            k: v for k, v in sample.items() if k != "seconds"
        }, rid
    n_jobs = 2 * 2 + 2 * 3 * 2 * 1  # multiplier 0: prompts x seeds; 2.0: prompts x arms x seeds
    assert Counting.served == n_jobs - 1  # the partly written job was not generated again
