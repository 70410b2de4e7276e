// Conveyor dashboard: confirmed actions through the admin API, live regions, relative times, the
// per-queue charts and the bulk action form. No library: what the server sends is escaped HTML,
// and everything built here goes through textContent or setAttribute.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
const base = () => document.body.dataset.base || "";

function flash(text, good = false) {
  const box = document.getElementById("flash");
  box.textContent = text;
  box.classList.toggle("good", good);
  box.hidden = false;
}

// A call of the admin API with the session's CSRF token; the JSON answer, or an Error whose
// message is the API's own.
async function api(method, url, body) {
  const headers = { "X-CSRF-Token": csrf(), Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let answer = null;
  try { answer = await response.json(); } catch (_) { /* not JSON: the status line says it */ }
  if (!response.ok) {
    const error = answer && answer.error;
    throw new Error(error ? `${error.type}: ${error.message}` : `${response.status} ${response.statusText}`);
  }
  return answer;
}

// -- server time ------------------------------------------------------------------------------

// How far the browser's clock is behind the server's, so that "5 s ago" means the server's 5 s.
let skew = 0;
function readServerTime(doc) {
  const meta = doc.querySelector('meta[name="server-time"]');
  const at = meta ? Date.parse(meta.content) : NaN;
  if (!Number.isNaN(at)) skew = at - Date.now();
}

function ago(moment) {
  const seconds = (Date.now() + skew - moment) / 1000;
  const size = Math.abs(seconds);
  let text = `${size.toFixed(0)} s`;
  if (size >= 86400) text = `${(size / 86400).toFixed(0)} d`;
  else if (size >= 3600) text = `${(size / 3600).toFixed(0)} h`;
  else if (size >= 60) text = `${(size / 60).toFixed(0)} min`;
  return seconds < 0 ? `in ${text}` : `${text} ago`;
}

function tickTimes() {
  for (const node of document.querySelectorAll("time[data-ago]")) {
    const at = Date.parse(node.getAttribute("datetime"));
    if (!Number.isNaN(at)) node.textContent = ago(at);
  }
}

// -- live regions -----------------------------------------------------------------------------

// A page whose body has data-live-every re-reads itself that often and swaps in each element
// marked data-live whose server HTML changed. A region where someone types is left for a later
// round; elsewhere the focus moves to the same control in the new HTML, and open <details>
// stay open.
const served = new Map();
let refreshing = null;

async function refresh(force = false) {
  const indicator = document.getElementById("live");
  const response = await fetch(window.location.href, {
    credentials: "same-origin", cache: "no-store", headers: { "X-Conveyor-Live": "1" },
  });
  if (response.redirected && new URL(response.url).pathname.endsWith("/login")) {
    window.location.assign(response.url);
    return;
  }
  if (!response.ok) throw new Error(`${response.status}`);
  const doc = new DOMParser().parseFromString(await response.text(), "text/html");
  readServerTime(doc);
  for (const region of document.querySelectorAll("[data-live][id]")) {
    const fresh = doc.getElementById(region.id);
    if (!fresh || served.get(region.id) === fresh.innerHTML) continue;
    const focused = region.contains(document.activeElement) ? document.activeElement : null;
    if (focused && focused.matches("input, select, textarea") && !force) continue;
    const open = new Set([...region.querySelectorAll("details[id]")].map((d) => [d.id, d.open]));
    region.innerHTML = fresh.innerHTML;
    served.set(region.id, fresh.innerHTML);
    for (const [id, wasOpen] of open) {
      const details = document.getElementById(id);
      if (details) details.open = wasOpen;
    }
    if (focused) refocus(region, focused);
  }
  tickTimes();
  if (indicator) {
    indicator.hidden = false;
    indicator.classList.remove("stale");
    indicator.textContent = `live · ${new Date(Date.now() + skew).toLocaleTimeString()}`;
  }
}

// After a swap, the keyboard focus goes back to the same control if it is still there (a link
// to the same place, a button of a form with the same target), else to the region.
function refocus(region, was) {
  const form = was.closest("form");
  let same = null;
  if (was.matches("a[href]")) {
    same = [...region.querySelectorAll("a[href]")].find((a) => a.href === was.href);
  } else if (form) {
    const twin = [...region.querySelectorAll("form")].find((f) => f.action === form.action);
    same = twin && twin.querySelector("button");
  }
  const target = same || region;
  if (target === region) region.setAttribute("tabindex", "-1");
  target.focus();
}

function refreshNow(force = false) {
  if (force) {
    // An action just changed things: a refresh already under way may have read them before.
    const after = (refreshing || Promise.resolve()).then(() => refresh(true));
    return after.catch(() => {});
  }
  if (!refreshing) {
    refreshing = refresh().catch(() => {
      const indicator = document.getElementById("live");
      if (indicator) {
        indicator.hidden = false;
        indicator.classList.add("stale");
        indicator.textContent = "offline: retrying";
      }
    }).finally(() => { refreshing = null; });
  }
  return refreshing;
}

function startLive() {
  const every = Number(document.body.dataset.liveEvery);
  for (const region of document.querySelectorAll("[data-live][id]")) {
    served.set(region.id, region.innerHTML);
  }
  readServerTime(document);
  tickTimes();
  setInterval(tickTimes, 1000);
  if (!every) return;
  setInterval(() => { if (!document.hidden) refreshNow(); }, every);
}

// -- actions ----------------------------------------------------------------------------------

// Every action form asks first, then calls the API; the page then updates in place.
document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form.action");
  if (!form) return;
  event.preventDefault();
  if (!window.confirm(form.dataset.confirm)) return;
  // The form's own fields (fair=false, say) go as the body; the CSRF token goes as a header.
  const fields = [...new FormData(form)].filter(([name]) => name !== "csrf_token");
  try {
    await api(form.dataset.method || "POST", form.action,
              fields.length ? Object.fromEntries(fields) : undefined);
  } catch (error) {
    flash(error.message);
    return;
  }
  if (form.dataset.next) {
    window.location.assign(form.dataset.next);
    return;
  }
  flash(`Done: ${form.querySelector("button").textContent}.`, true);
  await refreshNow(true);
});

// The bulk form: a dry run first, whose count the confirmation names; then the action itself.
function setUpBulk() {
  const form = document.getElementById("bulk-form");
  if (!form) return;
  const confirmBox = document.getElementById("bulk-confirm");
  const count = document.getElementById("bulk-count");
  const go = document.getElementById("bulk-go");
  let pending = null;

  const request = (dryRun) => {
    const fields = new FormData(form);
    const filter = {};
    if (form.dataset.queue) filter.queue = form.dataset.queue;
    if (form.dataset.state) filter.state = [form.dataset.state];
    if (form.dataset.search) filter.search = form.dataset.search;
    if (fields.get("older_than")) filter.older_than = Number(fields.get("older_than"));
    if (fields.get("group_key")) filter.group_key = fields.get("group_key");
    const body = { action: fields.get("action"), filter, dry_run: dryRun };
    if (fields.get("priority") !== "") body.priority = Number(fields.get("priority"));
    return body;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = request(true);
    try {
      const answer = await api("POST", form.dataset.url, body);
      pending = { ...body, dry_run: false };
      count.textContent = `${answer.matched} job${answer.matched === 1 ? "" : "s"} match: ${answer.action} them?`;
      go.textContent = `Confirm: ${answer.action} ${answer.matched}`;
      go.disabled = answer.matched === 0;
      confirmBox.hidden = false;
      go.focus();
    } catch (error) {
      flash(error.message);
    }
  });
  document.getElementById("bulk-cancel").addEventListener("click", () => {
    pending = null;
    confirmBox.hidden = true;
  });
  go.addEventListener("click", async () => {
    if (!pending) return;
    try {
      const answer = await api("POST", form.dataset.url, pending);
      flash(`${answer.action}: ${answer.affected} of ${answer.matched} job(s) done.`, true);
    } catch (error) {
      flash(error.message);
    }
    pending = null;
    confirmBox.hidden = true;
    await refreshNow(true);
  });
}

// -- charts -----------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svgNode(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function formatValue(value) {
  if (value >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (value >= 1e3) return `${+(value / 1e3).toFixed(1)}k`;
  return `${+value.toFixed(value < 10 ? 2 : 0)}`;
}

// Draw lines over the last hour: x is the time (minutes), y from 0 to a rounded maximum, with
// ticks and labels on both axes. A null value leaves a gap.
function drawChart(svg, chart) {
  const width = Math.max(240, svg.clientWidth || 320);
  const height = 170;
  const left = 46, right = 10, top = 22, bottom = 24;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const end = chart.end, start = end - 60 * 60000;
  const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
  const values = chart.series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v != null);
  const max = niceMax(Math.max(0, ...values));
  const y = (v) => top + (1 - v / max) * (height - top - bottom);

  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    svg.append(svgNode("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(svgNode("text", { x: left - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, formatValue(v)));
  }
  const every = width < 420 ? 30 : 15;
  for (let m = 60; m >= 0; m -= every) {
    const t = end - m * 60000;
    const label = new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    svg.append(svgNode("line", { x1: x(t), x2: x(t), y1: height - bottom, y2: height - bottom + 4, class: "axis" }));
    svg.append(svgNode("text", { x: x(t), y: height - 6, class: "tick", "text-anchor": m === 60 ? "start" : m === 0 ? "end" : "middle" }, label));
  }
  svg.append(svgNode("line", { x1: left, x2: left, y1: top, y2: height - bottom, class: "axis" }));
  svg.append(svgNode("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
  svg.append(svgNode("text", { x: 4, y: 10, class: "unit" }, chart.unit));

  chart.series.forEach((series) => {
    let run = [];
    const flush = () => {
      if (run.length === 1) svg.append(svgNode("circle", { cx: run[0][0], cy: run[0][1], r: 3, class: `line ${series.cls}` }));
      else if (run.length > 1) svg.append(svgNode("polyline", { points: run.map((p) => p.join(",")).join(" "), class: `line ${series.cls}` }));
      run = [];
    };
    for (const [t, v] of series.points) {
      if (v == null || t < start) { flush(); continue; }
      run.push([x(t).toFixed(1), y(v).toFixed(1)]);
    }
    flush();
  });
  if (!values.length) {
    svg.append(svgNode("text", { x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle" }, "no data yet"));
  }
}

// The one place that knows the shape of the per-minute series: buckets of
// GET /api/stats/series ({minute, completed, failed, retried, wait_p50_ms, wait_p95_ms,
// backlog}, oldest first), turned into the three charts.
function chartsFromBuckets(buckets, end) {
  const line = (name, cls, pick) => ({
    name, cls, points: buckets.map((b) => [Date.parse(b.minute), pick(b)]),
  });
  return {
    throughput: { end, unit: "jobs/min", series: [
      line("completed", "s0", (b) => b.completed), line("failed", "s1", (b) => b.failed),
      line("retried", "s2", (b) => b.retried)] },
    wait: { end, unit: "ms", series: [
      line("p50", "s3", (b) => b.wait_p50_ms), line("p95", "s4", (b) => b.wait_p95_ms)] },
    backlog: { end, unit: "jobs", series: [line("queued", "s5", (b) => b.backlog)] },
  };
}

// Until the server keeps per-minute series, the page samples GET /api/stats itself: finished
// jobs counted between samples and the queued count, in buckets of the same shape (retries and
// wait times are not in those counts, so they stay empty).
class Sampler {
  constructor() { this.queues = new Map(); }

  add(stats) {
    const at = Date.parse(stats.time);
    const minute = new Date(Math.floor(at / 60000) * 60000).toISOString();
    for (const q of stats.queues) {
      const seen = this.queues.get(q.queue) || { last: null, buckets: [] };
      this.queues.set(q.queue, seen);
      let bucket = seen.buckets[seen.buckets.length - 1];
      if (!bucket || bucket.minute !== minute) {
        bucket = { minute, completed: 0, failed: 0, retried: null, wait_p50_ms: null, wait_p95_ms: null, backlog: 0 };
        seen.buckets.push(bucket);
        if (seen.buckets.length > 61) seen.buckets.shift();
      }
      if (seen.last) {
        bucket.completed += Math.max(0, q.counts.completed - seen.last.completed);
        bucket.failed += Math.max(0, q.counts.failed - seen.last.failed);
      }
      bucket.backlog = q.queued;
      seen.last = q.counts;
    }
  }

  buckets(queue) { return (this.queues.get(queue) || { buckets: [] }).buckets; }
}

async function setUpCharts() {
  const section = document.querySelector("section.charts");
  if (!section) return;
  const select = document.getElementById("chart-queue");
  const source = document.getElementById("chart-source");
  const stored = window.sessionStorage.getItem("conveyor.chart-queue");
  if (stored && [...select.options].some((o) => o.value === stored)) select.value = stored;
  const document_ = await api("GET", `${base()}/api/openapi.json`);
  const fromServer = "/api/stats/series" in document_.paths;
  const sampler = new Sampler();
  let serverEnd = Date.now();
  source.textContent = fromServer
    ? "per-minute series kept by the server"
    : "sampled by this page since it opened";

  const draw = async () => {
    const queue = select.value;
    if (!queue) return;
    let buckets;
    if (fromServer) {
      const url = `${section.dataset.series}?queue=${encodeURIComponent(queue)}&minutes=60`;
      buckets = (await api("GET", url)).buckets;
    } else {
      const stats = await api("GET", section.dataset.stats);
      serverEnd = Date.parse(stats.time);
      sampler.add(stats);
      buckets = sampler.buckets(queue);
    }
    const end = fromServer ? Date.now() + skew : serverEnd;
    latest = chartsFromBuckets(buckets, end);
    paint();
  };
  let latest = null;
  const paint = () => {
    if (!latest) return;
    drawChart(document.getElementById("chart-throughput"), latest.throughput);
    drawChart(document.getElementById("chart-wait"), latest.wait);
    drawChart(document.getElementById("chart-backlog"), latest.backlog);
  };
  select.addEventListener("change", () => {
    window.sessionStorage.setItem("conveyor.chart-queue", select.value);
    draw();
  });
  window.addEventListener("resize", paint);
  await draw();
  setInterval(() => { if (!document.hidden) draw().catch(() => {}); }, fromServer ? 10000 : 3000);
}

startLive();
setUpBulk();
setUpCharts().catch((error) => flash(`charts: ${error.message}`));
