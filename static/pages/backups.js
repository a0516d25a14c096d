// /backups (admin): the backups, and "Back up now" with its progress.
import { FINAL, api, bytes, el, progressBar, showMessage, store, when } from "../live.js";

export function start() {
  const tbody = document.getElementById("backups-body");
  const button = document.getElementById("backup-now");
  const progress = document.getElementById("backup-progress");
  let current = null;

  const load = async () => {
    const r = await api("GET", "/api/admin/backups");
    if (!r.ok) return showMessage("backups-message", r.message, true);
    const list = r.body.data;
    if (!list.length) {
      tbody.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 4 }, "No backups yet.")));
      return;
    }
    tbody.replaceChildren(
      ...list.map((b) =>
        el(
          "tr",
          { "data-name": b.name },
          el("td", {}, b.name),
          el("td", { class: "num" }, bytes(b.bytes)),
          el("td", {}, when(b.createdAt)),
          el("td", { class: "actions" }, el("a", { href: b.downloadUrl, download: "" }, "Download")),
        ),
      ),
    );
  };

  const follow = (job) => {
    if (current === null || (job !== null && job.id !== current)) return;
    const now = store.jobs.get(current);
    if (!now) return;
    if (FINAL.has(now.status)) {
      progress.replaceChildren();
      button.disabled = false;
      current = null;
      if (now.status !== "completed") showMessage("backups-message", `The backup ${now.status}: ${now.error ?? ""}`, true);
      load();
    } else progress.replaceChildren(progressBar(now));
  };
  store.subscribe(follow);

  button.addEventListener("click", async () => {
    button.disabled = true;
    const r = await api("POST", "/api/admin/backups");
    showMessage("backups-message", r.message, !r.ok);
    if (!r.ok) {
      button.disabled = false;
      return;
    }
    current = r.body.jobId;
    progress.replaceChildren(progressBar(r.body.data));
    store.apply(r.body.data);
    follow(null); // the job may have moved on before this answer arrived
  });
  load();
}
