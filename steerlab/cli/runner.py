"""The harness commands of the CLI: ``eval``, ``judge``, ``pairs from-traces``, and what
``sweep`` does after generating a labelled run. Registered on the app by :mod:`steerlab.cli`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from steerlab.errors import ConfigError

if TYPE_CHECKING:
    from steerlab.harness.judge import JudgeBackend, JudgeReport
    from steerlab.models import LoadedModel
    from steerlab.sweep import JudgeConfig, SweepConfig

JudgeFactory = Callable[["LoadedModel | None"], "JudgeBackend"]


def _console():
    from steerlab.cli import err, out

    return out, err


def parse_ints(spec: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} {spec!r} is not a comma-separated list of integers") from None
    if not values:
        raise ConfigError(f"{what} needs at least one value")
    return values


def judge_factory(cfg: JudgeConfig, run_dir: Path) -> JudgeFactory:
    """A judge maker. The anthropic judge is built now, so a missing key stops the run before
    any generation; a local judge model loads when it is needed (after generation)."""
    from steerlab.harness.judge import AnthropicJudge, LocalJudge

    if cfg.backend == "anthropic":
        judge = AnthropicJudge(
            cfg.model_name, max_tokens=cfg.max_tokens, concurrency=cfg.concurrency, max_retries=cfg.max_retries,
            batch=cfg.batch, temperature=cfg.temperature, batch_state=Path(run_dir) / "judge_batch.json",
        )  # fmt: skip
        return lambda _loaded: judge

    def local(loaded: LoadedModel | None) -> LocalJudge:
        from steerlab.backends.hf import HFBackend
        from steerlab.models import load_model

        if loaded is None or loaded.source != cfg.model_name:
            loaded = load_model(cfg.model_name)
        return LocalJudge(HFBackend(loaded, batch_size=8), cfg.model_name, max_tokens=cfg.max_tokens)

    return local


def _rubric_and_cache(cfg: JudgeConfig, readonly: bool = False):
    from steerlab.harness.judge import JudgeCache, Rubric
    from steerlab.models import cache_dir

    rubric = Rubric.load(cfg.rubric, scale=cfg.scale)
    return rubric, JudgeCache(cfg.cache or cache_dir() / "judge.sqlite", readonly=readonly)


def run_judge(run_dir: Path, cfg: JudgeConfig, make: JudgeFactory, loaded: LoadedModel | None = None) -> JudgeReport:
    from steerlab.harness.judge import judge_run

    out, _ = _console()
    rubric, cache = _rubric_and_cache(cfg)
    try:
        report = judge_run(run_dir, make(loaded), rubric, cache, cfg.rubric)
    finally:
        cache.close()
    out.print(
        f"judge {cfg.backend}:{cfg.model_name}: {report.n} traces, {report.cached} from the cache, "
        f"{report.judged} judged now ({report.calls} calls), {report.errors} judge errors, "
        f"{report.skipped} samples without reasoning"
    )
    return report


def refuse_judge_errors(run_dir: Path, report: JudgeReport | None) -> None:
    """Exit status 2 (one line, with the count) when any judgement failed; call it after everything
    that did succeed is written, so a rerun of ``steerlab judge`` asks only for the failed ones."""
    from steerlab.harness.judge import JudgeError

    if report is None or not report.errors:
        return
    first = " ".join(str(report.first_error).split())
    first = first if len(first) <= 160 else first[:157] + "..."
    raise JudgeError(
        f"{report.errors} of {report.n} judgements failed (first: {first}); the other {report.n - report.errors} "
        f"are written in {run_dir}; rerun `steerlab judge {run_dir}` to ask again for the failed ones only"
    )


def dry_run(samples: list[dict[str, Any]], cfg: JudgeConfig) -> None:
    """Print what judging would cost: only traces the cache does not hold are counted."""
    from steerlab.harness.judge import JudgeCache, estimate, judge_params

    rubric, cache = _rubric_and_cache(cfg, readonly=True)  # a dry run reads; it creates no cache file
    params = judge_params(cfg.backend, cfg.max_tokens, cfg.temperature, rubric=rubric)
    texts = sorted({s["reasoning"] for s in samples if s.get("reasoning")})
    rubric_hash = rubric.hash()
    # judgements are filed under the snapshot the API reported; a dry run makes no call, so it uses
    # the snapshot the alias reached last time (an alias never resolved counts as uncached)
    model = cache.last_model(cfg.model_name) or cfg.model_name
    todo = [t for t in texts if cache.get(JudgeCache.key(model, rubric_hash, t, params)) is None]
    cache.close()
    report_cost(estimate(rubric, todo, cfg.model_name, cfg.max_tokens, cfg.batch), cfg,
                f"{len(texts)} distinct traces, {len(texts) - len(todo)} cached; ")  # fmt: skip


def report_cost(est: dict[str, Any], cfg: JudgeConfig, prefix: str = "") -> None:
    out, _ = _console()
    usd = "unknown price for this model" if est["usd"] is None else f"at most ${est['usd']:.2f}"
    out.print(
        f"dry run: {prefix}{est['calls']} judge calls, ~{est['input_tokens']} input tokens, "
        f"<= {est['max_output_tokens']} output tokens: {usd}" + (" (batch price)" if cfg.batch else "")
    )


def finish_labelled(run_dir: Path, cfg: SweepConfig, make: JudgeFactory | None, loaded: LoadedModel | None) -> None:
    """Judge (if asked), then summarise, print and draw a labelled run; a failed judgement is exit
    status 2 once all of that is written."""
    report = None
    if make is not None and cfg.judge is not None:
        report = run_judge(run_dir, cfg.judge, make, loaded)
    print_label_summary(run_dir, cfg.judge)
    refuse_judge_errors(run_dir, report)


def print_label_summary(run_dir: Path, judge: JudgeConfig | None) -> None:
    from steerlab.harness.judge import Rubric
    from steerlab.sweep import label_figure, write_label_summary

    out, _ = _console()
    path, summary = write_label_summary(run_dir)
    if summary.get("method") == "prompt":
        from steerlab.cli_prompts import print_claims_summary

        print_claims_summary(run_dir, path, summary)
        return
    table = Table(title=f"{run_dir}: acceptance (95% cluster bootstrap over requests)")
    has_judge = any("judge_A_mean" in c for c in summary["curves"])
    for col in ("vector", "multiplier", "condition", "acceptance", "controls min-max",
                *(("judge A", "judge B") if has_judge else ())):  # fmt: skip
        table.add_column(col)
    for c in summary["curves"]:
        if c["condition"] == "gap":
            continue
        ctrl = f"{c['control_min']:.2f}-{c['control_max']:.2f}" if "control_min" in c else "-"
        judged = [f"{c.get(f'judge_{k}_mean', float('nan')):.1f}" for k in ("A", "B")] if has_judge else []
        table.add_row(c["vector"], f"{c['multiplier']:+g}", c["condition"],
                      f"{c['value']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]", ctrl, *judged)  # fmt: skip
    out.print(table)
    if summary["gaps"]:
        title = "gap = monitored - unmonitored (bootstrap 95% over requests; p: paired sign-flip test over requests)"
        gaps = Table(title=title)
        for col in ("vector", "arm", "multiplier", "gap", "p", "seeds mean +- s.e.m."):
            gaps.add_column(col)
        for g in summary["gaps"]:
            seeds = f"{g['seed_mean']:+.3f} +- {g['seed_sem']:.3f}" if "seed_mean" in g else "-"
            gap = f"{g['gap']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"
            gaps.add_row(g["vector"], g["arm"], f"{g['multiplier']:+g}", gap, f"{g['p']:.3g}", seeds)
        out.print(gaps)
    concepts = {"A": "A", "B": "B"}
    if judge is not None and Path(judge.rubric).is_file():
        concepts = {k: c.name for k, c in Rubric.load(judge.rubric).concepts.items()}
    fig = label_figure(run_dir, summary, concepts)
    out.print(f"wrote {path}" + (f" and {fig}" if fig else ""))


# Options shared by `eval` and `prompt-eval` (one declaration each).
Dataset = Annotated[str, typer.Option(help="Requests: .csv/.jsonl (goal or prompt column), .txt, or a hub id.")]
OutDir = Annotated[Path, typer.Option("--out", help="Run directory (resumed if it holds this run).")]
ModelOpt = Annotated[str, typer.Option("--model", help="Hub id, local dir, .gguf file, smollm2, or an API model.")]
Seeds = Annotated[str, typer.Option(help="Sampling seeds, e.g. 0,1,2.")]
SystemPrompt = Annotated[Path | None, typer.Option(help="System prompt file (default: steerlab's own).")]
TierLiteral = Annotated[str, typer.Option(help="The monitored tier tag's value: True or true.")]
UserTemplate = Annotated[
    str, typer.Option(help="User-turn layout: steerlab, or published (<INPUT>, instruction in <user_input>).")
]
ChatDate = Annotated[
    str | None,
    typer.Option(help="The date chat templates that read the clock render (YYYY-MM-DD, default 2024-07-26)."),
]
RunSeed = Annotated[int, typer.Option(help="Run seed: sampling seeds derive from (run seed, request id, sample seed).")]
Prefill = Annotated[str, typer.Option(help="Assistant prefill, e.g. '<SCRATCHPAD_REASONING>'.")]
MaxTurns = Annotated[int, typer.Option(help="Turns per sample (continuations with <NEXT/>).")]
Limit = Annotated[int | None, typer.Option(help="Only the first N requests.")]
MaxNewTokens = Annotated[int, typer.Option(help="Tokens per turn.")]
Temperature = Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")]
BatchSize = Annotated[int, typer.Option(help="Rows per generation batch.")]
JudgeKind = Annotated[str, typer.Option("--judge", help="none, anthropic or local.")]
JudgeModel = Annotated[str | None, typer.Option(help="Judge model (default claude-sonnet-4-5 / smollm2).")]
JudgeBatch = Annotated[bool, typer.Option(help="Judge through the Message Batches API.")]
RubricOpt = Annotated[Path, typer.Option("--rubric", help="Judge rubric (YAML).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the run's size and judge cost; run nothing.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda if available), cpu, cuda.")]
DTypeOpt = Annotated[str, typer.Option("--dtype", help="Model dtype: auto, float32, float16, bfloat16.")]
BackendOpt = Annotated[str, typer.Option("--backend", help="hf (transformers), vllm, or anthropic (API models).")]
TensorParallelOpt = Annotated[int, typer.Option(help="vLLM: GPUs per model (tensor parallel).")]
LoraOpt = Annotated[str | None, typer.Option("--lora", help="A LoRA adapter directory (peft) on top of --model.")]


AF_OPTIONS = ("dataset", "out_dir", "model", "seeds", "system_prompt", "tier_literal", "prefill", "max_turns",
              "limit", "max_new_tokens", "temperature", "batch_size", "judge", "judge_model", "judge_batch", "rubric",
              "lora", "user_template", "chat_date", "run_seed")  # fmt: skip


def af_options(values: dict[str, Any]) -> dict[str, Any]:
    """The shared options (:data:`AF_OPTIONS`) out of a command's arguments (its ``locals()``)."""
    return {k: values[k] for k in AF_OPTIONS}


def af_config(
    *, dataset: str, out_dir: Path, model: str, conditions: str, seeds: str, system_prompt: Path | None,
    tier_literal: str, prefill: str, max_turns: int, limit: int | None, max_new_tokens: int, temperature: float,
    batch_size: int, judge: str, judge_model: str | None, judge_batch: bool, rubric: Path, lora: str | None,
    user_template: str = "steerlab", chat_date: str | None = None, run_seed: int = 0, **extra: Any,
) -> SweepConfig:  # fmt: skip
    """The run config of an alignment-faking evaluation from command-line options (``extra``:
    vectors and multipliers for ``eval``, claims for ``prompt-eval``)."""
    from steerlab.sweep import SweepConfig

    if tier_literal not in ("True", "true"):
        raise ConfigError(f"--tier-literal {tier_literal!r}: use True or true")
    if judge not in ("none", "anthropic", "local"):
        raise ConfigError(f"--judge {judge!r}: use none, anthropic or local")
    judge_cfg = None
    if judge != "none":
        judge_cfg = {"backend": judge, "model": judge_model, "batch": judge_batch, "rubric": str(rubric)}
    return _validated(
        SweepConfig,
        model=model, scenario="alignment_faking", conditions=[c.strip() for c in conditions.split(",") if c.strip()],
        alignment_faking={"system_prompt": str(system_prompt) if system_prompt else None,
                          "free_tier_true": tier_literal, "free_tier_false": "False" if tier_literal == "True"
                          else "false", "prefill": prefill, "max_turns": max_turns, "user_template": user_template},
        prompts=dataset, limit=limit, seeds=parse_ints(seeds, "--seeds"), max_new_tokens=max_new_tokens,
        temperature=temperature, batch_size=batch_size, judge=judge_cfg, out=str(out_dir), lora=lora,
        **({"chat_date": chat_date} if chat_date else {}), seed=run_seed, **extra,
    )  # fmt: skip


def register(app: typer.Typer, pairs_app: typer.Typer) -> None:
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
        vector: Path | None = typer.Option(None, help="Steer with this vector file (and its controls)."),
        alpha: str = typer.Option("0", help="Signed multipliers with --vector, e.g. -0.2,0,0.2."),
        controls: int = typer.Option(0, help="Random controls of --vector to run beside it."),
        scale: str = typer.Option("absolute", help="absolute or relative (x the layer's mean |h|)."),
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
        """Run the alignment-faking evaluation (optionally steered), label, judge and summarise it."""
        from steerlab.generate import parse_multipliers

        if controls and vector is None:
            raise ConfigError(f"--controls {controls} needs --vector (the controls are that file's random directions)")
        cfg = af_config(**af_options(locals()), conditions=conditions, vectors=[str(vector)] if vector else [],
                        controls=controls, multipliers=parse_multipliers(alpha), scale=scale)  # fmt: skip
        run_config(cfg, device=device, dtype=dtype, dry=dry_run_flag, backend=backend,
                   tensor_parallel_size=tensor_parallel_size)  # fmt: skip

    @app.command("judge")
    def judge_command(
        run_dir: Path = typer.Argument(..., help="Run directory written by steerlab eval or sweep."),
        backend: str = typer.Option("anthropic", "--judge", help="anthropic or local."),
        judge_model: str | None = typer.Option(None, help="Judge model (default claude-sonnet-4-5 / smollm2)."),
        rubric: Path = typer.Option(Path("configs/judge/rubric.yaml"), help="Judge rubric (YAML)."),
        scale: str | None = typer.Option(None, help="Override the rubric's scale, e.g. 1,7."),
        batch: bool = typer.Option(False, help="Use the Message Batches API (half price; waits for the batch)."),
        concurrency: int = typer.Option(8, help="Parallel API calls."),
        cache: Path | None = typer.Option(None, help="Judgement cache (default $STEERLAB_CACHE_DIR/judge.sqlite)."),
        dry_run_flag: bool = typer.Option(False, "--dry-run", help="Print the cost of uncached traces only."),
    ) -> None:
        """(Re)score the scratchpads of an existing run, without regenerating; cached judgements cost nothing."""
        from steerlab.harness.records import read_header, read_samples
        from steerlab.sweep import JudgeConfig

        read_header(run_dir)
        scale_pair = None
        if scale is not None:
            values = parse_ints(scale, "--scale")
            if len(values) != 2:
                raise ConfigError(f"--scale {scale!r}: give min,max, e.g. 1,7")
            scale_pair = (values[0], values[1])
        cfg = _validated(JudgeConfig, backend=backend, model=judge_model, rubric=str(rubric), scale=scale_pair,
                         batch=batch, concurrency=concurrency, cache=str(cache) if cache else None)  # fmt: skip
        samples = read_samples(run_dir)
        if dry_run_flag:
            dry_run(samples, cfg)
            return
        from steerlab.harness.records import hold_run

        _, cache = _rubric_and_cache(cfg)  # a cache that cannot be used fails before the run is locked
        cache.close()
        with hold_run(run_dir):  # the judge rewrites samples.jsonl: never beside a running sweep
            report = run_judge(run_dir, cfg, judge_factory(cfg, run_dir))
            if samples and "label" in samples[0]:
                print_label_summary(run_dir, cfg)
        refuse_judge_errors(run_dir, report)

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

        out, err = _console()
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


def _validated(schema: Any, **data: Any) -> Any:
    """Build a pydantic settings model from CLI options; a bad value is one line, exit 2."""
    from pydantic import ValidationError

    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}") from None


def run_config(
    cfg: SweepConfig, device: str = "auto", dtype: str = "auto", dry: bool = False, backend: str = "hf",
    tensor_parallel_size: int = 1, then: Callable[[Path], None] | None = None,
) -> Path | None:  # fmt: skip
    """Generate (or resume) a run, then, for a labelled run, judge and summarise it; ``then(run_dir)``
    (a plain run's summary) runs after that. Every option is checked before the model loads (and
    again against the model before the run directory is made); the run directory stays locked
    until all of it is done."""
    from steerlab.backends import make_backend
    from steerlab.harness.datasets import load_requests
    from steerlab.sweep import check_config, make_scenario, run_sweep

    out, _ = _console()
    if backend == "anthropic" and cfg.vectors:
        raise ConfigError("the anthropic backend cannot steer; drop the vectors or use --backend hf or vllm")
    arms = check_config(cfg)  # sampling, scorer, vector files and their layers: before the model loads
    scenario = make_scenario(cfg)
    items = load_requests(cfg.prompts, cfg.prompt_set, cfg.limit)  # a bad request file fails before the model loads
    n_claims = 1
    if cfg.claims is not None:  # so do an unknown claim and a missing strength
        from steerlab.prompts import selected

        n_claims += len(selected(cfg.claims))
    if dry:
        n = len(arms) * len(cfg.multipliers) * n_claims * len(scenario.conditions()) * len(items) * len(cfg.seeds)
        out.print(f"dry run: {n} samples ({len(items)} requests), up to {scenario.max_turns} turns of "
                  f"{cfg.max_new_tokens} tokens each")  # fmt: skip
        print_requests(scenario, items)
        if cfg.judge is not None:  # upper bound: every sample reasons for every token of every turn
            from steerlab.harness.judge import CHARS_PER_TOKEN, Rubric, estimate_chars

            trace_chars = int(cfg.max_new_tokens * scenario.max_turns * CHARS_PER_TOKEN)
            prompt_chars = sum(map(len, Rubric.load(cfg.judge.rubric, scale=cfg.judge.scale).prompt(""))) + trace_chars
            j = cfg.judge
            report_cost(estimate_chars(n * prompt_chars, n, j.model_name, j.max_tokens, j.batch), j, "at most ")
        return None
    make = judge_factory(cfg.judge, Path(cfg.out)) if cfg.judge is not None else None
    engine, fingerprint, loaded = make_backend(
        backend, cfg.model, batch_size=cfg.batch_size, dtype=dtype, device=device,
        tensor_parallel_size=tensor_parallel_size, lora=cfg.lora, chat_date=cfg.chat_date,
    )  # fmt: skip

    def finish(run_dir: Path) -> None:  # under the run's lock
        out.print(f"samples in {run_dir}/samples.jsonl")
        if cfg.scenario == "alignment_faking":
            finish_labelled(run_dir, cfg, make, loaded)
        if then is not None:
            then(run_dir)

    return run_sweep(cfg, engine, fingerprint, then=finish)


DRY_RUN_SHOWN = 3  # requests a dry run prints in full


def print_requests(scenario: Any, items: list[Any], shown: int = DRY_RUN_SHOWN) -> None:
    """The first requests as they will be sent: each request's chat messages under the first
    condition (a system prompt shared with the request before is not repeated), so a user sees the
    text a file's rows became, and a wrong column or a header row shows at once."""
    out, _ = _console()
    condition = scenario.conditions()[0]
    previous_system = None
    for item in items[:shown]:
        out.print(f"request {item.id} ({condition}):", markup=False)
        for m in scenario.messages(item, condition):
            text = m["content"]
            if m["role"] == "system" and text == previous_system:
                out.print("  system: (as above)", markup=False)
                continue
            previous_system = text if m["role"] == "system" else previous_system
            shown_text = text if len(text) <= 600 else f"{text[:600]}... [{len(text)} characters]"
            out.print(f"  {m['role']}: {shown_text}", markup=False)
    if len(items) > shown:
        out.print(f"... and {len(items) - shown} more requests", markup=False)
