// /reports (HR, admin): ask for a fiscal-year report; the reports so far, live.
import { FINAL, api, el, me, outcome, progressBar, showFormError, showMessage, store, when } from "../live.js";

// What each report is of (the Job object has no payload): from GET /api/reports and
// from this page's own requests.
const scopes = new Map();

function scopeText(id) {
  const s = scopes.get(id);
  if (!s) return "Report";
  return `FY${s.fiscalYear ?? "?"} · ${s.department ?? "All departments"}`;
}

function row(job) {
  const state = FINAL.has(job.status)
    ? el("span", { class: job.status === "failed" ? "error-text" : "muted" }, job.status === "failed" ? job.error ?? "" : outcome(job))
    : progressBar(job);
  return el(
    "tr",
    { "data-job-id": job.id, "data-status": job.status },
    el("td", {}, scopeText(job.id)),
    el("td", {}, el("span", { class: `badge badge-${job.status}` }, job.status)),
    el("td", {}, state),
    el("td", {}, when(job.createdAt)),
    el("td", { class: "actions" }, job.downloadUrl ? el("a", { href: job.downloadUrl, download: "" }, "Download PDF") : null),
  );
}

export function start() {
  const form = document.getElementById("report-form");
  const year = form.elements.fiscalYear;
  const department = form.elements.department;
  const tbody = document.getElementById("reports-body");

  const loadDepartments = async () => {
    const chosen = department.value;
    department.replaceChildren(el("option", { value: "" }, "All departments"));
    if (!year.value) return;
    const r = await api("GET", `/api/reports/departments?fiscalYear=${encodeURIComponent(year.value)}`);
    if (!r.ok) return;
    for (const d of r.body.data) department.append(el("option", { value: d.name }, `${d.name} (${d.reviews})`));
    department.value = [...department.options].some((o) => o.value === chosen) ? chosen : "";
  };

  let scheduled = false;
  const render = () => {
    scheduled = false;
    const reports = [...store.jobs.values()]
      .filter((j) => j.type === "generate_report" && (me.role === "admin" || j.userId === me.id))
      .sort((a, b) => (b.createdAt ?? "").localeCompare(a.createdAt ?? ""));
    if (!reports.length) {
      tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 5 }, "No reports yet.")));
      return;
    }
    tbody.replaceChildren(...reports.map(row));
  };
  let asked = null;
  store.subscribe((job) => {
    // The "being generated" line has done its job once the report has ended.
    if (job && job.id === asked && FINAL.has(job.status)) showMessage("reports-message", "");
    if ((job === null || job.type === "generate_report") && !scheduled) {
      scheduled = true;
      requestAnimationFrame(render);
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const body = { fiscalYear: year.value === "" ? null : Number(year.value) };
    if (department.value) body.department = department.value;
    const r = await api("POST", "/api/reports", body);
    button.disabled = false;
    showFormError(form, r, "reports-message");
    if (r.ok) {
      asked = r.body.jobId;
      scopes.set(r.body.jobId, { fiscalYear: body.fiscalYear, department: body.department ?? null });
      showMessage("reports-message", r.message);
      store.apply(r.body.data);
      render();
    }
  });
  year.addEventListener("change", loadDepartments);
  loadDepartments();
  api("GET", "/api/reports?limit=100").then((r) => {
    if (!r.ok) return showMessage("reports-message", r.message, true);
    for (const job of r.body.data) scopes.set(job.id, job.report ?? {});
    store.applyAll(r.body.data);
  });
}
