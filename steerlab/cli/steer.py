"""``steerlab steer``: generate with a steering vector (prompts, a prompt file, or a chat)."""

from __future__ import annotations

from pathlib import Path

import typer

from steerlab.cli.app import app
from steerlab.cli.common import parse_layers
from steerlab.cli.options import (
    BackendKind,
    BatchSize,
    ClampOpt,
    CompileOpt,
    Device,
    DeviceMap,
    DType,
    GpuMemoryUtilization,
    Lora,
    MaxMemory,
    MaxModelLen,
    OperatorOpt,
    PrefixCaching,
    Remote,
    SteerIfOpt,
    TensorParallel,
    TopP,
    VllmArgs,
    engine_options,
)
from steerlab.errors import ConfigError


@app.command()
def steer(
    vector: Path = typer.Option(..., help="Vector file (.safetensors) fitted on this model."),
    alpha: str = typer.Option(..., help="Multiplier(s), comma-separated: 0.03, or -4,0,4."),
    prompt: str | None = typer.Option(None, help="One user prompt."),
    prompts: Path | None = typer.Option(None, help="Prompt file: .txt (one per line) or .jsonl (prompt/messages)."),
    chat: bool = typer.Option(False, help="Interactive chat on stdin (one --alpha); an empty line ends it."),
    model: str = typer.Option("smollm2", help="Hub id, local directory, .gguf file, or smollm2."),
    layers: str | None = typer.Option(None, help="Steer these layers instead of the file's selection, e.g. 14-16."),
    scale: str = typer.Option("absolute", help="absolute: alpha x saved vector; relative: alpha x layer's mean |h|."),
    position: str = typer.Option("all", help="all, prompt or generation."),
    control: int | None = typer.Option(None, help="Steer with the file's random control i instead."),
    compare: bool = typer.Option(False, help="Also show the unsteered completion."),
    system: str | None = typer.Option(None, help="System prompt."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate."),
    temperature: float = typer.Option(0.0, help="0 is greedy."),
    top_p: TopP = 1.0,
    seed: int = typer.Option(0, help="Sampling seed (per request)."),
    batch_size: BatchSize = 16,
    dtype: DType = "auto",
    device: Device = "auto",
    force: bool = typer.Option(False, help="Use a vector fitted on a model with another fingerprint."),
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
    operator: OperatorOpt = None,
    clamp: ClampOpt = None,
    steer_if: SteerIfOpt = None,
) -> None:
    """Generate with a steering vector added to the residual stream (and, with --compare, without)."""
    from dataclasses import replace

    from steerlab.backends import check_backend_options, check_steering_support, make_backend
    from steerlab.backends.base import Sampling
    from steerlab.conditions import load_condition
    from steerlab.generate import as_chat, completions, load_prompts, parse_multipliers, settings_for
    from steerlab.steer import build_table, parse_bounds
    from steerlab.vectors import VectorBundle

    multipliers = parse_multipliers(alpha)
    engine = engine_options(
        device_map, max_memory, max_model_len, gpu_memory_utilization, enable_prefix_caching, vllm_arg, compile, remote
    )
    check_backend_options(backend_kind, lora=lora, **engine)  # an option the backend does not take: before any file
    operator = operator or "add"
    check_steering_support(backend_kind, operator, steer_if is not None)
    bounds = parse_bounds(clamp) if clamp is not None else None
    cond = load_condition(steer_if) if steer_if is not None else None
    if [prompt is not None, prompts is not None, chat].count(True) != 1:
        raise ConfigError("give exactly one of --prompt, --prompts or --chat")
    if chat and len(multipliers) != 1:
        raise ConfigError("--chat takes a single --alpha")
    chats = load_prompts(prompts, system) if prompts else [as_chat(prompt, system)] if prompt else []
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    sampling.check()
    # A bad file, layer list, control or multiplier fails before the model loads.
    first = VectorBundle.load(vector)
    n_layers = first.meta["model"].get("n_layers") if isinstance(first.meta["model"], dict) else None
    layer_list = parse_layers(layers, n_layers if isinstance(n_layers, int) else None)
    ops = {"operator": operator, "bounds": bounds, "condition": cond}
    build_table([replace(s, **ops) for s in settings_for(first, multipliers, layer_list, scale, control)],  # type: ignore[arg-type]
                first.vector.d_model)  # fmt: skip
    backend, fingerprint, _ = make_backend(
        backend_kind, model, batch_size=batch_size, dtype=dtype, device=device, position=position,
        tensor_parallel_size=tensor_parallel_size, lora=lora, **engine,
    )  # fmt: skip
    bundle = VectorBundle.load(vector, expect=fingerprint, force=force)
    if cond is not None:
        cond.check_model(fingerprint)
    settings = [replace(s, **ops) for s in settings_for(bundle, multipliers, layer_list, scale, control)]  # type: ignore[arg-type]
    if not chat:
        for i, group in enumerate(completions(backend, chats, settings, sampling, compare)):
            typer.echo(f"=== prompt {i}: {group[0].prompt[-1]['content']}")
            for c in group:  # completions are printed raw: no markup, no tab expansion
                typer.echo(f"--- {c.label} ({c.finish_reason})\n{c.text}")
        return
    history: list[dict[str, str]] = as_chat("", system)[:-1]
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        except UnicodeDecodeError:
            raise ConfigError("the chat input is not UTF-8 text; set your terminal to UTF-8") from None
        if not line.strip():
            break
        history.append({"role": "user", "content": line})
        group = completions(backend, [history], settings, sampling, compare)[0]
        for c in group:
            typer.echo(f"{c.label}> {c.text}")
        history.append({"role": "assistant", "content": group[-1].text})
