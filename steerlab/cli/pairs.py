"""The ``pairs`` commands: ``validate``, ``from-traces`` and ``generate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from steerlab.cli.app import err, out, pairs_app
from steerlab.cli.options import (
    BackendOpt,
    BatchSize,
    ChatDate,
    CompileOpt,
    Device,
    DeviceMap,
    DType,
    GpuMemoryUtilization,
    LoraOpt,
    MaxMemory,
    MaxModelLen,
    MaxNewTokens,
    ModelOpt,
    PrefixCaching,
    Temperature,
    TensorParallel,
    TopP,
    VllmArgs,
    engine_options,
)
from steerlab.errors import ConfigError


@pairs_app.command("validate")
def pairs_validate(
    file: Path = typer.Argument(..., help="Pair set (JSONL)."),
    config: Path | None = typer.Option(
        None, help="Validation config (YAML). Default: validate.yaml beside FILE if present, else built-in defaults."
    ),
    drop_invalid: Path | None = typer.Option(
        None, "--drop-invalid", help="Write the valid pairs to this new file and exit 0."
    ),
    show: int = typer.Option(20, min=0, help="How many rejected pairs to list."),
    audit: bool = typer.Option(
        True, help="Run the shortcut audit (a surface classifier on the spans); --no-audit: the per-pair filters only."
    ),
    against: list[Path] = typer.Option(
        [], "--against", help="Another concept's pair set: report how well the audit tells its negatives from FILE's."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the validation and audit report as JSON."),
) -> None:
    """Apply every filter and the shortcut audit to a pair set; exit 2 if any pair fails or the audit
    flags a split (unless --drop-invalid, which keeps the valid pairs)."""
    from steerlab.pairs import load_pairs, load_validation_config, validate, write_pairs

    if config is None and (file.parent / "validate.yaml").is_file():
        config = file.parent / "validate.yaml"
    if drop_invalid is not None:
        if drop_invalid.resolve() == file.resolve():
            raise ConfigError("--drop-invalid must name a new file, not the pair file itself")
        if drop_invalid.exists():
            raise ConfigError(f"{drop_invalid} already exists; name a new file for --drop-invalid")
    cfg = load_validation_config(config)
    pairs = load_pairs(file)
    others = [p for other in against for p in load_pairs(other)]
    if {p.concept for p in others} & {p.concept for p in pairs}:
        raise ConfigError("--against names a pair set of a concept FILE also holds; give another concept's set")
    report = validate(pairs, cfg)
    shortcut = _shortcut_audit(report.valid, others, cfg) if audit else None
    if as_json:
        typer.echo(json.dumps(_validation_json(file, config, report, shortcut), indent=1))
    else:
        _print_validation(file, config, report, shortcut, show)
    if drop_invalid is not None:
        if not report.valid:
            raise ConfigError(f"no pair in {file} passes validation; nothing to write")
        if shortcut is not None and not shortcut.ok:
            raise ConfigError(_audit_failure(shortcut, "the valid pairs; nothing written"))
        write_pairs(report.valid, drop_invalid)
        out.print(f"wrote {len(report.valid)} valid pairs to {drop_invalid}")
        return
    if report.problems:
        err.print(
            f"steerlab: error: {len(report.problems)} of {len(pairs)} pairs fail validation; fix them, "
            "or pass --drop-invalid NEW_FILE to keep the valid ones"
        )
        raise typer.Exit(2)
    if shortcut is not None and not shortcut.ok:
        raise ConfigError(_audit_failure(shortcut, str(file)))
    if not as_json:
        out.print(f"all {len(pairs)} pairs pass" + (" and the shortcut audit" if shortcut is not None else ""))


def _shortcut_audit(valid, others, cfg):
    from steerlab.audit import shortcut_audit

    concepts = sorted({p.concept for p in valid})
    return shortcut_audit([*valid, *others], cfg.shortcut_audit, concepts=concepts, keywords=cfg.keywords)


def _audit_failure(shortcut, what: str) -> str:
    first = shortcut.flagged[0]
    more = f" and {len(shortcut.flagged) - 1} more split(s)" if len(shortcut.flagged) > 1 else ""
    return (
        f"the shortcut audit tells positive from negative spans by their surface in {what}: {first.label} "
        f"AUROC {first.auroc:.2f} > {first.max_auroc} ({first.top(3)}){more}; rewrite the spans so no word, "
        "punctuation or length marks a side, or raise shortcut_audit.max_auroc in the validation config"
    )


def _validation_json(file, config, report, shortcut) -> dict:
    return {
        "file": str(file),
        "config": str(config) if config else None,
        "pairs": len(report.pairs),
        "counts": [{"concept": c, "split": s, "pairs": n, "valid": k} for (c, s), (n, k) in report.counts().items()],
        "problems": {
            pid: [{"check": p.check, "message": p.message} for p in probs] for pid, probs in report.problems.items()
        },
        "shortcut_audit": None if shortcut is None else shortcut.to_dict(),
    }


def _print_validation(file, config, report, shortcut, show: int) -> None:

    table = Table(title=f"{file}  (config: {config or 'built-in defaults'})")
    for col in ("concept", "split", "pairs", "valid", "rejected"):
        table.add_column(col, justify="left" if col in ("concept", "split") else "right")
    for (concept, split), (total, good) in report.counts().items():
        table.add_row(concept, split, str(total), str(good), str(total - good))
    out.print(table)
    if report.problems:
        checks = ", ".join(f"{k}: {v}" for k, v in report.failures_by_check().most_common())
        out.print(f"rejected by check: {checks}")
        for pair in report.invalid[:show]:
            for problem in report.problems[pair.id]:
                out.print(f"  {pair.id}: [{problem.check}] {problem.message}", markup=False)
        if len(report.invalid) > show:
            out.print(f"  ... and {len(report.invalid) - show} more (use --show)")
    if shortcut is None:
        return
    out.print("shortcut audit (a surface classifier on the valid pairs' spans; chance is 0.5):")
    for a in shortcut.splits:
        auroc = "n/a (too few pairs)" if a.auroc is None else f"{a.auroc:.2f} +/- {a.auroc_sd:.2f}"
        verdict = "FLAGGED" if a.flagged else "ok" if a.max_auroc is not None else "report only"
        moved = "" if a.transfer_auroc is None else f"; fitted on train: {a.transfer_auroc:.2f}"
        out.print(f"  {a.label}: AUROC {auroc} (max {a.max_auroc}) {verdict}{moved}; top: {a.top(3)}", markup=False)
    for a in shortcut.cross_concept:
        out.print(f"  {a.summary(3)}", markup=False)


@pairs_app.command("from-traces")
def from_traces(
    run_dirs: list[Path] = typer.Argument(..., help="Judged run directories (pairs match requests across them)."),
    out_file: Path = typer.Option(..., "--out", help="Pair file to write (JSONL, the foundation format)."),
    high: int = typer.Option(7, help="A score counts as high at or above this."),
    low: int = typer.Option(3, help="A score counts as low at or below this."),
    length_tolerance: float = typer.Option(0.3, help="Largest relative difference of scratchpad lengths."),
    val_share: float = typer.Option(0.2, help="Share of requests whose pairs go to the val split."),
    overwrite: bool = typer.Option(False, help="Replace an existing pair file."),
    allow_steered: bool = typer.Option(
        False, help="Also pair traces from steered arms (each pair within one steering setting)."
    ),
) -> None:
    """Build in-context researcher-expectation and retraining-consequence pairs from judged traces."""
    from steerlab.harness.records import read_header, read_samples
    from steerlab.harness.traces import build_pairs
    from steerlab.pairs import write_pairs

    if out_file.exists() and not overwrite:
        raise ConfigError(f"{out_file} exists; pass --overwrite or name a new file")
    if not low < high:
        raise ConfigError(f"--low {low} must be below --high {high}")
    samples = []
    for run_dir in run_dirs:
        header = read_header(run_dir)
        config = header.get("config") or {}
        # a merged LoRA keeps its base's fingerprint and an API model has none: name all three
        model = [config.get("model"), config.get("lora"), header.get("model")]
        samples += [{**s, "_model": model} for s in read_samples(run_dir)]
    if not any((s.get("judge") or {}).get("scores") for s in samples):
        raise ConfigError("no judged samples in these runs; run `steerlab judge RUN_DIR` first")
    pairs, counts = build_pairs(samples, high=high, low=low, length_tolerance=length_tolerance,
                                val_share=val_share, allow_steered=allow_steered)  # fmt: skip
    skipped = next(iter(counts.values()))["skipped_steered"] if counts else 0
    if skipped:
        err.print(f"skipped {skipped} judged traces from steered arms (pass --allow-steered to use them)")
    table = Table(title="pairs from traces")
    for col in ("concept", "positives", "negatives", "pairs", "unmatched positives", "'future' pos/neg"):
        table.add_column(col)
    for concept, c in counts.items():
        mine = [p for p in pairs if p.concept == concept]
        fut = f"{sum(p.meta['future_positive'] for p in mine)}/{sum(p.meta['future_negative'] for p in mine)}"
        table.add_row(concept, str(c["positives"]), str(c["negatives"]), str(c["pairs"]),
                      str(c["unmatched_positives"]), fut)  # fmt: skip
    out.print(table)
    if not pairs:
        hint = "; or pass --allow-steered" if skipped else ""
        raise ConfigError(f"no pairs could be formed (see the counts above); lower --high or raise --low{hint}")
    write_pairs(pairs, out_file)
    out.print(f"wrote {len(pairs)} pairs to {out_file}")


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
    top_p: TopP = 1.0,
    max_new_tokens: MaxNewTokens = 512,
    batch_size: BatchSize = 8,
    chat_date: ChatDate = None,
    device: Device = "auto",
    dtype: DType = "auto",
    tensor_parallel_size: TensorParallel = 1,
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    max_model_len: MaxModelLen = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    enable_prefix_caching: PrefixCaching = None,
    vllm_arg: VllmArgs = None,
    compile: CompileOpt = None,
    resume: bool = typer.Option(False, help="Continue an interrupted run from OUT.partial."),
    overwrite: bool = typer.Option(False, help="Replace OUT (the old file stays until the new one is done)."),
) -> None:
    """Have a model write contrastive pairs for a concept; keep those that pass validate and the
    per-pair surface-artefact filter; report the yield (also in OUT's .yield.json). Resumable."""
    from steerlab.backends import check_backend_options
    from steerlab.pairgen import GenSettings, YieldError, report_path, run_generate

    engine = engine_options(device_map, max_memory, max_model_len, gpu_memory_utilization, enable_prefix_caching,
                            vllm_arg, compile)  # fmt: skip
    check_backend_options(backend, **engine)
    settings = GenSettings(
        model=model, backend=backend, lora=lora, run_seed=run_seed, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, max_attempts=max_attempts, batch_size=batch_size, device=device,
        dtype=dtype, tensor_parallel_size=tensor_parallel_size, chat_date=chat_date,
        engine=engine,
    )  # fmt: skip
    counts = {"train": train, "val": val, "keyword_hard": keyword_hard}
    try:
        report = run_generate(spec, out_file, settings, counts, resume=resume, overwrite=overwrite)
    except YieldError as exc:
        print_yield(exc.report)
        raise
    except KeyboardInterrupt:
        err.print(f"interrupted; rerun the same command with --resume to continue {out_file}", markup=False)
        raise typer.Exit(130) from None
    print_yield(report)
    out.print(f"wrote {report['total']['kept']} pairs to {out_file} and the yield to {report_path(out_file)}",
              markup=False)  # fmt: skip


def print_yield(report: dict[str, Any]) -> None:
    """The yield table (per split: asked, replies, parsed, kept, the kept spans' surface-classifier AUROC),
    then each split's rejections by the first filter they failed."""
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
