"""Draw :class:`~steerlab.analysis.heatmap.Heatmaps`: a PNG per sample (matplotlib) and one
self-contained, offline ``heatmap.html`` (inline CSS and JS; nothing fetched). Computes nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from steerlab.analysis.heatmap import Heatmaps, SampleMap
from steerlab.fileio import atomic_path, atomic_write_text

WRAP = 110  # characters per line in the PNG
FONT = 6.5  # points; a monospace character is 0.6 em wide, one unit of the PNG's x axis
CMAP = "RdBu_r"


def _display(piece: str) -> list[str]:
    """A token's piece as PNG text, split at newlines (each newline shown as ↵ ends a line)."""
    piece = piece.replace("\t", "    ").replace("\r", "")
    parts = piece.split("\n")
    return [p + "↵" for p in parts[:-1]] + [parts[-1]]


def _layout(tokens: list[str]) -> tuple[list[tuple[int, int, int, str]], int]:
    """(token index, line, column, text) boxes of the tokens wrapped at :data:`WRAP`, and the line count."""
    boxes, line, col = [], 0, 0
    for i, piece in enumerate(tokens):
        parts = _display(piece)
        for k, part in enumerate(parts):
            if col and col + len(part) > WRAP:
                line, col = line + 1, 0
            if part:
                boxes.append((i, line, col, part))
                col += len(part)
            if k < len(parts) - 1:
                line, col = line + 1, 0
    return boxes, line + 1


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "sample"


def draw_sample(sample: SampleMap, maps: Heatmaps):
    """One figure: a block per row (each vector, its controls below it), each token's background
    coloured by the row's layer-averaged value on a diverging map centred at 0 (symmetric limits
    shared by a vector and its controls)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    boxes, n_lines = _layout(sample.tokens)
    limit = float(np.nanmax(np.abs(sample.average))) if sample.average.size else 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-(limit or 1.0), vmax=limit or 1.0)
    cmap = plt.get_cmap(CMAP)
    block = n_lines + 2
    total = block * len(maps.rows)
    fig = plt.figure(figsize=(WRAP * FONT * 0.6 / 72 / 0.96, 0.16 * total + 1.6))
    ax = fig.add_axes((0.02, 0.9 / (0.16 * total + 1.6), 0.96, 1 - 1.4 / (0.16 * total + 1.6)))
    ax.set_xlim(0, WRAP)
    ax.set_ylim(total, 0)
    ax.axis("off")
    for r, row in enumerate(maps.rows):
        top = r * block
        what = "control" if row["control"] is not None else "vector"
        layers = ",".join(map(str, row["layers"]))
        ax.text(0, top + 0.8, f"{row['name']} ({what}; {maps.mode}, mean of layers {layers})", fontsize=8,
                fontweight="bold" if row["control"] is None else "normal", va="baseline", parse_math=False)  # fmt: skip
        for i, line, col, text in boxes:
            y = top + 1 + line
            ax.add_patch(Rectangle((col, y + 0.1), len(text), 0.95, color=cmap(norm(sample.average[r, i])), lw=0))
            ax.text(col, y + 0.8, text, fontsize=FONT, family="DejaVu Sans Mono", va="baseline", parse_math=False)
    cax = fig.add_axes((0.3, 0.25 / (0.16 * total + 1.6), 0.4, 0.3 / (0.16 * total + 1.6)))
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
    bar.set_label(f"{maps.mode} (layer mean); {sample.condition} · {sample.id}", fontsize=7)
    return fig


def write_pngs(out: Path, maps: Heatmaps) -> list[Path]:
    """``NNNN_<sample id>.png`` per sample, each written atomically."""
    import matplotlib.pyplot as plt

    paths = []
    for n, sample in enumerate(maps.samples):
        path = Path(out) / f"{n:04d}_{safe_name(sample.id)}.png"
        fig = draw_sample(sample, maps)
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=110)
        finally:
            plt.close(fig)
        paths.append(path)
    return paths


def _numbers(values: np.ndarray) -> list[Any]:
    """float32 values as JSON numbers that read back to the same float32 (9 significant digits)."""
    return json.loads("[" + ",".join(f"{float(x):.9g}" for x in np.asarray(values, np.float32).ravel()) + "]")


def html_data(maps: Heatmaps) -> dict[str, Any]:
    """What the page embeds: rows, layers, and per sample its tokens, values and averages."""
    return {
        "mode": maps.mode, "layers": maps.layers, "rows": maps.rows, "run_dir": maps.run_dir,
        "samples": [{
            "id": s.id, "item": s.item, "condition": s.condition, "tokens": s.tokens, "n_prompt": s.n_prompt,
            "values": [[_numbers(s.values[r, li]) for li in range(len(maps.layers))] for r in range(len(maps.rows))],
            "average": [_numbers(s.average[r]) for r in range(len(maps.rows))],
        } for s in maps.samples],
    }  # fmt: skip


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>steerlab heatmap</title>
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>
body{font:13px system-ui,sans-serif;margin:1.5em;color:#222}
.controls{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ccc}
.sample{margin:1.2em 0}.sample h2{font-size:14px;margin:.3em 0}
.text{font:12px/1.7 ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}
.tok{border-radius:2px}.gen{outline:1px dotted #999}
#tip{position:fixed;background:#222;color:#fff;padding:2px 6px;font-size:12px;display:none;pointer-events:none}
</style></head><body>
<h1 style="font-size:16px">Token heatmap (__MODE__)</h1>
<div class="controls">vector <select id="row"></select> layer <select id="layer"></select>
<span id="scale"></span></div><div id="samples"></div><div id="tip"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const rowSel = document.getElementById("row"), layerSel = document.getElementById("layer");
D.rows.forEach((r, i) => rowSel.add(new Option(r.name + (r.control === null ? "" : " (control)"), i)));
layerSel.add(new Option("mean of the vector's layers", "avg"));
D.layers.forEach((l, i) => layerSel.add(new Option("layer " + l, i)));
function colour(v, m) {
  const t = Math.max(-1, Math.min(1, v / m)), a = Math.abs(t);
  const c = t > 0 ? [178, 24, 43] : [33, 102, 172];
  return "rgb(" + c.map(x => Math.round(255 + (x - 255) * a)).join(",") + ")";
}
function series(s, r, l) { return l === "avg" ? s.average[r] : s.values[r][l]; }
function draw() {
  const r = +rowSel.value, l = layerSel.value, box = document.getElementById("samples");
  const vec = D.rows[r].vector, mates = D.rows.map((x, i) => i).filter(i => D.rows[i].vector === vec);
  box.textContent = "";
  D.samples.forEach(s => {
    let m = 0; mates.forEach(i => series(s, i, l).forEach(v => { m = Math.max(m, Math.abs(v)); }));
    m = m || 1;
    const div = document.createElement("div"); div.className = "sample";
    const h = document.createElement("h2");
    h.textContent = s.condition + " · " + s.id + "  (colour scale ±" + m.toPrecision(3) + ")";
    const text = document.createElement("div"); text.className = "text";
    const vals = series(s, r, l);
    s.tokens.forEach((t, i) => {
      const span = document.createElement("span");
      span.className = "tok" + (i >= s.n_prompt ? " gen" : "");
      span.textContent = t; span.dataset.v = vals[i];
      span.style.background = colour(vals[i], m);
      text.appendChild(span);
    });
    div.append(h, text); box.appendChild(div);
  });
}
const tip = document.getElementById("tip");
document.addEventListener("mousemove", e => {
  const t = e.target;
  if (t.classList && t.classList.contains("tok")) {
    tip.style.display = "block"; tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px";
    tip.textContent = D.mode + " " + Number(t.dataset.v).toFixed(4) + "  " + JSON.stringify(t.textContent);
  } else tip.style.display = "none";
});
rowSel.onchange = draw; layerSel.onchange = draw; draw();
</script></body></html>
"""


def render_html(maps: Heatmaps) -> str:
    data = json.dumps(html_data(maps), ensure_ascii=False, separators=(",", ":"))
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # inert inside <script>
    return _PAGE.replace("__MODE__", maps.mode).replace("__DATA__", data)


def write_html(path: Path, maps: Heatmaps) -> None:
    atomic_write_text(Path(path), render_html(maps))
