"""``steerlab vectors score``: score a vector file on another pair set (registered on ``vectors`` by
:mod:`steerlab.cli`).

Thin: parse, call :mod:`steerlab.scoring`, print. Every check that needs no model runs before the
model loads (:func:`steerlab.scoring.plan`); a finished matching cache needs no model at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table


def _console():
    from steerlab.cli import err, out

    return out, err


FEW_PAIRS = 20  # below this many pairs the summary says the numbers are anecdotal


def register(vectors_app: typer.Typer) -> None:
    """Add the command to the ``vectors`` group."""
    vectors_app.command("score")(score)


def score(
    vector: Path = typer.Argument(..., help="Vector file (.safetensors) to score."),
    pairs: Path = typer.Option(..., help="Pair set (JSONL) to score it on; every concept and split in it is scored."),
    cache: Path | None = typer.Option(
        None,
        help="Activation cache of the pairs to write or reuse (HDF5). Default: "
        "runs/score/<pairs stem>.<pairs hash>.<model tag>.<locus>.h5 in the working directory.",
    ),
    model: str | None = typer.Option(
        None, help="Model that writes the cache (default: the vector's model_source); must match its fingerprint."
    ),
    layers: str | None = typer.Option(None, help="Score these of the vector's layers, e.g. 14-18 (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON (and nothing else on stdout)."),
    out_path: Path | None = typer.Option(None, "--out", help="Also write the report (JSON) to this new file."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    batch_size: int = typer.Option(8, help="Pairs per forward batch when the cache is written (2 sequences each)."),
    dtype: str = typer.Option("auto", help="Model dtype: auto, float32, float16, bfloat16."),
    device: str = typer.Option("auto", help="auto (cuda if available), cpu, cuda, cuda:1, ..."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the hub."),
) -> None:
    """Score a vector file on any pair set: AUROC, TPR at 5% FPR, paired accuracy per layer, and its controls'.

    The pair file counts as held out whatever its split labels say; a vector scored on another
    concept's pairs is the cross-concept (selectivity) check. The pairs' activation cache is
    reused when it matches the vector (model, locus, pair file, layers), continued when an earlier
    run was interrupted, and written otherwise.
    """
    from steerlab.generate import parse_layers
    from steerlab.models import load_model
    from steerlab.scoring import ensure_cache, plan, score_vector, write_report

    out, err = _console()
    checked = plan(
        vector, pairs, cache=cache, layers=parse_layers(layers), out=out_path, overwrite=overwrite,
        batch_size=batch_size,
    )  # fmt: skip
    info = err if as_json else out
    if checked.cache_ready:
        info.print(f"reusing the cache {checked.cache}", markup=False)

    def loader(name: str):
        return load_model(name, dtype=dtype, device=device, trust_remote_code=trust_remote_code)

    try:
        path = ensure_cache(checked, loader, model, batch_size=batch_size)
    except KeyboardInterrupt:
        err.print(f"interrupted; rerun the same command to continue the cache {checked.cache}", markup=False)
        raise typer.Exit(130) from None
    if not checked.cache_ready:
        info.print(f"wrote the cache {path}", markup=False)
    report = score_vector(checked, path, reused=checked.cache_ready)
    if out_path is not None:
        write_report(report, out_path)
    if as_json:
        from steerlab.scoring import report_json

        typer.echo(report_json(report))
        return
    print_report(report)
    if out_path is not None:
        out.print(f"wrote {out_path}", markup=False)


def print_report(report: dict[str, Any]) -> None:
    """The per-layer table (selected layers marked *) and the one-line summary."""
    out, _ = _console()
    scores, vec, pairs = report["scores"], report["vector"], report["pairs"]
    group, splits = scores["all"], scores["splits"]
    counts = ", ".join(f"{k} {v}" for k, v in pairs["n_pairs"].items() if k != "all")
    title = (
        f"{vec['concept']} vector {vec['file']} on {pairs['file']} ({pairs['n_pairs']['all']} pairs: {counts}; "
        f"concept {', '.join(pairs['concepts'])}; locus {report['locus']})"
    )
    n_ctrl = group["controls"]["n"]
    caption = "AUROC, TPR at 5% FPR, paired accuracy: all pairs"
    if len(splits) > 1:
        caption += f"; {', '.join(splits)}: AUROC per split"
    if n_ctrl:
        caption += f"; controls: AUROC mean [min,max] of {n_ctrl} random controls"
    table = Table(title=escape(title), caption=escape(caption))
    short = {"keyword_hard": "kw_hard"}
    labels = ["layer", "AUROC", "TPR@5%", "paired", *(short.get(s, s) for s in splits if len(splits) > 1)]
    for label in labels + (["controls"] if n_ctrl else []):
        table.add_column(label, justify="right", no_wrap=True)
    selected = set(report["selected_layers"])
    for i, layer in enumerate(report["layers"]):
        row = [f"*{layer}" if layer in selected else str(layer)]
        row += [f"{group['vector'][m][i]:.3f}" for m in ("auroc", "tpr_at_5fpr", "paired_accuracy")]
        row += [f"{splits[s]['vector']['auroc'][i]:.3f}" for s in splits if len(splits) > 1]
        if n_ctrl:
            c = group["controls"]
            row.append(escape(f"{c['auroc_mean'][i]:.3f} [{c['auroc_min'][i]:.3f},{c['auroc_max'][i]:.3f}]"))
        table.add_row(*row)
    out.print(table)
    s = report["summary"]
    where = "the selected layers" if s["of"] == "selected" else "the scored layers (no selected layer scored)"
    line = f"at {where} {s['layers']} (marked *): mean AUROC {s['auroc_mean']:.3f}"
    if s["controls_n"]:
        line += (
            f"; {s['controls_n']} random controls: mean {s['controls_auroc_mean']:.3f} "
            f"(min {s['controls_auroc_min']:.3f}, max {s['controls_auroc_max']:.3f})"
        )
    out.print(line, markup=False)
    if not report["same_concept"]:
        out.print(
            f"cross-concept check: the vector is for {vec['concept']!r}, the pairs are {pairs['concepts']} "
            "(a selective vector scores near 0.5 on another concept's pairs)",
            markup=False,
        )
    if report["fitted_on_this_file"]:
        out.print(
            "note: the vector was fitted on this pair file; its train pairs are in-sample, not held out", markup=False
        )
    n = pairs["n_pairs"]["all"]
    if n < FEW_PAIRS:  # one pair gives AUROC 0 or 1
        out.print(f"note: only {n} pair(s): the AUROC is coarse and uncertain; score {FEW_PAIRS} or more", markup=False)
