"""The HTML/CSS/JS template of the inspection page; :mod:`rnnlab.inspection.html` fills in the data."""

#: ``__DATA__`` is replaced by the JSON payload, ``__TITLE__`` by the HTML-escaped title.
PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.2em 2em; color: #222; background: #fff; }
  h1 { font-size: 1.4em; margin-bottom: .2em; }
  h2 { font-size: 1.1em; margin-top: 1.6em; }
  #picker { display: flex; gap: 1.2em; align-items: center; flex-wrap: wrap; padding: .6em .8em;
            background: #f4f4f6; border-radius: 6px; position: sticky; top: 0; }
  #picker label { font-size: .9em; }
  #text { font-family: ui-monospace, monospace; font-size: 14px; line-height: 1.55; white-space: pre-wrap;
          word-break: break-all; border: 1px solid #ddd; padding: .6em; max-height: 32em; overflow-y: auto; }
  #text span.ch { padding: 1px 0; }
  .strip { display: flex; margin: 2px 0; align-items: center; }
  .strip .lbl { width: 6em; font-size: .8em; color: #555; }
  .strip span.ch { display: inline-block; width: 7px; height: 16px; }
  canvas.heat { image-rendering: pixelated; border: 1px solid #ddd; margin: 2px 0 8px 0; width: 100%;
                max-width: 1000px; height: 140px; }
  table { border-collapse: collapse; font-size: .88em; }
  td, th { padding: 2px 9px; border-bottom: 1px solid #eee; text-align: left; }
  tr.pick { cursor: pointer; } tr.pick:hover { background: #eef; }
  #legend { display: inline-block; width: 180px; height: 12px; vertical-align: middle; border: 1px solid #ccc; }
  #status { font-size: .85em; color: #555; }
  img { max-width: 100%; border: 1px solid #eee; margin: .4em 0; }
</style>
</head>
<body>
<h1 id="title">__TITLE__</h1>
<div id="summary"></div>
<div id="picker">
  <label>layer / direction <select id="layer"></select></label>
  <label>gate <select id="gate"></select></label>
  <label>unit <select id="unit"></select></label>
  <span><span id="lo"></span> <span id="legend"></span> <span id="hi"></span></span>
  <span id="status"></span>
</div>
<h2 id="view-title"></h2>
<div id="text"></div>
<div id="heatmaps"></div>
<h2>Most interpretable units</h2>
<p>Pearson correlation of each unit's activation with a feature of the input, over every valid step;
click a row to show that unit.</p>
<table id="top"><thead><tr><th>layer</th><th>dir</th><th>gate</th><th>unit</th><th>feature</th><th>r</th></tr>
</thead><tbody></tbody></table>
<div id="images"></div>
<script>
"use strict";
const DATA = __DATA__;

function decode(g) {
  // quantised to uint8 over [lo, hi] to keep the page small; shape [B, T, H]
  const bin = atob(g.data), n = bin.length, out = new Float32Array(n), span = g.hi - g.lo;
  for (let k = 0; k < n; k++) out[k] = g.lo + (bin.charCodeAt(k) / 255) * span;
  return out;
}
const cache = new Map();
function values(li, gate) {
  const key = li + "/" + gate;
  if (!cache.has(key)) cache.set(key, decode(DATA.layers[li].gates[gate]));
  return cache.get(key);
}
function colour(t, signed) {
  // signed: blue (-1) .. white (0) .. red (+1); unsigned: white (0) .. orange (1)
  t = Math.max(-1, Math.min(1, t));
  let r, g, b;
  if (signed) {
    if (t >= 0) { r = 255; g = Math.round(255 * (1 - t)); b = Math.round(255 * (1 - t)); }
    else { r = Math.round(255 * (1 + t)); g = Math.round(255 * (1 + t)); b = 255; }
  } else {
    t = Math.max(0, t);
    r = 255; g = Math.round(255 - 120 * t); b = Math.round(255 - 255 * t);
  }
  return "rgb(" + r + "," + g + "," + b + ")";
}
const $ = (id) => document.getElementById(id);
const spans = [];  // spans[b][t]

function option(sel, value, text) {
  const o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o);
}
function fillGates() {
  const li = +$("layer").value, sel = $("gate"), keep = sel.value;
  sel.innerHTML = "";
  for (const g of Object.keys(DATA.layers[li].gates)) option(sel, g, g);
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}
function fillUnits() {
  const li = +$("layer").value, g = DATA.layers[li].gates[$("gate").value], sel = $("unit"), keep = sel.value;
  sel.innerHTML = "";
  for (let u = 0; u < g.shape[2]; u++) option(sel, u, u);
  if (keep !== "" && +keep < g.shape[2]) sel.value = keep;
}
function buildView() {
  const box = $("text");
  if (DATA.mode === "text") {
    DATA.text.forEach((s, b) => {
      const row = [];
      for (const ch of s) {
        const sp = document.createElement("span"); sp.className = "ch"; sp.textContent = ch;
        box.appendChild(sp); row.push(sp);
      }
      spans.push(row);
    });
  } else {
    box.style.whiteSpace = "normal";
    DATA.lengths.forEach((len, b) => {
      const strip = document.createElement("div"); strip.className = "strip";
      const lbl = document.createElement("span"); lbl.className = "lbl"; lbl.textContent = "sequence " + b;
      strip.appendChild(lbl);
      const row = [];
      for (let t = 0; t < len; t++) {
        const sp = document.createElement("span"); sp.className = "ch"; strip.appendChild(sp); row.push(sp);
      }
      box.appendChild(strip); spans.push(row);
    });
  }
}
function drawHeatmaps(li, gate) {
  const g = DATA.layers[li].gates[gate], [B, T, H] = g.shape, v = values(li, gate), box = $("heatmaps");
  box.innerHTML = "";
  if (DATA.mode === "text") return;
  for (let b = 0; b < B; b++) {
    const c = document.createElement("canvas"); c.className = "heat"; c.width = T; c.height = H;
    c.title = "sequence " + b + ": all units (rows) over time (columns)";
    const ctx = c.getContext("2d"), img = ctx.createImageData(T, H);
    let m = 1e-8;
    for (let k = b * T * H; k < (b + 1) * T * H; k++) m = Math.max(m, Math.abs(v[k]));
    for (let t = 0; t < T; t++) for (let u = 0; u < H; u++) {
      const val = v[(b * T + t) * H + u], y = H - 1 - u, o = (y * T + t) * 4;
      const rgb = colour(g.signed ? val / m : val, g.signed).match(/\d+/g);
      img.data[o] = +rgb[0]; img.data[o + 1] = +rgb[1]; img.data[o + 2] = +rgb[2]; img.data[o + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    box.appendChild(c);
  }
}
function render() {
  const li = +$("layer").value, gate = $("gate").value, unit = +$("unit").value;
  const g = DATA.layers[li].gates[gate], [B, T, H] = g.shape, v = values(li, gate);
  let m = 1e-8;  // normalise by the unit's largest |value| so every unit uses the full colour range
  for (let b = 0; b < B; b++) for (let t = 0; t < DATA.lengths[b]; t++) m = Math.max(m, Math.abs(v[(b * T + t) * H + unit]));
  for (let b = 0; b < B; b++) {
    const row = spans[b];
    for (let t = 0; t < row.length; t++) {
      const val = v[(b * T + t) * H + unit];
      row[t].style.backgroundColor = colour(g.signed ? val / m : val, g.signed);
      row[t].title = gate + "[" + unit + "] = " + val.toFixed(3);
    }
  }
  $("lo").textContent = g.signed ? (-m).toFixed(2) : "0";
  $("hi").textContent = g.signed ? m.toFixed(2) : "1";
  const stops = g.signed ? [-1, -0.5, 0, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1];
  $("legend").style.background = "linear-gradient(to right," + stops.map((s) => colour(s, g.signed)).join(",") + ")";
  $("view-title").textContent = DATA.layers[li].label + ", gate " + gate + ", unit " + unit;
  $("status").textContent = "H = " + H + ", " + B + (DATA.mode === "text" ? " text segment(s)" : " sequence(s)");
  drawHeatmaps(li, gate);
}
function select(li, gate, unit) {
  $("layer").value = li; fillGates(); $("gate").value = gate; fillUnits(); $("unit").value = unit; render();
}
function init() {
  document.title = DATA.title;
  $("title").textContent = DATA.title;  // the exact text (the HTML parser maps NUL and CR in the markup)
  $("summary").textContent = DATA.summary || "";
  DATA.layers.forEach((l, k) => option($("layer"), k, l.label));
  fillGates(); fillUnits(); buildView();
  $("layer").addEventListener("change", () => { fillGates(); fillUnits(); render(); });
  $("gate").addEventListener("change", () => { fillUnits(); render(); });
  $("unit").addEventListener("change", render);
  const body = $("top").querySelector("tbody");
  for (const u of DATA.top_units) {
    const tr = document.createElement("tr"); tr.className = "pick";
    const li = DATA.layers.findIndex((l) => l.layer === u.layer && l.direction === u.direction);
    for (const cell of [u.layer, u.direction ? "←" : "→", u.gate, u.unit, u.feature, u.r.toFixed(3)]) {
      const td = document.createElement("td"); td.textContent = cell; tr.appendChild(td);
    }
    tr.addEventListener("click", () => select(li, u.gate, u.unit));
    body.appendChild(tr);
  }
  for (const im of DATA.images) {
    const h = document.createElement("h2"); h.textContent = im.title; $("images").appendChild(h);
    const el = document.createElement("img"); el.src = im.src; el.alt = im.title; $("images").appendChild(el);
  }
  const first = DATA.top_units[0];
  if (first) select(DATA.layers.findIndex((l) => l.layer === first.layer && l.direction === first.direction),
                    first.gate, first.unit);
  else render();
  document.body.dataset.ready = "1";
}
init();
</script>
</body>
</html>
"""
