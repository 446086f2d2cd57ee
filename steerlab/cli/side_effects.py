"""``steerlab side-effects RUN_DIR``: side effects and recoverability of a steered run (issue 20, item 2)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from steerlab.cli.app import app, out
from steerlab.cli.options import Device, DType


@app.command("side-effects")
def side_effects(
    run_dir: Path = typer.Argument(..., help="A steered run directory (steerlab sweep / eval) with multiplier 0."),
    vector: list[Path] | None = typer.Option(
        None, "--vector", help="Concept vector to read out (repeatable; default: the run's vectors and their siblings)."
    ),
    texts: Path = typer.Option(Path("configs/texts/neutral.txt"), help="Neutral texts for KL and perplexity."),
    readout_layer: int | None = typer.Option(
        None, help="Read every concept at this layer (default: each concept's best validation layer)."
    ),
    controls: int | None = typer.Option(None, help="Envelope of the run's first N controls only (default all)."),
    condition: list[str] | None = typer.Option(None, "--condition", help="Only these conditions (repeatable)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Output directory (default: RUN_DIR-side-effects)."),
    overwrite: bool = typer.Option(False, help="Write into a non-empty --out."),
    max_tokens: int = typer.Option(64, help="Tokens per neutral text (longer texts are cut)."),
    batch_size: int = typer.Option(16, help="Rows per forward batch (settings x texts, or samples)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap intervals."),
    n_resamples: int = typer.Option(2000, help="Bootstrap draws per interval."),
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """For every (vector or control, multiplier) of a run: KL and perplexity change on neutral texts, the change of
    each judge score and of each concept's read-out from the generated text, each against the random controls."""
    from steerlab.analysis.side_effects_report import FIGURE, READOUTS, RECORD, run_side_effects

    record, where = run_side_effects(
        run_dir, vector_files=vector, texts=texts, readout_layer=readout_layer, out=out_dir, overwrite=overwrite,
        conditions=condition, controls=controls, device=device, dtype=dtype, batch_size=batch_size,
        max_tokens=max_tokens, seed=seed, n_resamples=n_resamples,
    )  # fmt: skip
    for table in envelope_tables(record):
        out.print(table)
    if record["judge"]["note"]:
        out.print(record["judge"]["note"], markup=False)
    out.print(f"wrote {where / RECORD}, {where / READOUTS} and {where / FIGURE}", markup=False)


def _num(v: Any, fmt: str = "+.3g") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


NAMES = {"kl_mean": "KL mean", "kl_p95": "KL p95", "ppl_delta": "ppl change", "ppl_ratio": "ppl ratio"}


def envelope_tables(record: dict[str, Any]) -> list[Table]:
    """Per steered vector: the real vector against its controls, per multiplier and statistic (every change is
    against the run's unsteered samples; KL and perplexity against the unsteered model)."""
    concepts = ", ".join(f"{c['name']} at layer {c['readout_layer']}" for c in record["concepts"])
    rows = {(r["vector"], r["multiplier"]): r for r in record["rows"] if r["control"] is None}
    tables: dict[str, Table] = {}
    for e in record["envelope"]:
        if e["multiplier"] == 0:
            continue
        row = rows[(e["vector"], e["multiplier"])]
        if e["vector"] not in tables:
            title = (f"steering {e['vector']} ({row['n_requests']} requests; unsteered perplexity "
                     f"{record['baseline']['ppl']:.3f}; read-out: {concepts})")  # fmt: skip
            table = tables[e["vector"]] = Table(title=escape(title))
            first = "dose" if (record.get("settings") or {}).get("dose_file") else "alpha"
            for col in (first, "statistic", "real [95% CI]", "controls", "rank", "real is"):
                left = col in ("statistic", "real is")
                table.add_column(col, justify="left" if left else "right", overflow="fold")
        real = _num(e["real"])
        if ":" in e["statistic"]:
            kind, concept = e["statistic"].split(":", 1)
            c = row[kind][concept]
            real += f" [{_num(c['ci_low'])}, {_num(c['ci_high'])}]"
        span = f"{_num(e['control_min'])}..{_num(e['control_max'])}" if e["control_min"] is not None else "-"
        rank = f"{e['rank']}/{e['n_controls'] + 1}" if e["rank"] is not None else "-"
        label = NAMES.get(e["statistic"]) or e["statistic"].replace("readout:", "read-out ").replace(":", " ")
        tables[e["vector"]].add_row(f"{e['multiplier']:+g}", escape(label), real, span, rank, e["position"])
    return list(tables.values())
