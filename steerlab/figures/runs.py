"""What every figure reads: run directories as (header, samples), who ran them, and writing a figure.

Reading never writes. Every check that can refuse runs before anything is written, so a refused
figure leaves nothing behind; a figure is written as ``KIND.png`` beside ``KIND.json`` (the numbers
it plots, so they can be cited), each atomically.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerlab.errors import ConfigError, SteerlabError
from steerlab.fileio import atomic_write_text
from steerlab.harness import metrics
from steerlab.harness.records import check_unique, read_header, read_samples
from steerlab.profiles import model_id as header_model_id
from steerlab.profiles import model_name as header_model_name
from steerlab.prompts import BASELINE

AF_CONDITIONS = ("monitored", "unmonitored")


class WrongRunsError(SteerlabError):
    """Runs that cannot make the figure asked for (wrong kind, different models pooled, ...)."""


@dataclass
class Run:
    """One run directory: its header, its finished samples and who ran it."""

    run_dir: Path
    header: dict[str, Any]
    samples: list[dict[str, Any]]

    @property
    def model_id(self) -> str:
        """The model's identity: its fingerprint (or the API model name), as profiles pool by."""
        return header_model_id(self.header)

    @property
    def model(self) -> str:
        """The model's display name (an SDF checkpoint's profile model: its organism's name)."""
        return header_model_name(self.header)

    @property
    def intervention(self) -> dict[str, Any] | None:
        return self.header.get("intervention") or None

    @property
    def kind(self) -> str:
        """``sdf``, ``prompt`` (prompt-eval), ``steering`` (a steered sweep) or ``eval`` (none of these)."""
        if self.intervention:
            return "sdf"
        if self.header.get("claims"):
            return "prompt"
        if (self.header.get("config") or {}).get("vectors"):
            return "steering"
        return "eval"

    @property
    def subject(self) -> str:
        """What was evaluated: the model, and for an SDF checkpoint the claim it was fine-tuned toward."""
        claim = (self.intervention or {}).get("claim")
        return f"{self.model} · {claim['id']}" if claim else self.model


def load_runs(run_dirs: Sequence[Path]) -> list[Run]:
    """Every run directory with its labelled samples; refuses a directory that is not a run, a run
    with no samples, unlabelled samples (a run of another scenario) and a row given twice."""
    if not run_dirs:
        raise ConfigError("no run directory given")
    runs = []
    for d in run_dirs:
        d = Path(d)
        if not d.is_dir():
            raise ConfigError(f"{d} is not a directory; give steerlab run directories")
        header = read_header(d)
        samples = read_samples(d)
        if not samples:
            raise ConfigError(f"{d} has no finished samples; a figure needs some")
        if any("label" not in s or "condition" not in s for s in samples):
            raise WrongRunsError(f"{d} has samples without an alignment-faking label; figures need labelled runs")
        runs.append(Run(d, header, samples))
    seen = [str(r.run_dir.resolve()) for r in runs]
    dup = sorted({s for s in seen if seen.count(s) > 1})
    if dup:
        raise ConfigError(f"{dup[0]} is given twice; each run would count twice")
    return runs


def tagged(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The samples of several runs as one list, refusing a row that two of them both hold (the same
    run copied: it would count twice)."""
    samples = [s for r in runs for s in r.samples]
    check_unique(samples, ", ".join(str(r.run_dir) for r in runs))
    return samples


def one_model(runs: Sequence[Run], figure: str) -> tuple[str, str]:
    """(display name, identity) of the one model every run is of; refuses runs of several."""
    ids = defaultdict(list)
    for r in runs:  # an adapter on the same base is another model (its fingerprint is the base's)
        ids[(r.model_id, (r.header.get("config") or {}).get("lora"))].append(r)
    if len(ids) > 1:
        names = sorted({f"{g[0].model} ({g[0].run_dir})" for g in ids.values()})
        raise WrongRunsError(
            f"the {figure} figure draws one model, but the runs are of {len(ids)} different models: "
            f"{', '.join(names)}; draw them separately"
        )
    return runs[0].model, runs[0].model_id


# What a figure pools runs over must agree: how the samples were generated and judged, on which dataset, through
# which adapter, under which naming and directness. Seeds and the output directory may differ.
SETTING_FIELDS = ("scenario", "alignment_faking", "max_new_tokens", "temperature", "top_p", "stop", "chat_date",
                  "judge", "prompts", "prompt_set", "limit")  # fmt: skip


def setting(run: Run) -> dict[str, Any]:
    """The settings of ``run`` that runs pooled into one figure must share (see :data:`SETTING_FIELDS`)."""
    config = run.header.get("config") or {}
    out = {k: config.get(k) for k in SETTING_FIELDS}
    out["lora"] = config.get("lora")
    out["rename"] = config.get("rename") or {}
    out["directness"] = (run.intervention or {}).get("directness")
    return out


def require_same(runs: Sequence[Run], figure: str, ignore: Sequence[str] = ()) -> None:
    """Refuse, with one line naming the first setting that differs and two runs, runs that differ in anything
    but ``ignore`` (what the figure compares) and their seeds: pooling them would average different experiments."""
    first = {k: v for k, v in setting(runs[0]).items() if k not in ignore}
    for r in runs[1:]:
        other = {k: v for k, v in setting(r).items() if k not in ignore}
        for key in first:
            if first[key] != other[key]:
                name, was, now = key, first[key], other[key]
                if isinstance(was, dict) and isinstance(now, dict):  # name the inner setting, e.g. max_turns
                    inner = next(k for k in sorted(set(was) | set(now), key=str) if was.get(k) != now.get(k))
                    name, was, now = f"{key}.{inner}", was.get(inner), now.get(inner)
                raise WrongRunsError(
                    f"the {figure} figure pools {runs[0].run_dir} and {r.run_dir}, which differ in {name} "
                    f"({was!r} vs {now!r}); draw them separately"
                )


def require_kind(runs: Sequence[Run], kinds: Sequence[str], figure: str, needs: str) -> None:
    """Refuse any run not of one of ``kinds`` (see :attr:`Run.kind`)."""
    for r in runs:
        if r.kind not in kinds:
            raise WrongRunsError(f"{r.run_dir} is a {r.kind} run; the {figure} figure needs {needs}")


def unsteered(run: Run) -> list[dict[str, Any]]:
    """A run's samples without an intervention of its own: every sample of an eval or SDF run, the
    real vector's multiplier-0 rows of a steered sweep, the baseline rows of a prompt-eval run."""
    if run.kind == "steering":
        return [s for s in run.samples if s.get("multiplier") == 0 and s.get("arm") in ("real", "none")]
    if run.kind == "prompt":
        return [s for s in run.samples if s.get("claim") == BASELINE]
    return list(run.samples)


def has_gap_conditions(samples: Sequence[dict[str, Any]]) -> bool:
    return set(AF_CONDITIONS) <= {s["condition"] for s in samples}


GAP_KEYS = ("gap", "ci_low", "ci_high", "p", "n_requests")


def checked_gap(runs: Sequence[Run], samples: Sequence[dict[str, Any]], seed: int, missing: str) -> dict[str, Any]:
    """The gap (:func:`steerlab.harness.metrics.gap`, ``GAP_KEYS``) of ``samples`` pooled from ``runs``, after
    refusing a sample recorded twice and samples lacking either condition (``missing`` says what, after the first
    run's directory)."""
    check_unique(samples, ", ".join(str(r.run_dir) for r in runs))
    if not has_gap_conditions(samples):
        raise WrongRunsError(f"{runs[0].run_dir} {missing}")
    g = metrics.gap(samples, seed=seed)
    return {k: g[k] for k in GAP_KEYS}


def _clean(value: Any) -> Any:
    """NaN and infinities as null: the JSON beside a figure is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_figure(fig, data: dict[str, Any], out_dir: Path, kind: str) -> list[Path]:
    """``out_dir/KIND.png`` and ``out_dir/KIND.json`` (the plotted numbers), each written atomically."""
    from steerlab.plots import save

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot make {out_dir} ({exc.strerror}); choose another --out") from None
    png = save(fig, out_dir / f"{kind}.png")
    js = out_dir / f"{kind}.json"
    atomic_write_text(js, json.dumps(_clean(data), indent=1, allow_nan=False) + "\n")
    return [png, js]
