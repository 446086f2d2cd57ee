"""SDF training throughput: LoRA tokens/s with and without packing (sdf_addon.train).

    python benchmarks/bench_sdf_train.py                                   # SmolLM2 on CPU
    python benchmarks/bench_sdf_train.py --models smollm2-random,llama8b-random --device cuda \\
        --block-length 4096 --steps 6 --out benchmarks/results/sdf_train_h100.json

The corpus is built from the demo pair sets' scratchpads, joined into documents of 150-1500
tokens (seeded), so both modes train on the same text. Each run is ``sdf_addon.train.train`` with
the paper's adapter (rank 64, alpha 128, all linear layers), gradient checkpointing, per-device
batch 1 and gradient accumulation 4; throughput is the tokens of the steps after the first
(warm-up) divided by their wall time, from ``train_log.jsonl``. Without packing a row is one
document, so a step holds fewer tokens and the per-step costs weigh more. The modes alternate in
every repeat. ``smollm2-random`` and ``llama8b-random`` are randomly initialised models of
SmolLM2-135M's and Llama-3.1-8B's shapes (nothing can be downloaded on the GPU machines), with
steerlab's small test tokenizer.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_record  # noqa: E402

from sdf_addon.train import TrainConfig, train  # noqa: E402
from steerlab.testing import tiny_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHAPES = {
    "smollm2-random": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, vocab_size=49152),
    "llama8b-random": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}  # fmt: skip


def model_dir(name: str, dtype: str, root: Path) -> str:
    """A model path for ``train``: smollm2 itself, or a random model of a real shape saved once."""
    if name == "smollm2":
        return "smollm2"
    from transformers import LlamaConfig, LlamaForCausalLM

    path = root / name
    if not path.exists():
        config = LlamaConfig(**SHAPES[name], max_position_embeddings=8192, tie_word_embeddings=False)
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM(config).to({"bfloat16": torch.bfloat16}.get(dtype, torch.float32))
        model.save_pretrained(path)
        tiny_tokenizer().save_pretrained(path)
        del model
    return str(path)


def corpus(path: Path, tokenizer_name: str, n_docs: int, seed: int = 0) -> Path:
    texts = []
    for name in ("researcher_expectations", "retraining_consequences"):
        for line in (REPO / f"configs/pairs/{name}.jsonl").read_text().splitlines():
            pair = json.loads(line)
            texts += [pair[side][-1]["content"] for side in ("positive", "negative")]
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):  # ~150-1500 tokens: 5-50 scratchpads of ~30 tokens
        docs.append("\n\n".join(rng.sample(texts, rng.randint(5, 50))))
    path.write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    return path


def throughput(out: Path) -> tuple[float, int]:
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    tokens = log[-1]["tokens"] - log[0]["tokens"]
    return tokens / (log[-1]["time"] - log[0]["time"]), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2")
    parser.add_argument("--block-length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-docs", type=int, default=400)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/sdf_train_cpu.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models.split(","):
            path = model_dir(name, args.dtype, root)
            docs = corpus(root / f"{name}.jsonl", path, args.n_docs)
            runs: dict[str, list[float]] = {"packed": [], "unpacked": []}
            tokens: dict[str, int] = {}
            for r in range(args.repeats):
                for mode in runs:
                    cfg = TrainConfig(block_length=args.block_length, max_steps=args.steps,
                                      gradient_accumulation=args.accumulation, packing=mode == "packed",
                                      save_steps=10_000, bf16=args.dtype == "bfloat16" or None)  # fmt: skip
                    out = root / f"{name}-{mode}-{r}"
                    train(cfg, docs, path, out, dtype=args.dtype, progress=False)
                    tps, tokens[mode] = throughput(out)
                    runs[mode].append(tps)
                    print(name, mode, r, f"{tps:.1f} tokens/s", flush=True)
            med = {m: statistics.median(v) for m, v in runs.items()}
            results.append({
                "model": name, "block_length": args.block_length, "steps_timed": args.steps - 1,
                "tokens_timed": tokens, "tokens_per_s": {m: [round(x, 1) for x in v] for m, v in runs.items()},
                "median_tokens_per_s": {m: round(v, 1) for m, v in med.items()},
                "packed_over_unpacked": round(med["packed"] / med["unpacked"], 2),
            })  # fmt: skip
    write_record(args.out, "sdf_train", "throughput with and without packing (no target)", args, results)


if __name__ == "__main__":
    main()
