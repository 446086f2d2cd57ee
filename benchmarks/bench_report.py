"""How long ``steerlab report`` takes to write the report of a large run, and the page to open in headless
Chromium until the sample count is shown (issue 21: "a 10,000-sample run still opens in a few seconds").

The run is synthetic: the header and samples of a real run (``--source``, by default the demo's SmolLM2
alignment-faking sweep, runs/demo/af_sweep) repeated under new ids up to ``--samples``. Writes
benchmarks/results/report_cpu.json.

    .venv/bin/python benchmarks/bench_report.py --samples 10000
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import write_record

from steerlab.harness.records import read_samples, rewrite_samples
from steerlab.report.html_browser import Browser, find_chromium

REPO = Path(__file__).resolve().parent.parent


def distinct(sample: dict, i: int, rng: random.Random) -> dict:
    """A copy of ``sample`` as row ``i`` whose turns' words are shuffled, so no two samples repeat a text (gzip
    would otherwise squeeze the copies to nothing)."""
    turns = []
    for turn in sample["turns"]:
        words = turn["text"].split(" ")
        rng.shuffle(words)
        turns.append({**turn, "text": f"row {i}: " + " ".join(words)})
    return {**sample, "id": f"row-{i}", "turns": turns, "text": "\n".join(t["text"] for t in turns)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO / "runs" / "demo" / "af_sweep")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3, help="Page opens measured (the first is reported too).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "report_cpu.json")
    args = parser.parse_args()
    binary = find_chromium()
    if binary is None:
        sys.exit("no chromium on the PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "big"
        run.mkdir()
        (run / "header.json").write_bytes((args.source / "header.json").read_bytes())
        if (args.source / "summary.json").exists():
            (run / "summary.json").write_bytes((args.source / "summary.json").read_bytes())
        source = read_samples(args.source)
        rng = random.Random(0)
        rewrite_samples(run, [distinct(source[i % len(source)], i, rng) for i in range(args.samples)])
        size_jsonl = (run / "samples.jsonl").stat().st_size
        page = Path(tmp) / "big.html"
        started = time.perf_counter()  # the real command, in its own process (imports included)
        subprocess.run([sys.executable, "-m", "steerlab.cli", "report", str(run), "--out", str(page)], check=True)
        write_s = time.perf_counter() - started
        browser = Browser(binary)
        try:
            opens = [browser.open(page.as_uri(), timeout=120) for _ in range(args.repeats)]
            shown = int(browser.evaluate("document.getElementById('count').textContent"))
            assert shown == args.samples, shown
            started = time.perf_counter()
            browser.evaluate("(() => { const s = document.getElementById('f-condition'); s.value = 'monitored';"
                             " s.dispatchEvent(new Event('change')); })()")  # fmt: skip
            filter_s = time.perf_counter() - started
            started = time.perf_counter()
            browser.evaluate("(() => { const s = document.getElementById('f-condition'); s.value = '';"
                             " s.dispatchEvent(new Event('change')); document.getElementById('q').value = 'row 9999:';"
                             " apply(); return document.getElementById('count').textContent; })()")  # fmt: skip
            search_s = time.perf_counter() - started
            found = browser.evaluate("document.getElementById('count').textContent")
        finally:
            browser.close()
        result = {
            "samples": args.samples, "samples_jsonl_mb": round(size_jsonl / 1e6, 2), "source": str(args.source),
            "report_mb": round(page.stat().st_size / 1e6, 2), "write_s": round(write_s, 2),
            "open_until_count_shown_s": [round(s, 3) for s in opens], "filter_s": round(filter_s, 3),
            "first_search_s": round(search_s, 3), "search_found": found, "chromium": binary,
        }  # fmt: skip
    print(result)
    write_record(args.out, "report", "steerlab report + headless Chromium", args, [result])


if __name__ == "__main__":
    main()
