"""HF backend decoding: the compiled path vs the eager one, the decode step vs the weight-read bound, and the
peak memory of a long-prompt prefill with and without ``logits_to_keep``. Ratios within one run.

    python benchmarks/bench_decode.py                                   # SmolLM2 on CPU
    python benchmarks/bench_decode.py --models llama8b-random --device cuda --dtype bfloat16 \
        --out benchmarks/results/decode_gpu.json                        # on a GPU (random weights, real shape)

- step: milliseconds per decode step of ``HFBackend.generate`` (steered at 8 layers, greedy, EOS ignored), eager
  and compiled, at batch 1 and 32: the difference between a run of ``--long`` and one of ``--short`` new tokens,
  divided by the tokens between them, so the prefill and the call's fixed costs cancel. On a GPU it is set beside
  the weight-read bound: the bytes of the weights over the device's copy bandwidth (measured here: one large
  device-to-device copy reads and writes each byte once). Target on a GPU: within 1.5x of the bound.
- prefill: peak memory of one prefill (``HFBackend.generate`` with one new token) of ``--prefill-batch`` prompts of
  ``--prefill-tokens`` tokens on a model with a 128k vocabulary, computing logits at the last position only
  (``logits_to_keep=1``, what the backend does) vs at every position (what it did before). On CUDA: the allocator's
  peak above the model; on CPU: the process's resident memory, sampled every millisecond, above what it was before
  the call, each mode in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from bench_extract import build  # benchmarks/bench_extract.py: tiny, smollm2, llama8b-random
from bench_steer import middle_layers, random_vector  # benchmarks/bench_steer.py
from record import write_record  # benchmarks/record.py

from steerlab.backends.base import Request, Sampling
from steerlab.backends.hf import HFBackend
from steerlab.generate import as_chat, load_prompts
from steerlab.steer import SteeringSetting

REPO = Path(__file__).resolve().parent.parent
PROMPTS = REPO / "configs/prompts/everyday.txt"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(backend: HFBackend, requests: list[Request]) -> float:
    sync(backend.loaded.device)
    t0 = time.perf_counter()
    backend.generate(requests)
    sync(backend.loaded.device)
    return time.perf_counter() - t0


def copy_bandwidth(device: torch.device, gib: float = 2.0) -> float:
    """Bytes per second one device-to-device copy moves (each byte read once and written once)."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / min(times)


def step_times(loaded, args) -> list[dict]:
    prompts = [as_chat(p[-1]["content"]) for p in load_prompts(PROMPTS)]
    layers = middle_layers(loaded.n_layers, 8)
    setting = SteeringSetting(random_vector(loaded, layers, 0), 1.0)
    weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    bandwidth = copy_bandwidth(loaded.device) if loaded.device.type == "cuda" else None
    out = []
    for batch in (1, 32):
        backends = {
            "eager": HFBackend(loaded, batch_size=batch, compile=False),
            "compiled": HFBackend(loaded, batch_size=batch, compile=True),
        }
        for backend in backends.values():
            backend.eos_ids = set()  # every row runs its full budget

        def requests(n: int, batch: int = batch) -> list[Request]:
            sampling = Sampling(max_new_tokens=n)
            return [Request(prompts[i % len(prompts)], sampling, setting, id=str(i)) for i in range(batch)]

        short, long = requests(args.short), requests(args.long)
        for backend in backends.values():  # warm-up: compile, allocate the static cache
            backend.generate(long)
        per_step: dict[str, list[float]] = {m: [] for m in backends}
        for _ in range(args.repeats):
            for mode, backend in backends.items():
                per_step[mode].append((timed(backend, long) - timed(backend, short)) / (args.long - args.short))
        ms = {m: round(1e3 * statistics.median(v), 3) for m, v in per_step.items()}
        paired = statistics.median(e / c for e, c in zip(per_step["eager"], per_step["compiled"], strict=True))
        entry = {
            "batch": batch,
            "ms_per_step": ms,
            "speedup_compiled_paired_median": round(paired, 2),
            "tokens_per_s": {m: round(batch * 1e3 / t, 1) for m, t in ms.items()},
        }
        if bandwidth is not None:
            bound_ms = 1e3 * weight_bytes / bandwidth
            entry["weight_read_bound_ms"] = round(bound_ms, 3)
            entry["x_bound"] = {m: round(t / bound_ms, 2) for m, t in ms.items()}
        out.append(entry)
        print(loaded.source, "step", entry, flush=True)
    return out


def prefill_peak(args, keep: bool) -> int:
    """Peak bytes above the loaded model of one prefill (in this process)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from steerlab.models import prepare
    from steerlab.testing import tiny_tokenizer

    device = torch.device(args.device)
    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=128256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).eval()
    loaded = prepare(model, tok, "wide-vocab")
    backend = HFBackend(loaded, batch_size=args.prefill_batch, compile=False)
    if not keep:
        backend._keep_kw = None  # the forward computes logits at every position, as before logits_to_keep
    words = "the cat sat on a mat while graders watched".split()
    text = " ".join(words[i % len(words)] for i in range(args.prefill_tokens))
    requests = [
        Request(as_chat(f"{i} {text}"), Sampling(max_new_tokens=1), id=str(i)) for i in range(args.prefill_batch)
    ]
    n_tokens = len(backend.prompt_ids(requests[:1])[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        backend.generate(requests)
        return torch.cuda.max_memory_allocated() - base, n_tokens
    # The process's resident memory, sampled every millisecond while the prefill runs (ru_maxrss would report the
    # high-water mark of loading the model instead).
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page

    base, peak, running = rss(), [0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        backend.generate(requests)
    finally:
        running[0] = False
        sampler.join()
    return max(peak[0], rss()) - base, n_tokens


def prefill_memory(args) -> dict:
    peaks, n_tokens = {}, None
    for mode in ("all_positions", "last_position"):
        cmd = [sys.executable, __file__, "--prefill-child", mode, "--device", args.device,
               "--prefill-batch", str(args.prefill_batch), "--prefill-tokens", str(args.prefill_tokens)]  # fmt: skip
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        peak, n_tokens = json.loads(line)
        peaks[mode] = peak
    vocab = 128256
    return {
        "batch": args.prefill_batch,
        "prompt_tokens": n_tokens,
        "vocab": vocab,
        "full_logits_gib": round(args.prefill_batch * n_tokens * vocab * 4 / 2**30, 3),
        "peak_gib": {m: round(p / 2**30, 3) for m, p in peaks.items()},
        "reduction_x": round(peaks["all_positions"] / max(peaks["last_position"], 2**20), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2")
    parser.add_argument("--parts", default="step,prefill")
    parser.add_argument("--short", type=int, default=8)
    parser.add_argument("--long", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prefill-batch", type=int, default=4)
    parser.add_argument("--prefill-tokens", type=int, default=1024)
    parser.add_argument("--prefill-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/decode_cpu.json")
    args = parser.parse_args()
    if args.prefill_child:
        print(json.dumps(prefill_peak(args, keep=args.prefill_child == "last_position")))
        return
    parts = args.parts.split(",")
    results = []
    if "step" in parts:
        for name in args.models.split(","):
            loaded = build(name, args.device, args.dtype)
            results.append({"model": name, "n_layers": loaded.n_layers, "d_model": loaded.d_model,
                            "step": step_times(loaded, args)})  # fmt: skip
            del loaded
    if "prefill" in parts:
        results.append({"prefill_memory": prefill_memory(args)})
        print("prefill", results[-1], flush=True)
    target = "compiled decode step within 1.5x of the weight-read bound on a GPU; prefill peak memory (recorded)"
    write_record(args.out, "decode", target, args, results)


if __name__ == "__main__":
    main()
