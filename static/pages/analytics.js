// /analytics (HR, admin): figures for a range of years, drawn by the server (the
// PDF's SVG charts); a large range is a job: a progress bar, then the figures in place.
import { FINAL, api, progressBar, showFormError, showMessage, store } from "../live.js";

export function start() {
  const form = document.getElementById("analytics-form");
  const progress = document.getElementById("analytics-progress");
  const view = document.getElementById("analytics-view");
  let current = null;

  const draw = async (query) => {
    const response = await fetch(`/analytics/view?${query}`, { credentials: "same-origin" });
    if (!response.ok) return showMessage("analytics-message", `The figures could not be drawn (${response.status}).`, true);
    view.innerHTML = await response.text(); // our own server's HTML, labels escaped there
    showMessage("analytics-message", "");
  };

  const follow = (job) => {
    if (current === null || (job !== null && job.id !== current)) return;
    const now = store.jobs.get(current);
    if (!now) return;
    if (!FINAL.has(now.status)) return progress.replaceChildren(progressBar(now));
    progress.replaceChildren();
    const id = current;
    current = null;
    if (now.status === "completed") draw(new URLSearchParams({ jobId: id }));
    else showMessage("analytics-message", `The analytics ${now.status}: ${now.error ?? ""}`, true);
  };
  store.subscribe(follow);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) query.set(name, String(value));
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    const r = await api("GET", `/api/analytics?${query}`);
    button.disabled = false;
    showFormError(form, r, "analytics-message");
    if (!r.ok) return;
    if (r.status === 202) {
      showMessage("analytics-message", r.message);
      view.replaceChildren();
      current = r.body.jobId;
      progress.replaceChildren(progressBar(r.body.data));
      store.apply(r.body.data);
    follow(null); // the job may have moved on before this answer arrived
    } else {
      current = null;
      progress.replaceChildren();
      await draw(query);
    }
  });
}
