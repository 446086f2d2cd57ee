"""Extraction throughput: the full caching path against a bare forward pass, in one run.

    python benchmarks/bench_extract.py                       # tiny model and SmolLM2 on CPU
    python benchmarks/bench_extract.py --models llama8b-random --device cuda --dtype bfloat16

*bare*: what any forward pass over the pairs must do: render each side with the chat template,
tokenise in batches of the same size with padding, and run the decoder stack
(``model.base_model``: every block and the final norm, no LM head, no hooks). *cached*: :func:`steerlab.extract.extract`
end to end on the same pairs and batch size: tokenisation and locus mapping, forward with
pooling hooks, HDF5 writes with progress records, and the final rename. The two modes alternate
within each repeat; the result reports the ratio of medians and the median of the per-repeat
ratios (back-to-back pairs cancel the slow drift of a shared machine).

``llama8b-random`` is a randomly initialised model of Llama-3.1-8B's shape (no weights can be
downloaded where the benchmarks run), for GPU runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from record import write_record  # benchmarks/record.py

from steerlab.extract import encode_pairs, extract
from steerlab.loci import Locus
from steerlab.models import LoadedModel, load_model, prepare
from steerlab.pairs import SIDES, load_pairs
from steerlab.testing import tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parent.parent


def build(name: str, device: str, dtype: str) -> LoadedModel:
    if name == "tiny":
        return tiny_model()
    if name == "smollm2":
        return load_model("smollm2", device=device, dtype=dtype)
    if name == "llama8b-random":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=8192,
            rope_theta=500000.0,
        )
        torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype, torch.float32)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(torch_dtype).eval()
        return prepare(model, tiny_tokenizer(), source="llama8b-random")
    raise SystemExit(f"unknown model {name!r}: use tiny, smollm2 or llama8b-random")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(name: str, args: argparse.Namespace) -> dict:
    loaded = build(name, args.device, args.dtype)
    pairs = load_pairs(args.pairs)[: args.n_pairs]
    locus = Locus(args.locus)
    tokenizer, template = loaded.tokenizer, loaded.chat_template
    tokens = sum(len(s.input_ids) for pair in encode_pairs(loaded, pairs, locus) for s in pair)
    base = loaded.model.base_model
    step = 2 * args.batch_size

    @torch.inference_mode()
    def bare() -> None:
        texts = [
            tokenizer.apply_chat_template(pair.chat(side), chat_template=template, tokenize=False)
            for pair in pairs
            for side in SIDES
        ]
        for i in range(0, len(texts), step):
            batch = tokenizer(texts[i : i + step], add_special_tokens=False, padding=True, return_tensors="pt")
            base(**batch.to(loaded.device), use_cache=False)

    def cached(path: Path) -> None:
        extract(loaded, pairs, path, locus=locus, batch_size=args.batch_size, overwrite=True, progress=False)

    times: dict[str, list[float]] = {"bare": [], "cached": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        bare(), cached(path)  # warm-up
        for _ in range(args.repeats):
            for mode in ("bare", "cached"):
                sync(loaded.device)
                t0 = time.perf_counter()
                bare() if mode == "bare" else cached(path)
                sync(loaded.device)
                times[mode].append(time.perf_counter() - t0)
    bare_s, cached_s = statistics.median(times["bare"]), statistics.median(times["cached"])
    # Each repeat runs the two modes back to back, so their ratio cancels slow drift.
    paired = statistics.median(c / b for b, c in zip(times["bare"], times["cached"], strict=True))
    return {
        "model": name,
        "n_layers": loaded.n_layers,
        "d_model": loaded.d_model,
        "n_pairs": len(pairs),
        "sequences": 2 * len(pairs),
        "tokens": tokens,
        "batch_size_pairs": args.batch_size,
        "bare_s_median": round(bare_s, 4),
        "cached_s_median": round(cached_s, 4),
        "bare_tokens_per_s": round(tokens / bare_s, 1),
        "cached_tokens_per_s": round(tokens / cached_s, 1),
        "overhead_pct": round(100 * (cached_s / bare_s - 1), 2),
        "overhead_pct_paired_median": round(100 * (paired - 1), 2),
        "raw_s": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--pairs", type=Path, default=REPO / "configs/pairs/researcher_expectations.jsonl")
    parser.add_argument("--n-pairs", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--locus", default="scratchpad_mean")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/extract_throughput_cpu.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    for name in args.models.split(","):
        result = run(name, args)
        print(
            f"{name}: bare {result['bare_tokens_per_s']} tok/s, cached {result['cached_tokens_per_s']} tok/s, "
            f"overhead {result['overhead_pct']}% (paired median {result['overhead_pct_paired_median']}%)"
        )
        results.append(result)
    write_record(args.out, "extract_throughput", "caching costs at most 10% over the bare forward pass", args, results)


if __name__ == "__main__":
    main()
