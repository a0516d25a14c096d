// pa's pages: a plain ES module, no build step.
// Live jobs come over the WebSocket /ws (a snapshot, then one message per change);
// without it the page polls GET /api/jobs/{id} for unfinished jobs and retries.

const FINAL = new Set(["completed", "failed", "cancelled"]);
const POLL_FIRST = 1000;
const POLL_MAX = 10000;
const WS_UNAUTHORIZED = 4401;
const JOB_LABELS = {
  email_notification: "Email notification",
  generate_report: "Report",
  multi_year_analytics: "Analytics",
  bulk_import: "User import",
  archive_reviews: "Fiscal-year archive",
  database_backup: "Database backup",
};

const body = document.body;
const me = body.dataset.userId
  ? { id: Number(body.dataset.userId), role: body.dataset.userRole }
  : null;
// Server time when the page was made: toasts are for jobs that finish after it.
const pageBornAt = Date.parse(body.dataset.serverTime) || Date.now();

// ---- small helpers -------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

async function api(method, url, data) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (data !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(data);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    return { ok: false, status: 0, body: null, message: "The server cannot be reached." };
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  const message =
    payload?.error?.message ?? payload?.message ?? (response.ok ? "" : `Request failed (${response.status}).`);
  return { ok: response.ok, status: response.status, body: payload, message };
}

function toLogin() {
  const here = location.pathname + location.search;
  location.assign(`/login?next=${encodeURIComponent(here)}`);
}

function label(job) {
  return JOB_LABELS[job.type] ?? job.type;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function showMessage(id, text, isError = false) {
  const node = document.getElementById(id);
  if (!node) return;
  node.textContent = text;
  node.classList.toggle("error", isError);
}

// ---- toasts --------------------------------------------------------------

function toast(job) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const text =
    job.status === "completed"
      ? `${label(job)} completed.`
      : job.status === "failed"
        ? `${label(job)} failed${job.error ? `: ${job.error}` : "."}`
        : `${label(job)} cancelled.`;
  const node = el("div", { class: `toast toast-${job.status}` }, el("span", {}, text));
  if (job.downloadUrl) node.append(" ", el("a", { href: job.downloadUrl }, "Download"));
  node.append(
    el("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", onclick: () => node.remove() }, "×"),
  );
  box.append(node);
  // Failures stay until dismissed; good news goes away by itself.
  if (job.status !== "failed") setTimeout(() => node.remove(), 10000);
}

// ---- the jobs this page knows --------------------------------------------

class JobStore {
  constructor() {
    this.jobs = new Map();
    this.loaded = false;
    this.listeners = [];
  }

  // Keep the highest version of each job; toast when one of ours finishes.
  apply(job) {
    if (!me || job.userId !== me.id) return; // admins receive everyone's; this page is "mine"
    const prev = this.jobs.get(job.id);
    if (prev && prev.version >= job.version) return;
    this.jobs.set(job.id, job);
    if (FINAL.has(job.status)) {
      const newlyFinal = prev
        ? !FINAL.has(prev.status) || prev.completedAt !== job.completedAt
        : Date.parse(job.completedAt) >= pageBornAt;
      if (newlyFinal) toast(job);
    }
    this.changed();
  }

  applyAll(jobs) {
    for (const job of jobs) this.apply(job);
    this.loaded = true;
    this.changed();
  }

  remove(id) {
    if (this.jobs.delete(id)) this.changed();
  }

  unfinished() {
    return [...this.jobs.values()].filter((job) => !FINAL.has(job.status));
  }

  changed() {
    for (const fn of this.listeners) fn();
  }
}

const store = new JobStore();

// ---- live updates --------------------------------------------------------

function setLive(state, text) {
  const node = document.getElementById("live");
  if (!node) return;
  node.dataset.state = state;
  node.textContent = text;
}

class Live {
  constructor() {
    this.delay = POLL_FIRST;
    this.timer = null;
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
        this.delay = POLL_FIRST;
        setLive("live", "Live");
        store.applyAll(msg.data.jobs);
      } else if (msg.type === "job") {
        store.apply(msg.data);
      }
    });
    ws.addEventListener("close", (event) => {
      if (event.code === WS_UNAUTHORIZED) {
        toLogin();
        return;
      }
      setLive("polling", "Reconnecting…");
      this.recover();
    });
  }

  // Poll now and then, try the WebSocket again; wait longer after each failure.
  recover() {
    if (this.timer !== null) return;
    this.timer = setTimeout(async () => {
      this.timer = null;
      await this.poll();
      this.delay = Math.min(this.delay * 2, POLL_MAX);
      this.connect();
    }, this.delay);
  }

  async poll() {
    if (!store.loaded) {
      const r = await api("GET", "/api/jobs?limit=50");
      if (r.status === 401) toLogin();
      else if (r.ok) store.applyAll(r.body.data);
      return;
    }
    for (const job of store.unfinished()) {
      const r = await api("GET", `/api/jobs/${encodeURIComponent(job.id)}`);
      if (r.status === 401) return toLogin();
      if (r.ok) store.apply(r.body.data);
      else if (r.status === 404) store.remove(job.id);
    }
  }
}

// ---- page: my jobs -------------------------------------------------------

function jobRow(job) {
  const p = job.progress;
  let progress;
  if (!FINAL.has(job.status)) {
    const bar = el("progress", { max: 100, "aria-label": `${label(job)} progress` });
    if (p?.percent !== null && p?.percent !== undefined) bar.value = p.percent;
    progress = el("div", { class: "progress" }, bar, el("span", {}, p?.message ?? ""));
  } else {
    progress = el("span", { class: "muted" }, job.status === "failed" ? job.error ?? "" : p?.message ?? "");
  }
  const actions = el("td", { class: "actions" });
  if (job.downloadUrl) actions.append(el("a", { href: job.downloadUrl }, "Download"));
  if (!FINAL.has(job.status) && !job.cancelRequested) {
    actions.append(el("button", { type: "button", onclick: () => jobAction(job, "cancel") }, "Cancel"));
  }
  if (job.status === "failed" || job.status === "cancelled") {
    actions.append(el("button", { type: "button", onclick: () => jobAction(job, "retry") }, "Retry"));
  }
  return el(
    "tr",
    { "data-job-id": job.id, "data-status": job.status },
    el("td", {}, label(job)),
    el("td", {}, el("span", { class: `badge badge-${job.status}` }, job.status)),
    el("td", {}, progress),
    el("td", {}, when(job.createdAt)),
    actions,
  );
}

async function jobAction(job, action) {
  const r = await api("POST", `/api/jobs/${encodeURIComponent(job.id)}/${action}`);
  if (r.ok) store.apply(r.body.data);
  showMessage("jobs-message", r.ok ? "" : r.message, !r.ok);
}

function jobsPage() {
  const tbody = document.getElementById("jobs-body");
  let scheduled = false;
  const render = () => {
    scheduled = false;
    const jobs = [...store.jobs.values()].sort((a, b) => (b.createdAt ?? "").localeCompare(a.createdAt ?? ""));
    if (!jobs.length) {
      const text = store.loaded ? "No jobs yet." : "Loading…";
      tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 5 }, text)));
      return;
    }
    tbody.replaceChildren(...jobs.map(jobRow));
  };
  // Progress events can come several times a second: draw once per frame.
  store.listeners.push(() => {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(render);
    }
  });
}

// ---- page: reviews -------------------------------------------------------

function canSubmit(review) {
  if (review.status !== "manager_review") return false;
  if (me.role === "admin" || review.managerId === me.id) return true;
  // The employee's current manager may differ from the review's; the server decides.
  return me.role === "manager" && review.employeeId !== me.id;
}

function reviewsPage() {
  const form = document.getElementById("review-filters");
  const tbody = document.getElementById("reviews-body");

  const load = async () => {
    const query = new URLSearchParams({ limit: "200" });
    for (const [name, value] of new FormData(form)) if (value) query.set(name, String(value));
    const r = await api("GET", `/api/reviews?${query}`);
    if (r.status === 401) return toLogin();
    if (!r.ok) return showMessage("reviews-message", r.message, true);
    const reviews = r.body.data;
    if (!reviews.length) {
      tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 6 }, "No reviews.")));
      return;
    }
    tbody.replaceChildren(...reviews.map(reviewRow));
  };

  const submit = async (review, button) => {
    button.disabled = true;
    const r = await api("POST", `/api/reviews/${review.id}/submit-to-hr`);
    if (r.ok) store.apply(r.body.data);
    showMessage("reviews-message", r.message, !r.ok);
    await load();
  };

  const reviewRow = (review) => {
    const actions = el("td", { class: "actions" });
    if (canSubmit(review)) {
      const button = el("button", { type: "button" }, "Submit to HR");
      button.addEventListener("click", () => submit(review, button));
      actions.append(button);
    }
    return el(
      "tr",
      { "data-review-id": review.id, "data-status": review.status },
      el("td", {}, review.employeeName, el("div", { class: "muted" }, review.employeeEmail)),
      el("td", {}, review.department ?? ""),
      el("td", {}, String(review.fiscalYear)),
      el("td", {}, el("span", { class: `badge badge-${review.status}` }, review.status.replaceAll("_", " "))),
      el("td", {}, review.overallRating ?? "–"),
      actions,
    );
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  load();
}

// ---- page: login ---------------------------------------------------------

function safeNext(value) {
  return value && value.startsWith("/") && !value.startsWith("//") && !value.startsWith("/\\") ? value : "/";
}

function loginPage() {
  const form = document.getElementById("login-form");
  const errorBox = document.getElementById("login-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const data = Object.fromEntries(new FormData(form));
    const r = await api("POST", "/api/session", { email: data.email, password: data.password });
    button.disabled = false;
    if (r.ok) {
      location.assign(safeNext(form.dataset.next));
      return;
    }
    errorBox.textContent = r.message;
    errorBox.hidden = false;
    const field = r.body?.error?.field;
    if (field && form.elements[field]) form.elements[field].focus();
  });
}

// ---- start ---------------------------------------------------------------

document.getElementById("logout")?.addEventListener("click", async () => {
  await api("DELETE", "/api/session");
  location.assign("/login");
});

const page = body.dataset.page;
if (page === "login") loginPage();
if (page === "jobs") jobsPage();
if (page === "reviews") reviewsPage();
if (me) new Live().connect();
