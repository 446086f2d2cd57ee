"""Harness overhead: `steerlab eval`'s engine vs the bare backend generating the same requests.

    python benchmarks/bench_harness.py                  # SmolLM2 on CPU
    python benchmarks/bench_harness.py --model tiny

The harness run is the real thing: the alignment-faking scenario over the benign request set
(monitored and unmonitored), samples written to a run directory, labels parsed, then the
summary (Wilson intervals, bootstrap gap, two-proportion test) written. The requests it sends
are recorded on the first run; the bare side replays exactly those requests, in the same
backend calls, through the same HF backend, with nothing around them. Both sides generate
greedily with a fixed number of new tokens (EOS ignored, one turn), so they do the same
model work; the difference is parsing, records and statistics (target: < 2%). Because whole
generations vary by several percent between runs on these machines, the harness's own time is
also measured directly: wall time of the harness run minus the time spent inside the backend's
``generate``, as a share of the latter (``harness_own_share``).

Sides alternate; the loss is reported as a ratio of medians and as the median of per-repeat
paired ratios (single runs on the shared 2-core machines vary by several percent).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_extract import build  # benchmarks/bench_extract.py
from record import write_record  # benchmarks/record.py

from steerlab.backends.hf import HFBackend
from steerlab.runs import SweepConfig, run_sweep, write_label_summary

REPO = Path(__file__).resolve().parent.parent


class Recorder:
    """Passes calls through to the backend, keeps each call's requests and the time spent inside it."""

    def __init__(self, backend):
        self.backend, self.calls, self.seconds = backend, [], 0.0

    def generate(self, requests):
        self.calls.append(list(requests))
        started = time.perf_counter()
        out = self.backend.generate(requests)
        self.seconds += time.perf_counter() - started
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/harness_overhead_cpu.json")
    args = p.parse_args()

    loaded = build(args.model, args.device, args.dtype)
    backend = HFBackend(loaded, batch_size=args.batch_size)
    backend.eos_ids = set()  # every row generates exactly --new-tokens tokens on both sides
    work = Path(tempfile.mkdtemp(prefix="bench-harness-"))

    def config(run: int) -> SweepConfig:
        return SweepConfig(
            model=args.model, scenario="alignment_faking", prompts=str(REPO / "configs/requests/benign.jsonl"),
            limit=args.requests, max_new_tokens=args.new_tokens, batch_size=args.batch_size,
            alignment_faking={"max_turns": 1}, out=work / f"run{run}",
        )  # fmt: skip

    recorder = Recorder(backend)
    run_sweep(config(-1), recorder, loaded.fingerprint, progress=False)  # warm-up, and the requests to replay
    calls = recorder.calls
    n_samples = sum(len(c) for c in calls)

    outside: list[float] = []  # per harness run: seconds spent outside the backend's generate

    def harness(run: int) -> float:
        timed = Recorder(backend)
        started = time.perf_counter()
        run_dir = run_sweep(config(run), timed, loaded.fingerprint, progress=False)
        write_label_summary(run_dir)
        total = time.perf_counter() - started
        outside.append(total - timed.seconds)
        return total

    def bare() -> float:
        started = time.perf_counter()
        for requests in calls:
            backend.generate(requests)
        return time.perf_counter() - started

    t_harness, t_bare = [], []
    for r in range(args.repeats):
        order = [("bare", bare), ("harness", lambda r=r: harness(r))]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            (t_bare if name == "bare" else t_harness).append(fn())
        print(f"repeat {r}: bare {t_bare[-1]:.2f}s, harness {t_harness[-1]:.2f}s")
    shutil.rmtree(work)
    ratio_of_medians = statistics.median(t_harness) / statistics.median(t_bare) - 1
    paired = statistics.median(h / b - 1 for h, b in zip(t_harness, t_bare, strict=True))
    result = {
        "model": args.model, "samples": n_samples, "backend_calls": len(calls), "new_tokens": args.new_tokens,
        "bare_s": [round(t, 3) for t in t_bare], "harness_s": [round(t, 3) for t in t_harness],
        "overhead_ratio_of_medians": round(ratio_of_medians, 4), "overhead_paired_median": round(paired, 4),
        # the harness's own work (scenario, parsing, records, statistics) timed directly, free of generation noise
        "harness_own_s": [round(t, 4) for t in outside],
        "harness_own_share": round(statistics.median(o / (h - o) for o, h in zip(outside, t_harness, strict=True)), 5),
    }  # fmt: skip
    print(result)
    write_record(args.out, "harness_overhead", "parsing, records and statistics cost < 2% of eval wall time",
                 args, [result])  # fmt: skip


if __name__ == "__main__":
    main()
