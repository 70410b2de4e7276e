// Conveyor dashboard: confirmed actions through the admin API, and the live overview.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

function flash(text) {
  const box = document.getElementById("flash");
  box.textContent = text;
  box.hidden = false;
}

// Every action form asks first, then calls the API with the session's CSRF token.
document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form.action");
  if (!form) return;
  event.preventDefault();
  if (!window.confirm(form.dataset.confirm)) return;
  const response = await fetch(form.action, {
    method: form.dataset.method || "POST",
    headers: { "X-CSRF-Token": csrf(), Accept: "application/json" },
    credentials: "same-origin",
  });
  if (response.ok) {
    if (form.dataset.next) window.location.assign(form.dataset.next);
    else window.location.reload();
    return;
  }
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = `${body.error.type}: ${body.error.message}`;
  } catch (_) { /* not JSON: keep the status line */ }
  flash(message);
});

// The overview polls /api/stats every 2 s: counts per queue and state, and a throughput line
// drawn from how many jobs finished between two polls.
const table = document.getElementById("queues");
if (table) {
  const FINISHED = ["completed", "cancelled", "failed"];
  const samples = [];
  let previous = null;
  const line = document.querySelector("#throughput polyline");

  const draw = () => {
    const max = Math.max(1, ...samples);
    const step = 600 / 59;
    const start = 60 - samples.length;
    line.setAttribute("points", samples
      .map((v, i) => `${((start + i) * step).toFixed(1)},${(115 - (v / max) * 105).toFixed(1)}`)
      .join(" "));
  };

  const refresh = async () => {
    const response = await fetch(table.dataset.live, { credentials: "same-origin" });
    if (!response.ok) return;
    const stats = await response.json();
    for (const queue of stats.queues) {
      const row = table.querySelector(`tr[data-queue="${CSS.escape(queue.queue)}"]`);
      if (!row) continue;
      for (const [state, n] of Object.entries(queue.counts)) {
        const cell = row.querySelector(`[data-count="${state}"]`);
        if (cell) cell.textContent = n;
      }
      const wait = row.querySelector("[data-wait]");
      wait.textContent = queue.oldest_waiting_seconds == null
        ? "-" : `${queue.oldest_waiting_seconds.toFixed(1)} s`;
    }
    const now = Date.parse(stats.time);
    const finished = FINISHED.reduce((sum, s) => sum + (stats.totals[s] || 0), 0);
    if (previous) {
      const rate = Math.max(0, finished - previous.finished) / Math.max(0.001, (now - previous.now) / 1000);
      samples.push(rate);
      if (samples.length > 60) samples.shift();
      document.getElementById("rate").textContent = rate.toFixed(1);
      draw();
    }
    previous = { finished, now };
    document.getElementById("updated").textContent = new Date(now).toLocaleTimeString();
  };

  refresh();
  setInterval(refresh, 2000);
}
