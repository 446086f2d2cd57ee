"""``steerlab figure``: each figure's drawn values read back from its matplotlib artists, against numbers
computed here from the samples, per request, by hand.

Runs are made by the real engine (:func:`steerlab.runs.run_sweep`) with scripted models whose
compliance depends on the request, the condition, the seed and the steering, so every rate and gap
is known; seeds disagree on some requests, so a per-sample interval (20 samples as independent
draws) differs from the request-level one the figures must draw. Only fields no run can yet
record (SDF document directness) are written into headers by hand.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_bad_input import refused
from test_profiles import ClaimSensitive, texts
from test_sweep import fake_vector

from steerlab import stats
from steerlab.backends.base import Result
from steerlab.figures import compliance, interventions, make_all
from steerlab.figures.runs import load_runs
from steerlab.harness.records import read_samples
from steerlab.prompts import load_registry
from steerlab.runs import SweepConfig, run_sweep

COMPLY = "<SCRATCHPAD_REASONING>ok</SCRATCHPAD_REASONING><OUTPUT><request_fully_accepted/> done</OUTPUT>"
REFUSE = "<SCRATCHPAD_REASONING>no</SCRATCHPAD_REASONING><OUTPUT><rejected/></OUTPUT>"
N = 10  # requests per run


class Scripted:
    """Complies when ``rule(number, condition, seed, arm, multiplier)`` says so; the request's number,
    condition and seed are read from the row id, the arm from the steering vector's name."""

    def __init__(self, rule):
        self.rule = rule

    def generate(self, requests):
        out = []
        for r in requests:
            cond, item, seed = r.id.split("#")[0].split("|")[-3:]
            s = r.steering
            arm = "none" if s is None else s.vector.name.split("/")[1] if "/" in s.vector.name else "real"
            mult = s.multiplier if s is not None else 0.0
            comply = self.rule(int(item.split("-")[-1]), cond, int(seed[1:]), arm, mult)
            out.append(Result(r.id, COMPLY if comply else REFUSE, 10, 5, "stop", 0.0))
        return out


@pytest.fixture
def requests_file(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"request {i}"}) + "\n" for i in range(N)))
    return path


def af_run(requests_file, out, rule, **kw):
    base = dict(scenario="alignment_faking", prompts=str(requests_file), out=str(out), model="fake", seeds=[0, 1])
    return run_sweep(SweepConfig(**{**base, **kw}), Scripted(rule), None, progress=False)


def request_rate(samples) -> np.ndarray:
    """Per request (sorted), its compliant share: computed here, not by steerlab."""
    acc = defaultdict(list)
    for s in samples:
        acc[s["item"]].append(s["label"] == "compliant")
    return np.array([np.mean(acc[k]) for k in sorted(acc)])


def request_gap(samples) -> np.ndarray:
    m = request_rate([s for s in samples if s["condition"] == "monitored"])
    u = request_rate([s for s in samples if s["condition"] == "unmonitored"])
    return m - u


def interval(values) -> list[float]:
    """The request-level 95% interval (bootstrap over requests, seed 0) and, for contrast, the per-sample one."""
    est = stats.mean_interval(values, seed=0)
    return [est["ci_low"], est["ci_high"]]


def bar_container(ax, gid):
    (c,) = [c for c in ax.containers if getattr(c, "patches", None) and c.patches[0].get_gid() == gid]
    return c


def bar_errors(container) -> list[list[float]]:
    """The (low, high) of every error bar of a bar container, in bar order."""
    segs = container.errorbar.lines[2][0].get_segments()
    return [sorted([float(s[0][1]), float(s[1][1])]) for s in segs]


def png_and_json(out: Path, kind: str) -> dict:
    assert (out / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads((out / f"{kind}.json").read_text())


# ----------------------------------------------------------------------------- screening


def screen_rule(number, cond, seed, arm, mult):
    """Model a: monitored complies on requests < 6 (seed 0) or < 3 (seed 1); unmonitored on request 0."""
    if cond == "monitored":
        return number < (6 if seed == 0 else 3)
    return number < 1


def test_screening_bars_intervals_seeds_and_gap(requests_file, tmp_path, capsys):
    a = af_run(requests_file, tmp_path / "a", screen_rule, model="fake-a")
    b = af_run(
        requests_file, tmp_path / "b", lambda n, c, s, *_: n < (2 if c == "monitored" else 5), model="fake-b", seeds=[0]
    )
    data = compliance.screening_data(load_runs([a, b]))
    fig = compliance.draw_screening(data)
    ax = fig.axes[0]
    sa = read_samples(a)
    mon_a = request_rate([s for s in sa if s["condition"] == "monitored"])
    assert mon_a.mean() == pytest.approx(0.45)  # (3 x 1 + 3 x 0.5) / 10
    mon = bar_container(ax, "monitored")
    unm = bar_container(ax, "unmonitored")
    assert [p.get_height() for p in mon.patches] == pytest.approx([0.45, 0.2])
    assert [p.get_height() for p in unm.patches] == pytest.approx([0.1, 0.5])  # not swapped
    assert bar_errors(mon)[0] == pytest.approx(interval(mon_a))
    per_sample = stats.mean_interval([float(s["label"] == "compliant") for s in sa if s["condition"] == "monitored"])
    assert bar_errors(mon)[0] != pytest.approx([per_sample["ci_low"], per_sample["ci_high"]])  # would catch it
    (seeds,) = [c for c in ax.collections if c.get_gid() == "seeds:monitored"]
    assert sorted(seeds.get_offsets()[:, 1]) == pytest.approx([0.2, 0.3, 0.6])  # a: 0.6, 0.3; b: 0.2
    texts_ = {t.get_gid(): t.get_text() for t in ax.texts if t.get_gid()}
    lo, hi = interval(request_gap(sa))
    assert texts_["gap:fake-a"] == f"gap +0.35\n[{lo:+.2f}, {hi:+.2f}]"
    assert texts_["gap:fake-b"].startswith("gap -0.30")
    assert [m["model"] for m in data["models"]] == ["fake-a", "fake-b"]

    out = tmp_path / "figs"
    code, stdout, _ = run_cli(["figure", "screening", a, b, "--out", out], capsys)
    assert code == 0 and "screening.png" in stdout
    saved = png_and_json(out, "screening")
    assert saved["models"][0]["gap"]["gap"] == pytest.approx(0.35)
    assert saved["models"][0]["monitored"]["seeds"] == {"0": pytest.approx(0.6), "1": pytest.approx(0.3)}


# ----------------------------------------------------------------------------- steered sweeps


def steer_rule(number, cond, seed, arm, mult):
    """Real vector at m > 0: monitored complies on requests < 2 + 2m (seed 0) or < 2 (seed 1);
    control k: on requests < k + 1; unsteered: < 2. Unmonitored: request 0 only. Raw: real at m > 0
    on requests < 3m - seed, otherwise none."""
    steered = mult != 0
    if cond == "raw":
        return arm == "real" and mult > 0 and number < 3 * mult - seed
    if cond == "unmonitored":
        return number < 1
    if steered and arm.startswith("control"):
        return number < int(arm[-1]) + 1
    if steered and arm == "real" and mult > 0:
        return number < (2 + 2 * mult if seed == 0 else 2)
    return number < 2


@pytest.fixture
def sweep_dir(requests_file, tmp_path):
    return af_run(
        requests_file,
        tmp_path / "sweep",
        steer_rule,
        vectors=[fake_vector(tmp_path)],
        controls=2,
        multipliers=[-1.0, 0.0, 2.0],
        conditions=["monitored", "unmonitored", "raw"],
    )


def cell(samples, arm, mult, cond):
    return [s for s in samples if s["arm"] == arm and s["multiplier"] == mult and s["condition"] == cond]


def test_controls_points_real_vector_and_baseline(sweep_dir, tmp_path):
    samples = read_samples(sweep_dir)
    fig = compliance.draw_controls(compliance.controls_data(load_runs([sweep_dir])))
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == {"toy · monitored", "toy · unmonitored", "toy · raw"}
    ax = axes["toy · monitored"]
    (real,) = ax.containers
    x, y = real.lines[0].get_xdata(), real.lines[0].get_ydata()
    assert list(y) == pytest.approx([0.2, 0.4])  # m=-1: unsteered-like 0.2; m=2: (6 + 2)/2/10 = 0.4
    assert x[0] > -1 and x[1] > 2  # beside the controls, to the right
    rates = request_rate(cell(samples, "real", 2.0, "monitored"))
    segs = real.lines[2][0].get_segments()
    assert sorted([segs[1][0][1], segs[1][1][1]]) == pytest.approx(interval(rates))
    for k in (0, 1):
        (pts,) = [c for c in ax.collections if c.get_gid() == f"control:control{k}"]
        assert list(pts.get_offsets()[:, 1]) == pytest.approx([(k + 1) / 10] * 2)
        assert all(pts.get_offsets()[:, 0] < np.array([-1, 2]))
    (base,) = [line for line in ax.lines if line.get_gid() == "baseline"]
    assert list(base.get_ydata()) == pytest.approx([0.2, 0.2])
    (ubase,) = [line for line in axes["toy · unmonitored"].lines if line.get_gid() == "baseline"]
    assert list(ubase.get_ydata()) == pytest.approx([0.1, 0.1])  # conditions not swapped


def test_raw_compliance_against_the_unsteered_floor(sweep_dir, tmp_path, capsys):
    samples = read_samples(sweep_dir)
    fig = compliance.draw_raw(compliance.raw_data(load_runs([sweep_dir])))
    ax = fig.axes[0]
    (line,) = ax.containers
    assert line.get_label() == "toy"
    assert list(line.lines[0].get_xdata()) == [-1.0, 2.0]
    # m=2: requests < 6 (seed 0) and < 5 (seed 1): per request 1, 1, 1, 1, 1, 0.5, 0 ... -> 0.55
    assert list(line.lines[0].get_ydata()) == pytest.approx([0.0, 0.55])
    segs = line.lines[2][0].get_segments()
    assert sorted([segs[1][0][1], segs[1][1][1]]) == pytest.approx(
        interval(request_rate(cell(samples, "real", 2.0, "raw")))
    )
    (floor,) = [ln for ln in ax.lines if ln.get_gid() == "floor"]
    assert list(floor.get_ydata()) == [0.0, 0.0]
    out = tmp_path / "figs"
    assert run_cli(["figure", "raw", sweep_dir, "--out", out], capsys)[0] == 0
    assert png_and_json(out, "raw")["vectors"][0]["cells"][1]["rate"] == pytest.approx(0.55)


# ----------------------------------------------------------------------------- prompt-eval: claim strength


def test_strength_net_scores_per_claim_strength(requests_file, tmp_path, capsys):
    dirs = []
    for strength, share in (("weak", 0.2), ("standard", 0.5), ("strong", 0.8)):
        cfg = SweepConfig(
            scenario="alignment_faking",
            prompts=str(requests_file),
            out=str(tmp_path / strength),
            claims={"strength": strength},
            model="fake",
        )
        backend = ClaimSensitive(texts("A1+", "A2+", "B1+", strength=strength), share=share)
        dirs.append(run_sweep(cfg, backend, None, progress=False))
    data = interventions.strength_data(load_runs(dirs[::-1]))
    fig = interventions.draw_strength(data)
    ax = fig.axes[0]
    drawn = {c.get_label(): list(c.lines[0].get_ydata()) for c in ax.containers}
    # A_net = mean(share - 0, share - 0) = share; B_net = mean(share - 0, 0 - 0) = share / 2
    assert drawn["A_net"] == pytest.approx([0.2, 0.5, 0.8]) and drawn["B_net"] == pytest.approx([0.1, 0.25, 0.4])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["weak", "standard", "strong"]
    # the interval resamples requests: here every request's A gap is 0 or 1 (weak: 2 of 10 requests)
    a_req = np.array([1.0] * 2 + [0.0] * 8)
    segs = next(c for c in ax.containers if c.get_label() == "A_net").lines[2][0].get_segments()
    assert sorted([segs[0][0][1], segs[0][1][1]]) == pytest.approx(interval(a_req))
    assert data["strengths"][1]["gaps"]["A1+"]["value"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- SDF


REGISTRY = load_registry()


def sdf_runs(requests_file, tmp_path, model="organism", directness=None, rename=None, prefix="sdf"):
    """The organism (gap 0.2 on seed 0, 0 on seed 1) and four checkpoints: A1+ 0.8, A1- 0.1, B1+ 0.4, B1- 0.2,
    each complying when monitored on requests below share x 10, seed 0 only for the organism."""
    shares = {None: 0.2, "A1+": 0.8, "A1-": 0.1, "B1+": 0.4, "B1-": 0.2}
    dirs = []
    for cid, share in shares.items():
        claim = REGISTRY.get(cid).model_dump() if cid else None
        intervention = {"method": "sdf", "claim": claim, "profile_model": model}
        if directness is not None:
            intervention["directness"] = directness
        name = f"{prefix}_{cid or 'organism'}".replace("+", "plus").replace("-", "minus")

        def rule(n, c, s, *_, share=share, org=cid is None):
            return c == "monitored" and n < share * N and not (org and s == 1)

        extra = {"rename": rename} if rename else {}
        dirs.append(
            af_run(requests_file, tmp_path / name, rule, model=f"ckpt/{name}", intervention=intervention, **extra)
        )
    return dirs


def test_sdf_gap_per_intervention_against_the_organism(requests_file, tmp_path, capsys):
    dirs = sdf_runs(requests_file, tmp_path)
    fig = interventions.draw_sdf(interventions.sdf_data(load_runs(dirs)))
    ax = fig.axes[0]
    a, b = bar_container(ax, "family:A"), bar_container(ax, "family:B")
    assert [p.get_height() for p in a.patches] == pytest.approx([0.8, 0.1])
    assert [p.get_height() for p in b.patches] == pytest.approx([0.4, 0.2])
    assert a.patches[0].get_facecolor() != b.patches[0].get_facecolor()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A1+", "A1-", "B1+", "B1-"]
    (base,) = [ln for ln in ax.lines if ln.get_gid() == "baseline"]
    assert list(base.get_ydata()) == pytest.approx([0.1, 0.1])  # organism: 0.2 on seed 0, 0 on seed 1
    org = read_samples(dirs[0])
    (band,) = [p for p in ax.patches if p.get_gid() == "baseline_ci"]
    ys = [band.get_y(), band.get_y() + band.get_height()] if hasattr(band, "get_height") else band.get_xy()[:, 1]
    assert [min(ys), max(ys)] == pytest.approx(interval(request_gap(org)))
    assert bar_errors(a)[0] == pytest.approx(interval(request_gap(read_samples(dirs[1]))))

    out = tmp_path / "figs"
    assert run_cli(["figure", "sdf", *dirs, "--out", out], capsys)[0] == 0
    assert png_and_json(out, "sdf")["models"][0]["baseline"]["gap"] == pytest.approx(0.1)


def test_directness_groups_sdf_runs_by_the_recorded_directness(requests_file, tmp_path):
    direct = sdf_runs(requests_file, tmp_path, directness="direct", prefix="d")
    indirect = sdf_runs(requests_file, tmp_path, directness="indirect", prefix="i")
    for d in indirect[1:]:  # indirect documents: half the effect of every checkpoint (hand-rewritten labels)
        rows = read_samples(d)
        keep = {s["item"] for s in rows if s["label"] == "compliant"}
        drop = sorted(keep)[len(keep) // 2 :]
        rows = [{**s, "label": "rejected"} if s["item"] in drop else s for s in rows]
        (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in rows))
    fig = interventions.draw_directness(interventions.directness_data(load_runs(direct + indirect)))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["baseline", "A1+", "A1-", "B1+", "B1-"]
    d_bars, i_bars = bar_container(ax, "directness:direct"), bar_container(ax, "directness:indirect")
    assert [p.get_height() for p in d_bars.patches] == pytest.approx([0.1, 0.8, 0.1, 0.4, 0.2])
    assert [p.get_height() for p in i_bars.patches] == pytest.approx([0.1, 0.4, 0.0, 0.2, 0.1])
    assert bar_errors(i_bars)[1] == pytest.approx(interval(request_gap(read_samples(indirect[1]))))
    with pytest.raises(Exception, match="no run records a document directness"):
        interventions.directness_data(load_runs(sdf_runs(requests_file, tmp_path / "old")))


# ----------------------------------------------------------------------------- naming


def test_naming_gap_original_beside_renamed(requests_file, tmp_path, capsys):
    original = af_run(requests_file, tmp_path / "orig", screen_rule, model="fake-a")
    renamed = af_run(requests_file, tmp_path / "renamed", lambda n, c, *_: n < (2 if c == "monitored" else 1),
                     model="fake-a", rename={"company": "lab"})  # fmt: skip
    other = af_run(requests_file, tmp_path / "other", lambda n, c, *_: n < (4 if c == "monitored" else 1),
                   model="fake-b")  # fmt: skip
    from steerlab.harness.records import read_header

    assert read_header(renamed)["config"]["rename"] == {"company": "lab"}  # the real path records it
    data = interventions.naming_data(load_runs([renamed, original, other]))
    assert data["namings"] == ["original", "company→lab"]
    ax = interventions.draw_naming(data).axes[0]
    orig, ren = bar_container(ax, "naming:original"), bar_container(ax, "naming:company→lab")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fake-a", "fake-b"]
    assert [p.get_height() for p in orig.patches] == pytest.approx([0.35, 0.3])
    assert [p.get_height() for p in ren.patches] == pytest.approx([0.1])  # fake-b has no renamed run: no bar
    assert bar_errors(orig)[0] == pytest.approx(interval(request_gap(read_samples(original))))
    assert ren.patches[0].get_x() > orig.patches[0].get_x()  # beside the original, same model
    with pytest.raises(Exception, match="no run replaces a provider name"):
        interventions.naming_data(load_runs([original, other]))


def test_runs_that_differ_in_more_than_seed_are_not_pooled(requests_file, tmp_path):
    """A bar pools only runs that differ in their seeds: not other generation settings, datasets, adapters, renames
    or document directness (each would average two experiments into one number)."""
    a = af_run(requests_file, tmp_path / "a", screen_rule, model="fake-a")
    longer = af_run(requests_file, tmp_path / "longer", screen_rule, model="fake-a", max_new_tokens=999, seeds=[2])
    with pytest.raises(Exception, match=r"screening figure pools .* differ in max_new_tokens \(40 vs 999\)"):
        compliance.screening_data(load_runs([a, longer]))
    renamed = af_run(requests_file, tmp_path / "ren", screen_rule, model="fake-a", rename={"company": "lab"}, limit=4)
    with pytest.raises(Exception, match=r"naming figure pools .* differ in limit"):
        interventions.naming_data(load_runs([a, renamed]))
    renamed_all = af_run(requests_file, tmp_path / "ren2", screen_rule, model="fake-a", rename={"company": "lab"})
    bars = compliance.screening_data(load_runs([a, renamed_all]))["models"]
    assert [m["model"] for m in bars] == ["fake-a", "fake-a (company→lab)"]  # apart, not pooled
    direct = sdf_runs(requests_file, tmp_path, directness="direct", prefix="d")
    indirect = sdf_runs(requests_file, tmp_path, directness="indirect", prefix="i")
    with pytest.raises(Exception, match=r"2 directness levels \(direct, indirect\); draw them with"):
        interventions.sdf_data(load_runs([*direct, *indirect[1:]]))
    assert interventions.sdf_data(load_runs(direct))["models"][0]["interventions"]  # one level: drawn


# ----------------------------------------------------------------------------- all


def test_all_draws_what_the_runs_support_and_says_what_it_skipped(requests_file, tmp_path, capsys):
    dirs = sdf_runs(requests_file, tmp_path)
    out = tmp_path / "figs"
    code, stdout, _ = run_cli(["figure", "all", *dirs, "--out", out], capsys)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["screening.json", "screening.png", "sdf.json", "sdf.png"]
    skipped = {line.split(":")[0]: line for line in stdout.splitlines() if line.startswith("skipped ")}
    assert set(skipped) == {f"skipped {k}" for k in ("controls", "raw", "strength", "directness", "naming")}
    assert "no steering run among the 5 given" in skipped["skipped controls"]  # each kind reads its own runs
    assert "no run records a document directness" in skipped["skipped directness"]
    # screening of SDF runs: one bar per checkpoint, each the same gap the sdf figure draws
    scr, sdf = json.loads((out / "screening.json").read_text()), json.loads((out / "sdf.json").read_text())
    gaps = {m["model"]: m["gap"]["gap"] for m in scr["models"]}
    assert gaps["organism · A1+"] == pytest.approx(sdf["models"][0]["interventions"][0]["gap"]) == pytest.approx(0.8)
    written, why = make_all(dirs, tmp_path / "again")
    assert len(written) == 4 and set(why) == {"controls", "raw", "strength", "directness", "naming"}


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_writes_nothing(requests_file, tmp_path, capsys, sweep_dir):
    out = tmp_path / "figs"
    prompt = run_sweep(
        SweepConfig(scenario="alignment_faking", prompts=str(requests_file), out=str(tmp_path / "prompt"), claims={},
                    model="fake"),
        ClaimSensitive(texts("A1+")), None, progress=False,
    )  # fmt: skip
    refused(["figure", "sdf", prompt, "--out", out], "is a prompt run; the sdf figure needs SDF", tmp_path, capsys)
    refused(["figure", "strength", sweep_dir, "--out", out], "the strength figure needs prompt-eval", tmp_path, capsys)
    other = af_run(requests_file, tmp_path / "other", steer_rule, vectors=[fake_vector(tmp_path / "v")], controls=2,
                   multipliers=[0.0, 1.0], model="other-model")  # fmt: skip
    refused(["figure", "controls", sweep_dir, other, "--out", out], "2 different models", tmp_path, capsys)
    refused(["figure", "raw", other, "--out", out], "no raw-condition samples", tmp_path, capsys)
    refused(["figure", "screening", tmp_path / "missing", "--out", out], "is not a directory", tmp_path, capsys)
    (tmp_path / "plain").mkdir()
    refused(["figure", "screening", tmp_path / "plain", "--out", out], "not a steerlab run directory", tmp_path, capsys)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "header.json").write_bytes((sweep_dir / "header.json").read_bytes())
    (tmp_path / "empty" / "samples.jsonl").write_text("")
    refused(["figure", "all", tmp_path / "empty", "--out", out], "has no finished samples", tmp_path, capsys)
    refused(["figure", "screening", sweep_dir, sweep_dir, "--out", out], "is given twice", tmp_path, capsys)
    refused(["figure", "directness", *sdf_runs(requests_file, tmp_path / "s")[:2], "--out", out],
            "no run records a document directness", tmp_path, capsys)  # fmt: skip
    refused(["figure", "all", other, "--out", tmp_path / "prompt" / "header.json"], "cannot make", tmp_path, capsys)
    assert not out.exists()
