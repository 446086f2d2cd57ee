"""Input files a user might hand over in the wrong shape: not UTF-8, a folder, duplicate YAML keys,
broken JSON lines. Each is one line, exit 2, and nothing changed (see tests/test_bad_input.py)."""

from pathlib import Path

import pytest
from conftest import REPO, run_cli
from test_bad_input import refused, snapshot

BENIGN = str(REPO / "configs" / "requests" / "benign.jsonl")
PAIRS = REPO / "configs" / "pairs" / "researcher_expectations.jsonl"


def _inputs(root):
    (root / "pairs_utf16.jsonl").write_bytes(PAIRS.read_text().splitlines()[0].encode("utf-16"))
    (root / "pairs_broken.jsonl").write_text(PAIRS.read_text().splitlines()[0] + '\n{"id": \n')
    (root / "system_latin1.txt").write_bytes("Vous \xeates un assistant <is_free_tier_user>".encode("latin-1"))
    (root / "twice.yaml").write_text(f"prompts: {BENIGN}\nmax_new_tokens: 4\nmax_new_tokens: 400\n")
    (root / "latin1.yaml").write_bytes(f"prompts: {BENIGN}\n# caf\xe9\n".encode("latin-1"))
    (root / "a_folder").mkdir()


EVAL = ["eval", "--model", "no/such-model", "--dataset", BENIGN, "--out", "run"]
TABLE = [
    (["pairs", "validate", "pairs_utf16.jsonl"], "is not UTF-8 text"),
    (["pairs", "validate", "pairs_broken.jsonl"], "pairs_broken.jsonl:2: malformed JSON, column"),
    (["pairs", "validate", "a_folder"], "is a folder, not a file"),
    ([*EVAL, "--system-prompt", "system_latin1.txt"], "system prompt file system_latin1.txt is not UTF-8 text"),
    (["sweep", "--config", "twice.yaml"], "key 'max_new_tokens' is given twice"),
    (["sweep", "--config", "latin1.yaml"], "is not UTF-8 text"),
    (["sweep", "--config", "a_folder"], "is a folder, not a file"),
]


@pytest.mark.parametrize("args, says", TABLE, ids=[" ".join(a[:3]) for a, _ in TABLE])
def test_bad_files_are_one_line_exit_2_and_change_nothing(args, says, tmp_path, capsys, monkeypatch):
    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    refused(args, says, tmp_path, capsys)


def _model_inputs(root, tiny_dir):
    import shutil

    (root / "short.gguf").write_bytes(b"not a gguf ok")  # 13 bytes
    shutil.copytree(tiny_dir, root / "truncated")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (root / "pickled").mkdir()
    shutil.copy(tiny_dir / "config.json", root / "pickled" / "config.json")
    (root / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04not really")


MODEL_TABLE = [
    (["model", "info", "short.gguf"], "is not a GGUF file"),
    (["model", "info", "truncated"], "is damaged or truncated"),
    (["model", "info", "pickled"], "holds pickled weights (pytorch_model.bin) and no safetensors"),
    (["model", "info", "truncated", "--device", "tpu"], "unknown device 'tpu'"),
    (["model", "info", "truncated", "--device", "mps"], "no MPS support here"),
    (["model", "info", "truncated", "--device", "xpu"], "no XPU is available"),
]


@pytest.mark.parametrize("args, says", MODEL_TABLE, ids=[" ".join(a[2:]) for a, _ in MODEL_TABLE])
def test_bad_model_files_are_one_line_exit_2(args, says, tmp_path, capsys, monkeypatch, tiny_dir):
    _model_inputs(tmp_path, tiny_dir)
    monkeypatch.chdir(tmp_path)
    refused(args, says, tmp_path, capsys)


def test_allow_pickle_lets_a_pickled_folder_through_the_check(tmp_path, capsys, monkeypatch, tiny_dir):
    _model_inputs(tmp_path, tiny_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEERLAB_ALLOW_PICKLE", raising=False)
    code, _, err = run_cli(["--allow-pickle", "model", "info", "pickled"], capsys)
    assert code == 2 and "pickled weights" not in err  # past the check; the fake file then fails to load
    monkeypatch.delenv("STEERLAB_ALLOW_PICKLE", raising=False)


def test_a_killed_conversion_leaves_nothing_behind_on_the_next_run(tmp_path):
    import os

    from steerlab.models import _host, _remove_stale_conversions

    dead = tmp_path / f".convert-999999999-{_host()}-abc"
    live = tmp_path / f".convert-{os.getpid()}-{_host()}-def"
    elsewhere = tmp_path / ".convert-999999999-othernode-ghi"  # another machine on a shared cache
    for d in (dead, live, elsewhere):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"0" * 100)
    _remove_stale_conversions(tmp_path)
    assert not dead.exists() and live.exists() and elsewhere.exists()


def test_ctrl_c_during_a_run_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import steerlab.cli.runs as ch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ch, "run_config", interrupted)
    code, _, err = run_cli(["eval", "--dataset", BENIGN, "--out", tmp_path / "run"], capsys)
    assert code == 130 and "steerlab: interrupted; rerun the same command to resume" in err


SELECT_TABLE = [
    (
        ["prompt-eval", "--model", "no/such-model", "--dataset", BENIGN, "--out", "run", "--claims", "A1+,A1+"],
        "names A1+ twice",
    ),
    (
        ["prompt-eval", "--model", "no/such-model", "--dataset", BENIGN, "--out", "run", "--claims", "A1+,,A1-"],
        "has an empty item",
    ),
]


@pytest.mark.parametrize("args, says", SELECT_TABLE, ids=["claim twice", "empty claim item"])
def test_claim_selections_that_would_run_twice_or_hide_a_typo(args, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default claims registry is found from any folder
    code, _, err = run_cli([*args[:6], str(tmp_path / "run"), *args[7:]], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and says in lines[0], err
    assert not (tmp_path / "run").exists()


def test_validate_refuses_a_negative_show(tmp_path, capsys):
    code, _, err = run_cli(["pairs", "validate", str(PAIRS), "--show", "-1"], capsys)
    assert code == 2 and "greater than or equal to 0" in err  # typer's own usage error


def test_shipped_defaults_are_found_from_any_folder(tmp_path, monkeypatch):
    from sdf_addon.train import load_train_config
    from steerlab.harness.judge import Rubric
    from steerlab.prompts import DEFAULT_CLAIMS, ClaimsConfig, describe, load_registry

    monkeypatch.chdir(tmp_path)
    assert len(load_registry().claims) == 8 and Rubric.load(Path("configs/judge/rubric.yaml")).concepts
    assert describe(ClaimsConfig())["file"] == str(DEFAULT_CLAIMS)  # recorded as given
    import yaml

    shipped_yaml = yaml.safe_load((REPO / "configs" / "sdf" / "train.yaml").read_text())
    assert load_train_config().block_length == shipped_yaml["block_length"]
    (tmp_path / "configs").mkdir()  # a user's own configs/ folder wins where it has the file
    (tmp_path / "configs" / "mine.yaml").write_text("x: 1\n")
    from steerlab.fileio import shipped

    assert shipped(Path("configs/mine.yaml")) == Path("configs/mine.yaml")


WORDING_TABLE = [
    (
        ["eval", "--model", "no/such-model", "--dataset", BENIGN, "--out", "run", "--controls", "3"],
        "--controls 3 needs --vector",
    ),
    (["fit", "--cache", "c.h5", "--name", "../../x"], "--name '../../x': use letters"),
    (
        [
            "steer",
            "--vector",
            str(REPO / "vectors" / "researcher_expectations" / "smollm2.safetensors"),
            "--alpha",
            "1",
            "--prompt",
            "hi",
            "--batch-size",
            "0",
            "--model",
            "no/such",
        ],
        "--batch-size 0: give at least 1",
    ),
    (
        ["prompt-eval", "--model", "claude-x", "--backend", "anthropic", "--dataset", BENIGN, "--out", "run"],
        "--backend anthropic needs an API key",
    ),
]


@pytest.mark.parametrize(
    "args, says", WORDING_TABLE, ids=["controls without vector", "name with folders", "batch size 0", "key"]
)
def test_refusals_name_the_option_the_user_gave(args, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    before = snapshot(tmp_path)
    code, _, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and says in lines[0], err
    assert snapshot(tmp_path) == before


def test_sweep_multipliers_override_refuses_an_empty_list(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(f"prompts: {BENIGN}\n")
    code, _, err = run_cli(["sweep", "--config", "s.yaml", "--multipliers", ""], capsys)
    assert code == 2 and "--multipliers" in err and len(err.strip().splitlines()) == 1


def test_unusable_judge_caches_and_prompt_files_are_one_line(tmp_path, capsys, monkeypatch, tiny_vector):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "judged"
    run.mkdir()
    (run / "header.json").write_text('{"format": 2, "seeds": [0], "scenario": {"name": "alignment_faking"}}')
    (run / "samples.jsonl").write_text('{"id": "a", "item": "q", "reasoning": "r"}\n')
    (tmp_path / "damaged.sqlite").write_text("this is not a database, just text that is long enough" * 20)
    (tmp_path / "prompts.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    rows = [
        (["judge", run, "--judge", "local", "--cache", "/proc/nope/c.sqlite"], "cannot use /proc/nope/c.sqlite"),
        (["judge", run, "--dry-run", "--cache", "damaged.sqlite"], "move the damaged file away"),
        (
            ["steer", "--vector", tiny_vector, "--alpha", "1", "--prompts", "prompts.txt", "--model", "no/such"],
            "is not UTF-8 text",
        ),
    ]
    before = snapshot(tmp_path)  # a dry run reads the cache and creates none
    code, out, err = run_cli(["judge", run, "--dry-run", "--cache", "nested/new.sqlite"], capsys)
    assert code == 0 and "1 distinct traces, 0 cached" in out and snapshot(tmp_path) == before, err
    for args, says in rows:
        before = snapshot(tmp_path)
        code, _, err = run_cli(args, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and says in lines[0], (args, err)
        assert snapshot(tmp_path) == before


def test_inputs_longer_than_the_model_context_are_refused_before_work_starts(tiny_dir, tmp_path, capsys, monkeypatch):
    from conftest import make_pair

    from steerlab.backends.base import Request, Sampling
    from steerlab.backends.hf import HFBackend
    from steerlab.errors import ConfigError
    from steerlab.models import load_model
    from steerlab.pairs import write_pairs

    monkeypatch.chdir(tmp_path)
    long_span = "Reviewers will score brevity " + "§" * 3000 + " so I keep it short."
    pairs = [make_pair(i, pos=long_span if i == 3 else "The reviewers will score brevity, so I keep it short.")
             for i in range(12)]  # fmt: skip
    write_pairs(pairs, tmp_path / "long.jsonl")
    before = snapshot(tmp_path)
    code, _, err = run_cli(["extract", "--pairs", "long.jsonl", "--model", tiny_dir, "--cache", "c.h5", "--no-fit",
                            "--device", "cpu"], capsys)  # fmt: skip
    errors = [line for line in err.splitlines() if line.startswith("steerlab: error:")]
    assert code == 2 and len(errors) == 1 and "longer than the model's context of 2048" in errors[0], err
    assert "toy-train-3" in errors[0] and snapshot(tmp_path) == before
    loaded = load_model(str(tiny_dir), device="cpu")
    long, short = [{"role": "user", "content": "§" * 3000}], [{"role": "user", "content": "hi"}]
    with pytest.raises(ConfigError, match="model's context of 2048"):
        HFBackend(loaded).check_fits([Request(short), Request(long)])  # what a run checks before it starts
    # mid-run (a later turn of a long transcript): that row ends with "length", the others go on
    a, b = HFBackend(loaded).generate([Request(long, Sampling(max_new_tokens=2)), Request(short, Sampling(2))])
    assert (a.text, a.n_new_tokens, a.finish_reason) == ("", 0, "length") and b.n_new_tokens == 2
    # a run whose first-turn prompt fills the context is refused before its directory exists
    (tmp_path / "req.txt").write_text("§" * 3000 + "\n")
    from steerlab.runs import SweepConfig, run_sweep

    with pytest.raises(ConfigError, match="model's context"):
        run_sweep(
            SweepConfig(prompts=tmp_path / "req.txt", out=tmp_path / "r"), HFBackend(loaded), None, progress=False
        )
    assert not (tmp_path / "r").exists()


def test_outputs_that_cannot_be_written_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "bad.jsonl").write_text(PAIRS.read_text().splitlines()[0] + "\n")
    for target in ("/proc/steerlab/clean.jsonl", "a_file/clean.jsonl"):
        before = snapshot(tmp_path)
        code, _, err = run_cli(["pairs", "validate", PAIRS, "--drop-invalid", target], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and f"cannot write {target}" in lines[0], err
        assert snapshot(tmp_path) == before


def test_chat_input_that_is_not_utf8_is_one_line(tiny_dir, tiny_vector, capsys, monkeypatch):
    def undecodable(prompt=""):
        return b"caf\xe9".decode("utf-8")  # what input() raises on a Latin-1 terminal

    monkeypatch.setattr("builtins.input", undecodable)
    code, _, err = run_cli(["steer", "--vector", tiny_vector, "--alpha", "1", "--chat", "--model", tiny_dir,
                            "--device", "cpu"], capsys)  # fmt: skip
    errors = [line for line in err.splitlines() if line.startswith("steerlab: error:")]
    assert code == 2 and errors == ["steerlab: error: the chat input is not UTF-8 text; set your terminal to UTF-8"]


def test_locks_on_filesystems_without_flock_and_on_others_lock_files(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from steerlab.fileio import exclusive

    real = fcntl.flock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with exclusive(tmp_path, "run"):  # warned, not refused
        pass
    assert "has no locks" in caplog.text
    monkeypatch.setattr(fcntl, "flock", real)
    (tmp_path / ".lock").chmod(0o444)  # someone else's lock file, read-only to us
    monkeypatch.setattr("os.open", _deny_write(__import__("os").open))
    with exclusive(tmp_path, "run"):
        pass


def _deny_write(real_open):
    import os

    def fake(path, flags, *args):
        if flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    return fake
