"""The run commands: ``sweep``, ``eval``, ``judge``, ``prompt-eval``, ``profile`` and ``calibrate``.

Each parses its options, hands the run to :func:`steerlab.cli.runner.run_config` (or the library),
and prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from steerlab.cli.app import app, out
from steerlab.cli.common import parse_ints, validated
from steerlab.cli.options import (
    AFOptions,
    BackendKind,
    BackendOpt,
    BatchSize,
    BootstrapSeed,
    ChatDate,
    ClampOpt,
    CompileOpt,
    Dataset,
    Device,
    DeviceMap,
    DoseFileOpt,
    DryRun,
    DType,
    GpuMemoryUtilization,
    JudgeBatch,
    JudgeKind,
    JudgeModel,
    Limit,
    Lora,
    LoraOpt,
    MaxMemory,
    MaxModelLen,
    MaxNewTokens,
    MaxTurns,
    ModelOpt,
    OperatorOpt,
    OutDir,
    Prefill,
    PrefixCaching,
    Remote,
    Rename,
    RubricOpt,
    RunSeed,
    Seeds,
    SteerIfOpt,
    SteerOnlyOpt,
    SystemPrompt,
    Temperature,
    TensorParallel,
    TierLiteral,
    UserTemplate,
    VllmArgs,
    engine_options,
    parse_rename,
    steering_overrides,
)  # fmt: skip
from steerlab.cli.report import fmt_interval, print_label_summary
from steerlab.cli.runner import dry_run, judge_factory, refuse_judge_errors, rubric_and_cache, run_config, run_judge
from steerlab.errors import ConfigError


@app.command()
def sweep(
    config: Path = typer.Option(..., help="Sweep config (YAML), e.g. configs/sweep_demo.yaml."),
    vectors: str | None = typer.Option(None, help="Override: vector files, comma-separated."),
    multipliers: str | None = typer.Option(None, help="Override: signed multipliers, e.g. -0.03,-0.015,0,0.015,0.03."),
    controls: int | None = typer.Option(None, help="Override: random controls per vector."),
    out_dir: Path | None = typer.Option(None, "--out", help="Override: run directory."),
    scorer: str | None = typer.Option(None, help="Override: regex or module:function scoring each output."),
    scenario: str | None = typer.Option(None, help="Override: plain or alignment_faking."),
    rename: Rename = None,
    dose_file: DoseFileOpt = None,
    operator: OperatorOpt = None,
    clamp: ClampOpt = None,
    steer_if: SteerIfOpt = None,
    steer_only: SteerOnlyOpt = None,
    dry_run_flag: bool = typer.Option(False, "--dry-run", help="Print the run's size (and judge cost) only."),
    device: Device = "auto",
    dtype: DType = "auto",
    backend_kind: BackendKind = "hf",
    tensor_parallel_size: TensorParallel = 1,
    lora: Lora = None,
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    max_model_len: MaxModelLen = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    enable_prefix_caching: PrefixCaching = None,
    vllm_arg: VllmArgs = None,
    compile: CompileOpt = None,
    remote: Remote = False,
) -> None:
    """Run (or resume) a sweep of vectors and their random controls over signed multipliers, then summarise it.

    With `scenario: alignment_faking` in the config the run is labelled, judged (with `judge:`)
    and summarised as acceptance, gap and judge scores per (vector, multiplier, condition).
    """
    from steerlab.generate import parse_multipliers
    from steerlab.runs import figure, load_config, write_summary

    engine = engine_options(
        device_map, max_memory, max_model_len, gpu_memory_utilization, enable_prefix_caching, vllm_arg, compile, remote
    )
    cfg = load_config(
        config,
        vectors=vectors.split(",") if vectors else None,
        multipliers=parse_multipliers(multipliers, "--multipliers") if multipliers is not None else None,
        controls=controls,
        out=out_dir,
        scorer=scorer,
        scenario=scenario,
        lora=lora,
        rename=parse_rename(rename) or None,  # given: replaces the config's rename
        doses=dose_file,  # given: replaces the config's doses
        **steering_overrides(operator, clamp, steer_if, steer_only),
    )

    def summarise(run_dir: Path) -> None:  # a plain run's summary, written while the run is still locked
        if cfg.scenario == "alignment_faking":  # labelled and summarised already
            return
        if cfg.scorer is None:
            out.print("no scorer in the config: records only (set scorer: to summarise)")
            return
        path, cells = write_summary(run_dir, cfg.scorer)
        table = Table(title=f"{run_dir}: score = {cfg.scorer}")
        unit = "dose (KL)" if cfg.doses is not None else "multiplier"
        for col in ("vector", "condition", unit, "real (95% over requests)", "controls min-max", "z"):
            table.add_column(col)
        for c in cells:
            z = c.get("z")
            table.add_row(
                c["vector"], c["condition"], f"{c['multiplier']:+g}",
                f"{c['real_mean']:.3f} [{c['real_ci_low']:.3f}, {c['real_ci_high']:.3f}]",
                f"{c['control_min']:.3f}-{c['control_max']:.3f}" if "control_min" in c else "-",
                f"{z:+.2f}" if z is not None else f"n/a ({c['z_note'].removeprefix('n/a: ')})" if "z_note" in c
                else "-",
            )  # fmt: skip
        out.print(table)
        out.print(f"wrote {path} and {figure(run_dir, cells, cfg.scorer)}")

    run_config(
        cfg, device=device, dtype=dtype, dry=dry_run_flag, backend=backend_kind,
        tensor_parallel_size=tensor_parallel_size, then=summarise, engine=engine,
    )  # fmt: skip


@app.command("eval")
def eval_command(
    dataset: Dataset,
    out_dir: OutDir,
    model: ModelOpt = "smollm2",
    conditions: str = typer.Option("monitored,unmonitored", help="Any of monitored, unmonitored, raw."),
    seeds: Seeds = "0",
    system_prompt: SystemPrompt = None,
    tier_literal: TierLiteral = "True",
    user_template: UserTemplate = "steerlab",
    chat_date: ChatDate = None,
    run_seed: RunSeed = 0,
    prefill: Prefill = "",
    max_turns: MaxTurns = 4,
    rename: Rename = None,
    vector: Path | None = typer.Option(None, help="Steer with this vector file (and its controls)."),
    alpha: str = typer.Option(
        "0", help="Signed multipliers with --vector, e.g. -0.2,0,0.2 (KL doses with --dose-file)."
    ),
    controls: int = typer.Option(0, help="Random controls of --vector to run beside it."),
    scale: str = typer.Option("absolute", help="absolute or relative (x the layer's mean |h|)."),
    dose_file: DoseFileOpt = None,
    operator: OperatorOpt = None,
    clamp: ClampOpt = None,
    steer_if: SteerIfOpt = None,
    steer_only: SteerOnlyOpt = None,
    limit: Limit = None,
    max_new_tokens: MaxNewTokens = 1024,
    temperature: Temperature = 1.0,
    batch_size: BatchSize = 16,
    judge: JudgeKind = "none",
    judge_model: JudgeModel = None,
    judge_batch: JudgeBatch = False,
    rubric: RubricOpt = Path("configs/judge/rubric.yaml"),
    dry_run_flag: DryRun = False,
    device: Device = "auto",
    dtype: DType = "auto",
    backend: BackendOpt = "hf",
    tensor_parallel_size: TensorParallel = 1,
    lora: LoraOpt = None,
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    max_model_len: MaxModelLen = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    enable_prefix_caching: PrefixCaching = None,
    vllm_arg: VllmArgs = None,
    compile: CompileOpt = None,
    remote: Remote = False,
) -> None:
    """Run the alignment-faking evaluation (optionally steered), label, judge and summarise it."""
    from steerlab.generate import parse_multipliers

    engine = engine_options(
        device_map, max_memory, max_model_len, gpu_memory_utilization, enable_prefix_caching, vllm_arg, compile, remote
    )
    if controls and vector is None:
        raise ConfigError(f"--controls {controls} needs --vector (the controls are that file's random directions)")
    shared = AFOptions(
        dataset=dataset, out_dir=out_dir, model=model, seeds=seeds, system_prompt=system_prompt,
        tier_literal=tier_literal, prefill=prefill, max_turns=max_turns, limit=limit, max_new_tokens=max_new_tokens,
        temperature=temperature, batch_size=batch_size, judge=judge, judge_model=judge_model, judge_batch=judge_batch,
        rubric=rubric, lora=lora, user_template=user_template, chat_date=chat_date, run_seed=run_seed,
        rename=tuple(rename or ()),
    )  # fmt: skip
    cfg = shared.config(conditions, vectors=[str(vector)] if vector else [], controls=controls,
                        multipliers=parse_multipliers(alpha), scale=scale,
                        **({"doses": str(dose_file)} if dose_file is not None else {}),
                        **steering_overrides(operator, clamp, steer_if, steer_only))  # fmt: skip
    run_config(cfg, device=device, dtype=dtype, dry=dry_run_flag, backend=backend,
               tensor_parallel_size=tensor_parallel_size, engine=engine)  # fmt: skip


@app.command("judge")
def judge_command(
    run_dir: Path = typer.Argument(..., help="Run directory written by steerlab eval or sweep."),
    backend: str = typer.Option("anthropic", "--judge", help="anthropic or local."),
    judge_model: JudgeModel = None,
    rubric: RubricOpt = Path("configs/judge/rubric.yaml"),
    scale: str | None = typer.Option(None, help="Override the rubric's scale, e.g. 1,7."),
    batch: bool = typer.Option(False, help="Use the Message Batches API (half price; waits for the batch)."),
    concurrency: int = typer.Option(8, help="Parallel API calls."),
    cache: Path | None = typer.Option(None, help="Judgement cache (default $STEERLAB_CACHE_DIR/judge.sqlite)."),
    dry_run_flag: bool = typer.Option(False, "--dry-run", help="Print the cost of uncached traces only."),
) -> None:
    """(Re)score the scratchpads of an existing run, without regenerating; cached judgements cost nothing."""
    from steerlab.harness.records import read_header, read_samples
    from steerlab.runs import JudgeConfig

    read_header(run_dir)
    scale_pair = None
    if scale is not None:
        values = parse_ints(scale, "--scale")
        if len(values) != 2:
            raise ConfigError(f"--scale {scale!r}: give min,max, e.g. 1,7")
        scale_pair = (values[0], values[1])
    cfg = validated(JudgeConfig, backend=backend, model=judge_model, rubric=str(rubric), scale=scale_pair,
                    batch=batch, concurrency=concurrency, cache=str(cache) if cache else None)  # fmt: skip
    samples = read_samples(run_dir)
    if dry_run_flag:
        dry_run(samples, cfg)
        return
    from steerlab.harness.records import hold_run

    _, cache = rubric_and_cache(cfg)  # a cache that cannot be used fails before the run is locked
    cache.close()
    with hold_run(run_dir):  # the judge rewrites samples.jsonl: never beside a running sweep
        report = run_judge(run_dir, cfg, judge_factory(cfg, run_dir))
        if samples and "label" in samples[0]:
            print_label_summary(run_dir, cfg)
    refuse_judge_errors(run_dir, report)


def parse_families(specs: list[str]) -> dict[str, str]:
    families = {}
    for spec in specs:
        concept, _, fam = spec.partition("=")
        if not concept or fam not in ("A", "B"):
            raise ConfigError(f"--family {spec!r}: write CONCEPT=A or CONCEPT=B")
        families[concept] = fam
    return families


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
    rename: Rename = None,
    limit: Limit = None,
    max_new_tokens: MaxNewTokens = 1024,
    temperature: Temperature = 1.0,
    batch_size: BatchSize = 16,
    judge: JudgeKind = "none",
    judge_model: JudgeModel = None,
    judge_batch: JudgeBatch = False,
    rubric: RubricOpt = Path("configs/judge/rubric.yaml"),
    dry_run_flag: DryRun = False,
    device: Device = "auto",
    dtype: DType = "auto",
    backend: BackendOpt = "hf",
    tensor_parallel_size: TensorParallel = 1,
    lora: LoraOpt = None,
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    max_model_len: MaxModelLen = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    enable_prefix_caching: PrefixCaching = None,
    vllm_arg: VllmArgs = None,
    compile: CompileOpt = None,
    remote: Remote = False,
) -> None:
    """Evaluate the baseline and every claim under monitored and unmonitored (one resumable run),
    then report each claim's gap and the net scores A_net and B_net."""
    engine = engine_options(
        device_map, max_memory, max_model_len, gpu_memory_utilization, enable_prefix_caching, vllm_arg, compile, remote
    )
    shared = AFOptions(
        dataset=dataset, out_dir=out_dir, model=model, seeds=seeds, system_prompt=system_prompt,
        tier_literal=tier_literal, prefill=prefill, max_turns=max_turns, limit=limit, max_new_tokens=max_new_tokens,
        temperature=temperature, batch_size=batch_size, judge=judge, judge_model=judge_model, judge_batch=judge_batch,
        rubric=rubric, lora=lora, user_template=user_template, chat_date=chat_date, run_seed=run_seed,
        rename=tuple(rename or ()),
    )  # fmt: skip
    cfg = shared.config("monitored,unmonitored",
                        claims={"file": str(claims_file), "select": claims, "strength": strength})  # fmt: skip
    run_config(cfg, device=device, dtype=dtype, dry=dry_run_flag, backend=backend,
               tensor_parallel_size=tensor_parallel_size, engine=engine)  # fmt: skip


@app.command("profile")
def profile(
    run_dirs: list[Path] = typer.Argument(..., help="prompt-eval, steered AF sweep or SDF run directories."),
    out_dir: Path = typer.Option(Path("runs/profiles"), "--out", help="Where profiles.json and the figures go."),
    allow_mixed: bool = typer.Option(False, help="Pool runs of differently fingerprinted models into one profile."),
    family: list[str] = typer.Option([], help="A steered vector's family, e.g. my_concept=A (repeatable)."),
    seed: BootstrapSeed = 0,
) -> None:
    """Comparative motivation profiles: A_net against B_net per model and method, and the gap per
    intervention; runs of one model and method are pooled."""
    from steerlab.fileio import atomic_write_text
    from steerlab.profiles import draw, load_profiles

    profiles = load_profiles(run_dirs, allow_mixed=allow_mixed, families=parse_families(family), seed=seed)
    table = Table(title="profiles (95% bootstrap over requests); A_net > B_net: expectation-sensitive")
    for col in ("model", "method", "A_net", "B_net", "A_net - B_net", "runs"):
        table.add_column(col)
    for p in profiles:
        table.add_row(p.model, p.method + (f" ({p.variant})" if p.variant else ""), fmt_interval(p.net["A_net"]),
                      fmt_interval(p.net["B_net"]), fmt_interval(p.net["A_minus_B"]), str(len(p.runs)))  # fmt: skip
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
    device: Device = "auto",
    dtype: DType = "auto",
    backend: BackendOpt = "hf",
    tensor_parallel_size: TensorParallel = 1,
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    max_model_len: MaxModelLen = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    enable_prefix_caching: PrefixCaching = None,
    vllm_arg: VllmArgs = None,
    compile: CompileOpt = None,
    rename: Rename = None,
    seed: BootstrapSeed = 0,
) -> None:
    """Run the prompt battery on checkpoints fine-tuned toward a known family and check that
    prompting ranks the families right (resumable: each checkpoint is its own run)."""
    from steerlab.backends import check_backend_options
    from steerlab.profiles import calibrate as run_calibration
    from steerlab.profiles import checkpoint_config, load_calibration
    from steerlab.prompts import selected

    engine_kw = engine_options(
        device_map, max_memory, max_model_len, gpu_memory_utilization, enable_prefix_caching, vllm_arg, compile
    )
    check_backend_options(backend, **engine_kw)
    from pydantic import ValidationError

    from steerlab.runs import make_scenario

    cal = load_calibration(config)
    if rename:  # --rename replaces the calibration file's run: rename
        cal.run["rename"] = parse_rename(rename)
    for ck in cal.checkpoints:  # every checkpoint's settings and claims validate before any model loads
        try:
            cfg = checkpoint_config(cal, ck, out_dir)
        except ValidationError as exc:  # pydantic's error, one line
            err = exc.errors()[0]
            raise ConfigError(f"{config}: run: {'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}") from None
        if cfg.claims is not None:
            selected(cfg.claims)
        make_scenario(cfg)  # the system prompt, and every rename's OLD in it
        if ck.lora and not Path(ck.lora, "adapter_config.json").is_file():
            raise ConfigError(f"checkpoint {ck.name}: {ck.lora} is not a LoRA adapter directory")

    def run_one(cfg):
        from steerlab.backends import make_backend
        from steerlab.runs import run_sweep

        engine, fingerprint, _ = make_backend(
            backend, cfg.model, batch_size=cfg.batch_size, dtype=dtype, device=device,
            tensor_parallel_size=tensor_parallel_size, lora=cfg.lora, chat_date=cfg.chat_date, **engine_kw,
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
