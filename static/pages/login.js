// /login: the form posts to /api/session, then goes to ?next.
import { api } from "../live.js";

function safeNext(value) {
  return value && value.startsWith("/") && !value.startsWith("//") && !value.startsWith("/\\") ? value : "/";
}

export function start() {
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
    const field = r.field;
    if (field && form.elements[field]) form.elements[field].focus();
  });
}
