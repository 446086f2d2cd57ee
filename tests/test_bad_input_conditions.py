"""Bad input to the operators, conditions and `condition fit`: one line, exit 2, nothing written."""

import json

import pytest
import torch
from test_bad_input import refused

from steerlab.conditions import Condition


@pytest.fixture
def cond_file(tiny, tmp_path):
    """A valid condition file for the tiny model, and one for a model of another width."""
    ok = Condition(torch.ones(tiny.d_model), 1, 0.0, ">", model=tiny.fingerprint.to_dict())
    (tmp_path / "ok.json").write_text(json.dumps(ok.record()))
    other = Condition(torch.ones(tiny.d_model * 2), 1, 0.0, ">", model=dict(tiny.fingerprint.to_dict(), d_model=128))
    (tmp_path / "other.json").write_text(json.dumps(other.record()))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "notcond.json").write_text(json.dumps({"kind": "dose_calibration"}))
    (tmp_path / "true.txt").write_text("\n".join(f"prompt number {i}" for i in range(6)) + "\n")
    (tmp_path / "false.txt").write_text("\n".join(f"another line {i}" for i in range(6)) + "\n")
    (tmp_path / "few.txt").write_text("one\ntwo\n")
    (tmp_path / "empty.txt").write_text("\n")
    return tmp_path


def steer(tiny_dir, tiny_vector, *extra):
    return ["steer", "--model", tiny_dir, "--vector", tiny_vector, "--alpha", "1", "--prompt", "hi",
            "--max-new-tokens", "2", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--operator", "scale"], "unknown operator 'scale'"),
        (["--operator", "clamp"], "operator clamp needs bounds"),
        (["--operator", "clamp", "--clamp", "2:1"], "give LO <= HI"),
        (["--operator", "clamp", "--clamp", "a:1"], "must be numbers"),
        (["--operator", "clamp", "--clamp", "1"], "write LO:HI"),
        (["--clamp", "0:1"], "bounds are for operator clamp"),
        (["--operator", "clamp", "--clamp", ":"], "both sides are open"),
        (["--backend", "vllm", "--operator", "bogus"], "unknown operator 'bogus'"),
        (["--steer-if", "{root}/broken.json"], "is not JSON"),
        (["--steer-if", "{root}/notcond.json"], "is not a condition file"),
        (["--steer-if", "{root}/missing.json"], "missing.json"),
        (["--steer-if", "{root}/other.json"], "fitted on another model"),
        (["--backend", "vllm", "--operator", "ablate"], "--operator ablate needs --backend hf or nnsight"),
        (["--backend", "vllm", "--steer-if", "{root}/ok.json"], "--steer-if needs --backend hf or nnsight"),
    ],
)
def test_steer_refuses(extra, says, cond_file, tiny_dir, tiny_vector, capsys):
    args = steer(tiny_dir, tiny_vector, *[e.format(root=cond_file) for e in extra])
    refused(args, says, cond_file, capsys, loading_bar=True)


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--true", "{root}/true.txt", "--false", "{root}/true.txt"], "the same file"),
        (["--true", "{root}/few.txt", "--false", "{root}/false.txt"], "needs at least 5 per set"),
        (["--true", "{root}/empty.txt", "--false", "{root}/false.txt"], "holds no prompts"),
        (
            ["--true", "{root}/true.txt", "--false", "{root}/false.txt", "--statistic", "mean"],
            "use cosine or projection",
        ),
        (["--true", "{root}/true.txt", "--false", "{root}/false.txt", "--folds", "1"], "at least 2"),
        (["--true", "{root}/true.txt", "--false", "{root}/false.txt", "--layers", "9"], "9"),
        (["--true", "{root}/true.txt", "--false", "{root}/false.txt", "--out", "{root}/ok.json"], "--overwrite"),
    ],
)
def test_condition_fit_refuses(extra, says, cond_file, tiny_dir, capsys):
    args = ["condition", "fit", "--model", tiny_dir, "--out", cond_file / "new.json"]
    args += [e.format(root=cond_file) for e in extra]
    refused(args, says, cond_file, capsys, loading_bar=True)
