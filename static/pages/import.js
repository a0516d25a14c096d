// /import (admin): upload a users CSV, follow its job, then the counts and rejected lines.
import { FINAL, api, count, el, label, progressBar, showFormError, showMessage, store } from "../live.js";

function showResult(box, job) {
  if (job.status === "failed" || job.status === "cancelled") {
    box.replaceChildren(el("p", { class: "error-text" }, `${label(job)} ${job.status}${job.error ? `: ${job.error}` : "."}`));
    return;
  }
  const r = job.result ?? {};
  const parts = [
    el("h2", {}, "Result"),
    el(
      "dl",
      { class: "counts" },
      el("div", {}, el("dt", {}, "Created"), el("dd", { "data-count": "created" }, count(r.created))),
      el("div", {}, el("dt", {}, "Updated"), el("dd", { "data-count": "updated" }, count(r.updated))),
      el("div", {}, el("dt", {}, "Rejected"), el("dd", { "data-count": "rejected" }, count(r.rejected))),
    ),
  ];
  const errors = r.errors ?? [];
  if (errors.length) {
    parts.push(
      el("h3", {}, "Rejected lines"),
      job.downloadUrl ? el("p", {}, el("a", { href: job.downloadUrl, download: "" }, "Download the errors CSV")) : null,
      el(
        "table",
        { class: "data", id: "rejected" },
        el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Line"), el("th", { scope: "col" }, "Email"), el("th", { scope: "col" }, "Reason"))),
        el("tbody", {}, ...errors.map((e) => el("tr", {}, el("td", { class: "num" }, String(e.line)), el("td", {}, e.email ?? ""), el("td", {}, e.message)))),
      ),
    );
    if (r.rejected > errors.length) parts.push(el("p", { class: "muted" }, `The first ${errors.length} of ${r.rejected} are shown; the CSV has them all.`));
  }
  box.replaceChildren(...parts);
}

export function start() {
  const form = document.getElementById("import-form");
  const progress = document.getElementById("import-progress");
  const result = document.getElementById("import-result");
  let current = null;

  const follow = (job) => {
    if (current === null || (job !== null && job.id !== current)) return;
    const now = store.jobs.get(current);
    if (!now) return;
    if (FINAL.has(now.status)) {
      progress.replaceChildren();
      showResult(result, now);
    } else {
      progress.replaceChildren(progressBar(now));
    }
  };
  store.subscribe(follow);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    const file = form.elements.file.files[0];
    if (!file) {
      showFormError(form, { ok: false, field: "file", message: "Choose a CSV file first." }, "import-message");
      return;
    }
    button.disabled = true;
    result.replaceChildren();
    const data = new FormData();
    data.append("file", file);
    const r = await api("POST", "/api/users/import", data);
    button.disabled = false;
    showFormError(form, r, "import-message");
    if (!r.ok) return;
    showMessage("import-message", r.message);
    current = r.body.jobId;
    progress.replaceChildren(progressBar(r.body.data));
    store.apply(r.body.data);
    follow(null); // the job may have moved on before this answer arrived
  });
}
