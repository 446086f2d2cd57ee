"""Extraction throughput: the full caching path against a bare forward pass, in one run.

    python benchmarks/bench_extract.py                       # tiny model and SmolLM2 on CPU
    python benchmarks/bench_extract.py --models llama8b-random --device cuda --dtype bfloat16

*bare*: what any forward pass over the pairs must do: render each side with the chat template,
tokenise in batches of the same size with padding, and run the decoder stack
(``model.base_model``: every block and the final norm, no LM head, no hooks). *cached*: :func:`steerlab.extract.extract`
end to end on the same pairs and batch size: tokenisation and locus mapping, forward with
pooling hooks, HDF5 writes with progress records, and the final rename. The two modes alternate
within each repeat (in reversed order every other repeat); the result reports the ratio of
medians and the median of the per-repeat ratios (back-to-back pairs cancel the slow drift of a shared machine).

The integrity checksums (a CRC-32 per row, see :mod:`steerlab.cache`) are measured in the same
run three ways: *unchecked* is *cached* with the checksum function replaced by zeros (the
paired ratio cached / unchecked is the write-side cost), the seconds spent inside the checksum
function during *cached* (its share of the extraction), and a verified ``ActivationCache.load()``
against a raw h5py read of the same dataset (the read-side cost). ``--modes`` picks the timed
modes (``cached,unchecked`` skips the bare pass, for a short run on a slow model).

``llama8b-random`` is a randomly initialised model of Llama-3.1-8B's shape (no weights can be
downloaded where the benchmarks run), for GPU runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import h5py
import numpy as np
import torch
from record import write_record  # benchmarks/record.py

import steerlab.cache
from steerlab.cache import ActivationCache
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

    real_checksums = steerlab.cache.row_checksums
    checksum_s = [0.0]

    def timed_checksums(block):
        t0 = time.perf_counter()
        try:
            return real_checksums(block)
        finally:
            checksum_s[0] += time.perf_counter() - t0

    def zero_checksums(block):
        return np.zeros(len(block), dtype=np.uint32)

    modes = args.modes.split(",")
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    share: list[float] = []  # per cached repeat: seconds inside the checksum function / the extraction
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        if "bare" in modes:
            bare()
        cached(path)  # warm-up
        for repeat in range(args.repeats):
            for mode in modes if repeat % 2 == 0 else modes[::-1]:  # alternate the order: no mode always runs first
                sync(loaded.device)
                checksum_s[0] = 0.0
                t0 = time.perf_counter()
                if mode == "bare":
                    bare()
                else:
                    with mock.patch.object(
                        steerlab.cache, "row_checksums", timed_checksums if mode == "cached" else zero_checksums
                    ):
                        cached(path)
                sync(loaded.device)
                times[mode].append(time.perf_counter() - t0)
                if mode == "cached":
                    share.append(checksum_s[0] / times[mode][-1])
        cached(path)  # a verifiable file for the read side
        read_s = {"verified": [], "raw": []}
        cache = ActivationCache.open(path)
        for repeat in range(max(21, args.repeats)):
            for mode in ("verified", "raw") if repeat % 2 == 0 else ("raw", "verified"):
                t0 = time.perf_counter()
                if mode == "verified":
                    data = cache.load()
                else:
                    with h5py.File(path, "r") as f:
                        data = f["activations"][...]
                read_s[mode].append(time.perf_counter() - t0)
        n_bytes = data.nbytes
        crc_s = min(timeit(lambda: real_checksums(data)) for _ in range(5))
    result = {
        "model": name,
        "n_layers": loaded.n_layers,
        "d_model": loaded.d_model,
        "n_pairs": len(pairs),
        "sequences": 2 * len(pairs),
        "tokens": tokens,
        "batch_size_pairs": args.batch_size,
        "cache_bytes_activations": n_bytes,
    }
    med = {mode: statistics.median(t) for mode, t in times.items()}
    if "bare" in med:
        # Each repeat runs the modes back to back, so their ratio cancels slow drift.
        paired = statistics.median(c / b for b, c in zip(times["bare"], times["cached"], strict=True))
        result.update(
            bare_s_median=round(med["bare"], 4),
            bare_tokens_per_s=round(tokens / med["bare"], 1),
            overhead_pct=round(100 * (med["cached"] / med["bare"] - 1), 2),
            overhead_pct_paired_median=round(100 * (paired - 1), 2),
        )
    result.update(cached_s_median=round(med["cached"], 4), cached_tokens_per_s=round(tokens / med["cached"], 1))
    if "unchecked" in med:
        paired = statistics.median(c / u for u, c in zip(times["unchecked"], times["cached"], strict=True))
        result.update(
            unchecked_s_median=round(med["unchecked"], 4),
            checksum_write_overhead_pct_paired_median=round(100 * (paired - 1), 2),
        )
    verified, raw = statistics.median(read_s["verified"]), statistics.median(read_s["raw"])
    result.update(
        checksum_share_of_extract_pct_median=round(100 * statistics.median(share), 3),
        crc32_gb_per_s=round(n_bytes / crc_s / 1e9, 2),
        read_raw_s_median=round(raw, 5),
        read_verified_s_median=round(verified, 5),
        checksum_read_overhead_pct=round(100 * (verified / raw - 1), 1),
        raw_s={**times, **{f"read_{k}": v for k, v in read_s.items()}},
    )
    return result


def timeit(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--pairs", type=Path, default=REPO / "configs/pairs/researcher_expectations.jsonl")
    parser.add_argument("--n-pairs", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--locus", default="scratchpad_mean")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", default="bare,cached,unchecked", help="timed modes, alternating per repeat")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/extract_throughput_cpu.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    for name in args.models.split(","):
        result = run(name, args)
        if "bare_tokens_per_s" in result:
            print(
                f"{name}: bare {result['bare_tokens_per_s']} tok/s, cached {result['cached_tokens_per_s']} tok/s, "
                f"overhead {result['overhead_pct']}% (paired median {result['overhead_pct_paired_median']}%)"
            )
        print(
            f"{name}: checksums {result['checksum_share_of_extract_pct_median']}% of the extraction, write overhead "
            f"(paired median) {result.get('checksum_write_overhead_pct_paired_median')}%, CRC-32 "
            f"{result['crc32_gb_per_s']} GB/s, verified read {result['checksum_read_overhead_pct']}% over raw"
        )
        results.append(result)
    write_record(
        args.out, "extract_throughput",
        "caching costs at most 10% over the bare forward pass; the integrity checksums a small part of that",
        args, results,
    )  # fmt: skip


if __name__ == "__main__":
    main()
