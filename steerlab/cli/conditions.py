"""``steerlab condition fit``: a condition's layer and threshold from two prompt sets (conditional steering)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from steerlab.cli.app import app, out
from steerlab.cli.options import Device, DType

condition_app = typer.Typer(no_args_is_help=True, help="Conditions for conditional steering: fit one.")
app.add_typer(condition_app, name="condition")


@condition_app.command("fit")
def fit(
    true: Path = typer.Option(..., "--true", help="Prompts the condition holds for (.txt one per line, or .jsonl)."),
    false: Path = typer.Option(..., "--false", help="Prompts it does not hold for (same format)."),
    out_file: Path = typer.Option(..., "--out", help="The condition file to write (JSON)."),
    model: str = typer.Option("smollm2", help="Hub id, local directory, .gguf file, or smollm2."),
    layers: str | None = typer.Option(
        None,
        help="Candidate layers, e.g. 0-10 (default: all). Layers at or before "
        "the steered ones decide in the prefill pass; later ones cost a pre-pass.",
    ),
    vector: Path | None = typer.Option(
        None,
        help="Use this vector file's direction at each layer (default: the "
        "difference of the two sets' means, fitted on training folds only).",
    ),
    statistic: str = typer.Option("cosine", help="cosine or projection (mean over the prompt's tokens)."),
    folds: int = typer.Option(5, help="Cross-validation folds (stratified)."),
    seed: int = typer.Option(0, help="Seed of the fold split."),
    system: str | None = typer.Option(None, help="System prompt for .txt prompts."),
    name: str | None = typer.Option(None, help="The condition's name (default: the --true file's stem)."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    batch_size: int = typer.Option(16, help="Prompts per forward batch."),
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """Choose the layer, direction, comparator and threshold that best tell --true prompts from --false ones (F1,
    cross-validated), for `steer --steer-if` and `--steer-if` / `steer_if:` of sweeps and eval. Prints each layer's
    CV F1 and the nested-CV F1 of the whole choice (the honest one to quote)."""
    from steerlab.analysis.condition_fit import fit_condition, write_condition
    from steerlab.cli.common import parse_layers
    from steerlab.conditions import ConditionError, system_hash
    from steerlab.errors import ConfigError
    from steerlab.generate import load_prompts
    from steerlab.models import load_model
    from steerlab.vectors import VectorBundle

    if out_file.exists() and not overwrite:
        raise ConfigError(f"{out_file} exists; pass --overwrite to replace it")
    if out_file.exists() and out_file.is_dir():
        raise ConfigError(f"--out {out_file} is a directory; give a file name")
    if folds < 2:
        raise ConfigError(f"--folds {folds}: give at least 2")
    if statistic not in ("cosine", "projection"):
        raise ConfigError(f"--statistic {statistic!r}: use cosine or projection")
    if true.resolve() == false.resolve():
        raise ConfigError("--true and --false are the same file; give the two prompt sets")
    true_prompts, false_prompts = load_prompts(true, system), load_prompts(false, system)
    for label, prompts in (("--true", true_prompts), ("--false", false_prompts)):
        if len(prompts) < folds:
            raise ConditionError(
                f"{label} holds {len(prompts)} prompts; --folds {folds} needs at least {folds} per set"
            )
    bundle = VectorBundle.load(vector) if vector is not None else None
    loaded = load_model(model, dtype=dtype, device=device)
    if bundle is not None:
        bundle = VectorBundle.load(vector, expect=loaded.fingerprint)  # type: ignore[arg-type]
    candidates = parse_layers(layers, loaded.n_layers) or list(range(loaded.n_layers))
    directions = None
    if bundle is not None:
        missing = [layer for layer in candidates if layer not in bundle.vector.layers_available]
        if missing:
            raise ConfigError(f"--vector {vector} has no direction at layer(s) {missing}; restrict --layers")
        directions = {layer: bundle.vector.at(layer).double().numpy() for layer in candidates}
    cond, report = fit_condition(
        loaded, true_prompts, false_prompts, candidates, statistic, directions, folds, seed, batch_size,
        name or true.stem,
    )  # fmt: skip
    report["vector"] = str(vector) if vector is not None else None
    # the system prompts the prompts carried (their hashes; null: none): a run that sends another is refused
    report["system_prompts"] = sorted(
        {system_hash(next((m["content"] for m in chat if m["role"] == "system"), None))
         for chat in [*true_prompts, *false_prompts]},
        key=lambda h: h or "",
    )  # fmt: skip
    sources = {"true": true, "false": false, **({"vector": vector} if vector is not None else {})}
    write_condition(out_file, cond, report, sources)  # type: ignore[arg-type]
    table = Table(title=f"condition {escape(cond.name)}: {report['n_true']} true, {report['n_false']} false prompts, "
                  f"{folds}-fold CV F1 per layer")  # fmt: skip
    table.add_column("layer", justify="right")
    table.add_column("CV F1", justify="right")
    table.add_column("sd", justify="right")
    for row in report["per_layer"]:
        mark = " *" if row["layer"] == cond.layer else ""
        table.add_row(f"{row['layer']}{mark}", f"{row['cv_f1']:.3f}", f"{row['cv_f1_std']:.3f}")
    out.print(table)
    out.print(f"{escape(cond.describe())}: CV F1 {report['cv_f1']:.3f} (best of {len(candidates)} layers: optimistic), "
              f"nested-CV F1 {report['nested_f1']:.3f} (the estimate to quote)")  # fmt: skip
    out.print(f"wrote {escape(str(out_file))}")
