// The live core every page shares: API calls, the job store (newest version per
// job), toasts, and one WebSocket per page with a polling fallback.
// /ws sends a snapshot, then one message per change; without it the page polls
// GET /api/jobs/{id} for unfinished jobs (1 s → 10 s) and retries the socket.

export const FINAL = new Set(["completed", "failed", "cancelled"]);
const POLL_FIRST = 1000;
const POLL_MAX = 10000;
const WS_UNAUTHORIZED = 4401;
// The user's role changed: what the page shows (menus, jobs) is another role's now.
const WS_ROLE_CHANGED = 4409;
const JOB_LABELS = {
  email_notification: "Email notification",
  generate_report: "Report",
  multi_year_analytics: "Analytics",
  bulk_import: "User import",
  archive_reviews: "Fiscal-year archive",
  database_backup: "Database backup",
};

const body = document.body;
export const me = body.dataset.userId ? { id: Number(body.dataset.userId), role: body.dataset.userRole } : null;
// Server time when the page was made: toasts are for jobs that finish after it.
const pageBornAt = Date.parse(body.dataset.serverTime) || Date.now();

// ---- small helpers -------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

// fetch() with the envelope read: {ok, status, body, message, field}.
export async function api(method, url, data) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (data instanceof FormData) {
    init.body = data;
  } else if (data !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(data);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    return { ok: false, status: 0, body: null, message: "The server cannot be reached.", field: null };
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  const message =
    payload?.error?.message ?? payload?.message ?? (response.ok ? "" : `Request failed (${response.status}).`);
  if (response.status === 401 && me) toLogin();
  return { ok: response.ok, status: response.status, body: payload, message, field: payload?.error?.field ?? null };
}

// Set while this tab signs out: the server then closes this login's WebSocket
// (4401) and the page must not race the logout to /login?next=...
let signingOut = false;

export function toLogin() {
  if (signingOut) return;
  const here = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(here)}`);
}

export async function signOut() {
  signingOut = true;
  await api("DELETE", "/api/session");
  location.assign("/login");
}

export function label(job) {
  return JOB_LABELS[job.type] ?? job.type;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export function showMessage(id, text, isError = false) {
  const node = document.getElementById(id);
  if (!node) return;
  node.textContent = text;
  node.classList.toggle("error", isError);
}

// Show an API error next to its field (the envelope's `field`), else in `fallbackId`.
export function showFormError(form, r, fallbackId) {
  for (const node of form.querySelectorAll(".field-error")) node.remove();
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  if (r.ok) return;
  const input = r.field ? form.elements[r.field] : null;
  if (input) {
    const id = `${input.id || input.name}-error`;
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", id);
    input.closest("label, .field")?.append(el("span", { id, class: "field-error" }, r.message));
    input.focus();
    showMessage(fallbackId, "");
  } else {
    showMessage(fallbackId, r.message, true);
  }
}

export function duration(job) {
  const start = Date.parse(job.startedAt ?? job.createdAt);
  const end = Date.parse(job.completedAt ?? job.updatedAt);
  if (!(end >= start)) return "";
  const s = (end - start) / 1000;
  if (s < 1) return "under a second";
  if (s < 90) return `${Math.round(s)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function count(n) {
  return (n ?? 0).toLocaleString("en");
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// What a finished job produced, in a few words.
export function outcome(job) {
  const r = job.result ?? {};
  switch (job.type) {
    case "generate_report":
      return r.reviews !== undefined ? `${r.reviews} reviews, ${r.pages} pages` : "";
    case "bulk_import":
      return r.created !== undefined ? `${count(r.created)} created, ${count(r.updated)} updated, ${count(r.rejected)} rejected` : "";
    case "email_notification":
      return r.sent !== undefined ? `${r.sent} sent` : "";
    case "archive_reviews":
      return r.archived !== undefined ? `${r.archived} reviews archived` : "";
    case "database_backup":
      return r.name ? `${r.name}, ${bytes(r.bytes)}` : "";
    default:
      return "";
  }
}

// A progress bar with percent and message (role=progressbar, aria-valuenow).
export function progressBar(job) {
  const p = job.progress;
  const percent = p?.percent ?? null;
  const bar = el(
    "div",
    {
      class: "pbar",
      role: "progressbar",
      "aria-label": `${label(job)} progress`,
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": percent ?? undefined,
      "aria-valuetext": percent === null ? p?.message ?? job.status : `${percent}%`,
    },
    el("div", { class: "pbar-fill", style: `width: ${percent ?? 0}%` }),
  );
  if (percent === null) bar.classList.add("indeterminate");
  const text = [percent === null ? "" : `${Math.round(percent)}%`, p?.message ?? (job.status === "pending" ? "Waiting…" : ""),
    estimate(job)]
    .filter(Boolean)
    .join(" · ");
  return el("div", { class: "progress", "data-job-id": job.id }, bar, el("span", { class: "progress-text" }, text));
}

function about(seconds) {
  if (seconds < 1) return "a moment";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  return `${Math.round(seconds / 60)} min`;
}

// "2 ahead · starts in ~10 s", "about 40 s left" (the server's estimate, counted down).
export function estimate(job) {
  const q = job.queue;
  if (job.paused) return "paused by an operator";
  if (!q) return "";
  const gone = (Date.now() - (job.queueAt ?? Date.now())) / 1000;
  if (job.status === "pending") {
    const parts = [`${q.ahead} ahead`];
    if (q.startsIn !== null) parts.push(`starts in ~${about(Math.max(0, q.startsIn - gone))}`);
    return parts.join(" · ");
  }
  if (job.status === "processing" && q.finishesIn !== null) return `about ${about(Math.max(0, q.finishesIn - gone))} left`;
  return "";
}

// ---- toasts --------------------------------------------------------------

const toasted = new Set();
const DOWNLOADS = {
  generate_report: "Download PDF", bulk_import: "Download errors CSV", database_backup: "Download backup",
  archive_reviews: "Download archive",
};

function toast(job) {
  const key = `${job.id}@${job.completedAt}`;
  if (toasted.has(key)) return; // one toast per finish, however it reached us
  toasted.add(key);
  const box = document.getElementById("toasts");
  if (!box) return;
  const took = duration(job);
  const what = outcome(job);
  let text;
  if (job.status === "completed") text = `${label(job)} completed${took ? ` in ${took}` : ""}${what ? ` (${what})` : ""}.`;
  else if (job.status === "failed") text = `${label(job)} failed: ${job.error || "no reason given"}.`;
  else text = `${label(job)} cancelled.`;
  const node = el("div", { class: `toast toast-${job.status}`, "data-job-id": job.id }, el("span", {}, text));
  if (job.downloadUrl) node.append(el("a", { href: job.downloadUrl, download: "" }, DOWNLOADS[job.type] ?? "Download"));
  node.append(el("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", onclick: () => node.remove() }, "×"));
  box.append(node);
  // Failures and files stay until dismissed; other good news goes away by itself.
  if (job.status !== "failed" && !job.downloadUrl) setTimeout(() => node.remove(), 15000);
}

// ---- the jobs this page knows --------------------------------------------

class JobStore {
  constructor() {
    this.jobs = new Map();
    this.loaded = false;
    this.listeners = new Set();
  }

  // Keep the highest version of each job; toast when one of ours reaches a final status.
  // The API's answers carry the queue estimate (`queue`, `paused`), events do not: an
  // event keeps the estimate it had while the status stays the same.
  apply(job, notify = true) {
    const prev = this.jobs.get(job.id);
    if ("queue" in job) job.queueAt = Date.now();
    else if (prev && "queue" in prev && prev.status === job.status) {
      Object.assign(job, { queue: prev.queue, paused: prev.paused, queueAt: prev.queueAt });
    }
    if (prev && prev.version === job.version && "queue" in job) {
      Object.assign(prev, { queue: job.queue, paused: job.paused, queueAt: job.queueAt });
      if (notify) this.changed(prev);
      return false;
    }
    if (prev && prev.version >= job.version) return false;
    this.jobs.set(job.id, job);
    const mine = me && job.userId === me.id; // admins receive everyone's jobs
    if (mine && FINAL.has(job.status)) {
      const newlyFinal = prev
        ? !FINAL.has(prev.status) || prev.completedAt !== job.completedAt
        : Date.parse(job.completedAt) >= pageBornAt;
      if (newlyFinal) toast(job);
    }
    if (!FINAL.has(job.status)) live?.nudge();
    if (notify) this.changed(job);
    return true;
  }

  applyAll(jobs) {
    for (const job of jobs) this.apply(job, false);
    this.loaded = true;
    this.changed(null);
  }

  remove(id) {
    if (this.jobs.delete(id)) this.changed(null);
  }

  unfinished() {
    return [...this.jobs.values()].filter((job) => !FINAL.has(job.status));
  }

  // fn(job | null): null means "anything may have changed".
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed(job) {
    for (const fn of this.listeners) fn(job);
  }

  // A promise of the job once it is final (whichever way the news comes).
  whenFinal(id) {
    return new Promise((resolve) => {
      const check = () => {
        const job = this.jobs.get(id);
        if (job && FINAL.has(job.status)) {
          off();
          resolve(job);
          return true;
        }
        return false;
      };
      const off = this.subscribe(check);
      check();
    });
  }
}

export const store = new JobStore();

// ---- live updates --------------------------------------------------------

function setLive(state, text) {
  const node = document.getElementById("live");
  if (!node) return;
  node.dataset.state = state;
  node.textContent = text;
  node.hidden = state === "live";
}

class Live {
  constructor() {
    this.delay = POLL_FIRST;
    this.timer = null;
    this.up = false;
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let ws;
    try {
      ws = new WebSocket(`${scheme}//${location.host}/ws`);
    } catch {
      this.recover();
      return;
    }
    ws.addEventListener("message", (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "snapshot") {
        // Back off afresh only once the server has really answered.
        this.up = true;
        this.delay = POLL_FIRST;
        setLive("live", "Live");
        store.applyAll(msg.data.jobs);
      } else if (msg.type === "job") {
        store.apply(msg.data);
      } else if (msg.type === "ops") {
        for (const fn of opsListeners) fn(msg.data);
      }
    });
    ws.addEventListener("close", (event) => {
      this.up = false;
      if (event.code === WS_UNAUTHORIZED) {
        toLogin();
        return;
      }
      if (event.code === WS_ROLE_CHANGED) {
        location.reload();  // a fresh page, and a socket with the new role's snapshot
        return;
      }
      setLive("paused", "Live updates paused");
      this.recover();
    });
  }

  // A new unfinished job while the socket is down: look at it soon.
  nudge() {
    if (this.up || this.delay === POLL_FIRST) return;
    this.delay = POLL_FIRST;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
      this.recover();
    }
  }

  // Poll now and then, try the WebSocket again; wait longer after each failure.
  recover() {
    if (this.timer !== null) return;
    this.timer = setTimeout(async () => {
      this.timer = null;
      await this.poll();
      this.delay = Math.min(this.delay * 2, POLL_MAX);
      if (!this.up) this.connect();
    }, this.delay);
  }

  async poll() {
    if (!store.loaded) {
      const r = await api("GET", "/api/jobs?limit=50");
      if (r.ok) store.applyAll(r.body.data);
      return;
    }
    for (const job of store.unfinished()) {
      const r = await api("GET", `/api/jobs/${encodeURIComponent(job.id)}`);
      if (r.ok) store.apply(r.body.data);
      else if (r.status === 404) store.remove(job.id);
    }
  }
}

const live = me ? new Live() : null;

// Admins' sockets also bring the operators' overview (the /ops page listens).
const opsListeners = new Set();
export function onOps(fn) {
  opsListeners.add(fn);
}

// The estimates move with the queue: while this page shows unfinished jobs, ask for
// them again now and then (events carry no estimate).
const ESTIMATE_REFRESH = 5000;

async function refreshEstimates() {
  if (document.visibilityState !== "hidden" && store.unfinished().length) {
    for (const status of ["pending", "processing"]) {
      const r = await api("GET", `/api/jobs?status=${status}&limit=100`);
      if (r.ok) for (const job of r.body.data) if (store.jobs.has(job.id)) store.apply(job);
    }
  }
  setTimeout(refreshEstimates, ESTIMATE_REFRESH);
}

export function startLive() {
  live?.connect();
  if (me) setTimeout(refreshEstimates, ESTIMATE_REFRESH);
}
