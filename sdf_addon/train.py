"""LoRA fine-tuning on raw documents (peft + the transformers Trainer, so accelerate runs it).

Documents are raw text, no chat template: each is tokenised, given BOS (when the tokenizer has one
distinct from EOS) and EOS, and, with packing, concatenated and cut into blocks of exactly
``block_length`` tokens (the remainder shorter than a block is dropped and reported; attention is
not masked between the documents of a block, as in pretraining). Without packing each document is
one row, truncated to ``block_length`` and padded in its batch (padding is masked from the loss).
Blocks are shuffled once with the seed and then read in order, so runs on 1 or N processes see the
same samples in each optimizer step.

Defaults (``configs/sdf/train.yaml``): rank 64, alpha 128, dropout 0.05, all linear layers, AdamW,
cosine schedule with 5% warmup, 3 epochs, per-device batch 1, gradient accumulation 8, blocks of
4096, bf16 where supported, gradient checkpointing.

Precision (:func:`training_dtype`): ``bf16: null`` (the default) means bf16 on a CUDA device that
supports it and float32 elsewhere (CPU included); ``bf16: true``/``false`` forces it, and an explicit
``--dtype`` wins over both. The base is loaded in that dtype (not float32 and autocast), and the
dtype is recorded in the stack file so ``sdf merge`` writes the merged model in it (:func:`merge`).
Under ``accelerate launch`` with FSDP and ``fsdp_cpu_ram_efficient_loading: true`` (the shipped
``accelerate_fsdp.yaml``) the distributed state is set up before the weights load, so only local
rank 0 reads them; the other ranks build the model on the meta device and receive the weights
when FSDP wraps it (:func:`load_base`). A run resumes from the newest checkpoint by step
(:func:`resume_checkpoint`). One process or many: ``accelerate launch``
(``configs/sdf/accelerate_fsdp.yaml`` for FSDP full-shard over GPUs and nodes) or ``torchrun``
start the same ``sdf train`` command; the Trainer does the distribution, checkpoints
(``OUT/checkpoints``, resumed after a kill) and the progress bar. ``OUT/train_log.jsonl`` holds the
loss, learning rate and tokens seen per logged step.

Round 2 on top of an organism: ``--on ROUND1_ADAPTER`` merges that adapter into the base before a
fresh adapter is attached. ``OUT/adapter/steerlab_stack.json`` records the base model and its
fingerprint, the adapters beneath (``parents``), the universe, the corpus hash and the settings,
so :func:`steerlab.models.load_model` with ``lora=OUT/adapter`` rebuilds the same stack and
refuses a base model with another fingerprint.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from steerlab.config import load_yaml
from steerlab.errors import ConfigError
from steerlab.fileio import atomic_write_text, file_hash, read_jsonl, shipped
from steerlab.models import STACK_FILE, ModelLoadError

DEFAULT_CONFIG = Path("configs/sdf/train.yaml")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(default=64, ge=1)
    alpha: float = 128
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = Field(default=1e-4, gt=0)
    weight_decay: float = 0.0
    epochs: float = Field(default=3, gt=0)
    per_device_batch_size: int = Field(default=1, ge=1)
    gradient_accumulation: int = Field(default=8, ge=1)
    block_length: int = Field(default=4096, ge=8)
    packing: bool = True
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    scheduler: str = "cosine"
    bf16: bool | None = None  # None: where the device supports it
    gradient_checkpointing: bool = True
    seed: int = 0
    save_steps: int = Field(default=50, ge=1)
    logging_steps: int = Field(default=1, ge=1)
    max_steps: int = -1  # > 0 overrides epochs (tests, smoke runs)


def load_train_config(path: Path | None = None, **overrides: Any) -> TrainConfig:
    if path is None and not shipped(DEFAULT_CONFIG).is_file():
        from steerlab.cli.common import validated as _validated

        return _validated(TrainConfig, **{k: v for k, v in overrides.items() if v is not None})
    return load_yaml(path or DEFAULT_CONFIG, TrainConfig, "training config", overrides)


def _bos_eos(tokenizer) -> tuple[list[int], list[int]]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token; documents cannot be separated")
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None and bos != eos else []), [eos]


def pack(texts: list[str], tokenizer, block_length: int) -> tuple[list[list[int]], int]:
    """Documents (BOS + text + EOS, concatenated) cut into blocks of exactly ``block_length`` tokens;
    also the number of trailing tokens dropped."""
    bos, eos = _bos_eos(tokenizer)
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += bos + ids + eos
    n = len(stream) // block_length
    return [stream[i * block_length : (i + 1) * block_length] for i in range(n)], len(stream) - n * block_length


def unpacked(texts: list[str], tokenizer, block_length: int) -> list[list[int]]:
    """One row per document (BOS + text + EOS), truncated to ``block_length``."""
    bos, eos = _bos_eos(tokenizer)
    return [(bos + ids + eos)[:block_length] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def collate(pad_id: int):
    def fn(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [batch, seq]
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    return fn


def read_corpus(path: Path, allow_mixed_directness: bool = False) -> tuple[list[str], dict[str, Any]]:
    """The documents of a corpus file (JSONL with ``content``) and what they say about their universe and
    directness (``directness``: the one level of its documents, None when they record none, ``mixed``
    when they mix levels, which is refused unless ``allow_mixed_directness``)."""
    if not Path(path).is_file():
        raise ConfigError(f"corpus file {path} does not exist")
    rows = read_jsonl(path)
    texts = [r["content"] for r in rows if r.get("content", "").strip()]
    if not texts:
        raise ConfigError(f"corpus {path} has no documents (a JSONL file with a 'content' field per line)")
    universes = sorted({r.get("universe_id") for r in rows if r.get("universe_id")})
    docs = [r for r in rows if r.get("content", "").strip()]
    levels = sorted({str(r.get("directness")) for r in docs if r.get("directness") is not None})
    if len(levels) > 1 or (levels and any(r.get("directness") is None for r in docs)):
        counts = {lv: sum(r.get("directness") == lv for r in docs) for lv in levels}
        if not allow_mixed_directness:
            missing = sum(r.get("directness") is None for r in docs)
            raise ConfigError(
                f"corpus {path} mixes directness levels ({', '.join(f'{n} {lv}' for lv, n in counts.items())}"
                + (f", {missing} unrecorded" if missing else "")
                + "); train on one level, or pass --allow-mixed-directness"
            )
        directness = "mixed"
    else:
        directness = levels[0] if levels else None
    renames = {json.dumps(r.get("rename") or {}, sort_keys=True) for r in docs}
    if len(renames) > 1:
        raise ConfigError(f"corpus {path} mixes documents generated with different --rename "
                          f"({', '.join(sorted(renames))}); train on one")  # fmt: skip
    rename = json.loads(renames.pop())
    return texts, {"universes": universes, "n_docs": len(texts), "hash": file_hash(Path(path)),
                   "directness": directness, "directness_levels": levels, "rename": rename}  # fmt: skip


def resume_checkpoint(checkpoints: Path) -> str | None:
    """The checkpoint a run resumes from: the highest step among ``checkpoint-N`` directories (not the
    last in string order, which puts checkpoint-50 after checkpoint-100), as the Trainer reads them."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoints)) if Path(checkpoints).is_dir() else None


def bf16_supported() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def training_dtype(cfg: TrainConfig, dtype: str = "auto") -> str:
    """The dtype the base is loaded and trained in: ``dtype`` when given (not ``auto``); else bfloat16
    when ``cfg.bf16`` is true, or when it is null and the device is CUDA with bf16; else float32."""
    if dtype != "auto":
        return dtype
    bf16 = cfg.bf16 if cfg.bf16 is not None else bf16_supported()
    return "bfloat16" if bf16 else "float32"


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def efficient_loading() -> bool:
    """Whether accelerate runs FSDP with ``fsdp_cpu_ram_efficient_loading`` (it sets these variables)."""
    return _flag("ACCELERATE_USE_FSDP") and _flag("FSDP_CPU_RAM_EFFICIENT_LOADING")


def load_base(base_model: str, dtype: str, backend: str | None = None) -> tuple[Any, Any, dict | None]:
    """The base (model, tokenizer, fingerprint) for training, in ``dtype``, on the CPU.

    The distributed state is set up first, so that under FSDP with CPU-RAM-efficient loading only
    local rank 0 reads the weights; the others get the structure on the meta device (no fingerprint:
    only rank 0 writes the stack file) and receive the weights from rank 0 when FSDP wraps the model.
    """
    from accelerate import PartialState

    from steerlab.models import load_model

    state = PartialState(backend=backend) if backend else PartialState()
    if efficient_loading() and not state.is_local_main_process:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from steerlab.model_files import resolve_source

        where, gguf_file = resolve_source(base_model)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=getattr(torch, dtype), low_cpu_mem_usage=True,
                                                     gguf_file=gguf_file)  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=gguf_file)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer, None
    base = load_model(base_model, device="cpu", dtype=dtype)  # the Trainer moves it to its device
    return base.model, base.tokenizer, base.fingerprint.to_dict()


def merge_dtype(adapter: Path, base_model: str | None = None) -> str:
    """The dtype ``sdf merge`` writes: the one training recorded in the stack file; for an adapter
    from before that was recorded, the base's own ``torch_dtype``; else float32."""
    stack_path = Path(adapter) / STACK_FILE
    stack = json.loads(stack_path.read_text()) if stack_path.is_file() else {}
    if stack.get("dtype"):
        return str(stack["dtype"])
    name = base_model or stack.get("base_model")
    if name:
        try:
            from transformers import AutoConfig

            from steerlab.model_files import resolve_source

            where, gguf_file = resolve_source(name)
            config = AutoConfig.from_pretrained(where, gguf_file=gguf_file)
            found = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            if found is not None:
                found = str(found).removeprefix("torch.")
                if found in ("float32", "bfloat16", "float16"):
                    return found
        except (OSError, ValueError, ModelLoadError):
            pass
    return "float32"


def merge(adapter: Path, out_dir: Path, base_model: str | None = None, dtype: str = "auto") -> str:
    """Merge an adapter's whole stack into its base and save it (safetensors + tokenizer) in the
    training dtype (``dtype`` overrides it); returns the dtype written. The base is loaded in that
    dtype, so a bf16 run never holds a float32 copy of the full model."""
    from sdf_addon.evaluate import read_stack
    from steerlab.models import load_model

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} exists and is not empty; choose a new --out")
    base_model = base_model or read_stack(adapter)["base_model"]
    dtype = merge_dtype(adapter, base_model) if dtype == "auto" else dtype
    loaded = load_model(base_model, device="cpu", dtype=dtype, lora=str(adapter))
    loaded.model.to(getattr(torch, dtype))
    loaded.model.config.dtype = getattr(torch, dtype)
    loaded.model.save_pretrained(out_dir)
    loaded.tokenizer.save_pretrained(out_dir)
    return dtype


class _Log:
    """A Trainer callback: loss, learning rate, tokens seen and wall time per logged step into train_log.jsonl."""

    def __new__(cls, path: Path, tokens_seen):
        from transformers import TrainerCallback

        class Log(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.is_world_process_zero and logs and "loss" in logs:
                    row = {"step": state.global_step, "loss": logs["loss"], "learning_rate": logs.get("learning_rate"),
                           "tokens": tokens_seen(state.global_step), "time": time.time()}  # fmt: skip
                    with open(path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")

        return Log()


def train(
    cfg: TrainConfig, corpus: Path, base_model: str, out_dir: Path, parent: str | None = None, dtype: str = "auto",
    progress: bool = True, allow_mixed_directness: bool = False,
) -> Path:  # fmt: skip
    """Train (or resume) a LoRA adapter on ``corpus``; returns ``OUT/adapter``."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed

    from sdf_addon.universe import load_universe, renamed

    out_dir = Path(out_dir)
    if (out_dir / "adapter" / STACK_FILE).is_file():
        raise ConfigError(f"{out_dir}/adapter is a finished adapter; choose a new --out")
    texts, corpus_meta = read_corpus(corpus, allow_mixed_directness)
    universe = None  # the corpus's one universe, renamed as its documents are (the belief check asks in their names)
    if len(corpus_meta["universes"]) == 1:
        try:
            universe = load_universe(corpus_meta["universes"][0])
        except ConfigError:
            universe = None
    if universe is not None:
        universe = renamed(universe, corpus_meta["rename"])
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dtype = training_dtype(cfg, dtype)
    model, tok, base_fp = load_base(base_model, dtype, backend="gloo" if (world > 1 and not cuda) else None)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and cfg.block_length > context:
        raise ConfigError(f"block length {cfg.block_length} is longer than the model's context ({context} tokens); "
                          f"set block_length <= {context}")  # fmt: skip
    if parent is not None and base_fp is not None:  # other ranks: the merged weights come from rank 0
        from steerlab.models import merge_lora

        model = merge_lora(model, parent)
    random.Random(cfg.seed).shuffle(texts)
    if cfg.packing:
        blocks, dropped = pack(texts, tok, cfg.block_length)
        if not blocks:
            raise ConfigError(f"the corpus holds fewer tokens than one block of {cfg.block_length}; lower block_length")
    else:
        blocks, dropped = unpacked(texts, tok, cfg.block_length), 0
    dataset = [{"input_ids": b} for b in blocks]
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules,
                      task_type="CAUSAL_LM")  # fmt: skip
    set_seed(cfg.seed)  # the adapter's initialisation: the same on every process and every run
    model = get_peft_model(model, lora)
    bf16 = dtype == "bfloat16" or (cfg.bf16 if cfg.bf16 is not None else bf16_supported())  # autocast too
    args = TrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio, optim="adamw_torch", bf16=bf16,
        gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, data_seed=cfg.seed,
        train_sampling_strategy="sequential", report_to=[], use_cpu=not cuda, disable_tqdm=not progress,
        remove_unused_columns=False, ddp_backend="gloo" if (world > 1 and not cuda) else None,
    )  # fmt: skip
    rows_per_step = cfg.per_device_batch_size * cfg.gradient_accumulation * world
    lengths = [len(b) for b in blocks]
    cumulative = [0]
    for n in lengths:
        cumulative.append(cumulative[-1] + n)

    def tokens_seen(steps: int) -> int:  # rows are read in order, epoch after epoch
        full, part = divmod(steps * rows_per_step, len(lengths))
        return full * cumulative[-1] + cumulative[part]

    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate(tok.pad_token_id),
                      callbacks=[_Log(out_dir / "train_log.jsonl", tokens_seen)])  # fmt: skip
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(out_dir / "checkpoints"))
    adapter = out_dir / "adapter"
    if trainer.is_fsdp_enabled:  # gather the shards into one adapter file
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(adapter))  # every process takes part (FSDP); rank 0 writes
    if trainer.is_world_process_zero():
        (adapter / "training_args.bin").unlink(missing_ok=True)  # a pickle; the settings are in the stack file
        stack = {
            "base_model": base_model, "base_fingerprint": base_fp,
            "parents": [str(Path(parent).resolve())] if parent else [],
            "universe": universe.model_dump() if universe else None, "corpus": {"path": str(corpus), **corpus_meta},
            "directness": corpus_meta["directness"],  # the corpus's level; "mixed" (allowed); None: unrecorded
            "rename": corpus_meta["rename"],  # OLD -> NEW of the corpus's documents (and of "universe"); {}: none
            "train_config": cfg.model_dump(), "dtype": dtype, "blocks": len(blocks), "tokens_dropped": dropped,
            "train_loss": result.training_loss, "steps": result.global_step,
            "tokens_trained": tokens_seen(result.global_step), "train_runtime_s": result.metrics.get("train_runtime"),
        }  # fmt: skip
        atomic_write_text(adapter / STACK_FILE, json.dumps(stack, indent=1) + "\n")
    return adapter
