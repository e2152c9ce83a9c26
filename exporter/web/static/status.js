// The status page: polls the JSON API (long polling on its index), stops while the tab is
// hidden, and renders every value with textContent, so nothing from a target or a targets
// file is ever parsed as HTML. No inline script or style: it works under
// Content-Security-Policy: default-src 'self'.
"use strict";

const TARGETS_URL = "api/v1/targets";
const STATUS_URL = "api/v1/status";
const LONG_POLL = "30s";
const RETRY_MS = 5000;
const STATUS_EVERY_MS = 5000;
const MIN_GAP_MS = 200; // between two polls; more when a render takes long (10,000 targets)

const state = {
  data: null, // the last `data` of GET /api/v1/targets
  index: null,
  status: null,
  statusAt: 0,
  controller: null,
  polling: false,
  filterTimer: 0,
};

// What benchmarks and tests read: how many renders, and how long the last one took.
window.statusPage = { renders: 0, lastRenderMs: 0, firstRenderAt: 0 };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function ago(unixSeconds) {
  if (unixSeconds === null || unixSeconds === undefined) return "never";
  const seconds = Math.max(0, Date.now() / 1000 - unixSeconds);
  if (seconds < 60) return `${seconds.toFixed(0)}s ago`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(0)}m ago`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)}h ago`;
  return `${(seconds / 86400).toFixed(1)}d ago`;
}

function isoTime(unixSeconds) {
  return unixSeconds ? new Date(unixSeconds * 1000).toISOString() : "";
}

function progressClass(target) {
  if (!target.checked) return "unchecked";
  if (target.state === "healthy") return target.consecutive_failures ? "going-down" : "up";
  return target.consecutive_successes ? "coming-up" : "down";
}

// Unhealthy first, then those on their way down, then by id.
function targetRank(target) {
  if (target.state === "unhealthy") return 0;
  return target.consecutive_failures ? 1 : 2;
}

function compareTargets(a, b) {
  return targetRank(a) - targetRank(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

function matches(target, needle) {
  if (!needle) return true;
  const last = target.last_check || {};
  const haystack = [target.id, target.app, target.address, target.path, target.url,
    target.state, target.progress, last.reason || "", last.error || ""].join("\n").toLowerCase();
  return haystack.includes(needle);
}

// The last results as runs of one symbol each: a few spans per row, not thirty.
function strip(history) {
  const cell = el("td", "strip");
  let run = "";
  let kind = null;
  const flush = () => {
    if (run) cell.appendChild(el("span", kind === "success" ? "ok" : "fail", run));
  };
  for (const result of history) {
    const k = result === "success" ? "success" : "fail";
    if (k !== kind) {
      flush();
      run = "";
      kind = k;
    }
    run += "\u258c";
  }
  flush();
  cell.title = history.join(", ");
  return cell;
}

function lastCheckCells(target) {
  const last = target.last_check;
  if (!last) return [el("td", "muted", "not checked yet"), el("td"), el("td", "error")];
  const outcome = last.healthy ? "ok" : last.reason;
  const status = last.status_code === null ? "" : ` ${last.status_code}`;
  let text = `${outcome}${status}, ${(last.duration_seconds * 1000).toFixed(1)} ms`;
  if (last.tls_not_after) {
    const days = (last.tls_not_after - Date.now() / 1000) / 86400;
    text += days < 0 ? ", certificate EXPIRED" : `, certificate ${days.toFixed(0)} d left`;
  }
  const when = el("td", "", text);
  when.title = isoTime(last.time);
  return [when, el("td", "", ago(last.time)), el("td", "error", last.error || "")];
}

function targetRow(target) {
  const row = el("tr");
  row.dataset.id = target.id;
  const badge = el("span", `badge progress ${progressClass(target)}`, target.progress);
  if (!target.checked) badge.title = "initial state: not checked since it was added";
  const stateCell = el("td");
  stateCell.appendChild(badge);
  row.appendChild(stateCell);
  row.appendChild(el("td", "id", target.id));
  row.appendChild(el("td", "addr", target.url));
  for (const cell of lastCheckCells(target)) row.appendChild(cell);
  const changed = el("td", "", ago(target.last_change));
  changed.title = isoTime(target.last_change);
  row.appendChild(changed);
  row.appendChild(strip(target.history || []));
  return row;
}

// Column headings and the classes that size them (a fixed table layout is cheap at 10,000 rows).
const COLUMNS = [["state", "state"], ["target", "id"], ["address", "addr"],
  ["last check", "check"], ["checked", "when"], ["error", "error"], ["last change", "when"],
  ["last 30", "strip"]];

function appSection(summary, targets) {
  const section = el("section", "app");
  section.dataset.app = summary.app;
  const title = el("h2", "", summary.app || "(no app)");
  const counts = `${summary.healthy}/${summary.total} up`;
  title.appendChild(el("span", summary.unhealthy ? "app-summary bad" : "app-summary", counts));
  if (summary.panic) title.appendChild(el("span", "panic", "PANIC: all targets routed"));
  section.appendChild(title);
  const table = el("table");
  const columns = table.appendChild(el("colgroup"));
  const head = el("tr");
  for (const [heading, width] of COLUMNS) {
    columns.appendChild(el("col", width));
    head.appendChild(el("th", "", heading));
  }
  table.appendChild(el("thead")).appendChild(head);
  const body = el("tbody");
  for (const target of targets) body.appendChild(targetRow(target));
  table.appendChild(body);
  section.appendChild(table);
  return section;
}

function render() {
  const data = state.data;
  if (!data) return;
  const started = performance.now();
  const needle = document.getElementById("filter").value.trim().toLowerCase();
  const byApp = new Map();
  for (const target of data.targets) {
    if (!matches(target, needle)) continue;
    if (!byApp.has(target.app)) byApp.set(target.app, []);
    byApp.get(target.app).push(target);
  }
  // Apps with unhealthy targets first, then by name.
  const apps = data.apps.filter((a) => byApp.has(a.app) || (!needle && a.total === 0));
  apps.sort((a, b) => (b.unhealthy > 0) - (a.unhealthy > 0) || (a.app < b.app ? -1 : 1));
  const fragment = document.createDocumentFragment();
  for (const summary of apps) {
    const targets = (byApp.get(summary.app) || []).sort(compareTargets);
    fragment.appendChild(appSection(summary, targets));
  }
  document.getElementById("apps").replaceChildren(fragment);
  let up = 0;
  for (const app of data.apps) up += app.healthy;
  const total = data.targets.length;
  const shown = needle ? ` (${[...byApp.values()].reduce((n, t) => n + t.length, 0)} shown)` : "";
  document.getElementById("totals").textContent = `${up}/${total} targets up${shown}`;
  const page = window.statusPage;
  page.renders += 1;
  page.lastRenderMs = performance.now() - started;
  if (!page.firstRenderAt) page.firstRenderAt = performance.now();
}

function renderStatus() {
  const status = state.status;
  if (!status) return;
  document.getElementById("version").textContent = status.version;
  const c = status.checks;
  document.getElementById("settings").textContent = c.enabled
    ? `interval ${c.interval_seconds}s, timeout ${c.timeout_seconds}s, fall ${c.fall}, rise ${c.rise}`
    : "checks DISABLED: every target counts as healthy";
  const box = document.getElementById("integrations");
  const rows = [];
  if (status.haproxy) {
    const h = status.haproxy;
    rows.push(["HAProxy file", h.config]);
    rows.push(["HAProxy reload mode", h.reload_mode]);
    rows.push(["writes", `${h.writes.success} ok, ${h.writes.failure} failed, ` +
      `${h.writes.unchanged} unchanged; last change ${ago(h.last_config_change)}`]);
    rows.push(["reloads", `${h.reloads.success} ok, ${h.reloads.failure} failed; ` +
      `last success ${ago(h.last_reload_success)}`]);
  }
  for (const source of status.sources || []) {
    rows.push([`source ${source.source}`, `${source.targets} targets, ` +
      `${source.failures} failures; last read ${ago(source.last_success)}` +
      (source.last_error ? `; now failing: ${source.last_error}` : "")]);
  }
  if (!rows.length) {
    box.replaceChildren();
    return;
  }
  const table = el("table");
  for (const [name, value] of rows) {
    const row = el("tr");
    row.appendChild(el("th", "", name));
    row.appendChild(el("td", "", value));
    table.appendChild(row);
  }
  box.replaceChildren(table);
}

function setConnection(text, failed) {
  const node = document.getElementById("connection");
  node.textContent = text;
  node.className = failed ? "connection error" : "connection";
}

async function fetchJSON(url, signal) {
  const response = await fetch(url, { signal, headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok || body.status !== "success") {
    throw new Error(body.error || `HTTP ${response.status}`);
  }
  return body.data;
}

async function refreshStatus(signal) {
  if (Date.now() - state.statusAt < STATUS_EVERY_MS) return;
  state.statusAt = Date.now();
  state.status = await fetchJSON(STATUS_URL, signal);
  renderStatus();
}

async function poll() {
  while (!document.hidden) {
    const controller = (state.controller = new AbortController());
    const url = state.index === null ? TARGETS_URL
      : `${TARGETS_URL}?index=${state.index}&wait=${LONG_POLL}`;
    try {
      await refreshStatus(controller.signal);
      const data = await fetchJSON(url, controller.signal);
      state.index = data.index;
      state.data = data;
      render();
      setConnection(`live: updated ${new Date().toLocaleTimeString()}`, false);
      await sleep(Math.max(MIN_GAP_MS, 2 * window.statusPage.lastRenderMs));
    } catch (err) {
      if (controller.signal.aborted) break;
      setConnection(`cannot reach the exporter (${err.message}); retrying`, true);
      state.index = null;
      await sleep(RETRY_MS);
    }
  }
  state.polling = false;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function startPolling() {
  if (state.polling || document.hidden) return;
  state.polling = true;
  poll();
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    if (state.controller) state.controller.abort();
    setConnection("paused while the tab is hidden", false);
  } else {
    state.index = null; // fresh data at once, not after the next change
    startPolling();
  }
});

document.getElementById("filter").addEventListener("input", () => {
  clearTimeout(state.filterTimer);
  state.filterTimer = setTimeout(render, 120);
});

startPolling();
