"""The JSON record every benchmark writes to benchmarks/results/."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def write_record(out: Path, benchmark: str, target: str, args: argparse.Namespace, results: list[dict]) -> None:
    """Write the results with the date, the machine and the settings they were measured with."""
    record = {
        "benchmark": benchmark,
        "target": target,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "device": args.device,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        },
        "settings": {k: str(v) for k, v in vars(args).items()},
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
