"""``steerlab screen`` as a function (:func:`run_screen`), and what it derives from ``scores.h5``: ranks and flags
against the controls, the flagged spans, ``ranked.jsonl``, ``summary.json``, ``index.html`` and the judge pass.

Flags, per vector: the top and the bottom tail of the documents ranked by ``z`` (the real score against the
controls' scores at that document, :mod:`steerlab.analysis.screen`), ``ceil(tail x n)`` documents each (or
``top`` each); ties go to the earlier document. A flagged document's spans are its ``span_tokens`` tokens with
the highest per-token value (top tail; the lowest for the bottom tail), each with ``span_chars`` characters of
context on either side. ``ranked.jsonl`` holds every document, ordered by the first vector's rank; a row
carries every vector's score, z, percentile, rank and flag, and the text and spans only where it is flagged.
The judge pass asks the rubric judge about the flagged documents only (each once), through the judge cache.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from steerlab.analysis.screen import (
    DATASETS,
    KIND,
    PARTIAL,
    PROGRESS,
    SCORES,
    ScoreStore,
    ScreenError,
    check_model,
    make_plan,
    run_scores,
    scan,
    texts_of,
)
from steerlab.cache import row_checksums
from steerlab.errors import ConfigError
from steerlab.fileio import atomic_write_text
from steerlab.vectors import VectorBundle, finite_json

OUTPUTS = ("ranked.jsonl", "summary.json", "index.html", "judge.jsonl")
JUDGES = ("none", "local", "anthropic")
DEFAULT_CONTROLS = 32


def stored_meta(path: Path) -> dict[str, Any]:
    """The meta of a screen file (finished or partial); one line when it is not one."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("kind") != KIND:
                raise ScreenError(f"{path} is not a steerlab screen file; pass --overwrite to start over")
            return json.loads(f.attrs["meta"])
    except (OSError, KeyError, ValueError) as exc:
        raise ScreenError(f"{path} cannot be read ({exc}); pass --overwrite to start over") from None


IDENTITY = ("format", "data", "vectors", "rows", "layers", "mode", "max_tokens", "span_tokens", "model")


def check_same(old: dict[str, Any], new: dict[str, Any], where: Path) -> None:
    """Refuse to resume a screen written with other settings or data, naming the first difference."""
    for key in IDENTITY:
        if old.get(key) != new.get(key):
            what = "the data file changed" if key == "data" else f"{key} differ"
            raise ScreenError(f"{where} was screened with other settings ({what}); rerun with the same settings, "
                              "or pass --overwrite to start over")  # fmt: skip


@dataclass
class Screen:
    """A finished ``scores.h5`` read back (verified against its checksums)."""

    meta: dict[str, Any]
    ids: list[str]
    lines: np.ndarray
    arrays: dict[str, np.ndarray]

    def row_scores(self) -> np.ndarray:
        """``[n_docs, n_rows]``: each row's score, the mean over its own vector's layers."""
        layers = self.meta["layers"]
        idx = [[layers.index(layer) for layer in r["layers"]] for r in self.meta["rows"]]
        return np.stack([self.arrays["scores"][:, r, li].mean(-1) for r, li in enumerate(idx)], axis=1)


def read_screen(path: Path) -> Screen:
    meta = stored_meta(path)
    with h5py.File(path, "r") as f:
        arrays = {name: f[name][()] for name in (*DATASETS, "checksums")}
        ids = list(f["ids"].asstr()[...])
        lines = f["lines"][()]
    bad = np.nonzero(row_checksums(np.ascontiguousarray(arrays["scores"], np.float32)) != arrays["checksums"])[0]
    if len(bad):
        raise ScreenError(f"{path}: the scores of document {ids[bad[0]]!r} do not match their checksum (the file "
                          "changed on disk); rerun with --overwrite")  # fmt: skip
    return Screen(meta, ids, lines, arrays)


def z_scores(real: np.ndarray, controls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per document: (z, percentile in %, controls' mean, controls' sd) of ``real`` ``[n]`` against ``controls``
    ``[n, n_controls]`` (``ddof=1``)."""
    mean, sd = controls.mean(1), controls.std(1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (real - mean) / sd
    return z, 100.0 * (controls < real[:, None]).mean(1), mean, sd


def n_flagged(n: int, tail: float | None, top: int | None) -> int:
    """Documents per tail: ``top``, or ``ceil(tail x n)``; refused when the two tails would overlap."""
    if top is not None and tail is not None:
        raise ScreenError("give --tail or --top, not both")
    if top is not None:
        if not 1 <= top <= n // 2:
            raise ScreenError(f"--top {top}: give 1 to {max(n // 2, 1)} (the data holds {n} documents; the top "
                              "and bottom tails must not overlap)")  # fmt: skip
        return top
    tail = 0.05 if tail is None else tail
    if not (math.isfinite(tail) and 0 < tail < 0.5):
        raise ScreenError(f"--tail {tail:g}: give a fraction above 0 and below 0.5")
    k = math.ceil(tail * n)
    if 2 * k > n:
        raise ScreenError(f"--tail {tail:g}: the data holds {n} documents, too few for two tails of {k}")
    return k


def rankings(screen: Screen, k: int) -> list[dict[str, np.ndarray]]:
    """Per vector: score, z, percentile, control mean and sd, rank (1 = highest z), flag (1 top, -1 bottom), and
    ``spread``: the real score's sd across documents over the controls' (mean of their sds across documents)."""
    per_row = screen.row_scores()  # [n_docs, n_rows]
    rows, out = screen.meta["rows"], []
    for v in screen.meta["vectors"]:
        real = next(i for i, r in enumerate(rows) if r["vector"] == v["name"] and r["control"] is None)
        ctrl = [i for i, r in enumerate(rows) if r["vector"] == v["name"] and r["control"] is not None]
        z, pct, mean, sd = z_scores(per_row[:, real], per_row[:, ctrl])
        spread = np.std(per_row[:, real]) / np.mean(np.std(per_row[:, ctrl], axis=0))
        key = np.where(np.isfinite(z), z, -np.inf)
        order = np.lexsort((np.arange(len(z)), -key))  # highest z first; ties: the earlier document
        rank = np.empty(len(z), np.int64)
        rank[order] = np.arange(1, len(z) + 1)
        flag = np.zeros(len(z), np.int8)
        flag[order[:k]] = 1
        finite_order = [i for i in order if np.isfinite(z[i])]
        flag[finite_order[::-1][:k]] = -1
        out.append({"score": per_row[:, real], "z": z, "percentile": pct, "control_mean": mean, "control_sd": sd,
                    "rank": rank, "flag": flag, "order": order, "spread": spread})  # fmt: skip
    return out


def spans(screen: Screen, doc: int, vector: int, side: int, text: str, width: int) -> list[dict[str, Any]]:
    """A flagged document's spans: its tokens with the highest (side 0) or lowest (side 1) per-token value."""
    a = screen.arrays
    out = []
    for t, value, (lo, hi) in zip(a["span_index"][doc, vector, side], a["span_value"][doc, vector, side],
                                  a["span_chars"][doc, vector, side], strict=True):  # fmt: skip
        if t < 0:
            continue
        lo, hi = int(lo), int(hi)
        out.append({"token_index": int(t), "value": float(value), "start": lo, "end": hi, "token": text[lo:hi],
                    "before": text[max(0, lo - width) : lo], "after": text[hi : hi + width]})  # fmt: skip
    return out


def report_rows(screen: Screen, ranks: list[dict[str, np.ndarray]], texts: dict[int, str], width: int,
                judged: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """``ranked.jsonl``'s rows, ordered by the first vector's rank."""
    names = [v["name"] for v in screen.meta["vectors"]]
    a, rows = screen.arrays, []
    for i in ranks[0]["order"]:
        i = int(i)
        row: dict[str, Any] = {"id": screen.ids[i], "line": int(screen.lines[i]), "n_tokens": int(a["n_tokens"][i]),
                               "truncated": bool(a["truncated"][i]), "concepts": {}}  # fmt: skip
        for j, (name, r) in enumerate(zip(names, ranks, strict=True)):
            flag = {1: "top", -1: "bottom"}.get(int(r["flag"][i]))
            entry = {k: finite_json(float(r[k][i])) for k in ("score", "z", "percentile", "control_mean", "control_sd")}
            entry.update({"rank": int(r["rank"][i]), "flag": flag})
            if flag is not None:
                entry["spans"] = spans(screen, i, j, 0 if flag == "top" else 1, texts[i], width)
            row["concepts"][name] = entry
        if i in texts:
            row["text"] = texts[i]
        if screen.ids[i] in judged:
            row["judge"] = judged[screen.ids[i]]
        rows.append(row)
    return rows


def summary(screen: Screen, ranks: list[dict[str, np.ndarray]], k: int, data: dict[str, Any],
            judge: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """``summary.json``: the settings, and per vector the corpus-level statistics and the flagged ids."""
    m = screen.meta
    out: dict[str, Any] = {"format": m["format"], "kind": "steerlab-screen-summary", "data": data,
                           "model": m["model"], "model_source": m.get("model_source"), "mode": m["mode"],
                           "layers": m["layers"], "max_tokens": m["max_tokens"], "per_tail": k,
                           "n_docs": len(screen.ids), "concepts": {}}  # fmt: skip
    for v, r, file in zip(m["vectors"], ranks, m["vector_files"], strict=True):
        z = r["z"][np.isfinite(r["z"])]
        out["concepts"][v["name"]] = finite_json({
            "file": file, "layers": v["layers"], "n_controls": v["n_controls"],
            "score_mean": float(np.mean(r["score"])), "score_sd": float(np.std(r["score"])),
            "spread_vs_controls": float(r["spread"]),
            "z_mean": float(np.mean(z)), "z_median": float(np.median(z)),
            "share_above_every_control": float(np.mean(r["percentile"] == 100.0)),
            "top": [screen.ids[i] for i in sorted(np.nonzero(r["flag"] == 1)[0], key=lambda i: r["rank"][i])],
            "bottom": [screen.ids[i] for i in sorted(np.nonzero(r["flag"] == -1)[0], key=lambda i: -r["rank"][i])],
        })  # fmt: skip
    if judge is not None:
        out["judge"] = judge
    return out


def _span_html(s: dict[str, Any]) -> str:
    e = html.escape
    context = f"…{e(s['before'])}<mark>{e(s['token'])}</mark>{e(s['after'])}…"
    return f"<div class=span>{context} <i>{s['value']:.3g}</i></div>"


def write_html(path: Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """``index.html``: self-contained (no script, no link), every document's text escaped."""
    e = html.escape
    parts = [
        "<!doctype html><meta charset=utf-8><title>steerlab screen</title><style>body{font:14px sans-serif;"
        "margin:2em}table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:4px;"
        "vertical-align:top}mark{background:#fd8}.span{font-family:monospace;white-space:pre-wrap;margin:2px 0}"
        "pre{white-space:pre-wrap;max-width:60em}</style>",
        f"<h1>steerlab screen: {e(info['data']['file'])}</h1>",
        f"<p>{info['n_docs']} documents, model {e(str(info.get('model_source')))}, mean {e(info['mode'])} "
        f"per document, z against each vector's random controls; {info['per_tail']} documents per tail.</p>",
    ]
    for name, c in info["concepts"].items():
        parts.append(f"<h2>{e(name)}</h2><p>layers {e(str(c['layers']))}, {c['n_controls']} controls; mean z "
                     f"{c['z_mean']:.3g}, median {c['z_median']:.3g}; its spread across documents is "
                     f"x{c['spread_vs_controls']:.3g} the controls'</p>")  # fmt: skip
        for flag in ("top", "bottom"):
            flagged = sorted((r for r in rows if r["concepts"][name]["flag"] == flag),
                             key=lambda r: r["concepts"][name]["rank"], reverse=flag == "bottom")  # fmt: skip
            parts.append(f"<h3>{flag} tail</h3><table><tr><th>rank</th><th>id</th><th>score</th><th>z</th>"
                         "<th>pct</th><th>judge</th><th>spans and text</th></tr>")  # fmt: skip
            for r in flagged:
                c2 = r["concepts"][name]
                judge = r.get("judge") or {}
                scores = (judge.get("scores") or {}).items()
                verdict = ", ".join(f"{k}={v['score']}" for k, v in scores) or e(str(judge.get("error", ""))[:80])
                body = "".join(_span_html(s) for s in c2.get("spans", []))
                body += f"<details><summary>text</summary><pre>{e(r.get('text', ''))}</pre></details>"
                parts.append(f"<tr><td>{c2['rank']}</td><td>{e(r['id'])}</td><td>{c2['score']:.4g}</td>"
                             f"<td>{c2['z']:.3g}</td><td>{c2['percentile']:.0f}</td><td>{verdict}</td>"
                             f"<td>{body}</td></tr>")  # fmt: skip
            parts.append("</table>")
    atomic_write_text(path, "".join(parts) + "\n")


def make_judge(kind: str, model: str | None, max_tokens: int, loaded: Any = None) -> Any:
    """The rubric judge: the Messages API (built now: a missing key stops before any work) or a local model."""
    from steerlab.harness.judge import AnthropicJudge, LocalJudge

    if kind == "anthropic":
        return AnthropicJudge(model or "claude-sonnet-4-5", max_tokens=max_tokens)
    from steerlab.backends.hf import HFBackend
    from steerlab.models import load_model

    name = model or "smollm2"
    if loaded is None or loaded.source != name:
        loaded = load_model(name)
    return LocalJudge(HFBackend(loaded, batch_size=8), name, max_tokens=max_tokens)


def judge_flagged(screen: Screen, ranks: list[dict[str, np.ndarray]], texts: dict[int, str], judge: Any,
                  rubric_path: Path, cache_path: Path | None) -> tuple[dict[str, dict[str, Any]], Any]:  # fmt: skip
    """Judge the flagged documents only, each once (the cache answers what it holds)."""
    from steerlab.clients.cache import ReplyCache
    from steerlab.harness.judge import Rubric, judge_samples
    from steerlab.models import cache_dir

    flagged = sorted({int(i) for r in ranks for i in np.nonzero(r["flag"])[0]})
    samples = [{"id": screen.ids[i], "reasoning": texts[i]} for i in flagged]
    cache = ReplyCache(cache_path or cache_dir() / "judge.sqlite")
    try:
        judged, report = judge_samples(samples, judge, Rubric.load(rubric_path), cache)
    finally:
        cache.close()
    return {s["id"]: s["judge"] for s in judged}, report


def run_screen(
    data_path: Path,
    vector_files: Sequence[Path],
    out: Path,
    *,
    text_field: str | None = None,
    fmt: str = "auto",
    model: str | None = None,
    n_controls: int | None = None,
    layers: str = "selected",
    cosine: bool = False,
    tail: float | None = None,
    top: int | None = None,
    span_tokens: int = 3,
    span_chars: int = 60,
    max_tokens: int = 512,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    judge: str = "none",
    judge_model: str | None = None,
    rubric: Path = Path("configs/judge/rubric.yaml"),
    judge_cache: Path | None = None,
    judge_max_tokens: int = 400,
    progress: bool = True,
) -> dict[str, Any]:
    """The command: check every input (nothing is written before), load the model, score what is not yet scored,
    then write the report. Returns the summary."""
    from steerlab import __version__
    from steerlab.analysis.heatmap import parse_layer_choice
    from steerlab.fileio import exclusive, shipped
    from steerlab.models import load_model

    out = Path(out)
    if resume and overwrite:
        raise ScreenError("give --resume or --overwrite, not both")
    if out.exists() and not out.is_dir():
        raise ScreenError(f"--out {out} is a file; give a directory")
    busy = out.is_dir() and any(p.name != ".lock" for p in out.iterdir())
    if busy and not (resume or overwrite):
        raise ScreenError(f"--out {out} exists and is not empty; pass --resume to continue that screen, --overwrite "
                          "to start over, or choose a new directory")  # fmt: skip
    have = (out / SCORES) if (out / SCORES).exists() else (out / PARTIAL) if (out / PARTIAL).exists() else None
    if resume and have is None:
        raise ScreenError(f"--resume: {out} holds no screen to continue (no {SCORES} or {PARTIAL})")
    if not vector_files:
        raise ScreenError("give at least one --vector FILE")
    if judge not in JUDGES:
        raise ScreenError(f"--judge {judge!r}: use none, local or anthropic")
    if batch_size < 1:
        raise ScreenError(f"--batch-size {batch_size}: give at least 1")
    if span_chars < 0:
        raise ScreenError(f"--span-chars {span_chars}: give 0 or more")
    bundles = [(Path(p), VectorBundle.load(Path(p))) for p in vector_files]
    fp = check_model(bundles)
    choice = None if layers == "selected" else parse_layer_choice(layers, fp.n_layers)
    data = scan(Path(data_path), text_field, fmt)
    k = n_flagged(len(data.ids), tail, top)
    if n_controls is None:  # 32 where every file records its seed rule, else what the files carry
        drawable = all("run_seed" in (b.meta.get("controls") or {}) for _, b in bundles)
        n_controls = max(DEFAULT_CONTROLS, *(len(b.controls) for _, b in bundles)) if drawable else min(
            len(b.controls) for _, b in bundles)  # fmt: skip
    plan = make_plan(bundles, n_controls, choice, cosine, max_tokens, span_tokens)
    sources = {b.meta.get("model_source") for _, b in bundles}
    source = model or (sources.pop() if len(sources) == 1 else None)
    if source is None:
        raise ScreenError("the vector files name no single model they were fitted on; give --model")
    described = data.describe()
    meta = {"format": 1, "kind": "steerlab-screen", "data": {k2: described[k2] for k2 in ("hash", "format",
            "text_field", "n_docs")}, "data_file": str(data.path), "vectors": [{k2: v[k2] for k2 in v if k2 != "file"}
            for v in plan.vectors], "vector_files": [v["file"] for v in plan.vectors], "rows": plan.rows,
            "layers": plan.layers, "mode": "cosine" if cosine else "projection", "max_tokens": max_tokens,
            "span_tokens": span_tokens, "model": fp.to_dict(), "model_source": source,
            "steerlab_version": __version__}  # fmt: skip
    if resume and not overwrite:
        check_same(stored_meta(have), meta, have)
    rubric_path = shipped(Path(rubric))
    judge_client = None
    if judge != "none":
        from steerlab.harness.judge import Rubric

        Rubric.load(rubric_path)  # a broken rubric is refused before any work
        if judge == "anthropic":
            if not os.environ.get("ANTHROPIC_API_KEY"):
                raise ScreenError("--judge anthropic needs an API key: set ANTHROPIC_API_KEY, or use --judge local")
            judge_client = make_judge(judge, judge_model, judge_max_tokens)
    finished = resume and have == out / SCORES
    loaded = None
    if not finished:
        loaded = load_model(source, device=device, dtype=dtype)
        diff = fp.differences(loaded.fingerprint)
        if diff:
            raise ScreenError(f"the model {source!r} is not the one the vectors were fitted on (fingerprint differs "
                              f"in {', '.join(diff)}); give the vectors' model with --model")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out, "screen"):
        if overwrite:
            for name in (SCORES, PARTIAL, PROGRESS, *OUTPUTS):  # nothing of the old screen stands beside the new
                (out / name).unlink(missing_ok=True)
        if not finished:
            tok = loaded.tokenizer
            bos = tok.bos_token_id is not None and tok.bos_token_id != tok.eos_token_id
            store = ScoreStore(out, {**meta, "batch_size": batch_size, "bos": bos}, data, plan)
            store.open(resume)
            run_scores(loaded, store, batch_size, progress)
        return write_report(out, data, k, span_chars, judge, judge_client, judge_model, judge_max_tokens, rubric_path,
                            judge_cache, loaded)  # fmt: skip


def write_report(out: Path, data: Any, k: int, span_chars: int, judge: str, judge_client: Any,
                 judge_model: str | None, judge_max_tokens: int, rubric_path: Path, judge_cache: Path | None,
                 loaded: Any) -> dict[str, Any]:  # fmt: skip
    """Everything derived from ``scores.h5``: ranked.jsonl, summary.json, index.html, and judge.jsonl if asked."""
    screen = read_screen(out / SCORES)
    ranks = rankings(screen, k)
    flagged = {int(i) for r in ranks for i in np.nonzero(r["flag"])[0]}
    texts = texts_of(data, flagged)
    judged: dict[str, dict[str, Any]] = {}
    judge_info, report = None, None
    if judge != "none":
        client = judge_client or make_judge(judge, judge_model, judge_max_tokens, loaded)
        judged, report = judge_flagged(screen, ranks, texts, client, rubric_path, judge_cache)
        judge_info = {"backend": judge, "model": client.model, "rubric": str(rubric_path), "n_judged": report.n,
                      "cached": report.cached, "calls": report.calls, "errors": report.errors}  # fmt: skip
    rows = report_rows(screen, ranks, texts, span_chars, judged)
    info = summary(screen, ranks, k, {**data.describe(), "skipped": data.skipped}, judge_info)
    atomic_write_text(out / "ranked.jsonl", "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
    atomic_write_text(out / "summary.json", json.dumps(info, indent=1, allow_nan=False) + "\n")
    write_html(out / "index.html", rows, info)
    if judge != "none":
        judge_rows = [{"id": r["id"], "line": r["line"], "flags": {n: c["flag"] for n, c in r["concepts"].items()
                       if c["flag"]}, "judge": r["judge"]} for r in rows if "judge" in r]  # fmt: skip
        atomic_write_text(out / "judge.jsonl", "".join(json.dumps(r) + "\n" for r in judge_rows))
    else:
        (out / "judge.jsonl").unlink(missing_ok=True)
    if report is not None and report.errors:
        raise ConfigError(f"{report.errors} of {report.n} judgements failed (first: {str(report.first_error)[:160]}); "
                          f"the rest are in {out / 'judge.jsonl'}; rerun with --resume to ask for the failed ones "
                          "only")  # fmt: skip
    return info
