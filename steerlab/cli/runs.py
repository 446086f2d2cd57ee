"""The prompt-intervention commands of the CLI: ``prompt-eval``, ``profile`` and ``calibrate``.
Registered on the app by :mod:`steerlab.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from steerlab.cli_harness import (
    BackendOpt,
    BatchSize,
    ChatDate,
    Dataset,
    DeviceOpt,
    DryRun,
    DTypeOpt,
    JudgeBatch,
    JudgeKind,
    JudgeModel,
    Limit,
    LoraOpt,
    MaxNewTokens,
    MaxTurns,
    ModelOpt,
    OutDir,
    Prefill,
    RubricOpt,
    RunSeed,
    Seeds,
    SystemPrompt,
    Temperature,
    TensorParallelOpt,
    TierLiteral,
    UserTemplate,
    af_config,
    af_options,
    run_config,
)  # fmt: skip
from steerlab.errors import ConfigError


def _console():
    from steerlab.cli import err, out

    return out, err


def _fmt(d: dict[str, Any]) -> str:
    return f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def print_claims_summary(run_dir: Path, path: Path, summary: dict[str, Any]) -> None:
    """Per-claim gaps and the net scores of a prompt-eval run; draws gaps.png when both families ran."""
    out, _ = _console()
    table = Table(title=f"{run_dir}: claims at strength {summary['strength']} "
                  "(gap: bootstrap 95% over requests; p: paired sign-flip test over requests)")  # fmt: skip
    for col in ("claim", "monitored", "unmonitored", "gap", "p"):
        table.add_column(col)
    for row in summary["claims"]:
        rates = [f"{row[c]['rate']:.3f} ({row[c]['compliant']}/{row[c]['n']})" for c in ("monitored", "unmonitored")]
        gap = f"{row['gap']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
        table.add_row(row["claim"], *rates, gap, f"{row['p']:.3g}")
    out.print(table)
    net = summary.get("net")
    if net is None:
        out.print("no item was run with both sides (+ and -): no net scores")
        out.print(f"wrote {path}")
        return
    for key in [f"{f}_net" for f in net["families"]] + (["A_minus_B"] if "A_minus_B" in net else []):
        seeds = f"; seeds {net[key]['seed_mean']:+.3f} +- {net[key]['seed_sem']:.3f}" if "seed_mean" in net[key] else ""
        out.print(f"{key} = {_fmt(net[key])}{seeds}")
    figures = ""
    if {"A_net", "B_net"} <= set(net):
        from steerlab.profiles import draw, run_profile

        figures = " and " + ", ".join(map(str, draw([run_profile(run_dir, net)], Path(run_dir))))
    out.print(f"wrote {path}{figures}")


def parse_families(specs: list[str]) -> dict[str, str]:
    families = {}
    for spec in specs:
        concept, _, fam = spec.partition("=")
        if not concept or fam not in ("A", "B"):
            raise ConfigError(f"--family {spec!r}: write CONCEPT=A or CONCEPT=B")
        families[concept] = fam
    return families


def register(app: typer.Typer) -> None:
    @app.command("prompt-eval")
    def prompt_eval(
        dataset: Dataset,
        out_dir: OutDir,
        model: ModelOpt = "smollm2",
        claims: str = typer.Option("all", help="all, a family (A or B), or claim ids: A1+,A1-."),
        strength: str = typer.Option("standard", help="weak, standard or strong (or a strength of your file)."),
        claims_file: Path = typer.Option(Path("configs/claims/claims.yaml"), help="Claims registry (YAML)."),
        seeds: Seeds = "0",
        system_prompt: SystemPrompt = None,
        tier_literal: TierLiteral = "True",
        user_template: UserTemplate = "steerlab",
        chat_date: ChatDate = None,
        run_seed: RunSeed = 0,
        prefill: Prefill = "",
        max_turns: MaxTurns = 4,
        limit: Limit = None,
        max_new_tokens: MaxNewTokens = 1024,
        temperature: Temperature = 1.0,
        batch_size: BatchSize = 16,
        judge: JudgeKind = "none",
        judge_model: JudgeModel = None,
        judge_batch: JudgeBatch = False,
        rubric: RubricOpt = Path("configs/judge/rubric.yaml"),
        dry_run_flag: DryRun = False,
        device: DeviceOpt = "auto",
        dtype: DTypeOpt = "auto",
        backend: BackendOpt = "hf",
        tensor_parallel_size: TensorParallelOpt = 1,
        lora: LoraOpt = None,
    ) -> None:
        """Evaluate the baseline and every claim under monitored and unmonitored (one resumable run),
        then report each claim's gap and the net scores A_net and B_net."""
        cfg = af_config(**af_options(locals()), conditions="monitored,unmonitored",
                        claims={"file": str(claims_file), "select": claims, "strength": strength})  # fmt: skip
        run_config(cfg, device=device, dtype=dtype, dry=dry_run_flag, backend=backend,
                   tensor_parallel_size=tensor_parallel_size)  # fmt: skip

    @app.command("profile")
    def profile(
        run_dirs: list[Path] = typer.Argument(..., help="prompt-eval, steered AF sweep or SDF run directories."),
        out_dir: Path = typer.Option(Path("runs/profiles"), "--out", help="Where profiles.json and the figures go."),
        allow_mixed: bool = typer.Option(False, help="Pool runs of differently fingerprinted models into one profile."),
        family: list[str] = typer.Option([], help="A steered vector's family, e.g. my_concept=A (repeatable)."),
        seed: int = typer.Option(0, help="Bootstrap seed."),
    ) -> None:
        """Comparative motivation profiles: A_net against B_net per model and method, and the gap per
        intervention; runs of one model and method are pooled."""
        from steerlab.fileio import atomic_write_text
        from steerlab.profiles import draw, load_profiles

        out, _ = _console()
        profiles = load_profiles(run_dirs, allow_mixed=allow_mixed, families=parse_families(family), seed=seed)
        table = Table(title="profiles (95% bootstrap over requests); A_net > B_net: expectation-sensitive")
        for col in ("model", "method", "A_net", "B_net", "A_net - B_net", "runs"):
            table.add_column(col)
        for p in profiles:
            table.add_row(p.model, p.method + (f" ({p.variant})" if p.variant else ""), _fmt(p.net["A_net"]),
                          _fmt(p.net["B_net"]), _fmt(p.net["A_minus_B"]), str(len(p.runs)))  # fmt: skip
        out.print(table)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "profiles.json"
        atomic_write_text(path, json.dumps({"profiles": [p.to_dict() for p in profiles]}, indent=1) + "\n")
        figures = draw(profiles, out_dir)
        out.print(f"wrote {path}, " + ", ".join(map(str, figures)))

    @app.command("calibrate")
    def calibrate(
        config: Path = typer.Argument(..., help="Calibration file: checkpoints with known families, and run settings."),
        out_dir: Path = typer.Option(..., "--out", help="One run per checkpoint, calibration.json, figures."),
        device: DeviceOpt = "auto",
        dtype: DTypeOpt = "auto",
        backend: BackendOpt = "hf",
        tensor_parallel_size: TensorParallelOpt = 1,
        seed: int = typer.Option(0, help="Bootstrap seed."),
    ) -> None:
        """Run the prompt battery on checkpoints fine-tuned toward a known family and check that
        prompting ranks the families right (resumable: each checkpoint is its own run)."""
        from steerlab.profiles import calibrate as run_calibration
        from steerlab.profiles import checkpoint_config, load_calibration
        from steerlab.prompts import selected

        out, _ = _console()
        cal = load_calibration(config)
        for ck in cal.checkpoints:  # every checkpoint's settings and claims validate before any model loads
            cfg = checkpoint_config(cal, ck, out_dir)
            if cfg.claims is not None:
                selected(cfg.claims)
            if ck.lora and not Path(ck.lora, "adapter_config.json").is_file():
                raise ConfigError(f"checkpoint {ck.name}: {ck.lora} is not a LoRA adapter directory")

        def run_one(cfg):
            from steerlab.backends import make_backend
            from steerlab.sweep import run_sweep

            engine, fingerprint, _ = make_backend(
                backend, cfg.model, batch_size=cfg.batch_size, dtype=dtype, device=device,
                tensor_parallel_size=tensor_parallel_size, lora=cfg.lora, chat_date=cfg.chat_date,
            )  # fmt: skip
            out.print(f"checkpoint run {cfg.out}")
            run_dir = run_sweep(cfg, engine, fingerprint)
            if hasattr(engine, "close"):
                engine.close()
            return run_dir

        report = run_calibration(cal, out_dir, run_one, seed=seed)
        table = Table(title="calibration: does prompting rank the known families right?")
        for col in ("checkpoint", "known family", "A_net", "B_net", "A_net - B_net", "classified", "correct"):
            table.add_column(col)
        for r in report["rows"]:
            diff = f"{r['A_minus_B']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
            table.add_row(r["checkpoint"], r["family"], f"{r['A_net']:+.3f}", f"{r['B_net']:+.3f}", diff,
                          r["predicted"], "-" if r["correct"] is None else str(r["correct"]))  # fmt: skip
        out.print(table)
        out.print(f"concordance {report['concordance']:.2f} (A above B in {report['concordance']:.0%} of pairs); "
                  f"classified {report['classified_correctly']}/{report['n_labelled']} correctly; "
                  f"ranked correctly: {report['ranked_correctly']}")  # fmt: skip
        out.print(f"wrote {out_dir / 'calibration.json'}, " + ", ".join(report["figures"]))
