"""The server-rendered parts of a run's report: the header (model, backend, scenario, claims, vectors,
seeds, versions, commit), the tables of ``summary.json`` and the run's figures. Every value from the run
goes through :func:`html.escape`; numbers keep their exact JSON value in ``data-value``."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any


def _text(value: Any) -> str:
    if isinstance(value, str):
        return escape(value)
    return "<code>" + escape(json.dumps(value, ensure_ascii=False, sort_keys=True)) + "</code>"


def kv_table(pairs: Mapping[str, Any], cls: str = "kv") -> str:
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{_text(v)}</td></tr>" for k, v in pairs.items())
    return f'<table class="{cls}">{rows}</table>'


def _long(title: str, text: str | None) -> str:
    if not text:
        return ""
    return f"<details><summary>{escape(title)} ({len(text)} characters)</summary><pre>{escape(text)}</pre></details>"


def header_html(run_dir: Path, header: dict[str, Any], layers: dict[str, dict[str, list[int]]], n: int) -> str:
    """The run's header: what it ran, with which settings, by which code."""
    config = header.get("config") or {}
    scenario = header.get("scenario") if isinstance(header.get("scenario"), dict) else {}
    fingerprint = header.get("model") if isinstance(header.get("model"), dict) else {}
    backend = header.get("backend") or {}
    glance = {
        "model": config.get("model"), "architecture": fingerprint.get("architecture"),
        "embed hash": fingerprint.get("embed_hash"), "backend": backend.get("backend"), "dtype": backend.get("dtype"),
        "scenario": scenario.get("name") if scenario else header.get("scenario"),
        "conditions": ", ".join(map(str, scenario.get("conditions") or [])) if scenario else None,
        "multipliers": config.get("multipliers"), "operator": config.get("operator"),
        "steer_if": config.get("steer_if"), "steer_only": config.get("steer_only"), "claims": config.get("claims"),
        "samples": n, "seeds": header.get("seeds"), "git commit": header.get("git_commit"),
        "steerlab": (header.get("versions") or {}).get("steerlab"),
    }  # fmt: skip
    parts = [f'<section class="header"><h2>Run <code>{escape(str(run_dir))}</code></h2>',
             '<div class="glance">' + "".join(f"<span><b>{escape(k)}</b> {_text(v)}</span>" for k, v in glance.items()
                                             if v is not None) + "</div>",
             '<details class="full"><summary>full header: model, backend, scenario, claims, vectors, seeds, '
             'settings, versions</summary><div class="tables">']  # fmt: skip
    model = {"model": config.get("model"), "lora": config.get("lora"), "fingerprint": header.get("model")}
    parts.append("<h3>Model</h3>" + kv_table({k: v for k, v in model.items() if v is not None}))
    if backend:
        parts.append("<h3>Backend and engine</h3>" + kv_table(backend))
    if scenario:
        shown = {k: v for k, v in scenario.items() if k not in ("system_prompt", "user_template_text")}
        parts.append(
            "<h3>Scenario</h3>" + kv_table(shown) + _long("system prompt", scenario.get("system_prompt"))
            + _long("user template", scenario.get("user_template_text"))
        )  # fmt: skip
    elif header.get("scenario"):
        parts.append("<h3>Scenario</h3>" + _text(header.get("scenario")))
    if header.get("claims"):
        parts.append("<h3>Claims</h3>" + _text(header["claims"]))
    vectors = header.get("vector_files") or {}
    if vectors or layers:
        rows = "".join(f"<tr><td>{escape(str(p))}</td><td><code>{escape(str(h))}</code></td></tr>"
                       for p, h in vectors.items())  # fmt: skip
        rows += "".join(
            f"<tr><td>{escape(v)} / {escape(arm)}</td><td>layers {escape(', '.join(map(str, ls)))}</td></tr>"
            for v, arms in layers.items() for arm, ls in arms.items()
        )  # fmt: skip
        parts.append(f'<h3>Vectors</h3><table class="kv">{rows}</table>')
    seeds = {k: header.get(k) for k in ("run_seed", "seeds", "sampling_seeds") if header.get(k) is not None}
    parts.append("<h3>Seeds</h3>" + kv_table(seeds))
    parts.append("<h3>Settings</h3>" + kv_table({k: v for k, v in config.items() if v is not None}))
    record = {
        "samples": n, "rows planned": header.get("n_rows"), "requests": len(header.get("items") or []),
        "format": header.get("format"), "git commit": header.get("git_commit"), "chat date": header.get("chat_date"),
        "config hash": header.get("config_hash"), "requests hash": header.get("requests_hash"),
        "intervention": header.get("intervention"), "prompt files": header.get("prompt_files"),
    }  # fmt: skip
    parts.append("<h3>Record</h3>" + kv_table({k: v for k, v in record.items() if v is not None}))
    parts.append("<h3>Versions</h3>" + kv_table(header.get("versions") or {}))
    return "".join(parts) + "</div></details></section>"


def _flat(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None or not isinstance(value, (int, float)):
        return f"<td>{_text(value) if value is not None else ''}</td>"
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f'<td class="num" data-value="{escape(json.dumps(value))}">{shown}</td>'


def _estimates(columns: list[str]) -> dict[str, str]:
    """The estimate each interval belongs to: {estimate column: its ci_low column}. The estimate is the column
    just before ``ci_low`` with the same prefix (``gap`` for ``ci_low``, ``monitored.rate`` for
    ``monitored.ci_low``); an interval without one stays in its own columns only."""
    out = {}
    for n, c in enumerate(columns):
        if c.endswith("ci_low") and n > 0:
            prefix = c[: -len("ci_low")]
            before = columns[n - 1]
            if before.startswith(prefix) and "." not in before[len(prefix) :] and not before.endswith("ci_high"):
                out[before] = c
    return out


def table_html(name: str, rows: list[Mapping[str, Any]]) -> str:
    """A list of records as one table (nested records flattened to ``a.b`` columns); each interval
    (``ci_low``, ``ci_high``) also shown beside its estimate as ``[low, high]``."""
    flat = [_flat(r) for r in rows]
    columns: list[str] = []
    for r in flat:
        columns += [c for c in r if c not in columns]
    estimates = _estimates(columns)
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for r in flat:
        cells = []
        for c in columns:
            cells.append(_cell(r.get(c)))
            if c in estimates and isinstance(r.get(c), (int, float)):
                low_key = estimates[c]
                low, high = r.get(low_key), r.get(low_key[: -len("ci_low")] + "ci_high")
                if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)):
                    cells[-1] = cells[-1].replace("</td>", f' <span class="ci">[{low:.3g}, {high:.3g}]</span></td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<h3>{escape(name)}</h3><div class="scroll"><table class="summary" data-table="{escape(name)}">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")  # fmt: skip


def _is_estimate(value: Any) -> bool:
    return isinstance(value, Mapping) and "value" in value and "ci_low" in value


def summary_html(summary: dict[str, Any] | None) -> str:
    """Every table of ``summary.json`` (each list of records; each record of estimates such as prompt-eval's
    ``net``, ``{"A_net": {"value", "ci_low", "ci_high"}, ...}``, as a table of them), then its other entries."""
    if summary is None:
        return '<section class="summary"><h2>Summary</h2><p>no summary.json in this run</p></section>'
    tables, rest = [], {}
    for key, value in summary.items():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables.append(table_html(key, value))
        elif isinstance(value, Mapping) and any(_is_estimate(v) for v in value.values()):
            rows = [{"estimate": k, **v} for k, v in value.items() if _is_estimate(v)]
            others = {k: v for k, v in value.items() if not _is_estimate(v)}
            tables.append(table_html(key, rows) + (kv_table(others) if others else ""))
        else:
            rest[key] = value
    return f'<section class="summary"><h2>Summary</h2>{"".join(tables)}{kv_table(rest)}</section>'


def figures_html(run_dir: Path) -> str:
    """The PNG figures the run left in its directory (sweep.png, af_sweep.png, ...), inline."""
    images = []
    for png in sorted(Path(run_dir).glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        images.append(f'<figure><img alt="{escape(png.name)}" src="data:image/png;base64,{data}">'
                      f"<figcaption>{escape(png.name)}</figcaption></figure>")  # fmt: skip
    return f'<section class="figures"><h2>Figures</h2>{"".join(images)}</section>' if images else ""
