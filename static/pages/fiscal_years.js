// /fiscal-years (HR, admin): the years, and closing one (confirmation, then progress).
import { FINAL, api, el, progressBar, showMessage, store, when } from "../live.js";

export function start() {
  const tbody = document.getElementById("years-body");
  const dialog = document.getElementById("close-dialog");
  let years = [];
  const watching = new Set();

  const row = (y) => {
    const job = y.jobId ? store.jobs.get(y.jobId) : null;
    let state = el("span", { class: `badge badge-${y.state}` }, y.state);
    let detail = y.closedAt ? el("span", { class: "muted" }, `closed ${when(y.closedAt)}`) : null;
    if (job && !FINAL.has(job.status)) detail = progressBar(job);
    else if (job?.status === "failed") detail = el("span", { class: "error-text" }, job.error ?? "failed");
    const actions = el("td", { class: "actions" });
    if (y.downloadUrl) actions.append(el("a", { href: y.downloadUrl, download: "" }, "Download archive"));
    if (y.state === "open") actions.append(el("button", { type: "button", onclick: () => ask(y.year) }, `Close FY${y.year}`));
    return el(
      "tr",
      { "data-year": y.year, "data-state": y.state },
      el("td", {}, `FY${y.year}`),
      el("td", { class: "num" }, String(y.reviews)),
      el("td", { class: "num" }, String(y.archived)),
      el("td", {}, state),
      el("td", {}, detail),
      actions,
    );
  };

  const render = () => {
    if (!years.length) {
      tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 6 }, "No fiscal years with reviews.")));
      return;
    }
    tbody.replaceChildren(...years.map(row));
  };

  const load = async () => {
    const r = await api("GET", "/api/fiscal-years");
    if (!r.ok) return showMessage("years-message", r.message, true);
    years = r.body.data;
    for (const y of years) if (y.jobId && y.state === "closing") watching.add(y.jobId);
    render();
  };

  const ask = (year) => {
    dialog.querySelector("[data-year]").textContent = `FY${year}`;
    dialog.dataset.year = String(year);
    dialog.showModal();
  };

  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "confirm") return;
    const year = dialog.dataset.year;
    const r = await api("POST", `/api/fiscal-years/${year}/close`);
    showMessage("years-message", r.message, !r.ok);
    if (r.ok) {
      watching.add(r.body.jobId);
      store.apply(r.body.data);
      await load();
    }
  });

  store.subscribe((job) => {
    if (job === null || watching.has(job.id)) {
      if (job && FINAL.has(job.status)) {
        watching.delete(job.id);
        load();
      } else render();
    }
  });
  load();
}
