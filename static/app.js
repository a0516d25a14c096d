// pa's pages: plain ES modules, no build step. This entry starts the live core
// (static/live.js: one WebSocket per page, polling fallback, toasts) and the
// page's own module (static/pages/<page>.js).

import { signOut, startLive } from "./live.js";

const PAGES = {
  login: "login",
  jobs: "jobs",
  reviews: "reviews",
  reports: "reports",
  analytics: "analytics",
  import: "import",
  fiscal_years: "fiscal_years",
  backups: "backups",
  ops: "ops",
};

document.getElementById("logout")?.addEventListener("click", signOut);

const name = PAGES[document.body.dataset.page];
if (name) {
  // Same query (asset version) as this module, so a new release is not mixed with a cached one.
  const module = await import(new URL(`./pages/${name}.js${new URL(import.meta.url).search}`, import.meta.url));
  module.start();
}
startLive();
