// The ambient mesh dashboard: polls /api/snapshot (served by `ambientctl dashboard` on localhost) and
// draws the service graph (SVG, laid out in columns: clients, middle tiers, services), the golden
// signals per service, recent denials and the proxies' sync state. No external resources.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 2000;

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(tag === "svg" || SVG_TAGS.has(tag) ? SVG : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}
const SVG_TAGS = new Set(["g", "rect", "line", "text", "defs", "marker", "path", "title"]);

function fmt(v, digits = 2) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); }
function pct(v) { return v === null || v === undefined ? "-" : (v * 100).toFixed(1) + "%"; }

function layout(edges) {
  const names = new Set(), asSource = new Set(), asDest = new Set();
  for (const e of edges) { names.add(e.source); names.add(e.destination); asSource.add(e.source); asDest.add(e.destination); }
  const columns = [[], [], []];
  for (const n of [...names].sort()) {
    columns[!asDest.has(n) ? 0 : (!asSource.has(n) ? 2 : 1)].push(n);
  }
  const width = 960, rowH = 70, colX = [20, 360, 700], boxW = 240, boxH = 34;
  const height = Math.max(120, Math.max(...columns.map(c => c.length)) * rowH + 40);
  const pos = new Map();
  columns.forEach((col, i) => col.forEach((n, j) => pos.set(n, { x: colX[i], y: 30 + j * rowH, w: boxW, h: boxH })));
  return { pos, width, height };
}

function drawGraph(edges) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const { pos, width, height } = layout(edges);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const defs = el("defs");
  const marker = el("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
  marker.appendChild(el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#334155" }));
  defs.appendChild(marker);
  svg.appendChild(defs);
  for (const e of edges) {
    const a = pos.get(e.source), b = pos.get(e.destination);
    const failing = e.failed > 0;
    const g = el("g", { class: "edge" + (e.mtls ? "" : " plaintext") + (failing ? " failing" : ""), "data-source": e.source, "data-destination": e.destination });
    const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2;
    g.appendChild(el("line", { x1, y1, x2, y2, "marker-end": "url(#arrow)" }));
    const amount = e.rate === null ? `${e.count}` : `${fmt(e.rate)}/s`;
    g.appendChild(el("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, "text-anchor": "middle" }, `${e.protocol} ${amount} ${pct(e.successRate)}`));
    g.appendChild(el("title", {}, `${e.source} → ${e.destination}\n${e.principal}\nmTLS: ${e.mtls ? "yes" : "no"}`));
    svg.appendChild(g);
  }
  for (const [name, p] of pos) {
    const service = !name.includes("/");
    const g = el("g", { class: "node" + (service ? " service" : ""), "data-name": name });
    g.appendChild(el("rect", { x: p.x, y: p.y, width: p.w, height: p.h, rx: service ? 14 : 4 }));
    g.appendChild(el("text", { x: p.x + 8, y: p.y + p.h / 2 + 4 }, name.length > 36 ? name.slice(0, 35) + "…" : name));
    g.appendChild(el("title", {}, name));
    svg.appendChild(g);
  }
}

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map(cells => {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      tr.appendChild(td);
    }
    return tr;
  }));
}

function render(doc) {
  drawGraph(doc.edges);
  fillTable("services", doc.services.map(s => [s.name, s.protocols, s.rate === null ? `${s.count} total` : fmt(s.rate),
    pct(s.successRate), String(s.denied), fmt(s.p50, 1), fmt(s.p95, 1), fmt(s.p99, 1), String(Math.round(s.bytesIn)), String(Math.round(s.bytesOut))]));
  const list = document.getElementById("denials");
  list.replaceChildren(...doc.denials.map(d => {
    const li = document.createElement("li");
    li.className = "denial";
    const when = d.time ? new Date(d.time).toLocaleTimeString() : "";
    li.append(`${when} ${d.source || "?"} → ${d.destination || "?"} ${d.request || ""} (${d.reporter}) `);
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = d.reason;
    li.appendChild(reason);
    return li;
  }));
  if (!doc.denials.length) { const li = document.createElement("li"); li.textContent = "none in the last 30 minutes"; list.appendChild(li); }
  fillTable("proxies", doc.proxies.map(p => {
    const sync = document.createElement("span");
    sync.className = p.synced ? "ok" : "bad";
    sync.textContent = p.synced ? "SYNCED" : Object.entries(p.status).map(([t, s]) => `${t} ${s}`).join(", ");
    return [p.name, p.kind, p.node || "-", sync, String(p.nacks) + (p.lastNack ? ` (${p.lastNack})` : ""), p.connectedSince || "-"];
  }));
  const errors = document.getElementById("errors");
  errors.hidden = !doc.errors.length;
  errors.textContent = doc.errors.join("; ");
  document.getElementById("updated").textContent = "updated " + new Date(doc.generatedAt).toLocaleTimeString();
  document.body.dataset.loaded = "true";
}

async function poll() {
  try {
    const response = await fetch("/api/snapshot", { cache: "no-store" });
    render(await response.json());
  } catch (err) {
    const errors = document.getElementById("errors");
    errors.hidden = false;
    errors.textContent = `cannot reach ambientctl dashboard: ${err}`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
