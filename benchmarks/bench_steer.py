"""Steering benchmarks, ratios measured in one run (median of alternating repeats).

    python benchmarks/bench_steer.py                       # tiny model and SmolLM2, CPU
    python benchmarks/bench_steer.py --parts overhead,hetero --models llama8b-random --device cuda --dtype bfloat16

- hook: milliseconds per decode step with and without 8 steering hooks (the hook's own cost,
  free of generation-loop noise);
- overhead: tokens/s of steered vs unsteered generation of the same batch, steering 1 and 8
  layers, at batch 1 and 32 (target: <= 5% loss for 8 layers on CPU, <= 3% on a GPU);
- hetero: K distinct steering settings in one batch of 32 (K = 1, 8, 32) vs one setting
  (target: <= 5% loss at every K);
- sweep: 7 multipliers x 6 vectors (the shipped vector and its 5 random controls) x 4 prompts
  through steerlab's sweep engine (one stream of full batches of 32) vs the way a peer library
  must do it: one `generate` call per setting with the `steering-vectors` package
  (`pip install --no-deps steering-vectors`, benchmark environment only), batch = the 4 prompts
  of that setting. Same model, greedy decoding, same new tokens (EOS disabled on both sides).

Every generation runs exactly ``--new-tokens`` tokens (EOS is ignored), so tokens/s compares
like with like. Losses are reported as a ratio of medians and as the median of per-repeat
paired ratios; single runs on the shared 2-core machines vary by about +-15%.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from bench_extract import build  # benchmarks/bench_extract.py: tiny, smollm2, llama8b-random
from record import write_record  # benchmarks/record.py

from steerlab.backends.base import Request, Sampling
from steerlab.backends.hf import HFBackend
from steerlab.generate import as_chat, load_prompts
from steerlab.steer import SteeringSetting
from steerlab.vectors import SteeringVector, VectorBundle

REPO = Path(__file__).resolve().parent.parent
PROMPTS = REPO / "configs/prompts/everyday.txt"


def random_vector(loaded, layers: list[int], seed: int, norm_frac: float = 0.05) -> SteeringVector:
    """A random direction at every layer, scaled to a small fraction of a typical residual norm."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(loaded.n_layers, loaded.d_model, generator=g)
    d = d / d.norm(dim=-1, keepdim=True) * norm_frac * loaded.d_model**0.5
    return SteeringVector(d, tuple(range(loaded.n_layers)), tuple(layers), loaded.fingerprint.to_dict(), f"r{seed}")


def middle_layers(n_layers: int, k: int) -> list[int]:
    start = max(0, n_layers // 2 - k // 2)
    return list(range(start, min(n_layers, start + k)))


def timed_generate(backend: HFBackend, requests: list[Request]) -> float:
    if backend.loaded.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    backend.generate(requests)
    if backend.loaded.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def alternate(
    modes: dict, repeats: int, baseline: str, warmup: bool = True
) -> tuple[dict[str, float], dict[str, float]]:
    """Run each mode once per repeat, in an order rotated from repeat to repeat. Returns the median seconds per
    mode and, per
    mode, the median over repeats of (baseline time / mode time) - 1 as a loss in percent (each
    repeat's modes run back to back, so this paired ratio cancels the machine's slow drift)."""
    times: dict[str, list[float]] = {m: [] for m in modes}
    if warmup:
        for fn in modes.values():
            fn()
    names = list(modes)
    for r in range(repeats):  # each repeat starts at another mode, so no mode always runs first (or last)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(modes[name]())
    med = {m: statistics.median(v) for m, v in times.items()}
    paired = {
        m: round(100 * (1 - statistics.median(b / t for b, t in zip(times[baseline], v, strict=True))), 2)
        for m, v in times.items()
        if m != baseline
    }
    return med, paired


def hook_cost(loaded, args) -> list[dict]:
    """Milliseconds per decode step with and without 8 steering hooks, isolating the hook itself."""
    from steerlab.steer import steerer_for

    layers = middle_layers(loaded.n_layers, 8)
    steer = steerer_for(loaded.blocks, [SteeringSetting(random_vector(loaded, layers, 0), 1.0)], loaded.d_model)
    from steerlab.backends.hf import cache_of, forward_kwargs

    cache_name, _ = forward_kwargs(loaded.model)
    out = []
    for batch in (1, 32):
        steer.set_rows([1] * batch)
        ids = torch.randint(0, loaded.model.config.vocab_size, (batch, 32), device=loaded.device)

        @torch.inference_mode()
        def steps(n: int = 16, ids: torch.Tensor = ids) -> float:
            res = loaded.model(input_ids=ids, use_cache=True)
            past, tok = cache_of(res), res.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(n):  # the KV cache under the name this transformers takes (as the HF backend does)
                res = loaded.model(input_ids=tok, use_cache=True, **{cache_name: past})
                past, tok = cache_of(res), res.logits[:, -1:].argmax(-1)
            if loaded.device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) / n

        def hooked(steps=steps) -> float:
            with steer:
                return steps()

        med, paired = alternate({"plain": steps, "hooked": hooked}, args.repeats + 4, "plain")  # noqa: B023
        ms = {m: round(1e3 * t, 3) for m, t in med.items()}
        out.append(
            {"batch": batch, "layers": len(layers), "ms_per_step": ms, "loss_pct_paired_median": paired["hooked"]}
        )
    return out


def overhead(loaded, args, prompts) -> list[dict]:
    backend = HFBackend(loaded, batch_size=32, compile=args.compile)
    backend.eos_ids = set()
    sampling = Sampling(max_new_tokens=args.new_tokens)
    out = []
    for batch in (1, 32):
        chats = [prompts[i % len(prompts)] for i in range(batch)]
        modes = {"unsteered": lambda c=chats: timed_generate(backend, [Request(x, sampling) for x in c])}
        for n_layers in (1, 8):
            layers = middle_layers(loaded.n_layers, n_layers)  # fewer on a model with fewer layers
            setting = SteeringSetting(random_vector(loaded, layers, 0), 1.0)
            modes[f"{len(layers)}_layers"] = lambda c=chats, s=setting: timed_generate(
                backend, [Request(x, sampling, s) for x in c]
            )
        med, paired = alternate(modes, args.repeats, "unsteered")
        tokens = batch * args.new_tokens
        out.append(
            {
                "batch": batch,
                "tokens_per_s": {m: round(tokens / t, 1) for m, t in med.items()},
                "loss_pct": {m: round(100 * (1 - med["unsteered"] / t), 2) for m, t in med.items() if m != "unsteered"},
                "loss_pct_paired_median": paired,
            }
        )
    return out


def table_ms(loaded, settings, repeats: int = 20) -> float:
    """Milliseconds to build a call's steering table for ``settings`` and load one batch's rows: the only work in
    HFBackend.generate whose size grows with the number K of distinct settings (each decode step adds one gathered
    [batch, d_model] buffer per layer, whatever K is)."""
    from steerlab.steer import steerer_for

    times = []
    for _ in range(repeats):
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        steerer = steerer_for(loaded.blocks, settings, loaded.d_model, max_batch=32)
        steerer.set_rows([1 + i % len(settings) for i in range(32)])
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return round(1e3 * statistics.median(times), 3)


def hetero(loaded, args, prompts) -> list[dict]:
    backend = HFBackend(loaded, batch_size=32, compile=args.compile)
    backend.eos_ids = set()
    sampling = Sampling(max_new_tokens=args.new_tokens)
    layers = middle_layers(loaded.n_layers, 8)
    chats = [prompts[i % len(prompts)] for i in range(32)]
    vectors = [random_vector(loaded, layers, seed) for seed in range(4)]
    modes, tables = {}, {}
    for k in (1, 8, 32):
        settings = [SteeringSetting(vectors[i % 4], (-1.0) ** i * (1 + i // 4) / 8) for i in range(k)]
        modes[f"K={k}"] = lambda s=settings: timed_generate(
            backend, [Request(c, sampling, s[i % len(s)]) for i, c in enumerate(chats)]
        )
        tables[f"K={k}"] = table_ms(loaded, settings)
    med, paired = alternate(modes, args.repeats, "K=1")
    tokens = 32 * args.new_tokens
    return [
        {
            "batch": 32,
            "layers": len(layers),
            "tokens_per_s": {m: round(tokens / t, 1) for m, t in med.items()},
            "loss_vs_K1_pct": {m: round(100 * (1 - med["K=1"] / t), 2) for m, t in med.items() if m != "K=1"},
            "loss_vs_K1_pct_paired_median": paired,
            "table_ms": tables,
            "compiled": backend.compiled,
        }
    ]


def sweep_vs_loop(loaded, args, prompts) -> dict:
    from steering_vectors import SteeringVector as PeerVector

    multipliers = [-0.3, -0.2, -0.1, 0.1, 0.2, 0.3, 0.4]
    if loaded.source == "smollm2":  # the shipped vector and 5 of its controls
        shipped = REPO / "vectors/researcher_expectations/smollm2.safetensors"
        bundle = VectorBundle.load(shipped, expect=loaded.fingerprint)
        vectors = [bundle.vector, *bundle.controls[:5]]
        norms = dict(zip(bundle.meta["layers"], bundle.meta["diagnostics"]["per_layer"]["token_norm"], strict=True))
        settings = [SteeringSetting(v, m, scale="relative", token_norms=norms) for v in vectors for m in multipliers]
    else:  # a random-weight model: 6 random vectors at its 8 middle layers, absolute scale
        layers = middle_layers(loaded.n_layers, 8)
        vectors = [random_vector(loaded, layers, seed=i) for i in range(6)]
        settings = [SteeringSetting(v, 10 * m) for v in vectors for m in multipliers]
    chats = prompts[:4]
    sampling = Sampling(max_new_tokens=args.new_tokens)
    backend = HFBackend(loaded, batch_size=32, compile=args.compile)
    backend.eos_ids = set()
    tok = loaded.tokenizer

    def ours() -> float:
        return timed_generate(backend, [Request(c, sampling, s) for s in settings for c in chats])

    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    batch = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(
        loaded.device
    )

    def loop() -> float:
        t0 = time.perf_counter()
        for s in settings:  # one generate call per setting, the way single-vector libraries steer
            rows = s.rows(list(s.steered_layers()))
            peer = PeerVector({layer: rows[j] for j, layer in enumerate(s.steered_layers())}, "decoder_block")
            with peer.apply(loaded.model, multiplier=1.0), torch.inference_mode():
                loaded.model.generate(
                    **batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )  # fmt: skip
        return time.perf_counter() - t0

    backend.generate([Request(chats[0], Sampling(max_new_tokens=2), settings[0])])  # warm-up, cheaply
    med, _ = alternate({"steerlab_sweep": ours, "per_setting_loop": loop}, 1, "steerlab_sweep", warmup=False)
    return {
        "settings": len(settings),
        "prompts": len(chats),
        "rows": len(settings) * len(chats),
        "new_tokens": args.new_tokens,
        "seconds": {k: round(v, 2) for k, v in med.items()},
        "speedup": round(med["per_setting_loop"] / med["steerlab_sweep"], 2),
        "compiled": backend.compiled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--parts", default="hook,overhead,hetero,sweep")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="the HF backend's compiled decode path (default: on for a CUDA device)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/steer_cpu.json")
    args = parser.parse_args()
    prompts = load_prompts(PROMPTS)
    prompts = [as_chat(p[-1]["content"]) for p in prompts]
    results = []
    parts = args.parts.split(",")
    for name in args.models.split(","):
        loaded = build(name, args.device, args.dtype)
        entry: dict = {"model": name, "n_layers": loaded.n_layers, "d_model": loaded.d_model}
        if "hook" in parts:
            entry["hook_cost"] = hook_cost(loaded, args)
            print(name, "hook", entry["hook_cost"])
        if "overhead" in parts:
            entry["overhead"] = overhead(loaded, args, prompts)
            print(name, "overhead", entry["overhead"])
        if "hetero" in parts:
            entry["hetero"] = hetero(loaded, args, prompts)
            print(name, "hetero", entry["hetero"])
        if "sweep" in parts and name != "tiny":
            entry["sweep_vs_loop"] = sweep_vs_loop(loaded, args, prompts)
            print(name, "sweep", entry["sweep_vs_loop"])
        results.append(entry)
    target = "overhead <= 5% (8 layers, CPU); hetero K=8,32 <= 5% vs K=1; sweep >= 5x vs per-setting loop"
    write_record(args.out, "steer", target, args, results)


if __name__ == "__main__":
    main()
