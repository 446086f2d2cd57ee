"""``steerlab pairs generate``: pair sets written by a model (registered on ``pairs`` by :mod:`steerlab.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from steerlab.cli_harness import (
    BackendOpt,
    BatchSize,
    ChatDate,
    DeviceOpt,
    DTypeOpt,
    LoraOpt,
    MaxNewTokens,
    ModelOpt,
    Temperature,
    TensorParallelOpt,
)


def print_report(report: dict[str, Any]) -> None:
    """The yield table (per split: asked, replies, parsed, kept, the kept spans' surface-classifier AUROC),
    then each split's rejections by the first filter they failed."""
    from steerlab.cli import out

    table = Table(title=f"{report['concept']}: pairs written by {report['backend']}:{report['model']}")
    for col in ("split", "asked", "replies", "parsed", "kept", "surface AUROC"):
        table.add_column(col, justify="left" if col == "split" else "right")
    rows = [(split, r) for split, r in [*report["splits"].items(), ("total", report["total"])] if r["asked"]]
    for split, r in rows:
        audit = r.get("shortcut_audit") or {}
        auroc = "-" if audit.get("auroc") is None else f"{audit['auroc']:.2f}"
        table.add_row(split, str(r["asked"]), str(r["replies"]), str(r["parsed"]), str(r["kept"]), auroc)
    out.print(table, markup=False)
    for split, r in rows[:-1]:
        rejected = ", ".join(f"{k} {v}" for k, v in r["rejected"].items()) or "none"
        out.print(f"{split} rejected: {rejected}", markup=False)


def register(pairs_app: typer.Typer) -> None:
    """Add the command to the ``pairs`` group."""

    @pairs_app.command("generate")
    def generate(
        spec: str = typer.Argument(..., help="Concept spec (YAML), or a shipped concept's name."),
        out_file: Path = typer.Option(..., "--out", help="Pair file to write (JSONL)."),
        model: ModelOpt = "smollm2",
        backend: BackendOpt = "hf",
        lora: LoraOpt = None,
        train: int | None = typer.Option(None, help="train pairs (default: the spec's)."),
        val: int | None = typer.Option(None, help="val pairs (default: the spec's)."),
        keyword_hard: int | None = typer.Option(None, help="keyword_hard pairs (default: the spec's)."),
        max_attempts: int | None = typer.Option(
            None, help="Replies to ask for at most, shared by the splits in proportion (default: 4 per pair)."
        ),
        run_seed: int = typer.Option(0, help="Attempt k of a split samples with seed (run seed, concept, split, k)."),
        temperature: Temperature = 1.0,
        top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
        max_new_tokens: MaxNewTokens = 512,
        batch_size: BatchSize = 8,
        chat_date: ChatDate = None,
        device: DeviceOpt = "auto",
        dtype: DTypeOpt = "auto",
        tensor_parallel_size: TensorParallelOpt = 1,
        resume: bool = typer.Option(False, help="Continue an interrupted run from OUT.partial."),
        overwrite: bool = typer.Option(False, help="Replace OUT (the old file stays until the new one is done)."),
    ) -> None:
        """Have a model write contrastive pairs for a concept; keep those that pass validate and the
        per-pair surface-artefact filter; report the yield (also in OUT's .yield.json). Resumable."""
        from steerlab.cli import err, out
        from steerlab.pairgen import GenSettings, YieldError, report_path, run_generate

        settings = GenSettings(
            model=model, backend=backend, lora=lora, run_seed=run_seed, temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, max_attempts=max_attempts, batch_size=batch_size, device=device,
            dtype=dtype, tensor_parallel_size=tensor_parallel_size, chat_date=chat_date,
        )  # fmt: skip
        counts = {"train": train, "val": val, "keyword_hard": keyword_hard}
        try:
            report = run_generate(spec, out_file, settings, counts, resume=resume, overwrite=overwrite)
        except YieldError as exc:
            print_report(exc.report)
            raise
        except KeyboardInterrupt:
            err.print(f"interrupted; rerun the same command with --resume to continue {out_file}", markup=False)
            raise typer.Exit(130) from None
        print_report(report)
        out.print(f"wrote {report['total']['kept']} pairs to {out_file} and the yield to {report_path(out_file)}",
                  markup=False)  # fmt: skip
