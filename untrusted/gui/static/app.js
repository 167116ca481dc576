// The SMX site GUI: live points over one WebSocket, an overview, a 24 h chart drawn by hand.
// Only textContent is ever set from data: a point's string value cannot inject markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const FRESH = new Set(["GOOD", "DERIVED", "UNCERTAIN"]);
const $ = (id) => document.getElementById(id);

const state = {
  points: new Map(), // name -> {value, unit, quality, time}
  rows: new Map(), // name -> <tr>
  devices: new Map(), // device -> <tbody>
  overview: [],
  core: false, // the GUI's own link to the core
  live: false, // this page's WebSocket
  chart: null, // the point charted
  ws: null,
};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// -- values as people read them ---------------------------------------------------------------

function showValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return String(Math.round(v * 1000) / 1000);
  return String(v);
}

function showWatts(w) {
  if (w === null || w === undefined) return "—";
  return Math.abs(w) >= 1000 ? (w / 1000).toFixed(2) + " kW" : Math.round(w) + " W";
}

function shortValue(v) {
  return Math.abs(v) >= 100 ? String(Math.round(v)) : showValue(Math.round(v * 100) / 100);
}

function showTime(t) {
  if (!t) return "never";
  const age = Math.max(0, Date.now() / 1000 - t);
  const when = new Date(t * 1000).toLocaleTimeString();
  if (age < 90) return `${when} (${Math.round(age)} s ago)`;
  if (age < 5400) return `${when} (${Math.round(age / 60)} min ago)`;
  return `${new Date(t * 1000).toLocaleString()} (${Math.round(age / 3600)} h ago)`;
}

// A value is current only if the core says so and both links (page-GUI, GUI-core) are up.
function staleness(quality) {
  if (!state.live) return "no connection to the GUI";
  if (!state.core) return "the GUI has lost the core";
  if (quality === "ABSENT") return "no value";
  return FRESH.has(quality) ? "" : quality;
}

// -- the points table -------------------------------------------------------------------------

const deviceOf = (name) => name.slice(0, name.lastIndexOf("/"));

// One tbody per device (the name up to its last "/"), its points sorted by name under it.
function deviceBody(device) {
  let body = state.devices.get(device);
  if (body) return body;
  body = el("tbody");
  body.dataset.device = device;
  const head = el("tr", "device");
  const cell = el("td", "", device);
  cell.colSpan = 5;
  head.append(cell);
  body.append(head);
  state.devices.set(device, body);
  const after = [...state.devices.keys()].sort().find((d) => d > device);
  $("points").insertBefore(body, after ? state.devices.get(after) : null);
  return body;
}

function rowOf(name) {
  let tr = state.rows.get(name);
  if (tr) return tr;
  tr = el("tr");
  tr.dataset.point = name;
  const cell = el("td", "name", name);
  cell.title = "show the last 24 h";
  cell.addEventListener("click", () => askHistory(name));
  tr.append(cell, el("td", "value"), el("td", "unit"), el("td", "quality"), el("td", "time"));
  state.rows.set(name, tr);
  const body = deviceBody(deviceOf(name));
  const after = [...state.rows.keys()]
    .filter((n) => deviceOf(n) === deviceOf(name))
    .sort()
    .find((n) => n > name);
  body.insertBefore(tr, after ? state.rows.get(after) : null);
  return tr;
}

function renderRow(name) {
  const p = state.points.get(name);
  const tr = rowOf(name);
  const why = staleness(p.quality);
  tr.className = why ? "stale" : "";
  const [, value, unit, quality, time] = tr.children;
  value.textContent = showValue(p.value);
  unit.textContent = p.unit;
  quality.textContent = why ? (why === p.quality ? p.quality : `STALE: ${why}`) : p.quality;
  time.textContent = showTime(p.time);
}

// -- the overview -----------------------------------------------------------------------------

function renderOverview() {
  const box = $("overview");
  box.replaceChildren();
  for (const part of state.overview) {
    const why = staleness(part.quality);
    const tile = el("div", "tile" + (part.quality === "ABSENT" ? " absent" : why ? " stale" : ""));
    tile.id = "part-" + part.key;
    tile.append(el("div", "label", part.label));
    if (part.quality === "ABSENT") {
      tile.append(el("div", "words", "not present on this site"));
    } else {
      tile.append(el("div", "watts", showWatts(part.watts)), el("div", "words", part.words));
      if (why) tile.append(el("span", "badge", why === part.quality ? part.quality : "STALE"));
      else if (part.quality === "UNCERTAIN") tile.append(el("span", "badge uncertain", "UNCERTAIN"));
    }
    if (part.soc !== null) {
      const socWhy = staleness(part.soc_quality);
      tile.append(el("div", "soc" + (socWhy ? " stale" : ""), `charged ${Math.round(part.soc)} %`));
    }
    if (part.time) tile.append(el("div", "time", "last value " + showTime(part.time)));
    if (part.key === "house") {
      tile.title = "derived from " + part.points.join(", "); // no history of its own
    } else if (part.points.length) {
      tile.title = part.points.join(", ");
      tile.addEventListener("click", () => askHistory(part.points[0]));
    }
    box.append(tile);
  }
}

function renderAll() {
  for (const name of state.points.keys()) renderRow(name);
  renderOverview();
  const status = $("status");
  status.textContent = !state.live ? "connection lost: retrying" : state.core ? "live" : "core unreachable";
  status.className = "status " + (state.live && state.core ? "ok" : "down");
}

// -- the chart --------------------------------------------------------------------------------

function askHistory(name) {
  state.chart = name;
  $("chart-title").textContent = name;
  $("chart-note").textContent = "loading…";
  if (state.live) state.ws.send(JSON.stringify({ history: name }));
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function drawChart(h) {
  if (h.point !== state.chart) return;
  const chart = $("chart");
  chart.replaceChildren();
  const [W, H, left, right, top, bottom] = [800, 260, 60, 10, 10, 25];
  const unit = state.points.get(h.point)?.unit || "";
  if (!h.samples.length) {
    $("chart-note").textContent = "no history in the last 24 h";
    return;
  }
  const values = h.samples.map((s) => s[1]);
  let lo = Math.min(...values, 0);
  let hi = Math.max(...values, 0);
  if (hi === lo) hi = lo + 1;
  const x = (t) => left + ((t - h.start) / (h.end - h.start)) * (W - left - right);
  const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (H - top - bottom);
  chart.append(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: H - bottom }));
  chart.append(svg("line", { class: "zero", x1: left, y1: y(0), x2: W - right, y2: y(0) }));
  for (const v of [hi, lo]) {
    chart.append(svg("text", { x: 4, y: y(v) + 4 }, `${shortValue(v)} ${unit}`));
  }
  for (let i = 0; i <= 4; i++) {
    const t = h.start + (i * (h.end - h.start)) / 4;
    const label = new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    chart.append(svg("text", { x: x(t), y: H - 6, "text-anchor": anchor }, label));
  }
  // A gap much longer than the point's usual spacing (the device was off) breaks the line; a
  // value alone between gaps is a dot.
  const steps = h.samples.slice(1).map((s, i) => s[0] - h.samples[i][0]).sort((a, b) => a - b);
  const gap = Math.max(900, 3 * (steps[Math.floor(steps.length / 2)] || 0));
  let run = [];
  const flush = () => {
    if (run.length === 1) {
      const [cx, cy] = run[0].split(",");
      chart.append(svg("circle", { class: "dot", cx, cy, r: 2.5 }));
    } else if (run.length) {
      chart.append(svg("polyline", { class: "line", points: run.join(" ") }));
    }
    run = [];
  };
  let last = null;
  for (const [t, v] of h.samples) {
    if (last !== null && t - last > gap) flush();
    run.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    last = t;
  }
  flush();
  const n = h.samples.length;
  $("chart-note").textContent = `${n} five-minute average${n === 1 ? "" : "s"}`;
}

// -- the connection ---------------------------------------------------------------------------

function onMessage(msg) {
  if (msg.type === "hello") {
    $("site").textContent = "SMX site " + msg.site;
  } else if (msg.type === "points") {
    state.core = msg.core;
    for (const p of msg.points) state.points.set(p.name, p);
    state.overview = msg.overview;
    renderAll();
    if (state.chart === null) {
      const grid = msg.overview.find((part) => part.points.length);
      if (grid) askHistory(grid.points[0]);
    }
  } else if (msg.type === "history") {
    drawChart(msg);
  } else if (msg.type === "error") {
    $("chart-note").textContent = msg.error;
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/ws");
  state.ws = ws;
  ws.onopen = () => {
    state.live = true;
    if (state.chart !== null) askHistory(state.chart);
  };
  ws.onmessage = (e) => onMessage(JSON.parse(e.data));
  ws.onclose = () => {
    state.live = false;
    renderAll();
    setTimeout(start, 2000); // logged out or expired: start() shows the login
  };
}

async function start() {
  const me = await fetch("/api/me").then((r) => r.json()).catch(() => null);
  if (me === null) {
    setTimeout(start, 2000);
    return;
  }
  $("logout").hidden = !me.login;
  if (me.login && !me.logged_in) {
    $("view").hidden = true;
    $("login").hidden = false;
    $("password").focus();
    return;
  }
  $("login").hidden = true;
  $("view").hidden = false;
  connect();
}

// The password goes over a WebSocket (the server reads no request bodies); a right one gives
// a one-use ticket that /session turns into an HttpOnly cookie.
function logIn(event) {
  event.preventDefault();
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/ws/login");
  ws.onopen = () => ws.send(JSON.stringify({ password: $("password").value }));
  ws.onmessage = (e) => {
    const answer = JSON.parse(e.data);
    if (answer.ticket) location.replace("/session?ticket=" + encodeURIComponent(answer.ticket));
    else $("login-error").textContent = answer.error;
  };
  ws.onerror = () => ($("login-error").textContent = "cannot reach the GUI");
}

$("login-form").addEventListener("submit", logIn);
setInterval(() => state.points.size && renderAll(), 1000); // the ages go on
setInterval(() => state.chart !== null && askHistory(state.chart), 60000);
start();
