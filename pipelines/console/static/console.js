// sagegate console: draws pipeline and state-machine graphs from their definitions (as SVG) and
// follows a running pipeline through its server-sent event stream. No framework, no inline code
// (the pages' Content-Security-Policy allows scripts from this file only).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const BOX = { width: 190, height: 36, gapX: 34, gapY: 46 };

function element(name, attributes, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

// Layers by longest path from the start, ignoring the edges that close a loop (polling loops).
function layout(graph) {
  const ids = graph.nodes.map((n) => n.id);
  const outgoing = new Map(ids.map((id) => [id, []]));
  for (const edge of graph.edges) if (outgoing.has(edge.from) && outgoing.has(edge.to)) outgoing.get(edge.from).push(edge.to);
  const incoming = new Set(graph.edges.map((e) => e.to));
  const roots = graph.start ? [graph.start] : ids.filter((id) => !incoming.has(id));
  const back = new Set();
  const state = new Map();
  const visit = (id) => {
    state.set(id, "open");
    for (const next of outgoing.get(id)) {
      if (state.get(next) === "open") back.add(id + "\u0000" + next);
      else if (!state.has(next)) visit(next);
    }
    state.set(id, "done");
  };
  for (const root of roots.concat(ids)) if (!state.has(root)) visit(root);
  const depth = new Map(ids.map((id) => [id, 0]));
  // longest path over the acyclic edges (ids.length passes bound it)
  for (let pass = 0; pass < ids.length; pass++) {
    let changed = false;
    for (const edge of graph.edges) {
      if (back.has(edge.from + "\u0000" + edge.to) || !depth.has(edge.to)) continue;
      if (depth.get(edge.to) < depth.get(edge.from) + 1) { depth.set(edge.to, depth.get(edge.from) + 1); changed = true; }
    }
    if (!changed) break;
  }
  const layers = [];
  for (const id of ids) (layers[depth.get(id)] = layers[depth.get(id)] || []).push(id);
  const widest = Math.max(...layers.map((l) => (l ? l.length : 0)), 1);
  const width = widest * (BOX.width + BOX.gapX) + BOX.gapX;
  const position = new Map();
  layers.forEach((layer, level) => {
    (layer || []).forEach((id, index) => {
      const offset = (width - layer.length * (BOX.width + BOX.gapX) + BOX.gapX) / 2;
      position.set(id, { x: offset + index * (BOX.width + BOX.gapX), y: BOX.gapY / 2 + level * (BOX.height + BOX.gapY) });
    });
  });
  return { position, back, width, height: layers.length * (BOX.height + BOX.gapY) + BOX.gapY / 2 };
}

function drawGraph(container, graph, onSelect) {
  container.textContent = "";
  const { position, back, width, height } = layout(graph);
  const svg = element("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" }, container);
  const defs = element("defs", {}, svg);
  for (const kind of ["plain", "taken"]) {
    const marker = element("marker", { id: `arrow-${kind}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    element("path", { d: "M 0 0 L 10 5 L 0 10 z", class: `arrow-${kind}` }, marker);
  }
  for (const edge of graph.edges) {
    const a = position.get(edge.from), b = position.get(edge.to);
    if (!a || !b) continue;
    const x1 = a.x + BOX.width / 2, y1 = a.y + BOX.height, x2 = b.x + BOX.width / 2, y2 = b.y;
    const loop = back.has(edge.from + "\u0000" + edge.to);
    const d = loop
      ? `M ${a.x + BOX.width} ${a.y + BOX.height / 2} C ${a.x + BOX.width + 60} ${a.y}, ${b.x + BOX.width + 60} ${b.y + BOX.height}, ${b.x + BOX.width} ${b.y + BOX.height / 2}`
      : `M ${x1} ${y1} C ${x1} ${(y1 + y2) / 2}, ${x2} ${(y1 + y2) / 2}, ${x2} ${y2}`;
    const kind = edge.taken ? "taken" : "plain";
    element("path", { d, class: `edge edge-${kind}`, "marker-end": `url(#arrow-${kind})`, "data-from": edge.from, "data-to": edge.to }, svg);
  }
  for (const node of graph.nodes) {
    const p = position.get(node.id);
    const group = element("g", { class: `node status-${node.status}`, "data-id": node.id, "data-status": node.status, tabindex: 0, transform: `translate(${p.x},${p.y})` }, svg);
    element("rect", { width: BOX.width, height: BOX.height, rx: 7 }, group);
    const label = element("text", { x: BOX.width / 2, y: 15, "text-anchor": "middle", class: "label" }, group);
    label.textContent = node.id.length > 26 ? node.id.slice(0, 25) + "…" : node.id;
    const sub = element("text", { x: BOX.width / 2, y: 29, "text-anchor": "middle", class: "sub" }, group);
    sub.textContent = [node.type, node.status === "NotStarted" ? "" : node.status].filter(Boolean).join(" · ");
    const title = element("title", {}, group);
    title.textContent = [node.id, node.type, node.status, node.failure_reason].filter(Boolean).join("\n");
    if (onSelect) {
      group.addEventListener("click", () => onSelect(node));
      group.addEventListener("keydown", (event) => { if (event.key === "Enter") onSelect(node); });
    }
  }
}

function seconds(value) { return value === null || value === undefined ? "–" : `${value.toFixed(2)} s`; }

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

// A pipeline run's page: graph, steps table and log tails, redrawn from each event of the stream.
function followRun(data) {
  const container = document.getElementById("graph");
  const detail = document.getElementById("step-detail");
  let current = null;
  let selected = null;
  const select = (node) => {
    selected = node.id;
    detail.hidden = false;
    detail.querySelector("h3").textContent = `${node.id}: ${node.status}` + (node.failure_reason ? ` (${node.failure_reason})` : "");
    detail.querySelector("pre").textContent = (current.logs || {})[node.id] || "(no log yet)";
  };
  const render = (payload) => {
    current = payload;
    drawGraph(container, payload.graph, select);
    const body = document.querySelector("#steps tbody");
    body.textContent = "";
    for (const node of payload.graph.nodes) {
      const row = document.createElement("tr");
      row.dataset.step = node.id;
      cell(row, node.id);
      cell(row, node.type);
      const status = cell(row, "");
      const badge = document.createElement("span");
      badge.className = `status status-${node.status}`;
      badge.textContent = node.status;
      status.appendChild(badge);
      cell(row, seconds(node.duration_seconds));
      cell(row, node.failure_reason || "", "reason");
      row.addEventListener("click", () => select(node));
      body.appendChild(row);
    }
    const status = document.getElementById("run-status");
    status.textContent = payload.status;
    status.className = `status status-${payload.status}`;
    document.getElementById("run-duration").textContent = seconds(payload.duration_seconds);
    document.getElementById("run-failure").textContent = payload.failure_reason || "–";
    const chosen = payload.graph.nodes.find((n) => n.id === selected);
    if (chosen) select(chosen);
  };
  render(JSON.parse(data.textContent));
  if (["Succeeded", "Failed", "Stopped"].includes(current.status)) return;
  const stream = new EventSource(data.dataset.stream);
  stream.onmessage = (event) => render(JSON.parse(event.data));
  stream.addEventListener("end", () => stream.close());
}

document.addEventListener("DOMContentLoaded", () => {
  const run = document.getElementById("run-data");
  if (run) followRun(run);
  const machine = document.getElementById("graph-data");
  if (machine) {
    drawGraph(document.getElementById("graph"), JSON.parse(machine.textContent), (node) => {
      const row = document.getElementById(`state-${node.id}`);
      if (!row) return;
      for (const other of document.querySelectorAll("#states tr.selected")) other.classList.remove("selected");
      row.classList.add("selected");
      row.scrollIntoView({ block: "center" });
      for (const details of row.querySelectorAll("details")) details.open = true;
    });
  }
});
