import json

import pytest
import torch
import yaml
from conftest import run_cli

from steerlab.backends.base import Result
from steerlab.errors import ConfigError
from steerlab.harness.records import SAMPLES, read_samples
from steerlab.runs import SweepConfig, figure, run_sweep, summarise, write_summary
from steerlab.vectors import VectorBundle, random_controls

FP = {"architecture": "Fake", "n_layers": 3, "d_model": 4, "config_hash": "c", "embed_hash": "e"}


class FakeBackend:
    """Outputs encode the request: 'm=<multiplier> <name>'; counts every request it serves."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.served, self.fail_after = 0, [], fail_after

    def generate(self, requests):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        out = []
        for r in requests:
            s = r.steering
            label = "none" if s is None else f"m={s.multiplier:+g} {s.vector.name}"
            self.served.append(r.id)
            out.append(Result(r.id, label, 5, 3, "length", 0.0))
        return out


def fake_vector(tmp_path, concept="toy", n_controls=3):
    directions = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    meta = {"concept": concept, "layers": [0, 1, 2], "selected_layers": [1], "model": FP}
    return VectorBundle.build(directions, random_controls(directions, n_controls, 1), meta).save(
        tmp_path / f"{concept}.safetensors"
    )


def config(tmp_path, **kw):
    (tmp_path / "prompts.txt").write_text("first prompt\nsecond prompt\n")
    base = dict(vectors=[fake_vector(tmp_path)], controls=2, multipliers=[-1.0, 0.0, 2.0],
                conditions={"monitored": "You are watched.", "unmonitored": None},
                prompts=tmp_path / "prompts.txt", seeds=[0, 1], out=tmp_path / "run")  # fmt: skip
    base.update(kw)
    return SweepConfig(**base)


def test_expansion_records_and_shared_zero_rows(tmp_path):
    cfg = config(tmp_path)
    backend = FakeBackend()
    run_dir = run_sweep(cfg, backend, None, progress=False, chunk=1000)
    records = read_samples(run_dir)
    assert len(records) == 3 * 3 * 2 * 2 * 2  # arms x multipliers x conditions x prompts x seeds
    assert len({r["id"] for r in records}) == len(records)
    # multiplier 0 is generated once per (condition, prompt, seed) and shared by the three arms
    assert len(backend.served) == len(records) - 2 * 8
    by_id = {r["id"]: r for r in records}
    r = by_id["toy/control1|+2|monitored|prompts-001|s0"]
    assert r["text"] == "m=+2 toy/control1" and r["system"] == "You are watched." and r["layers"] == [1]
    assert by_id["toy/real|+0|unmonitored|prompts-000|s1"]["text"] == "none"
    header = json.loads((run_dir / "header.json").read_text())
    assert header["n_rows"] == len(records) and header["versions"]["steerlab"]


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_unsteered_rows_are_generated_once_per_run_whatever_the_chunk(tmp_path, chunk):
    """Multiplier 0 is one generation per (condition, request, seed) for the whole run, shared by
    every arm: de-duplication happens before chunking, so no chunk size regenerates it."""
    (tmp_path / "five").mkdir()
    five = fake_vector(tmp_path / "five", n_controls=5)
    cfg = config(tmp_path, controls=5, multipliers=[-1.0, 0.0, 1.0], vectors=[five])
    backend = FakeBackend()
    run_dir = run_sweep(cfg, backend, None, progress=False, chunk=chunk)
    records = read_samples(run_dir)
    zero = [r for r in records if r["multiplier"] == 0]
    assert len(zero) == 6 * 2 * 2 * 2  # arms x conditions x prompts x seeds
    unsteered_served = [rid for rid in backend.served if rid.startswith("none|")]
    assert len(unsteered_served) == 2 * 2 * 2  # conditions x prompts x seeds: 8 distinct, not 6 x 8
    assert len(backend.served) == 6 * 2 * 2 * 2 * 2 + 8  # the steered rows once each, plus the 8 shared
    # every arm's baseline row is the same generation
    by_key = {}
    for r in zero:
        by_key.setdefault((r["condition"], r["item"], r["seed"]), set()).add(r["text"])
    assert all(len(texts) == 1 for texts in by_key.values())


def test_killed_sweep_resumes_to_the_same_records(tmp_path):
    clean_dir = run_sweep(config(tmp_path, out=tmp_path / "clean"), FakeBackend(), None, progress=False, chunk=5)
    cfg = config(tmp_path, out=tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, FakeBackend(fail_after=3), None, progress=False, chunk=5)
    with open(tmp_path / "killed" / SAMPLES, "a") as fh:
        fh.write('{"id": "torn')  # a kill in the middle of a line
    n_killed = len(read_samples(tmp_path / "killed"))  # the rows of the first 15 generations, torn line dropped
    assert 15 <= n_killed < len(read_samples(clean_dir))
    resumed = FakeBackend()
    run_sweep(cfg, resumed, None, progress=False, chunk=5)
    assert not any(rid.endswith("torn") for rid in resumed.served)

    def key(records):
        return sorted((r["id"], r["text"]) for r in records)

    assert key(read_samples(tmp_path / "killed")) == key(read_samples(clean_dir))
    with pytest.raises(ConfigError, match="another config hash"):
        run_sweep(config(tmp_path, out=tmp_path / "killed", multipliers=[1.0]), FakeBackend(), None, progress=False)


def test_summary_envelope_and_z_score():
    records = []
    for arm, score in [("real", 0.9), ("control0", 0.1), ("control1", 0.3), ("control2", 0.2)]:
        for p in range(4):
            records.append({"vector": "v", "arm": arm, "multiplier": 1.0, "condition": "c", "text": str(score), "p": p,
                            "item": f"q{p}"})  # fmt: skip
    cells = summarise(records, lambda text, _r: float(text))
    (cell,) = cells
    assert cell["real_mean"] == pytest.approx(0.9) and cell["real_sem"] == 0
    assert (cell["control_min"], cell["control_max"], cell["control_mean"]) == pytest.approx((0.1, 0.3, 0.2))
    assert cell["control_sd"] == pytest.approx(0.1)
    assert (cell["control_lo"], cell["control_hi"]) == pytest.approx((0.0, 0.4))
    assert cell["z"] is None and cell["z_note"] == "n/a: fewer than 5 controls"  # 3 controls: no z-score


def test_regex_scorer_summary_and_figure(tmp_path):
    run_dir = run_sweep(config(tmp_path), FakeBackend(), None, progress=False)
    path, cells = write_summary(run_dir, r"^m=\+2 toy$")  # the real vector is named by its concept
    assert json.loads(path.read_text())["scorer"] == r"^m=\+2 toy$"
    hit = {(c["multiplier"], c["condition"]): c["real_mean"] for c in cells}
    assert hit == {(m, c): float(m == 2.0) for m in (-1.0, 0.0, 2.0) for c in ("monitored", "unmonitored")}
    assert figure(run_dir, cells, "regex").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="cannot be imported"):
        write_summary(run_dir, "steerlab.nope:missing")


def test_bad_sweeps(tmp_path):
    with pytest.raises(ConfigError, match="asks for 5"):
        run_sweep(config(tmp_path, controls=5), FakeBackend(), None, progress=False)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match="holds no requests"):
        run_sweep(config(tmp_path, prompts=tmp_path / "empty.txt"), FakeBackend(), None, progress=False)
    with pytest.raises(ValueError, match="not a finite number"):
        config(tmp_path, multipliers=[float("nan")])
    with pytest.raises(ValueError, match="'absolute' or 'relative'"):
        config(tmp_path, scale="linear")


def test_cli_sweep_config_errors(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"vectors": [], "multipliers": [1], "prompts": "p.txt"}))
    code, _, err = run_cli(["sweep", "--config", cfg], capsys)
    assert code == 2 and "vectors" in err
    code, _, err = run_cli(["sweep", "--config", tmp_path / "missing.yaml"], capsys)
    assert code == 2 and "does not exist" in err
    cfg.write_text(yaml.safe_dump({"vectors": ["v.safetensors"], "multipliers": [1], "prompts": "p.txt"}))
    code, _, err = run_cli(["sweep", "--config", cfg, "--multipliers", "1,inf"], capsys)
    assert code == 2 and "not a finite number" in err


def test_distinct_words_scorer():
    from steerlab.scorers import distinct_words

    assert distinct_words("a dash of a dash of a dash") == pytest.approx(3 / 8)
    assert distinct_words("Every word differs here") == 1.0
    assert distinct_words("") == 0.0
