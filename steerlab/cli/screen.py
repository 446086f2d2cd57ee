"""``steerlab screen DATA --vector FILE... --out DIR``: truesight screening of training data (issue 20, item 5)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from steerlab.cli.app import app, out
from steerlab.cli.options import Device, DType


@app.command("screen")
def screen(
    data: Path = typer.Argument(..., help="JSONL (one document per line) or text (one per blank-line paragraph)."),
    vector: list[Path] = typer.Option(..., "--vector", help="A vector file (repeatable): one concept direction."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for scores.h5, ranked.jsonl, summary.json, index.html."),
    text_field: str | None = typer.Option(
        None, help="JSONL field with the text (default: text, else content, else messages joined)."
    ),
    data_format: str = typer.Option("auto", "--format", help="auto (by suffix, else first character), jsonl or text."),
    model: str | None = typer.Option(None, help="Model (default: the one the vectors were fitted on)."),
    controls: int | None = typer.Option(
        None,
        help="Random controls per vector (default 32, beyond the file's own drawn by its seed rule; a file "
        "that records none: the controls it carries).",
    ),
    layers: str = typer.Option("selected", help="selected (each vector's own), topK, or a list like 3,5,10-12."),
    cosine: bool = typer.Option(False, "--cosine", help="Mean cosine per token, not the mean projection."),
    tail: float | None = typer.Option(None, help="Flag this fraction at each end of the ranking (default 0.05)."),
    top: int | None = typer.Option(None, help="Flag this many documents at each end instead."),
    span_tokens: int = typer.Option(3, help="Tokens shown per flagged document (highest or lowest per-token value)."),
    span_chars: int = typer.Option(60, help="Characters of context on either side of a span's token."),
    max_tokens: int = typer.Option(512, help="Text tokens per document (longer documents are cut and marked)."),
    batch_size: int = typer.Option(8, help="Documents per forward pass."),
    resume: bool = typer.Option(False, help="Continue an interrupted screen in --out (or re-derive a finished one)."),
    overwrite: bool = typer.Option(False, help="Start over in a non-empty --out."),
    judge: str = typer.Option(
        "none", "--judge", help="Ask a rubric judge about the flagged documents: none, local or anthropic."
    ),
    judge_model: str | None = typer.Option(None, help="Judge model (default claude-sonnet-4-5 / smollm2)."),
    rubric: Path = typer.Option(Path("configs/judge/rubric.yaml"), help="Judge rubric (YAML)."),
    judge_cache: Path | None = typer.Option(None, help="Judge reply cache (default: the steerlab cache folder)."),
    device: Device = "auto",
    dtype: DType = "auto",
) -> None:
    """Score every document by its mean projection onto each vector's direction at its layers, against the
    vector's random controls (z per document), and flag both tails of the ranking for review."""
    from steerlab.analysis.screen_report import run_screen

    info = run_screen(
        data, vector, out_dir, text_field=text_field, fmt=data_format, model=model, n_controls=controls,
        layers=layers, cosine=cosine, tail=tail, top=top, span_tokens=span_tokens, span_chars=span_chars,
        max_tokens=max_tokens, batch_size=batch_size, device=device, dtype=dtype, resume=resume, overwrite=overwrite,
        judge=judge, judge_model=judge_model, rubric=rubric, judge_cache=judge_cache,
    )  # fmt: skip
    out.print(f"screened {info['n_docs']} documents of {escape(info['data']['file'])} ({info['mode']}, layers "
              f"{info['layers']}); {info['per_tail']} flagged per tail")  # fmt: skip
    for name, c in info["concepts"].items():
        top5 = escape(str(c["top"][:5])) + (" ..." if len(c["top"]) > 5 else "")
        out.print(f"  {escape(name)}: mean z {c['z_mean']:.3g} vs {c['n_controls']} controls, spread across documents "
                  f"x{c['spread_vs_controls']:.3g} the controls'; top {top5}")  # fmt: skip
    if info.get("judge"):
        j = info["judge"]
        out.print(f"  judge {j['backend']}:{escape(j['model'])}: {j['n_judged']} flagged documents, {j['cached']} "
                  f"from the cache, {j['calls']} calls")  # fmt: skip
    out.print(f"wrote {escape(str(out_dir))}/scores.h5, ranked.jsonl, summary.json, index.html")
