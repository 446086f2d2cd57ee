"""One writer per run (issue 14.4): a run directory (and an SDF corpus folder) is locked for the
run's life; a second process gets exit 2 and one line naming the holder's pid, and writes nothing.
Summaries refuse samples that repeat a row id."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from conftest import REPO, run_cli
from test_bad_input import snapshot
from test_sweep import FakeBackend, config

from steerlab.errors import ConfigError
from steerlab.fileio import LockedError, exclusive
from steerlab.harness.records import SAMPLES, read_samples
from steerlab.harness.summary import summarise_labels
from steerlab.runs import run_sweep, write_label_summary, write_summary

BENIGN = str(REPO / "configs" / "requests" / "benign.jsonl")

# The first writer: the same run as `steerlab sweep --config sweep.yaml --device cpu`, its backend
# built as the CLI builds it, but its first generation waits until the test creates the file `go`.
HOLDER = textwrap.dedent("""
    import pathlib, sys, time
    from steerlab.backends import make_backend
    from steerlab.runs import load_config, run_sweep

    cfg = load_config(pathlib.Path("sweep.yaml"))
    engine, fingerprint, _ = make_backend("hf", cfg.model, batch_size=cfg.batch_size, device="cpu",
                                          chat_date=cfg.chat_date)
    generate = engine.generate

    def gated(requests):
        pathlib.Path("generating").write_text("")
        deadline = time.time() + 120
        while not pathlib.Path("go").exists() and time.time() < deadline:
            time.sleep(0.05)
        return generate(requests)

    engine.generate = gated
    run_sweep(cfg, engine, fingerprint, progress=False)
""")


def wait_for(path, proc, seconds=120):
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_sweep_process_is_refused_while_the_first_runs(tmp_path, tiny_dir):
    body = {"model": str(tiny_dir), "prompts": BENIGN, "limit": 3, "max_new_tokens": 2, "conditions": ["a", "b"],
            "scorer": "[a-z]", "out": "run"}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(body))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = [sys.executable, "-m", "steerlab.cli", "sweep", "--config", "sweep.yaml", "--device", "cpu"]
    first = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(tmp_path / "generating", first)  # the first holds the lock and is generating
        before = snapshot(tmp_path)
        second = subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        errors = [line for line in second.stderr.splitlines() if line.startswith("steerlab: error:")]
        assert second.returncode == 2, second.stderr
        assert len(errors) == 1 and f"run is in use by another steerlab process (pid {first.pid})" in errors[0]
        assert "Traceback" not in second.stderr
        assert snapshot(tmp_path) == before  # the second wrote nothing
    finally:
        (tmp_path / "go").write_text("")
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    samples = read_samples(tmp_path / "run")
    ids = [s["id"] for s in samples]
    assert len(ids) == 2 * 3 and len(set(ids)) == len(ids)  # conditions x requests, each once
    # once the first is done, the same command resumes: nothing left to generate, and it summarises
    again = subprocess.run(cli, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert [s["id"] for s in read_samples(tmp_path / "run")] == ids
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["cells"][0]["n"] == 3


def test_a_held_run_directory_refuses_run_sweep_before_writing(tmp_path):
    cfg = config(tmp_path)
    run_dir = run_sweep(cfg, FakeBackend(), None, progress=False)
    (run_dir / SAMPLES).write_text("")  # header only: the run would start over
    before = snapshot(tmp_path)
    with exclusive(run_dir, "run"):  # another holder (flock: another open file, even in this process)
        backend = FakeBackend()
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            run_sweep(cfg, backend, None, progress=False)
        assert backend.served == [] and snapshot(tmp_path) == before


def test_the_lock_file_does_not_make_a_directory_foreign(tmp_path):
    cfg = config(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text("12345")  # left by a run that died before writing its header
    run_dir = run_sweep(cfg, FakeBackend(), None, progress=False)
    assert len(read_samples(run_dir)) == 72 and (run_dir / ".lock").read_text() == str(os.getpid())


def test_summaries_refuse_repeated_row_ids(tmp_path):
    cfg = config(tmp_path)
    run_dir = run_sweep(cfg, FakeBackend(), None, progress=False)
    lines = (run_dir / SAMPLES).read_text().splitlines(keepends=True)
    (run_dir / SAMPLES).write_text("".join(lines + lines[:3]))  # two writers at once wrote these rows twice
    with pytest.raises(ConfigError, match=r"holds row '.*' twice \(3 repeated rows in all\)"):
        write_summary(run_dir, "m=")
    with pytest.raises(ConfigError, match="twice"):
        write_label_summary(run_dir)
    with pytest.raises(ConfigError, match="twice"):  # the library function, for samples read by hand
        summarise_labels(read_samples(run_dir))
    assert not (run_dir / "summary.json").exists()


def test_an_sdf_corpus_folder_is_locked_while_written(tmp_path):
    from sdf_addon.docgen import DocgenConfig, Stage, hold_corpus, write_corpus
    from sdf_addon.universe import load_universe

    out = tmp_path / "corpus"
    out.mkdir()
    (out / "revised.jsonl").write_text(json.dumps({"content": "x", "key": "d0"}) + "\n")
    u = load_universe("A1_plus")
    with exclusive(out, "corpus"):
        before = snapshot(tmp_path)  # the holder's lock file included
        with pytest.raises(LockedError, match="in use by another steerlab process"):
            write_corpus(u, out, len, DocgenConfig())
        with pytest.raises(LockedError):
            Stage("documents", out, generator=None, cache=None, chunk=1, progress=False).run([], None)
        assert snapshot(tmp_path) == before
    with hold_corpus(out), hold_corpus(out):  # nested holds in one process share the lock
        assert (out / ".lock").read_text() == str(os.getpid())


def test_judge_refuses_a_run_that_a_sweep_holds(tmp_path, capsys):
    """``steerlab judge`` rewrites samples.jsonl: it takes the run's lock, so it never runs beside
    the sweep writing that run (a second open of the lock conflicts even within one process)."""
    from steerlab.fileio import exclusive

    run = tmp_path / "run"
    run.mkdir()
    (run / "header.json").write_text(json.dumps({"format": 2, "seeds": [0], "scenario": {"name": "alignment_faking"}}))
    (run / "samples.jsonl").write_text(json.dumps({"id": "a", "item": "q", "reasoning": "r"}) + "\n")
    before = (run / "samples.jsonl").read_bytes()
    with exclusive(run, "run"):
        code, _, err = run_cli(["judge", run, "--judge", "local", "--cache", tmp_path / "c.sqlite"], capsys)
    assert code == 2 and "in use by another steerlab process" in err
    assert (run / "samples.jsonl").read_bytes() == before
