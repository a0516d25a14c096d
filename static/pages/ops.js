// /ops (admin): the operators' console. It draws GET /api/ops/overview, then every
// {"type": "ops"} message the socket brings (at most one a second while jobs change).
import { api, count, el, label, onOps, showMessage, when } from "../live.js";

const seconds = (s) => (s === null || s === undefined ? "–" : s < 90 ? `${s} s` : `${Math.round(s / 60)} min`);

function empty(colspan, text) {
  return el("tr", { class: "empty" }, el("td", { colspan }, text));
}

function totals(data) {
  const j = data.jobs;
  const item = (n, text, cls = "") => el("div", { class: `ops-total ${cls}` }, el("strong", {}, count(n)), el("span", {}, text));
  return [
    item(j.pending, "pending"), item(j.scheduled, "waiting for a retry"), item(j.processing, "running"),
    item(j.completedLastHour, "completed in the last hour"),
    item(j.failedLastHour, "failed in the last hour", j.failedLastHour ? "bad" : ""),
  ];
}

function queueRow(q) {
  return el("tr", { "data-priority": q.priority }, el("td", {}, `${q.name} (${q.priority})`),
    el("td", { class: "num" }, count(q.waiting)), el("td", { class: "num" }, seconds(q.oldestWaitingSeconds)));
}

async function act(url, body, what) {
  const r = await api("POST", url, body);
  showMessage("ops-message", r.ok ? what(r.body.data) : r.message, !r.ok);
  if (r.ok) refresh();
}

function typeRow(t) {
  const name = encodeURIComponent(t.type);
  const toggle = t.paused
    ? el("button", { type: "button", onclick: () => act(`/api/ops/types/${name}/resume`, undefined, () => `${label(t)} resumed.`) }, "Resume")
    : el("button", { type: "button", class: "secondary", onclick: () => act(`/api/ops/types/${name}/pause`, undefined, () => `${label(t)} paused: its jobs wait.`) }, "Pause");
  const actions = el("td", { class: "actions" }, toggle);
  if (t.failedLastHour) {
    actions.append(el("button", { type: "button", class: "secondary",
      onclick: () => act("/api/ops/retry-failed", { type: t.type }, (d) => `${d.retried} ${label(t)} jobs queued again.`) },
      "Retry failed"));
  }
  return el("tr", { "data-type": t.type, "data-paused": String(t.paused) },
    el("td", {}, label(t), t.paused ? el("span", { class: "badge badge-failed" }, " paused") : null),
    el("td", { class: "num" }, count(t.pending)), el("td", { class: "num" }, count(t.processing)),
    el("td", { class: "num" }, count(t.completedLastHour)), el("td", { class: "num" }, count(t.failedLastHour)),
    el("td", { class: "num" }, `${seconds(t.runSecondsP50)} / ${seconds(t.runSecondsP95)}`),
    el("td", { class: "num" }, seconds(t.waitSecondsP95)), actions);
}

function consumerRow(c) {
  const running = c.running.length
    ? el("ul", { class: "plain" }, ...c.running.map((r) => el("li", { "data-job-id": r.jobId },
        `${label(r)} for ${seconds(r.runningSeconds)}${r.progress?.percent != null ? ` · ${r.progress.percent}%` : ""}`)))
    : el("span", { class: "muted" }, "idle");
  return el("tr", { "data-consumer": c.id, "data-silent": String(c.silent), class: c.silent ? "silent" : "" },
    el("td", {}, `${c.host} · pid ${c.pid}`, c.silent ? el("span", { class: "badge badge-failed" }, " silent") : null),
    el("td", { class: "num" }, c.workers), el("td", { class: "num" }, count(c.processed)),
    el("td", {}, when(c.lastSeenAt)), el("td", {}, running));
}

function failureRow(f) {
  return el("tr", { "data-job-id": f.id },
    el("td", {}, label(f)), el("td", { class: "error-text" }, f.error ?? ""),
    el("td", { class: "num" }, f.attempts), el("td", {}, when(f.completedAt)),
    el("td", { class: "actions" }, el("button", { type: "button",
      onclick: () => act(`/api/jobs/${encodeURIComponent(f.id)}/retry`, undefined, () => "The job is queued again.") }, "Retry")));
}

// Completed (and, on top, failed) jobs per minute: one bar per minute, no library.
function chart(points) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 600, height = 140, pad = 18;
  const most = Math.max(1, ...points.map((p) => p.completed + p.failed));
  const bar = (width - pad) / points.length;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  const done = points.reduce((n, p) => n + p.completed, 0);
  const failed = points.reduce((n, p) => n + p.failed, 0);
  svg.setAttribute("aria-label", `${done} completed and ${failed} failed in the last hour; at most ${most} in a minute`);
  const rect = (x, y, h, cls, title) => {
    const r = document.createElementNS(ns, "rect");
    for (const [k, v] of Object.entries({ x, y, width: Math.max(1, bar - 1), height: h, class: cls })) r.setAttribute(k, v);
    const t = document.createElementNS(ns, "title");
    t.textContent = title;
    r.append(t);
    return r;
  };
  points.forEach((p, i) => {
    const x = pad + i * bar;
    const hDone = ((height - pad) * p.completed) / most;
    const hFailed = ((height - pad) * p.failed) / most;
    const at = new Date(p.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (p.completed) svg.append(rect(x, height - pad - hDone, hDone, "done", `${at}: ${p.completed} completed`));
    if (p.failed) svg.append(rect(x, height - pad - hDone - hFailed, hFailed, "failed", `${at}: ${p.failed} failed`));
  });
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", 0);
  axis.setAttribute("y", 12);
  axis.textContent = String(most);
  svg.append(axis);
  return svg;
}

function draw(data) {
  document.getElementById("ops-totals").replaceChildren(...totals(data));
  document.getElementById("queues-body").replaceChildren(...data.queues.map(queueRow));
  document.getElementById("types-body").replaceChildren(...data.types.map(typeRow));
  document.getElementById("consumers-body").replaceChildren(
    ...(data.consumers.length ? data.consumers.map(consumerRow) : [empty(5, "No consumer is running.")]));
  document.getElementById("periodic-body").replaceChildren(...data.periodic.map((p) => el("tr", {},
    el("td", {}, label({ type: p.name })), el("td", {}, p.schedule), el("td", {}, when(p.nextRunAt)),
    el("td", {}, p.lastStatus ?? "not run yet"))));
  document.getElementById("failures-body").replaceChildren(
    ...(data.failures.length ? data.failures.map(failureRow) : [empty(5, "No failed jobs.")]));
  document.getElementById("retry-all").disabled = !data.failures.length;
  document.getElementById("throughput-chart").replaceChildren(chart(data.throughput));
  document.getElementById("ops-updated").textContent = `Updated ${new Date(data.generatedAt).toLocaleTimeString()}`;
}

async function refresh() {
  const r = await api("GET", "/api/ops/overview");
  if (r.ok) draw(r.body.data);
  else showMessage("ops-message", r.message, true);
}

export function start() {
  document.getElementById("retry-all").addEventListener("click", () =>
    act("/api/ops/retry-failed", undefined, (d) => `${d.retried} failed jobs queued again.`));
  onOps(draw);
  refresh();
}
