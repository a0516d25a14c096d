// /reviews: the reviews the user may see, filtered; "Submit to HR" where allowed.
import { api, el, me, showMessage, store } from "../live.js";

function canSubmit(review) {
  if (review.status !== "manager_review") return false;
  if (me.role === "admin" || review.managerId === me.id) return true;
  // The employee's current manager may differ from the review's; the server decides.
  return me.role === "manager" && review.employeeId !== me.id;
}

export function start() {
  const form = document.getElementById("review-filters");
  const tbody = document.getElementById("reviews-body");

  const load = async () => {
    const query = new URLSearchParams({ limit: "200" });
    for (const [name, value] of new FormData(form)) if (value) query.set(name, String(value));
    const r = await api("GET", `/api/reviews?${query}`);
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
    if (r.ok && r.body.data?.id && r.body.data?.version) store.apply(r.body.data);
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
