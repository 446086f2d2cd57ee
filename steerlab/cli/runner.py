"""What the run commands share: :func:`run_config` (check a run before the model loads, print a dry
run's size and cost, generate or resume, then judge and summarise a labelled run) and the judge
steps that ``judge`` reruns on its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerlab.cli.app import out
from steerlab.cli.report import print_label_summary
from steerlab.errors import ConfigError

if TYPE_CHECKING:
    from steerlab.clients.base import TextClient
    from steerlab.harness.judge import JudgeReport
    from steerlab.models import LoadedModel
    from steerlab.runs import JudgeConfig, SweepConfig

JudgeFactory = Callable[["LoadedModel | None"], "TextClient"]  # a judge is any text client


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


def rubric_and_cache(cfg: JudgeConfig, readonly: bool = False):
    from steerlab.clients.cache import ReplyCache
    from steerlab.harness.judge import Rubric
    from steerlab.models import cache_dir

    rubric = Rubric.load(cfg.rubric, scale=cfg.scale)
    return rubric, ReplyCache(cfg.cache or cache_dir() / "judge.sqlite", readonly=readonly)


def run_judge(run_dir: Path, cfg: JudgeConfig, make: JudgeFactory, loaded: LoadedModel | None = None) -> JudgeReport:
    from steerlab.harness.judge import judge_run

    rubric, cache = rubric_and_cache(cfg)
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
    from steerlab.clients.base import ClientError

    if report is None or not report.errors:
        return
    first = " ".join(str(report.first_error).split())
    first = first if len(first) <= 160 else first[:157] + "..."
    raise ClientError(
        f"{report.errors} of {report.n} judgements failed (first: {first}); the other {report.n - report.errors} "
        f"are written in {run_dir}; rerun `steerlab judge {run_dir}` to ask again for the failed ones only"
    )


def dry_run(samples: list[dict[str, Any]], cfg: JudgeConfig) -> None:
    """Print what judging would cost: only traces the cache does not hold are counted."""
    from steerlab.clients.cache import ReplyCache
    from steerlab.harness.judge import estimate, judge_params

    rubric, cache = rubric_and_cache(cfg, readonly=True)  # a dry run reads; it creates no cache file
    params = judge_params(cfg.backend, cfg.max_tokens, cfg.temperature, rubric=rubric)
    texts = sorted({s["reasoning"] for s in samples if s.get("reasoning")})
    rubric_hash = rubric.hash()
    # judgements are filed under the snapshot the API reported; a dry run makes no call, so it uses
    # the snapshot the alias reached last time (an alias never resolved counts as uncached)
    model = cache.last_model(cfg.model_name) or cfg.model_name
    todo = [t for t in texts if cache.get(ReplyCache.key(model, rubric_hash, t, params)) is None]
    cache.close()
    report_cost(estimate(rubric, todo, cfg.model_name, cfg.max_tokens, cfg.batch), cfg,
                f"{len(texts)} distinct traces, {len(texts) - len(todo)} cached; ")  # fmt: skip


def report_cost(est: dict[str, Any], cfg: JudgeConfig, prefix: str = "") -> None:
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


def run_config(
    cfg: SweepConfig, device: str = "auto", dtype: str = "auto", dry: bool = False, backend: str = "hf",
    tensor_parallel_size: int = 1, then: Callable[[Path], None] | None = None, engine: dict[str, Any] | None = None,
) -> Path | None:  # fmt: skip
    """Generate (or resume) a run, then, for a labelled run, judge and summarise it; ``then(run_dir)``
    (a plain run's summary) runs after that. Every option is checked before the model loads (and
    again against the model before the run directory is made); the run directory stays locked
    until all of it is done. ``engine``: :func:`steerlab.cli.options.engine_options`, for make_backend."""
    from steerlab.backends import check_backend_options, check_steering_support, make_backend
    from steerlab.harness.datasets import load_requests
    from steerlab.runs import check_config, make_scenario, run_sweep

    if backend == "anthropic" and cfg.vectors:
        raise ConfigError("the anthropic backend cannot steer; drop the vectors or use --backend hf, vllm or nnsight")
    check_backend_options(backend, lora=cfg.lora, **(engine or {}))
    check_steering_support(backend, cfg.operator, cfg.steer_if is not None)
    arms = check_config(cfg)  # sampling, scorer, vector files and their layers: before the model loads
    scenario = make_scenario(cfg)
    items = load_requests(cfg.prompts, cfg.prompt_set, cfg.limit)  # a bad request file fails before the model loads
    if cfg.steer_if is not None:  # a condition fitted on other system prompts; nnsight's same-pass rule
        from steerlab.conditions import check_same_pass, load_condition
        from steerlab.runs.engine import check_condition_prompts, claim_scenarios
        from steerlab.runs.rows import steering_settings

        check_condition_prompts(cfg, claim_scenarios(cfg, scenario), items)
        if backend == "nnsight":
            check_same_pass(list(steering_settings(cfg, arms).values()), load_condition(cfg.steer_if))
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
            from steerlab.clients.anthropic import CHARS_PER_TOKEN, estimate_chars
            from steerlab.harness.judge import Rubric

            trace_chars = int(cfg.max_new_tokens * scenario.max_turns * CHARS_PER_TOKEN)
            prompt_chars = sum(map(len, Rubric.load(cfg.judge.rubric, scale=cfg.judge.scale).prompt(""))) + trace_chars
            j = cfg.judge
            report_cost(estimate_chars(n * prompt_chars, n, j.model_name, j.max_tokens, j.batch), j, "at most ")
        return None
    make = judge_factory(cfg.judge, Path(cfg.out)) if cfg.judge is not None else None
    engine, fingerprint, loaded = make_backend(
        backend, cfg.model, batch_size=cfg.batch_size, dtype=dtype, device=device,
        tensor_parallel_size=tensor_parallel_size, lora=cfg.lora, chat_date=cfg.chat_date, **(engine or {}),
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
