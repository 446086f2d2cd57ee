"""The cost of the steering operators and of conditional steering against plain addition (issue 20), ratios measured
in one run (median of alternating repeats, as bench_steer.py).

    python benchmarks/bench_operators.py                      # tiny model and SmolLM2, CPU
    python benchmarks/bench_operators.py --models llama8b-random --device cuda --dtype bfloat16

Through ``HFBackend.generate`` (the real decode loop), the same batch of prompts, every row steered at the same 8
middle layers, ``--new-tokens`` tokens each (EOS ignored, greedy), in these modes:

- ``unsteered``; ``add`` (the paper's steering: the baseline the others are compared with);
- ``ablate`` (the projection onto the direction set to 0 at every steered layer and position), ``clamp`` (add, then
  the projection clamped to a range): one float32 projection, clamp and rank-1 update per layer and pass;
- ``add_condition_same_pass``: add, with a condition read at the layer before the first steered one (decided in the
  prefill pass: one reduction per batch);
- ``add_condition_prepass``: add, with a condition read at the layer after the last steered one, which costs an
  unsteered pass over the prompt up to that layer before each batch's prefill.

Half the rows of a conditional batch pass the condition (the threshold is the median prompt score), so the work
per row is what it is in a real conditional run.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from bench_extract import build  # benchmarks/bench_extract.py: tiny, smollm2, llama8b-random
from bench_steer import PROMPTS, alternate, middle_layers, random_vector, timed_generate
from record import write_record  # benchmarks/record.py

from steerlab.backends.base import Request, Sampling
from steerlab.backends.hf import HFBackend
from steerlab.conditions import Condition
from steerlab.generate import as_chat, load_prompts
from steerlab.steer import SteeringSetting

REPO = Path(__file__).resolve().parent.parent


def condition_at(loaded, backend: HFBackend, chats, layer: int) -> Condition:
    """A condition at ``layer`` whose threshold is the median of the prompts' scores (half pass)."""
    from steerlab.analysis.condition_fit import prompt_features

    w = torch.randn(loaded.d_model, generator=torch.Generator().manual_seed(7))
    w = w / w.norm()
    scores = prompt_features(loaded, chats, [layer])[:, 0] @ w.numpy()
    return Condition(w, layer, float(statistics.median(scores.tolist())), ">", name="bench")


def operators(loaded, args, prompts) -> list[dict]:
    backend = HFBackend(loaded, batch_size=32, compile=args.compile)
    backend.eos_ids = set()
    sampling = Sampling(max_new_tokens=args.new_tokens)
    layers = middle_layers(loaded.n_layers, 8)
    v = random_vector(loaded, layers, 0)
    out = []
    for batch in (1, 32):
        chats = [prompts[i % len(prompts)] for i in range(batch)]
        before = max(layers[0] - 1, 0)
        after = min(layers[-1] + 1, loaded.n_layers - 1)
        settings = {
            "add": SteeringSetting(v, 1.0),
            "ablate": SteeringSetting(v, 0.0, operator="ablate"),
            "clamp": SteeringSetting(v, 1.0, operator="clamp", bounds=(-0.5, 0.5)),
            "add_condition_same_pass": SteeringSetting(v, 1.0, condition=condition_at(loaded, backend, chats, before)),
            "add_condition_prepass": SteeringSetting(v, 1.0, condition=condition_at(loaded, backend, chats, after)),
        }
        assert settings["add_condition_prepass"].condition.layer > layers[0]
        modes = {"unsteered": lambda c=chats: timed_generate(backend, [Request(x, sampling) for x in c])}
        for name, setting in settings.items():
            modes[name] = lambda c=chats, s=setting: timed_generate(backend, [Request(x, sampling, s) for x in c])
        med, paired_vs_unsteered = alternate(modes, args.repeats, "unsteered")
        _, paired_vs_add = alternate({k: modes[k] for k in settings}, args.repeats, "add", warmup=False)
        tokens = batch * args.new_tokens
        out.append({
            "batch": batch, "steered_layers": layers, "condition_layers": {"same_pass": before, "prepass": after},
            "tokens_per_s": {m: round(tokens / t, 1) for m, t in med.items()},
            "cost_vs_add_pct": {m: round(100 * (med[m] / med["add"] - 1), 2) for m in settings if m != "add"},
            "loss_vs_add_pct_paired_median": paired_vs_add,
            "loss_vs_unsteered_pct_paired_median": paired_vs_unsteered,
        })  # fmt: skip
        print(out[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/operators_cpu.json")
    args = parser.parse_args()
    prompts = [as_chat(p[-1]["content"]) for p in load_prompts(PROMPTS)]
    results = []
    for name in args.models.split(","):
        loaded = build(name, args.device, args.dtype)
        results.append({"model": name, "n_layers": loaded.n_layers, "d_model": loaded.d_model,
                        "operators": operators(loaded, args, prompts)})  # fmt: skip
    target = "recorded (no target): the cost of ablate, clamp and conditions against plain addition"
    write_record(args.out, "operators", target, args, results)


if __name__ == "__main__":
    main()
