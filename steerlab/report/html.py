"""``steerlab report``: one self-contained HTML file per run (or per pair of runs), from the run's
records. Reads only: the run directory is never written; the report goes where ``out`` says.

The page embeds everything (inline CSS and JS, figures as data URIs, the samples as JSON; gzip +
base64 when large, decompressed in the browser by ``DecompressionStream``), so it opens offline from
a ``file://`` URL, and its Content-Security-Policy lets it fetch nothing. Run text (model output is
untrusted) reaches the page only as JSON data or HTML-escaped text, and the script puts it in the
DOM with ``textContent``, never as markup. The page itself is :mod:`steerlab.report.html_page`; the
header and summary tables are :mod:`steerlab.report.html_tables`.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steerlab.errors import ConfigError
from steerlab.fileio import atomic_write_text
from steerlab.fileio import check_out as _check_out
from steerlab.harness.parse import parse, transcript
from steerlab.harness.records import FORMAT, HEADER, SAMPLES, SUMMARY, check_unique, read_header, read_samples
from steerlab.report.html_page import PAGE
from steerlab.report.html_tables import figures_html, header_html, summary_html
from steerlab.tags import OUTPUT_CLOSE, OUTPUT_OPEN, REASONING_OPENS, REASONING_RE, last_reasoning_end, output_start

COMPRESS_ABOVE = 256 * 1024  # bytes of sample JSON above which the page embeds it gzip + base64
# the fields that may tell two runs' samples of one request apart; the rest of the key is the request itself
VARYING = ("vector", "arm", "multiplier", "claim")
SURROGATE = re.compile("[\ud800-\udfff]")


def default_out(run_dir: Path, compare: Path | None = None) -> Path:
    """Beside the run, never in it (reading a run never writes into it): ``RUN-report.html``, or
    ``RUN_A-vs-RUN_B-report.html`` beside RUN_A."""
    run_dir = Path(run_dir)
    name = run_dir.resolve().name if run_dir.name in ("", ".", "..") else run_dir.name
    if compare is not None:
        name += f"-vs-{Path(compare).resolve().name}"
    return run_dir.resolve().parent / f"{name}-report.html"


def check_run_dir(run_dir: Path) -> dict[str, Any]:
    """The run's header, or one line saying why ``run_dir`` is no run this version reads."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a directory; give a run directory (steerlab eval / sweep / prompt-eval)")
    if not (run_dir / HEADER).exists() and (run_dir / "records.jsonl").exists():
        raise ConfigError(
            f"{run_dir} is a run of the older format 1 (records.jsonl, no header.json); this version reads format "
            f"{FORMAT}: rerun it with this version into a new directory"
        )
    header = read_header(run_dir)  # no header.json, a broken one, or another format: one line
    for key in ("config", "backend", "versions", "vector_files"):
        if header.get(key) is not None and not isinstance(header[key], dict):
            raise ConfigError(f"{run_dir / HEADER}: its {key!r} is a {type(header[key]).__name__}, not an object; "
                              "the header is damaged: rerun into a new directory")  # fmt: skip
    if not (run_dir / SAMPLES).is_file():
        raise ConfigError(f"{run_dir} holds no {SAMPLES} (a run stopped before its first sample); nothing to report")
    return header


def check_out(out: Path, overwrite: bool, runs: Sequence[Path] = ()) -> None:
    """Refuse an ``out`` inside one of the ``runs`` read, a folder, an existing file without ``overwrite`` or an
    unwritable path (:func:`steerlab.fileio.check_out`), before anything is read at length or written."""
    _check_out(out, overwrite, runs, "a report")


def _within(text: str, start: int, end: int, lo: int) -> str | None:
    """The part of ``text[start:end]`` from ``lo`` on, stripped; None when nothing is left."""
    piece = text[max(start, lo) : end].strip() if end > lo else ""
    return piece or None


def split_turns(texts: Sequence[str], finish_reasons: Sequence[str | None]) -> list[dict[str, Any]]:
    """Each turn's scratchpad and output apart, as :mod:`steerlab.harness.parse` reads the transcript up to
    and including that turn (the engine continues a sample whose turn ended inside an open scratchpad, so a
    turn may start mid-block: its reasoning is reasoning, not output). A turn shows only its own part of a
    block that spans turns; a reasoning block still open after the turn (cut by the token limit, or
    continued next turn) is ``open_scratchpad``, from the first opening tag after the last closed block."""
    out = []
    for n, finish in enumerate(finish_reasons):
        full = transcript(texts[: n + 1])
        lo = len(transcript(texts[:n])) + (1 if n else 0)  # where turn n starts in the joined transcript
        blocks = []
        for m in REASONING_RE.finditer(full):
            group = 1 if m.group(1) is not None else 2
            piece = _within(full, m.start(group), m.end(group), lo)
            if piece is not None:
                blocks.append(piece)
        closed = last_reasoning_end(full)
        opens = [at for at in (full.find(tag, closed) for tag in REASONING_OPENS) if at >= 0]
        pending = None
        if opens:
            at = min(opens)
            tag = next(t for t in REASONING_OPENS if full.startswith(t, at))
            pending = _within(full, at + len(tag), len(full), lo) or ""
        output = None
        if parse(texts[: n + 1], finish or "").output is not None:
            start = output_start(full)
            if start >= 0:
                body = start + len(OUTPUT_OPEN)
                end = full.find(OUTPUT_CLOSE, body)
                output = _within(full, body, end if end >= 0 else len(full), lo)
            else:  # no <OUTPUT> tag: the text after the last closed reasoning block (raw, <think> models)
                output = _within(full, closed, len(full), lo)
        out.append({"scratchpad": "\n\n".join(blocks), "open_scratchpad": pending, "output": output})
    return out


def split_turn(text: str, finish_reason: str | None) -> dict[str, Any]:
    """One turn read alone (a single-turn sample): :func:`split_turns` of ``[text]``."""
    return split_turns([text], [finish_reason])[0]


def read_run_samples(run_dir: Path) -> list[dict[str, Any]]:
    """The run's samples, refused in one line where a row is no sample the page can show: not a JSON
    object, a turn without text, a repeated row id (:func:`steerlab.harness.records.check_unique`)."""
    source = Path(run_dir) / SAMPLES
    samples = read_samples(run_dir)
    for n, s in enumerate(samples, 1):
        if not isinstance(s, dict):
            raise ConfigError(f"{source}: row {n} is a JSON {type(s).__name__}, not a sample object; "
                              "the file is damaged: rerun into a new directory")  # fmt: skip
        turns = s.get("turns")
        if turns is not None and not isinstance(turns, list):
            raise ConfigError(f"{source}: row {n} ({s.get('id')}) has turns that are no list; the file is damaged")
        for t, turn in enumerate(turns or [], 1):
            text = turn.get("text", "") if isinstance(turn, dict) else turn
            if not isinstance(text, str):
                raise ConfigError(
                    f"{source}: row {n} ({s.get('id')}) turn {t} has no text (its text is {json.dumps(text)[:40]}); "
                    "the file is damaged: rerun into a new directory"
                )
        judge = s.get("judge")
        scores = judge.get("scores") if isinstance(judge, dict) else None
        if judge is not None and (not isinstance(judge, dict) or not isinstance(scores, (dict, type(None)))
                                  or not all(isinstance(v, dict) for v in (scores or {}).values())):  # fmt: skip
            raise ConfigError(f"{source}: row {n} ({s.get('id')}) has judge scores that are not objects of "
                              '{"score": ..., "justification": ...}; rerun steerlab judge on the run')  # fmt: skip
    check_unique(samples, source)
    return samples


def _user_message(sample: dict[str, Any]) -> str | None:
    users = [m.get("content") for m in sample.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    return users[0] if users else None


def slim(sample: dict[str, Any], systems: dict[str, int]) -> dict[str, Any]:
    """What the page shows of one sample (the system prompt once per distinct text, by index)."""
    system = sample.get("system")
    out: dict[str, Any] = {
        k: sample.get(k)
        for k in ("id", "item", "condition", "claim", "vector", "arm", "multiplier", "seed", "label", "finish_reason",
                  "n_new_tokens", "prompt", "gated", "dose_kl", "steering_multiplier", "layers", "sampling_seed")
        if sample.get(k) is not None
    }  # fmt: skip
    if system is not None:
        out["system"] = systems.setdefault(system, len(systems))
    elif isinstance(sample.get("template_system"), str):  # what the chat template shows instead of no system prompt
        out["template_system"] = systems.setdefault(sample["template_system"], len(systems))
    out["user"] = _user_message(sample)
    steer_if = sample.get("steer_if") or []
    raw = [t if isinstance(t, dict) else {"text": t} for t in sample.get("turns") or []]  # checked: text is str
    texts = [t.get("text", "") for t in raw]
    finishes = [t.get("finish_reason") for t in raw]
    turns = []
    for n, (turn, spans) in enumerate(zip(raw, split_turns(texts, finishes), strict=True)):
        entry = {"text": texts[n], "finish_reason": finishes[n], "n_new_tokens": turn.get("n_new_tokens"), **spans}
        if n < len(steer_if):
            entry["steer_if"] = steer_if[n]
        turns.append(entry)
    out["turns"] = turns
    judge = sample.get("judge")
    if isinstance(judge, dict):
        out["judge"] = {k: judge[k] for k in ("scores", "error", "skipped", "model") if k in judge}
    return out


def heatmap_data(path: Path, ids: set[str]) -> dict[str, Any]:
    """The token colouring of a ``steerlab heatmap`` output (its ``heatmap.h5``) for the samples of this run."""
    from steerlab.analysis.heatmap import read_h5
    from steerlab.analysis.heatmap_draw import _numbers

    path = Path(path)
    h5 = path / "heatmap.h5" if path.is_dir() else path
    if not h5.is_file():
        raise ConfigError(f"--heatmap {path} holds no heatmap.h5; give the --out folder of steerlab heatmap")
    maps = read_h5(h5)
    by_id = {
        s.id: {"tokens": s.tokens, "n_prompt": s.n_prompt, "average": [_numbers(row) for row in s.average]}
        for s in maps.samples
        if s.id in ids
    }  # fmt: skip
    if not by_id:
        raise ConfigError(f"--heatmap {path} colours none of this run's samples (it was computed for {maps.run_dir})")
    rows = [r["name"] + ("" if r.get("control") is None else " (control)") for r in maps.rows]
    return {"mode": maps.mode, "rows": rows, "layers": maps.layers, "by_id": by_id, "source": str(h5)}


def find_heatmap(run_dir: Path) -> Path | None:
    """A ``steerlab heatmap`` output computed for this run, in a sibling folder of the run (as ``make demo``
    leaves runs/demo/heatmap beside runs/demo/af_sweep), or None."""
    import h5py

    run_dir = Path(run_dir).resolve()
    for h5 in sorted(run_dir.parent.glob("*/heatmap.h5")):
        try:
            with h5py.File(h5, "r") as f:
                if f.attrs.get("kind") != "steerlab-heatmap":
                    continue
                source = Path(str(f.attrs.get("run_dir", "")))
        except OSError:
            continue
        if source.is_absolute():
            if source.resolve() == run_dir:
                return h5.parent
        # a relative run_dir (relative to where steerlab heatmap ran): every part of it must end the run's path
        elif source.parts and run_dir.parts[-len(source.parts) :] == source.parts:
            return h5.parent
    return None


def _layers(samples: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[int]]]:
    """The layers each (vector, arm) steered, as its samples record them."""
    out: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for s in samples:
        if s.get("layers") and s.get("vector") not in (None, "none"):
            out[s["vector"]].setdefault(str(s.get("arm")), list(s["layers"]))
    return dict(out)


def run_part(run_dir: Path, header: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """The server-rendered HTML of one run: header, summary tables, figures."""
    summary = None
    if (Path(run_dir) / SUMMARY).is_file():
        try:
            summary = json.loads((Path(run_dir) / SUMMARY).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{Path(run_dir) / SUMMARY} is broken (not JSON); rerun the run's summary") from None
        if not isinstance(summary, dict):
            raise ConfigError(f"{Path(run_dir) / SUMMARY} is a JSON {type(summary).__name__}, not an object of "
                              "tables; rerun the run's summary")  # fmt: skip
    return header_html(run_dir, header, _layers(samples), len(samples)) + summary_html(summary) + figures_html(run_dir)


def _order(value: Any) -> tuple:
    """A sort key for any JSON value (None first, then numbers, then the rest by their text)."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, 0, json.dumps(value, sort_keys=True, ensure_ascii=False))


def pair_samples(
    a: list[dict[str, Any]], b: list[dict[str, Any]]
) -> tuple[list[tuple[int, int]], list[str], list[str]]:
    """Pairs (index in a, index in b) of the same request: equal item, condition, seed, and each of vector,
    arm, multiplier and claim whose set of values is the same in both runs (the key); the other fields
    (``varies``) are what the comparison is about. Within one key, samples whose varying values are equal
    pair first (multiplier 0 with 0); the rest pair by the rank of their varying values (sorted: A's lowest
    left with B's lowest left), never by file order. Returns (pairs, key, varies)."""
    keep = [k for k in VARYING if {_order(s.get(k)) for s in a} == {_order(s.get(k)) for s in b}]
    varies = [k for k in VARYING if k not in keep]

    def vary(s: dict[str, Any]) -> tuple:
        return tuple(_order(s.get(k)) for k in varies)

    groups: dict[tuple, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for side, samples in enumerate((a, b)):
        for n, s in enumerate(samples):
            groups[(*(_order(s.get(k)) for k in ("item", "condition", "seed", *keep)),)][side].append(n)
    pairs = []
    for left, right in groups.values():
        left, right = sorted(left, key=lambda i: vary(a[i])), sorted(right, key=lambda j: vary(b[j]))
        for i in list(left):  # equal varying values first
            match = next((j for j in right if vary(b[j]) == vary(a[i])), None)
            if match is not None:
                pairs.append((i, match))
                left.remove(i)
                right.remove(match)
        pairs += zip(left, right, strict=False)  # then by rank
    return sorted(pairs), ["item", "condition", "seed", *keep], varies


def _embed(data: dict[str, Any], compress: bool | None) -> tuple[str, str]:
    """(encoding, text) of the page's data block; the JSON is made inert inside <script>."""
    # a lone surrogate (model text cut mid-character) stays a JSON escape: JSON.parse reads it back, UTF-8 has none
    text = SURROGATE.sub(
        lambda m: f"\\u{ord(m.group()):04x}", json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    if compress is None:
        compress = len(text.encode("utf-8")) > COMPRESS_ABOVE
    if compress:
        return "gzip+base64", base64.b64encode(gzip.compress(text.encode("utf-8"), mtime=0)).decode("ascii")
    return "json", text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(title: str, body: str, data: dict[str, Any], compress: bool | None = None) -> str:
    from html import escape

    encoding, payload = _embed(data, compress)
    parts = {"TITLE": escape(title), "BODY": body, "ENCODING": encoding, "DATA": payload}
    # one pass over the template: run text inside BODY that reads "__DATA__" stays text
    page = re.sub(r"__(TITLE|BODY|ENCODING|DATA)__", lambda m: parts[m.group(1)], PAGE)
    return SURROGATE.sub("\ufffd", page)  # in the server-rendered header and tables: shown as U+FFFD


def build_report(run_dir: Path, heatmap: Path | None = None, compress: bool | None = None) -> str:
    """The HTML of one run's report (reads only)."""
    header = check_run_dir(run_dir)
    samples = read_run_samples(run_dir)
    found = heatmap is None
    if found:
        heatmap = find_heatmap(run_dir)
    systems: dict[str, int] = {}
    data: dict[str, Any] = {"kind": "run", "samples": [slim(s, systems) for s in samples]}
    data["systems"] = list(systems)
    if heatmap is not None:
        try:
            data["heatmap"] = heatmap_data(heatmap, {str(s.get("id")) for s in samples})
        except ConfigError:
            if not found:  # named by --heatmap: say what is wrong; a folder found beside the run is only a guess
                raise
    return render(f"steerlab report: {Path(run_dir).name}", run_part(run_dir, header, samples), data, compress)


def build_compare(run_a: Path, run_b: Path, compress: bool | None = None) -> str:
    """The HTML of two runs side by side, the same request's samples paired (reads only)."""
    from html import escape

    headers = [check_run_dir(run_a), check_run_dir(run_b)]
    a, b = read_run_samples(run_a), read_run_samples(run_b)
    pairs, key, varies = pair_samples(a, b)
    if not pairs:
        raise ConfigError(f"{run_a} and {run_b} share no request (no sample with the same {', '.join(key)}); "
                          "compare runs of the same requests")  # fmt: skip
    systems: dict[str, int] = {}
    data = {
        "kind": "compare", "names": [Path(run_a).name, Path(run_b).name], "key": key, "varies": varies,
        "pairs": [{"a": slim(a[i], systems), "b": slim(b[j], systems)} for i, j in pairs],
        "unpaired": [len(a) - len(pairs), len(b) - len(pairs)],
    }  # fmt: skip
    data["systems"] = list(systems)
    parts = [
        f'<details class="run"><summary>run {"AB"[n]}: {escape(str(d))}</summary>{run_part(d, h, s)}</details>'
        for n, (d, h, s) in enumerate(((run_a, headers[0], a), (run_b, headers[1], b)))
    ]  # fmt: skip
    title = f"steerlab compare: {Path(run_a).name} vs {Path(run_b).name}"
    return render(title, "".join(parts), data, compress)


def write_report(
    run_dir: Path | None,
    out: Path | None = None,
    *,
    heatmap: Path | None = None,
    compare: Sequence[Path] | None = None,
    overwrite: bool = False,
    compress: bool | None = None,
) -> Path:
    """The command: check every input, build the page, write it atomically; returns its path.

    ``compare`` (two run directories) makes the side-by-side page instead of one run's."""
    if compare:
        if run_dir is not None:
            raise ConfigError("give either RUN_DIR or --compare RUN_A RUN_B, not both")
        if heatmap is not None:
            raise ConfigError("--heatmap colours one run's report; leave it out with --compare")
        run_a, run_b = (Path(p) for p in compare)
        for p in (run_a, run_b):
            check_run_dir(p)
        out = Path(out) if out is not None else default_out(run_a, run_b)
        check_out(out, overwrite, (run_a, run_b))
        page = build_compare(run_a, run_b, compress)
    else:
        if run_dir is None:
            raise ConfigError("give a run directory: steerlab report RUN_DIR (or --compare RUN_A RUN_B)")
        check_run_dir(Path(run_dir))
        out = Path(out) if out is not None else default_out(Path(run_dir))
        check_out(out, overwrite, (Path(run_dir),))
        if heatmap is not None and not Path(heatmap).exists():
            raise ConfigError(f"--heatmap {heatmap} does not exist; give the --out folder of steerlab heatmap")
        page = build_report(Path(run_dir), heatmap, compress)
    try:
        atomic_write_text(out, page)  # a temporary file beside it, renamed: no partial report is ever left
    except OSError as exc:  # a full disk, a folder made read-only meanwhile
        raise ConfigError(f"cannot write --out {out} ({exc.strerror or exc}); choose another path") from None
    return out
