"""Every option that more than one command takes, declared once (typed ``Annotated`` aliases), and
:class:`AFOptions`, the options every alignment-faking run command shares, passed as one object.

Imports nothing else of the CLI but :mod:`steerlab.cli.common`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from steerlab.cli.common import parse_ints, validated
from steerlab.errors import ConfigError

if TYPE_CHECKING:
    from steerlab.runs import SweepConfig

# ----------------------------------------------------------------------------- models and devices
DType = Annotated[str, typer.Option("--dtype", help="Model dtype: auto, float32, float16, bfloat16.")]
Device = Annotated[str, typer.Option("--device", help="auto (cuda if available), cpu, cuda.")]
DeviceIndexed = Annotated[str, typer.Option("--device", help="auto (cuda if available), cpu, cuda, cuda:1, ...")]
TrustRemoteCode = Annotated[bool, typer.Option(help="Allow model code from the hub.")]
TensorParallel = Annotated[int, typer.Option(help="vLLM: GPUs per model (tensor parallel).")]
BatchSize = Annotated[int, typer.Option(help="Rows per generation batch.")]
TopP = Annotated[float, typer.Option(help="Nucleus sampling mass.")]

DoseFileOpt = Annotated[Path | None, typer.Option(
    "--dose-file", help="A calibrate-dose --out file: the multipliers are then signed doses in KL units (each arm "
    "steered by its own calibrated multiplier at KL |m|, sign of m; 0: unsteered).")]  # fmt: skip

OperatorOpt = Annotated[str | None, typer.Option(
    "--operator", help="add (the paper's), ablate (the projection onto the vector set to alpha x |v|; alpha 0 removes "
    "the direction) or clamp (add, then clamp the projection to --clamp).")]  # fmt: skip
ClampOpt = Annotated[str | None, typer.Option(
    "--clamp", help="--operator clamp: the projection's range LO:HI in multiplier units (x |v|), e.g. -1:1; an empty "
    "side is open (:2).")]  # fmt: skip
SteerIfOpt = Annotated[Path | None, typer.Option(
    "--steer-if", help="A condition file (steerlab condition fit): steer only prompts that pass it, decided per "
    "prompt on the prefill pass.")]  # fmt: skip
SteerOnlyOpt = Annotated[str | None, typer.Option(
    "--steer-only", help="Steer only rows of these conditions, e.g. monitored; the others run unsteered, recorded "
    "as gated (the experimenter's choice, not a property of the vector).")]  # fmt: skip


def steering_overrides(operator: str | None, clamp: str | None, steer_if: Path | None,
                       steer_only: str | None) -> dict[str, Any]:  # fmt: skip
    """The run-config fields the steering options give (absent ones left out)."""
    import math

    from steerlab.steer import parse_bounds

    out: dict[str, Any] = {}
    if operator is not None:
        out["operator"] = operator
    if clamp is not None:
        out["clamp"] = [None if math.isinf(b) else b for b in parse_bounds(clamp)]
    if steer_if is not None:
        out["steer_if"] = str(steer_if)
    if steer_only is not None:
        names = [n.strip() for n in steer_only.split(",")]
        if not all(names):
            raise ConfigError(f"--steer-only {steer_only!r}: give condition names, e.g. monitored or monitored,raw")
        out["steer_only"] = names
    return out


# ----------------------------------------------------------------------------- fitting (extract and fit)
VectorsDir = Annotated[Path, typer.Option(help="Vector files go to VECTORS_DIR/<concept>/NAME.safetensors.")]


def _vector_name(name: str | None) -> str | None:
    """A vector file's name is a file name: no folders, so ``--name ../../x`` cannot write elsewhere."""
    if name is not None and (not re.fullmatch(r"[A-Za-z0-9._-]+", name) or set(name) == {"."}):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (no folders)")
    return name


VectorName = Annotated[
    str | None, typer.Option(help="Vector file name (default: the model's short name).", callback=_vector_name)
]
Method = Annotated[str, typer.Option(help="logistic, mean_diff or pca.")]
InverseL2 = Annotated[float, typer.Option("--C", help="Inverse L2 strength of the logistic fit (scikit-learn's C).")]
Folds = Annotated[int, typer.Option(help="Cross-validation folds (split by pair).")]
FoldSeed = Annotated[int, typer.Option(help="Seed of the fold split.")]
Select = Annotated[str, typer.Option(help="Layer selection: top-k, band or list.")]
TopK = Annotated[int, typer.Option(help="Layers chosen by top-k or band.")]
SelectLayers = Annotated[str | None, typer.Option(help="Layers for --select list, e.g. 12,13,14.")]
RankBy = Annotated[str, typer.Option(
    help="Rank layers by cv_dprime (train CV standardised gap; keeps its resolution when AUROC saturates) "
    "or cv_auroc.")]  # fmt: skip
CandidateLayers = Annotated[str, typer.Option(
    help="Layers top-k/band may choose: middle (default: leaves out the first and last fifth of the model's "
    "layers), all, or a list like 6-23.")]  # fmt: skip
OrthogonalizeAgainst = Annotated[Path | None, typer.Option(
    help="Another concept's vector file: fit in the complement of its direction at each layer.")]  # fmt: skip
Controls = Annotated[int, typer.Option(help="Norm-matched random controls per vector.")]
ReplaceVectors = Annotated[bool, typer.Option(help="Replace existing vector files.")]
ControlSeed = Annotated[int, typer.Option(
    help="Run seed of the random controls; each file's control seeds derive from it and the vector's identity "
    "(concept, model, pair file, locus, method), recorded in the header.")]  # fmt: skip

# ----------------------------------------------------------------------------- generation (steer, sweep)
BackendKind = Annotated[str, typer.Option(
    "--backend", help="hf (transformers), vllm, nnsight (locally, or on NDIF with --remote), or anthropic "
    "(no steering).")]  # fmt: skip
Remote = Annotated[bool, typer.Option(
    "--remote", help="nnsight: run on NDIF's copy of --model (a hub id NDIF hosts); the API key is read from "
    "NDIF_API_KEY.")]  # fmt: skip
DeviceMap = Annotated[str | None, typer.Option(
    "--device-map", help="hf: shard the model with accelerate: auto, balanced, balanced_low_0, sequential, a device "
    "(cpu, cuda:1), or a JSON file mapping module names to devices.")]  # fmt: skip
MaxMemory = Annotated[str | None, typer.Option(
    "--max-memory", help="hf: memory per device for --device-map, e.g. 0=70GiB,1=70GiB,cpu=200GiB "
    "(alone it implies --device-map auto).")]  # fmt: skip
MaxModelLen = Annotated[int | None, typer.Option(
    "--max-model-len", help="vLLM: longest prompt + generated tokens (default 4096).")]  # fmt: skip
GpuMemoryUtilization = Annotated[float | None, typer.Option(
    "--gpu-memory-utilization", help="vLLM: fraction of GPU memory the engine may take (default vLLM's).")]  # fmt: skip
PrefixCaching = Annotated[bool | None, typer.Option(
    "--enable-prefix-caching/--no-enable-prefix-caching", help="vLLM: prefix caching (default vLLM's).")]  # fmt: skip
VllmArgs = Annotated[list[str] | None, typer.Option(
    "--vllm-arg", help="vLLM: any other vllm.LLM keyword, KEY=VALUE (VALUE read as JSON when it parses); "
    "repeatable.")]  # fmt: skip
CompileOpt = Annotated[bool | None, typer.Option(
    "--compile/--no-compile", help="hf: decode with a static KV cache and a compiled step (CUDA graphs on a GPU); "
    "default: on for a model on one CUDA device.")]  # fmt: skip
Lora = Annotated[str | None, typer.Option(help="A LoRA adapter directory (peft) applied to every request.")]

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE = r"cpu|disk|mps|(?:cuda|xpu|npu)(?::\d+)?"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_device_map(text: str | None) -> str | int | dict[str, Any] | None:
    """``--device-map``: a strategy, a device, or a JSON file ``{module name: device}`` (devices: an
    accelerator index, cpu, disk, cuda:N, ...)."""
    import json

    if text is None or text in DEVICE_MAP_STRATEGIES or (text != "disk" and re.fullmatch(_DEVICE, text)):
        return text
    if text.isdigit():
        return int(text)
    use = f"use {', '.join(DEVICE_MAP_STRATEGIES)}, a device (cpu, cuda:1) or a JSON file of module names to devices"
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"--device-map {text!r}: not a strategy, a device or a file; {use}")
    try:
        mapping = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--device-map {text}: not a JSON file ({' '.join(str(exc).split())})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"--device-map {text}: give a JSON object mapping module names to devices")
    for name, where in mapping.items():
        ok = (isinstance(where, int) and not isinstance(where, bool) and where >= 0) or (
            isinstance(where, str) and re.fullmatch(_DEVICE, where) is not None
        )
        if not ok:
            raise ConfigError(
                f"--device-map {text}: module {name!r} maps to {where!r}; use an index, cpu, disk or cuda:N"
            )
    return mapping


def parse_max_memory(text: str | None) -> dict[int | str, int] | None:
    """``--max-memory 0=70GiB,1=70GiB,cpu=200GiB``: accelerate's ``max_memory`` (sizes in bytes)."""
    if text is None:
        return None
    memory: dict[int | str, int] = {}
    for part in text.split(","):
        key, eq, size = (x.strip() for x in part.partition("="))
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?", size, re.IGNORECASE)
        if not eq or not re.fullmatch(r"\d+|cpu|disk|mps|(?:cuda|xpu|npu):\d+", key) or m is None:
            raise ConfigError(f"--max-memory {text!r}: write DEVICE=SIZE pairs, e.g. 0=70GiB,1=70GiB,cpu=200GiB")
        n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])
        device: int | str = int(key) if key.isdigit() else int(key[5:]) if key.startswith("cuda:") else key
        if n <= 0 or device in memory:
            raise ConfigError(f"--max-memory {text!r}: {key} is given twice or has no memory")
        memory[device] = n
    return memory


def parse_vllm_args(specs: list[str] | None) -> dict[str, Any]:
    """``--vllm-arg KEY=VALUE`` (repeatable): VALUE as JSON when it parses, else the string."""
    import json

    args: dict[str, Any] = {}
    for spec in specs or []:
        key, eq, value = spec.partition("=")
        if not eq or not key.isidentifier():
            raise ConfigError(f"--vllm-arg {spec!r}: write KEY=VALUE, e.g. --vllm-arg enforce_eager=true")
        if key in args:
            raise ConfigError(f"--vllm-arg {key}: given twice")
        try:
            args[key] = json.loads(value)
        except ValueError:
            args[key] = value
    return args


def engine_options(
    device_map: str | None = None, max_memory: str | None = None, max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None, enable_prefix_caching: bool | None = None,
    vllm_arg: list[str] | None = None, compile: bool | None = None, remote: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The sharding and engine options as :func:`steerlab.backends.make_backend` keywords, checked (a
    bad value is a :class:`ConfigError`) before any model loads; options not given are left out. ``remote`` (NDIF):
    :func:`steerlab.backends.check_backend_options` checks it with the backend, and the API key."""
    from steerlab.backends import check_engine_options

    check_engine_options(max_model_len, gpu_memory_utilization)
    given = {
        "device_map": parse_device_map(device_map), "max_memory": parse_max_memory(max_memory),
        "max_model_len": max_model_len, "gpu_memory_utilization": gpu_memory_utilization,
        "enable_prefix_caching": enable_prefix_caching, "vllm_args": parse_vllm_args(vllm_arg) or None,
        "compile": compile, "remote": remote or None,
    }  # fmt: skip
    return {k: v for k, v in given.items() if v is not None}


# ----------------------------------------------------------------------------- runs (eval, prompt-eval, pairs generate)
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
JudgeKind = Annotated[str, typer.Option("--judge", help="none, anthropic or local.")]
JudgeModel = Annotated[str | None, typer.Option(help="Judge model (default claude-sonnet-4-5 / smollm2).")]
JudgeBatch = Annotated[bool, typer.Option(help="Judge through the Message Batches API.")]
RubricOpt = Annotated[Path, typer.Option("--rubric", help="Judge rubric (YAML).")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the run's size and judge cost; run nothing.")]
BackendOpt = Annotated[str, typer.Option(
    "--backend", help="hf (transformers), vllm, nnsight (locally, or on NDIF with --remote), or anthropic "
    "(API models).")]  # fmt: skip
LoraOpt = Annotated[str | None, typer.Option("--lora", help="A LoRA adapter directory (peft) on top of --model.")]
BootstrapSeed = Annotated[int, typer.Option(help="Bootstrap seed.")]
Rename = Annotated[list[str] | None, typer.Option(
    "--rename", help="Provider-naming ablation: replace every whole-word, case-sensitive OLD by NEW in the system "
    "prompt as sent (claims included), OLD=NEW, e.g. Anthropic=OpenAI; repeatable.")]  # fmt: skip


def _protocol_tags() -> tuple[str, ...]:
    """The names of the scratchpad protocol's tags (``SCRATCHPAD_REASONING``, ``OUTPUT``, ``think``)."""
    from steerlab import tags

    opens = (tags.SCRATCHPAD_OPEN, tags.OUTPUT_OPEN, tags.THINK_OPEN)
    return tuple(t.strip("<>/") for t in opens)


PROTOCOL_TAGS = _protocol_tags()


def parse_rename(specs: list[str] | None, flag: str = "--rename") -> dict[str, str]:
    """``--rename OLD=NEW`` (repeatable) as a dict OLD -> NEW; one line for a spec without ``=``, an empty
    OLD, an OLD given twice, a NEW equal to its OLD, or an OLD or NEW that is or holds (as a whole word)
    a scratchpad tag's name: the system prompt would ask for tags that the stop string, parser and
    prefill do not use (whether OLD occurs is checked against the text)."""
    from steerlab.harness.scenario import occurs

    rename: dict[str, str] = {}
    for spec in specs or []:
        old, eq, new = spec.partition("=")
        if not eq:
            raise ConfigError(f"{flag} {spec!r}: write OLD=NEW, e.g. {flag} Anthropic=OpenAI")
        if not old.strip():
            raise ConfigError(f"{flag} {spec!r}: OLD is empty; write OLD=NEW, e.g. {flag} Anthropic=OpenAI")
        if old in rename:
            raise ConfigError(f"{flag} {old}: given twice ({old}={rename[old]} and {spec}); rename each name once")
        if new == old:
            raise ConfigError(f"{flag} {spec!r}: NEW equals OLD, so it would change nothing")
        for side in (old, new):
            if tag := next((t for t in PROTOCOL_TAGS if occurs(t, side)), None):
                raise ConfigError(f"{flag} {spec!r}: {tag} is a tag of the scratchpad protocol (the stop string, "
                                  "parser and prefill keep it); rename names, not tags")  # fmt: skip
        rename[old] = new
    return rename


@dataclass(frozen=True)
class AFOptions:
    """The options ``eval`` and ``prompt-eval`` share, as given on the command line."""

    dataset: str
    out_dir: Path
    model: str
    seeds: str
    system_prompt: Path | None
    tier_literal: str
    prefill: str
    max_turns: int
    limit: int | None
    max_new_tokens: int
    temperature: float
    batch_size: int
    judge: str
    judge_model: str | None
    judge_batch: bool
    rubric: Path
    lora: str | None
    user_template: str = "steerlab"
    chat_date: str | None = None
    run_seed: int = 0
    rename: tuple[str, ...] = ()  # --rename OLD=NEW specs

    def config(self, conditions: str, **extra: Any) -> SweepConfig:
        """The run config of an alignment-faking evaluation (``extra``: vectors and multipliers for
        ``eval``, claims for ``prompt-eval``)."""
        from steerlab.runs import SweepConfig

        if self.tier_literal not in ("True", "true"):
            raise ConfigError(f"--tier-literal {self.tier_literal!r}: use True or true")
        if self.judge not in ("none", "anthropic", "local"):
            raise ConfigError(f"--judge {self.judge!r}: use none, anthropic or local")
        judge_cfg = None
        if self.judge != "none":
            judge_cfg = {"backend": self.judge, "model": self.judge_model, "batch": self.judge_batch,
                         "rubric": str(self.rubric)}  # fmt: skip
        tier = self.tier_literal
        return validated(
            SweepConfig,
            model=self.model, scenario="alignment_faking",
            conditions=[c.strip() for c in conditions.split(",") if c.strip()],
            alignment_faking={"system_prompt": str(self.system_prompt) if self.system_prompt else None,
                              "free_tier_true": tier, "free_tier_false": "False" if tier == "True" else "false",
                              "prefill": self.prefill, "max_turns": self.max_turns,
                              "user_template": self.user_template},
            prompts=self.dataset, limit=self.limit, seeds=parse_ints(self.seeds, "--seeds"),
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, batch_size=self.batch_size,
            judge=judge_cfg, out=str(self.out_dir), lora=self.lora,
            **({"chat_date": self.chat_date} if self.chat_date else {}), seed=self.run_seed,
            rename=parse_rename(list(self.rename)), **extra,
        )  # fmt: skip
