// / and /jobs: every job of the user (admins: everyone's), live.
import { FINAL, api, el, label, me, outcome, progressBar, showMessage, store, when } from "../live.js";

// Admins: the names of the jobs' owners when the page was made (id → name).
let owners = {};

function ownerName(job) {
  if (job.userId === null) return "system";
  if (job.userId === me.id) return "me";
  return owners[job.userId] ?? `user ${job.userId}`;
}

function jobRow(job) {
  let progress;
  if (job.status === "pending" && job.error) {
    // Waiting for an automatic retry: say why, and when.
    const at = job.runAfter ? ` at ${new Date(job.runAfter).toLocaleTimeString()}` : "";
    progress = el("span", { class: "muted" }, `Retrying${at} after: ${job.error}`);
  } else if (!FINAL.has(job.status)) progress = progressBar(job);
  else if (job.status === "failed") progress = el("span", { class: "error-text" }, job.error ?? "");
  else progress = el("span", { class: "muted" }, outcome(job) || job.progress?.message || "");
  const actions = el("td", { class: "actions" });
  if (job.downloadUrl) actions.append(el("a", { href: job.downloadUrl, download: "" }, "Download"));
  if (!FINAL.has(job.status) && !job.cancelRequested) {
    actions.append(el("button", { type: "button", class: "secondary", onclick: () => jobAction(job, "cancel") }, "Cancel"));
  }
  if (job.status === "failed" || job.status === "cancelled") {
    actions.append(el("button", { type: "button", onclick: () => jobAction(job, "retry") }, "Retry"));
  }
  const status = el("span", { class: `badge badge-${job.status}` }, job.cancelRequested && !FINAL.has(job.status) ? "cancelling" : job.status);
  const owner = me.role === "admin" ? el("td", {}, ownerName(job)) : null;
  return el(
    "tr",
    { "data-job-id": job.id, "data-status": job.status },
    el("td", {}, label(job)),
    owner,
    el("td", {}, status),
    el("td", {}, progress),
    el("td", { class: "num" }, `${job.attempts}/${job.maxRetries + 1}`),
    el("td", {}, when(job.createdAt)),
    actions,
  );
}

async function jobAction(job, action) {
  const r = await api("POST", `/api/jobs/${encodeURIComponent(job.id)}/${action}`);
  if (r.ok) store.apply(r.body.data);
  showMessage("jobs-message", r.ok ? "" : r.message, !r.ok);
}

export function start() {
  const tbody = document.getElementById("jobs-body");
  owners = JSON.parse(tbody.dataset.owners || "{}");
  const columns = document.querySelectorAll("#jobs-table thead th").length;
  let scheduled = false;
  const render = () => {
    scheduled = false;
    const jobs = [...store.jobs.values()].sort((a, b) => (b.createdAt ?? "").localeCompare(a.createdAt ?? ""));
    if (!jobs.length) {
      const text = store.loaded ? "No jobs yet." : "Loading…";
      tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: columns }, text)));
      return;
    }
    tbody.replaceChildren(...jobs.map(jobRow));
  };
  // Progress events can come several times a second: draw once per frame.
  store.subscribe(() => {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(render);
    }
  });
  // The snapshot holds the last hour; the list goes further back.
  api("GET", "/api/jobs?limit=200").then((r) => {
    if (r.ok) store.applyAll(r.body.data);
    else showMessage("jobs-message", r.message, true);
  });
}
