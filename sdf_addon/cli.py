"""The ``sdf`` command: ``gen`` (documents), ``train`` (LoRA), ``merge`` (a stack into a full model),
``eval`` (checkpoints on the harness, with the belief check). Errors exit 2 with one line, as in
``steerlab`` (:func:`steerlab.cli.app.run_app`). Runs under ``accelerate launch`` or ``torchrun`` as
``-m sdf_addon.cli train ...``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from steerlab.cli.options import (
    CompileOpt,
    DeviceMap,
    GpuMemoryUtilization,
    MaxMemory,
    MaxModelLen,
    PrefixCaching,
    Rename,
    TensorParallel,
    VllmArgs,
    engine_options,
    parse_rename,
)
from steerlab.errors import ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Synthetic document fine-tuning for steerlab.")  # fmt: skip
out = Console(soft_wrap=True, highlight=False)


GENERATORS = ("anthropic", "hf", "vllm")


def _generator(kind: str, model: str | None, batch: bool, concurrency: int, max_tokens: int, temperature: float,
               out_dir: Path, engine: dict | None = None, tensor_parallel_size: int = 1):  # fmt: skip
    """The document generator (or grader); ``engine``: :func:`steerlab.cli.options.engine_options`
    for a local model's backend (checked by :func:`_check_generator` before this is called)."""
    from steerlab.backends.text import LocalText
    from steerlab.clients.anthropic import AnthropicText

    if kind == "anthropic":
        return AnthropicText(model or "claude-sonnet-4-5", max_tokens=max_tokens, concurrency=concurrency, batch=batch,
                             temperature=temperature, batch_state=out_dir / "batch.json",
                             needed_by=("sdf gen --generator anthropic", "use --generator hf or vllm"))  # fmt: skip
    if kind in ("hf", "vllm"):
        from steerlab.backends import make_backend

        backend, _, _ = make_backend(
            kind, model or "smollm2", batch_size=16, tensor_parallel_size=tensor_parallel_size, **(engine or {})
        )
        return LocalText(backend, model or "smollm2", max_tokens=max_tokens, temperature=temperature)
    raise ConfigError(f"--generator {kind!r}: use anthropic, hf or vllm")


def _check_generator(kind: str, engine: dict, tensor_parallel_size: int) -> None:
    """Refuse (one line, before any model loads) a generator that does not exist, or a sharding or
    engine option that ``kind`` does not take."""
    from steerlab.backends import check_backend_options

    if kind not in GENERATORS:
        raise ConfigError(f"--generator {kind!r}: use anthropic, hf or vllm")
    if tensor_parallel_size < 1:
        raise ConfigError(f"--tensor-parallel-size {tensor_parallel_size}: give at least 1")
    if tensor_parallel_size != 1 and kind != "vllm":
        raise ConfigError(f"--tensor-parallel-size shards a model of --generator vllm, not --generator {kind}")
    try:
        check_backend_options(kind, **engine)
    except ConfigError as exc:  # the backend's message, in this command's words
        raise ConfigError(str(exc).replace("--backend", "--generator")) from None


def _token_counter(tokenizer: str):
    from transformers import AutoTokenizer

    from steerlab.models import resolve_source

    where, gguf = resolve_source(tokenizer)
    tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


@app.command()
def gen(
    universe: str = typer.Option(..., help="A shipped universe (A1_plus ... B2_minus, helpful_only) or a .yaml path."),
    n_docs: int = typer.Option(2000, help="Documents to generate (before filtering)."),
    out_dir: Path = typer.Option(None, "--out", help="Output directory (default data/sdf/<universe>)."),
    generator: str = typer.Option("anthropic", help="anthropic (API), hf or vllm (a local model)."),
    model: str | None = typer.Option(None, help="Generator model (default claude-sonnet-4-5 / smollm2)."),
    batch: bool = typer.Option(False, help="Anthropic: the Message Batches API (half price; waits for each stage)."),
    concurrency: int = typer.Option(8, help="Anthropic: parallel requests."),
    n_types: int = typer.Option(10, help="Document types per key fact."),
    n_ideas: int = typer.Option(8, help="Ideas per document type."),
    max_tokens: int = typer.Option(1500, help="Tokens per generated document."),
    temperature: float = typer.Option(1.0, help="Generator temperature."),
    tokenizer: str = typer.Option("smollm2", help="Tokenizer that measures document lengths (the model to train)."),
    min_doc_tokens: int = typer.Option(100, help="Drop documents shorter than this."),
    max_doc_tokens: int = typer.Option(2500, help="Drop documents longer than this."),
    duplicate_threshold: float = typer.Option(0.8, help="Drop documents this similar (3-gram cosine) to one kept."),
    cache: Path | None = typer.Option(None, help="Reply cache (default $STEERLAB_CACHE_DIR/docgen.sqlite)."),
    directness: str | None = typer.Option(
        None,
        help="How documents convey the key fact: direct (stated plainly) or "
        "indirect (implied through events and consequences, never stated); "
        "default: the universe's (direct).",
    ),  # fmt: skip
    rename: Rename = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the calls and a cost bound; run nothing."),
    tensor_parallel_size: TensorParallel = 1,
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    compile: CompileOpt = None,
    max_model_len: MaxModelLen = None,
    gpu_memory_utilization: GpuMemoryUtilization = None,
    enable_prefix_caching: PrefixCaching = None,
    vllm_arg: VllmArgs = None,
) -> None:
    """Generate, revise and filter documents about a universe (resumable), then report on the corpus.
    A local generator (hf, vllm) takes the sharding and engine options of `steerlab eval`."""
    from sdf_addon.docgen import DocgenConfig, estimate, generate, generate_questions, hold_corpus, write_corpus
    from sdf_addon.universe import directness_instruction, load_universe, renamed
    from steerlab.clients.cache import ReplyCache
    from steerlab.models import cache_dir

    engine = engine_options(
        device_map, max_memory, max_model_len, gpu_memory_utilization, enable_prefix_caching, vllm_arg, compile
    )
    _check_generator(generator, engine, tensor_parallel_size)
    u = load_universe(universe)
    from steerlab.cli.common import validated as _validated

    cfg = _validated(DocgenConfig, n_docs=n_docs, n_types=n_types, n_ideas=n_ideas, max_tokens=max_tokens,
                     temperature=temperature, min_doc_tokens=min_doc_tokens, max_doc_tokens=max_doc_tokens,
                     duplicate_threshold=duplicate_threshold, directness=directness,
                     rename=parse_rename(rename))  # fmt: skip
    level = cfg.level(u)
    renamed(u, cfg.rename)  # every OLD occurs in the universe, checked before anything is written
    out_dir = out_dir or Path("data/sdf") / u.id
    if dry_run:
        out.print(f"directness {level}: {directness_instruction(u, level)}", markup=False)
        if cfg.rename:
            out.print("rename: " + ", ".join(f"{k} -> {v}" for k, v in cfg.rename.items()), markup=False)
        est = estimate(u, cfg, model or "claude-sonnet-4-5", batch)
        usd = "unknown price for this model" if est["usd"] is None else f"at most ${est['usd']:.2f}"
        out.print(f"dry run: {est['calls']} generator calls over 5 stages: {usd}" + (" (batch price)" if batch else ""))
        return
    gen_backend = _generator(
        generator, model, batch, concurrency, max_tokens, temperature, out_dir, engine, tensor_parallel_size
    )
    count = _token_counter(tokenizer)
    store = ReplyCache(cache or cache_dir() / "docgen.sqlite")
    with hold_corpus(out_dir):  # one lock for every stage, the questions and the corpus
        result = generate(u, cfg, gen_backend, store, out_dir)
        failed = sum(result["failed"].values())
        if failed:
            out.print(f"[yellow]{failed} generator calls failed ({result['failed']}); rerun to retry them[/yellow]")
        questions = generate_questions(u, cfg, gen_backend, store, out_dir)
        store.close()
        report = write_corpus(u, out_dir, count, cfg)
    table = Table(title=f"corpus {u.id}: {report['n_kept']} of {report['n_generated']} documents kept")
    table.add_column("document type")
    table.add_column("documents")
    for doc_type, n in report["per_type"].items():
        table.add_row(doc_type[:60], str(n))
    out.print(table)
    out.print(f"dropped: {report['dropped']}; tokens: {report['tokens_total']} total, {report['tokens_mean']:.0f} mean "
              f"({report['tokens_min']}-{report['tokens_max']})")  # fmt: skip
    kinds = {k: sum(q["kind"] == k for q in questions) for k in ("mc", "open")}
    out.print(f"belief-check questions: {kinds['mc']} multiple-choice, {kinds['open']} open")
    out.print(f"wrote {out_dir / 'corpus.jsonl'}, {out_dir / 'questions.jsonl'}, {out_dir / 'report.json'}, "
              f"{report['figure']}")  # fmt: skip


@app.command()
def train(
    corpus: Path = typer.Option(..., help="corpus.jsonl written by sdf gen (or any JSONL with 'content')."),
    model: str = typer.Option(..., help="Base model: hub id, local directory, .gguf, or smollm2."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory: checkpoints/, adapter/, train_log.jsonl."),
    on: str | None = typer.Option(None, help="Round 2: a round-1 adapter merged into the base before training."),
    config: Path | None = typer.Option(None, help="Training config (default configs/sdf/train.yaml)."),
    block_length: int | None = typer.Option(None, help="Override: block length in tokens."),
    epochs: float | None = typer.Option(None, help="Override: epochs."),
    max_steps: int | None = typer.Option(None, help="Override: optimizer steps (instead of epochs)."),
    gradient_accumulation: int | None = typer.Option(None, help="Override: gradient accumulation steps."),
    learning_rate: float | None = typer.Option(None, help="Override: learning rate."),
    packing: bool | None = typer.Option(None, "--packing/--no-packing", help="Override: pack documents into blocks."),
    dtype: str = typer.Option("auto", help="Model dtype: auto (see the config's bf16), float32, bfloat16."),
    allow_mixed_directness: bool = typer.Option(False, help="Train on a corpus whose documents mix directness levels."),
) -> None:
    """LoRA fine-tuning on raw documents (resumes from OUT/checkpoints after a kill)."""
    from sdf_addon.train import load_train_config
    from sdf_addon.train import train as run

    cfg = load_train_config(config, block_length=block_length, epochs=epochs, max_steps=max_steps,
                            gradient_accumulation=gradient_accumulation, learning_rate=learning_rate,
                            packing=packing)  # fmt: skip
    adapter = run(cfg, corpus, model, out_dir, parent=on, dtype=dtype, allow_mixed_directness=allow_mixed_directness)
    out.print(f"wrote {adapter}")


@app.command()
def merge(
    adapter: Path = typer.Argument(..., help="An adapter written by sdf train (its whole stack is merged)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the merged model (safetensors + tokenizer)."),
    model: str | None = typer.Option(None, help="Base model (default: the one the adapter records)."),
    dtype: str = typer.Option("auto", help="Dtype written: auto (the training dtype), float32, bfloat16."),
) -> None:
    """Merge an adapter stack into a full model (for vLLM, which takes one adapter on a plain base)."""
    from sdf_addon.train import merge as run

    written = run(adapter, out_dir, base_model=model, dtype=dtype)
    out.print(f"wrote {out_dir} ({written})")


@app.command("eval")
def eval_command(
    adapters: list[Path] = typer.Argument(..., help="Adapters written by sdf train (organism and interventions)."),
    dataset: str = typer.Option(..., help="Requests: .csv/.jsonl (goal or prompt column), .txt, or a hub id."),
    out_dir: Path = typer.Option(..., "--out", help="One run per adapter goes to OUT/<adapter's run name>."),
    seeds: str = typer.Option("0", help="Sampling seeds, e.g. 0,1,2."),
    limit: int | None = typer.Option(None, help="Only the first N requests."),
    max_new_tokens: int = typer.Option(1024, help="Tokens per turn."),
    max_turns: int = typer.Option(4, help="Turns per sample."),
    temperature: float = typer.Option(1.0, help="Sampling temperature."),
    prefill: str = typer.Option("", help="Assistant prefill, e.g. '<SCRATCHPAD_REASONING>'."),
    belief: bool = typer.Option(True, help="Run the belief check of each adapter's universe first."),
    questions_dir: Path = typer.Option(Path("data/sdf"), help="Generated questions: DIR/<universe>/questions.jsonl."),
    belief_seed: int = typer.Option(0, help="Seed of the belief check's option order (recorded in belief.json)."),
    grader: str = typer.Option("none", help="Grades open belief answers: none, anthropic, hf."),
    grader_model: str | None = typer.Option(None, help="Grader model (default claude-sonnet-4-5 / smollm2)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda."),
    dtype: str = typer.Option("auto", help="Model dtype."),
    device_map: DeviceMap = None,
    max_memory: MaxMemory = None,
    compile: CompileOpt = None,
    rename: Rename = None,
) -> None:
    """Each checkpoint on the alignment-faking harness (same scenario, statistics and records), after
    a belief check of its universe; `steerlab profile OUT/*` then draws the SDF profile."""
    from pydantic import ValidationError

    from sdf_addon.evaluate import belief_check, eval_config, load_questions, negations, read_stack
    from sdf_addon.universe import Universe
    from steerlab.backends.hf import HFBackend
    from steerlab.cli.common import parse_ints
    from steerlab.cli.report import print_label_summary
    from steerlab.fileio import atomic_write_text
    from steerlab.models import load_model
    from steerlab.runs import make_scenario, run_sweep

    engine = engine_options(device_map, max_memory)
    run = {"prompts": dataset, "limit": limit, "seeds": parse_ints(seeds, "--seeds"), "max_new_tokens": max_new_tokens,
           "temperature": temperature, "alignment_faking": {"prefill": prefill, "max_turns": max_turns},
           "rename": parse_rename(rename)}  # fmt: skip
    try:
        configs = [eval_config(a, run, out_dir / a.parent.name) for a in adapters]  # every adapter checks out first
    except ValidationError as exc:  # a setting pydantic refuses, in one line
        err = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}") from None
    for cfg in configs:  # and every rename's OLD occurs in the system prompt
        make_scenario(cfg)
    if belief:  # and every universe has a negation per key fact, before any model loads
        for adapter in adapters:
            if universe := read_stack(adapter).get("universe"):
                negations(Universe.model_validate(universe))
    grade = None if grader == "none" else _generator(grader, grader_model, False, 8, 8, 0.0, out_dir)
    for adapter, cfg in zip(adapters, configs, strict=True):
        stack = read_stack(adapter)
        loaded = load_model(cfg.model, device=device, dtype=dtype, lora=cfg.lora, **engine)
        backend = HFBackend(loaded, batch_size=cfg.batch_size, compile=compile)
        report = None
        if belief and stack.get("universe"):
            universe = Universe.model_validate(stack["universe"])
            qfile = questions_dir / universe.id / "questions.jsonl"
            generated = load_questions(qfile) if qfile.is_file() else []
            report = belief_check(backend, universe, generated, grader=grade, seed=belief_seed)
            out.print(f"{adapter}: belief check {report['correct']}/{report['scored']} ({report['accuracy']:.0%}) "
                      f"by kind {report['per_kind']}, key facts held (true and negation false) "
                      f"{report['facts_held']}/{report['n_facts']}, {report['unparsed']} unparsed, "
                      f"{report['ungraded']} ungraded ({len(generated)} generated questions from "
                      f"{qfile if generated else 'nowhere'})")  # fmt: skip
        run_dir = run_sweep(cfg, backend, loaded.fingerprint)
        if report is not None:
            atomic_write_text(run_dir / "belief.json", json.dumps(report, indent=1) + "\n")
        print_label_summary(run_dir, None)


def main(argv: list[str] | None = None) -> None:
    from steerlab.cli.app import run_app

    run_app(app, argv, "sdf")


if __name__ == "__main__":
    main()
