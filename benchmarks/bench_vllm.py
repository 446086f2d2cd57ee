"""vLLM backend benchmarks, ratios measured in one run (median of alternating repeats).

    .venv-vllm/bin/python benchmarks/bench_vllm.py               # SmolLM2 on CPU, vLLM's default (compiled) mode
    .venv-vllm/bin/python benchmarks/bench_vllm.py --eager       # enforce_eager=True

- steering: tokens/s of 32 requests with K = 1, 8, 32 distinct steering settings (random
  vectors, 1 or 8 layers) vs the same 32 requests unsteered, on one engine (target: <= 5% loss
  at every K). steerlab's hooks sit on every layer from start-up (they must exist before vLLM
  compiles the model), so "unsteered" is the zero-row gather, and the cost of steering 1 or 8
  layers is the same work by construction; with ``--eager`` the hooks are also taken off at the
  end to measure a bare engine, i.e. what the hooks themselves cost.
- sweep: the same steered sweep (the shipped vector + 5 controls x 7 multipliers x 4 prompts,
  greedy, fixed new tokens) through steerlab's sweep engine on the vLLM backend vs the HF backend
  (expect >= 5x on CPU).

Every request generates exactly ``--new-tokens`` tokens (EOS ignored on both backends).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from record import write_record  # benchmarks/record.py

from steerlab.backends.base import Request, Sampling
from steerlab.steer import SteeringSetting
from steerlab.vectors import SteeringVector, VectorBundle

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [line for line in (REPO / "configs/prompts/everyday.txt").read_text().splitlines() if line.strip()]


def random_setting(fp, n_layers: int, d_model: int, layers: list[int], seed: int) -> SteeringSetting:
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n_layers, d_model, generator=g)
    d = d / d.norm(dim=-1, keepdim=True) * 0.05 * d_model**0.5
    return SteeringSetting(SteeringVector(d, tuple(range(n_layers)), tuple(layers), fp, f"r{seed}"), 1.0)


def requests(settings: list, n: int, new_tokens: int) -> list[Request]:
    sampling = Sampling(max_new_tokens=new_tokens)
    return [Request([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], sampling, settings[i % len(settings)],
                    id=str(i)) for i in range(n)]  # fmt: skip


def timed(backend, reqs) -> float:
    t0 = time.perf_counter()
    backend.generate(reqs)
    return time.perf_counter() - t0


def steering(backend, args) -> list[dict]:
    fp = backend.fingerprint.to_dict()
    n_layers, d = backend.n_layers, backend.d_model
    middle = n_layers // 2
    modes = {"unsteered": requests([None], 32, args.new_tokens)}
    for k_layers in (1, 8):
        layers = list(range(middle - k_layers // 2, middle - k_layers // 2 + k_layers))
        for k in (1, 8, 32):
            settings = [random_setting(fp, n_layers, d, layers, s) for s in range(k)]
            modes[f"{k_layers}L_K{k}"] = requests(settings, 32, args.new_tokens)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for reqs in modes.values():
        timed(backend, reqs)  # warm-up
    for _ in range(args.repeats):
        for name, reqs in modes.items():
            times[name].append(timed(backend, reqs))
    if args.eager:  # a bare engine: the same requests with steerlab's hooks taken off
        backend.llm.collective_rpc("steerlab_remove_hooks")
        times["no_hooks"] = [timed(backend, modes["unsteered"]) for _ in range(args.repeats)]
    base = times["unsteered"]
    out = []
    for name, ts in times.items():
        tokens = 32 * args.new_tokens
        out.append({
            "mode": name, "median_s": round(statistics.median(ts), 3),
            "tokens_per_s": round(tokens / statistics.median(ts), 1),
            "loss_vs_unsteered_pct": round(100 * (statistics.median(ts) / statistics.median(base) - 1), 2),
            "paired_loss_pct": round(100 * statistics.median(t / b - 1 for t, b in zip(ts, base, strict=False)), 2),
        })  # fmt: skip
        print(out[-1])
    return out


def sweep(backend, args) -> dict:
    from steerlab.backends.hf import HFBackend
    from steerlab.models import load_model

    bundle = VectorBundle.load(REPO / "vectors/researcher_expectations/smollm2.safetensors", expect=backend.fingerprint)
    norms = dict(zip(bundle.meta["layers"], bundle.meta["diagnostics"]["per_layer"]["token_norm"], strict=True))
    multipliers = [-0.3, -0.2, -0.1, 0.1, 0.2, 0.3, 0.4]
    settings = [SteeringSetting(v, m, scale="relative", token_norms=norms)
                for v in [bundle.vector, *bundle.controls[:5]] for m in multipliers]  # fmt: skip
    reqs = [Request([{"role": "user", "content": p}], Sampling(max_new_tokens=args.new_tokens), s)
            for s in settings for p in PROMPTS[:4]]  # fmt: skip
    hf = HFBackend(load_model("smollm2", device="cpu"), batch_size=32)
    hf.eos_ids = set()
    timed(hf, reqs[:2])
    t_vllm = [timed(backend, reqs) for _ in range(2)]
    t_hf = [timed(hf, reqs)]
    result = {"rows": len(reqs), "settings": len(settings), "new_tokens": args.new_tokens,
              "vllm_s": [round(t, 2) for t in t_vllm], "hf_s": [round(t, 2) for t in t_hf],
              "speedup": round(statistics.median(t_hf) / statistics.median(t_vllm), 2)}  # fmt: skip
    print(result)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eager", action="store_true")
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="steering,sweep")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    from steerlab.backends.vllm import VLLMBackend

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    t0 = time.perf_counter()
    backend = VLLMBackend("smollm2", enforce_eager=args.eager, max_model_len=1024)
    startup = round(time.perf_counter() - t0, 1)
    backend.ignore_eos = True  # every request generates exactly --new-tokens tokens
    results = [{"part": "startup", "seconds": startup, "enforce_eager": backend.enforce_eager}]
    if "sweep" in args.parts:
        results.append({"part": "sweep", **sweep(backend, args)})
    if "steering" in args.parts:
        results.append({"part": "steering", "modes": steering(backend, args)})
    out = args.out or REPO / f"benchmarks/results/vllm_{'eager' if args.eager else 'default'}_cpu.json"
    write_record(out, "vllm_backend", "steered vs unsteered <= 5% at every K; sweep vLLM vs HF >= 5x on CPU",
                 args, results)  # fmt: skip


if __name__ == "__main__":
    main()
