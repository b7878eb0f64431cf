// streamqueue dashboard: live counts over server-sent events. Part of streamqueue (MIT).
// Values are written with textContent only: nothing from the server becomes HTML.
"use strict";

function formatDuration(seconds) {
  if (seconds < 60) { return seconds.toFixed(1) + "s"; }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) { return minutes + "m " + String(Math.floor(seconds % 60)).padStart(2, "0") + "s"; }
  const hours = Math.floor(minutes / 60);
  return hours + "h " + String(minutes % 60).padStart(2, "0") + "m";
}

function fieldValue(row, path) {
  return path.split(".").reduce((value, part) => (value == null ? value : value[part]), row);
}

function shown(cell, value) {
  const format = cell.dataset.format;
  if (format === "duration") { return formatDuration(Number(value)); }
  if (format === "paused") { return value ? "paused" : "no"; }
  if (typeof value === "number") { return String(Math.round(value * 100) / 100); }
  return String(value);
}

function applyRow(table, row) {
  for (const tr of table.querySelectorAll("tr[data-queue]")) {
    if (tr.dataset.queue !== row.name) { continue; }
    for (const cell of tr.querySelectorAll("[data-field]")) {
      const value = fieldValue(row, cell.dataset.field);
      if (value !== undefined) { cell.textContent = shown(cell, value); }
    }
    return true;
  }
  return false;
}

function applySchedules(table, rows) {
  const trs = Array.from(table.querySelectorAll("tr.schedule"));
  const key = (queue, name) => JSON.stringify([queue, name]);
  const shownKeys = trs.map((tr) => key(tr.dataset.schedQueue, tr.dataset.schedName)).join("\n");
  // A schedule created or removed since the page loaded: reload to show the rows as they are.
  if (shownKeys !== rows.map((row) => key(row.queue, row.name)).join("\n")) {
    window.location.reload();
    return;
  }
  rows.forEach((row, i) => {
    for (const cell of trs[i].querySelectorAll("[data-field]")) {
      const field = cell.dataset.field;
      if (field === "last_job") {
        cell.textContent = row.last_job || "\u2014";
        if (row.last_job) { cell.href = "/queues/" + encodeURIComponent(row.queue) + "/jobs/" + row.last_job; }
      } else {
        cell.textContent = String(row[field]);
      }
    }
  });
}

// The Schedules page: each live update (a change, a fire, or the feed's periodic refresh)
// fetches the rows again; fires move no count, so the summaries do not carry them.
function startSchedules(table) {
  const only = table.dataset.schedules;
  const query = only ? "?queue=" + encodeURIComponent(only) : "";
  const source = new EventSource("/events" + query);
  const live = document.getElementById("live");
  let fetching = false;
  let again = false;
  const refresh = async () => {
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      const response = await fetch("/schedules/rows" + query, { credentials: "same-origin" });
      if (response.ok) {
        applySchedules(table, await response.json());
        document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
      }
    } finally {
      fetching = false;
      if (again) { again = false; refresh(); }
    }
  };
  source.addEventListener("open", () => { if (live) { live.hidden = false; } });
  source.addEventListener("error", () => { if (live) { live.hidden = true; } });
  source.addEventListener("summary", refresh);
}

function start() {
  const schedules = document.querySelector("table[data-schedules]");
  if (schedules) { startSchedules(schedules); return; }
  const table = document.querySelector("table[data-live]");
  if (!table) { return; }
  const which = table.dataset.live;
  const url = which === "all" ? "/events" : "/events?queue=" + encodeURIComponent(which);
  const source = new EventSource(url);
  const live = document.getElementById("live");
  source.addEventListener("open", () => { if (live) { live.hidden = false; } });
  source.addEventListener("error", () => { if (live) { live.hidden = true; } });
  source.addEventListener("summary", (event) => {
    const rows = JSON.parse(event.data);
    // How many updates this page applied: lets a test (or a curious operator) see it is live.
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    let unknown = false;
    for (const row of rows) {
      if (!applyRow(table, row)) { unknown = true; }
      const badge = document.querySelector("[data-queue-state]");
      if (badge && badge.dataset.queueState === row.name) {
        badge.textContent = row.paused ? "paused" : "running";
        badge.className = "badge " + (row.paused ? "paused" : "running");
      }
    }
    // A queue created since the page loaded: the overview reloads to show its row.
    if (unknown && which === "all") { window.location.reload(); }
  });
}

document.addEventListener("DOMContentLoaded", start);
