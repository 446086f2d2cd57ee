"""The page of ``steerlab report``: inline CSS and JS, no external resource (its Content-Security-Policy
forbids any fetch). The samples arrive as JSON in ``<script type="application/json" id="data">``
(``data-encoding``: ``json``, or ``gzip+base64`` decompressed with ``DecompressionStream``); every run
text is put in the DOM with ``textContent``. Filters, full-text search, pages of 50 samples, and
permalinks (``#sample=ID``; ``#pair=ID`` in a comparison, ID the first run's sample id)."""

from __future__ import annotations

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:13px/1.45 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
main{max-width:1400px;margin:0 auto;padding:1em 1.5em}
h1{font-size:19px;margin:.2em 0 .6em}h2{font-size:16px;margin:1em 0 .4em}h3{font-size:14px;margin:.8em 0 .3em}
section,details.run{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:.4em 1em;margin:.8em 0}
table{border-collapse:collapse;margin:.2em 0}
td,th{border:1px solid #e1e4ea;padding:2px 6px;vertical-align:top;text-align:left}
.glance{display:flex;flex-wrap:wrap;gap:.3em 1.2em;margin:.3em 0 .5em}.glance b{color:#556;font-weight:600}
.tables{column-width:520px;column-gap:1.5em}.tables table{break-inside:avoid}
table.kv th{background:#f0f2f5;font-weight:600;white-space:nowrap}
table.summary th{background:#eef1f6;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}.ci{color:#667;font-size:11px}
.scroll{overflow:auto;max-height:420px}code,pre{font:12px/1.5 ui-monospace,Menlo,monospace}
pre{white-space:pre-wrap;word-break:break-word;margin:.2em 0}
figure{display:inline-block;margin:.4em}figure img{max-width:640px;border:1px solid #ddd}
#bar{position:sticky;top:0;z-index:2;background:#fff;border-bottom:2px solid #3b6fd8;padding:.5em 1.5em;display:flex;
 flex-wrap:wrap;gap:.4em 1em;align-items:center}
#bar label{white-space:nowrap}#bar input[type=number]{width:4.5em}#q{width:16em}
#countline{font-weight:600;font-size:14px}#count{color:#3b6fd8}
article.sample{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:.5em 1em;margin:.6em 0}
article.pair{display:grid;grid-template-columns:1fr 1fr;gap:.8em}article.pair>article.sample{margin:0}
.pairhead{grid-column:1/3;font-weight:600}
article.sample h3{margin:.1em 0 .3em;font-size:13px;word-break:break-all}a.perma{margin-right:.5em;text-decoration:none}
.badge{display:inline-block;border-radius:10px;background:#eef1f6;padding:0 .6em;margin:0 .3em .2em 0;font-size:12px}
.l-compliant{background:#fde2e1;color:#9b1c1c}.l-rejected{background:#dcf2e3;color:#155e2b}
.l-truncated{background:#fff2cc;color:#7a5a00}.l-unparseable{background:#e8e0f6;color:#4b2a85}
.b-gated{background:#333;color:#fff}
.turn{border-left:3px solid #c9d3e6;padding-left:.6em;margin:.5em 0}.turnhead{color:#556;font-size:12px}
.split{display:grid;grid-template-columns:1fr 1fr;gap:.6em}.pane{border-radius:4px;padding:.2em .5em}
.scratch{background:#f4f1e8}.out{background:#e9f3ec}.panehead{font-weight:600;font-size:12px;color:#445}
.user{background:#eef3fb;border-radius:4px;padding:.2em .5em}.none{color:#999;font-style:italic}
.tag{color:#b3261e;background:#fbe9e7;border-radius:2px;font-weight:600}
.steerif{font-size:12px;color:#7a4b00}.judge td:nth-child(2){text-align:right}
.tok{border-radius:2px}.gen{outline:1px dotted #999}.hm{font:12px/1.7 ui-monospace,monospace;white-space:pre-wrap}
#focus{border:2px solid #3b6fd8;border-radius:6px;padding:.3em .8em;background:#f3f7ff}
#pager button{margin:0 .3em}.warn{color:#9b1c1c}
</style></head><body>
<div id="bar"><span id="countline"><span id="count">…</span> of <span id="total">…</span> shown</span>
<span id="filters"></span><label>search <input id="q" type="search" placeholder="text in any field"></label>
<span id="pager"></span></div>
<main><h1>__TITLE__</h1>
<noscript><p class="warn">The samples need JavaScript; the header and summary below do not.</p></noscript>
<div id="focus" hidden></div>
__BODY__
<section><h2>Samples</h2><div id="pairinfo"></div><div id="samples"></div></section>
</main>
<script type="application/json" id="data" data-encoding="__ENCODING__">__DATA__</script>
<script>
"use strict";
const $ = id => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
async function load() {
  const node = $("data"), raw = node.textContent.trim();
  if (node.dataset.encoding === "gzip+base64") {
    const bin = atob(raw), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return JSON.parse(await new Response(stream).text());
  }
  return JSON.parse(raw);
}
let D, items = [], shown = [], page = 0;
const PER_PAGE = 50, FIELDS = ["condition", "label", "vector", "arm", "multiplier", "claim", "item"];
const sides = it => D.kind === "compare" ? [it.a, it.b] : [it];
const keyOf = it => D.kind === "compare" ? it.a.id : it.id;
const cmp = (a, b) => { const x = Number(a), y = Number(b); return isNaN(x) || isNaN(y) ? a.localeCompare(b) : x - y; };
function tagged(text, cls) {
  const pre = el("pre", cls || "text"), re = /<\/?[A-Za-z_][A-Za-z0-9_]*\/?>/g;
  let last = 0, m;
  while ((m = re.exec(text))) {
    if (m.index > last) pre.append(document.createTextNode(text.slice(last, m.index)));
    pre.append(el("span", "tag", m[0]));
    last = m.index + m[0].length;
  }
  pre.append(document.createTextNode(text.slice(last)));
  return pre;
}
function pane(title, text, cls) {
  const d = el("div", "pane " + cls);
  d.append(el("div", "panehead", title));
  d.append(text === null || text === undefined || text === "" ? el("div", "none", "(none)") : tagged(text));
  return d;
}
function colour(v, m) {
  const t = Math.max(-1, Math.min(1, v / m)), a = Math.abs(t), c = t > 0 ? [178, 24, 43] : [33, 102, 172];
  return "rgb(" + c.map(x => Math.round(255 + (x - 255) * a)).join(",") + ")";
}
function heat(s) {
  const h = D.heatmap && D.heatmap.by_id[s.id];
  if (!h) return null;
  const det = el("details", "heat"), sel = el("select"), box = el("div", "hm");
  det.open = true;
  det.append(el("summary", null, "token heatmap (" + D.heatmap.mode + ", mean of layers)"), sel, box);
  D.heatmap.rows.forEach((r, i) => sel.add(new Option(r, i)));
  const draw = () => {
    const vals = h.average[+sel.value]; let m = 0;
    vals.forEach(v => { m = Math.max(m, Math.abs(v)); }); m = m || 1;
    box.textContent = "";
    h.tokens.forEach((t, i) => {
      const span = el("span", "tok" + (i >= h.n_prompt ? " gen" : ""), t);
      span.style.background = colour(vals[i], m); span.title = D.heatmap.mode + " " + vals[i].toFixed(4);
      box.append(span);
    });
  };
  sel.onchange = draw; draw();
  return det;
}
function card(s, perma) {
  const c = el("article", "sample"), h = el("h3"), a = el("a", "perma", "¶");
  c.dataset.id = s.id;
  a.href = perma; a.title = "permalink to this sample";
  h.append(a, el("span", "sid", s.id)); c.append(h);
  const meta = el("div", "meta");
  ["condition", "claim", "vector", "arm", "multiplier", "seed", "label", "gated", "dose_kl", "steering_multiplier",
   "finish_reason", "n_new_tokens"].forEach(k => {
    if (s[k] === undefined || s[k] === null) return;
    meta.append(el("span", "badge b-" + k + (k === "label" ? " l-" + s[k] : ""), k + " " + s[k]));
  });
  if (s.layers && s.layers.length) meta.append(el("span", "badge", "layers " + s.layers.join(",")));
  c.append(meta);
  if (s.system !== undefined) {
    const det = el("details");
    det.append(el("summary", null, "system prompt"), tagged(D.systems[s.system])); c.append(det);
  } else if (s.template_system !== undefined) {  // no system prompt given: the one the chat template shows instead
    const det = el("details", "tsystem");
    det.append(el("summary", null, "system prompt (none given: the chat template's own)"),
               tagged(D.systems[s.template_system])); c.append(det);
  }
  if (s.user) {
    const u = el("div", "user"); u.append(el("div", "panehead", "user message"), tagged(s.user)); c.append(u);
  }
  (s.turns || []).forEach((t, n) => {
    const tb = el("div", "turn");
    const what = " · " + (t.finish_reason || "?") + " · " + (t.n_new_tokens ?? "?") + " tokens";
    tb.append(el("div", "turnhead", "turn " + (n + 1) + what));
    if (t.steer_if !== undefined) {
      const met = t.steer_if.met ? "condition met: steered" : "condition not met: not steered";
      tb.append(el("div", "steerif", "steer_if: " + met + " (score " + Number(t.steer_if.score).toPrecision(4) + ")"));
    }
    const split = el("div", "split");
    const left = t.open_scratchpad ? (t.scratchpad ? "\n\n" : "") + t.open_scratchpad + "  [left open]" : "";
    const scratch = (t.scratchpad || "") + left;
    split.append(pane("scratchpad", scratch, "scratch"), pane("output", t.output, "out"));
    const raw = el("details", "raw");
    raw.append(el("summary", null, "full text, tags highlighted"), tagged(t.text));
    tb.append(split, raw); c.append(tb);
  });
  const j = s.judge;
  if (j) {
    if (j.scores) {
      const tab = el("table", "judge");
      const hr = el("tr");
      ["concept", "score", "justification"].forEach(x => hr.append(el("th", null, x))); tab.append(hr);
      Object.entries(j.scores).forEach(([k, v]) => {
        const tr = el("tr");
        tr.append(el("td", null, k), el("td", null, v.score), el("td", null, v.justification)); tab.append(tr);
      });
      const box = el("div");
      box.append(el("div", "panehead", "judge" + (j.model ? " (" + j.model + ")" : "")), tab); c.append(box);
    } else c.append(el("div", "none", "judge: " + (j.error ? "error: " + j.error : j.skipped || "no scores")));
  }
  const hm = heat(s); if (hm) c.append(hm);
  return c;
}
function render(it) {
  if (D.kind !== "compare") return card(it, "#sample=" + encodeURIComponent(it.id));
  const p = el("article", "pair"), perma = "#pair=" + encodeURIComponent(it.a.id);
  p.dataset.id = it.a.id;
  const v = x => x === undefined || x === null ? "(none)" : x;
  const vary = (D.varies || []).map(k =>
    k + " " + v(it.a[k]) + " (" + D.names[0] + ") vs " + v(it.b[k]) + " (" + D.names[1] + ")");
  const same = D.key.filter(k => it.a[k] !== undefined && it.a[k] !== null).map(k => k + " " + it.a[k]);
  p.append(el("div", "pairhead", same.concat(vary).join(" · ")));
  p.append(card(it.a, perma), card(it.b, perma));
  return p;
}
function hay(s) {
  if (s._hay === undefined) {
    const parts = [s.id, s.prompt, s.user];
    (s.turns || []).forEach(t => parts.push(t.text));
    if (s.judge && s.judge.scores) Object.values(s.judge.scores).forEach(v => parts.push(v.justification));
    s._hay = parts.filter(x => x).join("\n").toLowerCase();
  }
  return s._hay;
}
function filters() {
  const f = {fields: [], q: $("q").value.trim().toLowerCase(), concept: null, min: null, max: null};
  document.querySelectorAll("select[data-field]").forEach(s => {
    if (s.value !== "") f.fields.push([s.dataset.field, s.value]);
  });
  if ($("f-judge") && $("f-judge").value !== "") {
    f.concept = $("f-judge").value;
    f.min = $("f-jmin").value === "" ? null : Number($("f-jmin").value);
    f.max = $("f-jmax").value === "" ? null : Number($("f-jmax").value);
  }
  return f;
}
function matches(s, f) {
  for (const [k, v] of f.fields) if (String(s[k]) !== v) return false;
  if (f.concept) {
    const sc = s.judge && s.judge.scores && s.judge.scores[f.concept];
    if (!sc) return false;
    const v = Number(sc.score);
    if ((f.min !== null && v < f.min) || (f.max !== null && v > f.max)) return false;
  }
  return !f.q || hay(s).includes(f.q);
}
function apply() {
  const f = filters();
  shown = items.filter(it => sides(it).some(s => matches(s, f)));
  page = 0; $("count").textContent = shown.length; draw();
}
function draw() {
  const box = $("samples"), pages = Math.max(1, Math.ceil(shown.length / PER_PAGE));
  box.textContent = "";
  shown.slice(page * PER_PAGE, (page + 1) * PER_PAGE).forEach(it => box.append(render(it)));
  const pager = $("pager"); pager.textContent = "";
  const prev = el("button", null, "‹ prev"), next = el("button", null, "next ›");
  prev.disabled = page === 0; next.disabled = page >= pages - 1;
  prev.onclick = () => { page--; draw(); }; next.onclick = () => { page++; draw(); };
  pager.append(prev, el("span", null, "page " + (page + 1) + " of " + pages), next);
}
function setup() {
  const box = $("filters");
  FIELDS.forEach(f => {
    const vals = new Set();
    items.forEach(it => sides(it).forEach(s => { if (s[f] !== undefined && s[f] !== null) vals.add(String(s[f])); }));
    if (vals.size < 2 && f !== "condition" && f !== "label") return;
    if (!vals.size) return;
    const lab = el("label", null, f + " "), sel = el("select");
    sel.id = "f-" + f; sel.dataset.field = f; sel.add(new Option("all", ""));
    [...vals].sort(cmp).forEach(v => sel.add(new Option(v, v)));
    sel.onchange = apply; lab.append(sel); box.append(lab);
  });
  const concepts = new Set();
  items.forEach(it => sides(it).forEach(s => {
    if (s.judge && s.judge.scores) Object.keys(s.judge.scores).forEach(k => concepts.add(k));
  }));
  if (concepts.size) {
    const lab = el("label", null, "judge "), sel = el("select"), lo = el("input"), hi = el("input");
    sel.id = "f-judge"; sel.add(new Option("any", ""));
    [...concepts].sort().forEach(k => sel.add(new Option(k, k)));
    lo.id = "f-jmin"; hi.id = "f-jmax"; lo.type = hi.type = "number"; lo.placeholder = "min"; hi.placeholder = "max";
    sel.onchange = lo.oninput = hi.oninput = apply;
    lab.append(sel, " ", lo, "–", hi); box.append(lab);
  }
  let timer = null;
  $("q").oninput = () => { clearTimeout(timer); timer = setTimeout(apply, 120); };
}
function focus() {
  const box = $("focus"), m = location.hash.match(/^#(?:sample|pair)=(.*)$/);
  box.textContent = "";
  if (!m) { box.hidden = true; return; }
  let id;
  try { id = decodeURIComponent(m[1]); } catch (e) { id = m[1]; }  // a hand-edited link that is no URI escape
  const it = items.find(x => keyOf(x) === id);
  box.hidden = false;
  if (!it) { box.append(el("p", "warn", "no sample " + id + " in this report")); return; }
  box.append(el("h2", null, "Linked sample"), render(it));
  box.scrollIntoView();
}
load().then(data => {
  D = data; items = D.kind === "compare" ? D.pairs : D.samples;
  $("total").textContent = items.length;
  if (D.kind === "compare") {
    const by = D.varies && D.varies.length ? ", compared by " + D.varies.join(", ") : "";
    $("pairinfo").textContent = items.length + " pairs of the same request (same " + D.key.join(", ") + ")" + by +
      "; left unpaired: " + D.unpaired[0] + " samples of " + D.names[0] + ", " + D.unpaired[1] + " of " + D.names[1];
  }
  window.addEventListener("hashchange", focus);
  setup(); apply(); focus();
  document.body.dataset.ready = "1";
}).catch(e => {
  $("samples").append(el("p", "warn", "could not read the embedded samples: " + e));
  document.body.dataset.ready = "error";
});
</script></body></html>
"""
