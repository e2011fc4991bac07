// The dashboard shell: hash routes, the API key dialog and the live indicator.
//
// Each view module exports mount(root, params, ctx) and returns {unmount, update?}; the router
// aborts ctx.signal when leaving a view so its event streams close.

import { ApiError, AuthError, auth } from "./api.js";
import { clear, h } from "./dom.js";
import * as compareView from "./compare.js";
import * as jobView from "./job.js";
import * as jobsView from "./jobs.js";
import * as samplesView from "./samples.js";
import * as submitView from "./submit.js";
import * as tasksView from "./tasks.js";
import * as sweepsView from "./sweeps.js";
import { toast } from "./ui.js";

const ROUTES = [
  { pattern: /^\/?(jobs)?$/, view: jobsView, nav: "jobs" },
  { pattern: /^\/new$/, view: submitView, nav: "new" },
  { pattern: /^\/job\/(\d+)$/, view: jobView, nav: "jobs" },
  { pattern: /^\/job\/(\d+)\/samples$/, view: samplesView, nav: "jobs" },
  { pattern: /^\/compare$/, view: compareView, nav: "compare" },
  { pattern: /^\/tasks$/, view: tasksView, nav: "tasks" },
  { pattern: /^\/sweeps$/, view: { mount: sweepsView.mountList }, nav: "sweeps" },
  { pattern: /^\/sweep\/(\d+)$/, view: { mount: sweepsView.mountSweep }, nav: "sweeps" },
];

const root = document.getElementById("view");
const live = document.getElementById("live");
let current = null; // {route, match, controller, handle}

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = raw.split("?");
  return { path, params: new URLSearchParams(query) };
}

export function navigate(hash, { replace = false } = {}) {
  if (replace) {
    history.replaceState(null, "", hash);
    route();
  } else if (location.hash === hash) {
    route();
  } else {
    location.hash = hash;
  }
}

function setLive(state) {
  live.dataset.state = state;
  live.textContent = { live: "Live", reconnecting: "Reconnecting…", closed: "", idle: "" }[state] ?? "";
}

function route({ force = false } = {}) {
  const { path, params } = parseHash();
  const found = ROUTES.map((r) => ({ r, match: path.match(r.pattern) })).find((x) => x.match);
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", Boolean(found) && a.dataset.nav === found.r.nav);
  }
  if (!found) {
    unmountCurrent();
    clear(root, h("div", { class: "card empty" }, h("strong", {}, "Page not found"), h("a", { href: "#/" }, "Back to the jobs")));
    return;
  }
  // Same view, other query (filter, page): let the view update in place, streams kept.
  if (!force && current && current.route === found.r && current.match[0] === found.match[0]
      && current.handle && current.handle.update && current.handle.update(params) !== false) {
    return;
  }
  unmountCurrent();
  const controller = new AbortController();
  setLive("idle");
  const ctx = { signal: controller.signal, navigate, setLive };
  clear(root);
  let handle = {};
  try {
    handle = found.r.view.mount(root, { match: found.match, params }, ctx) || {};
  } catch (error) {
    console.error(error);
    clear(root, h("div", { class: "card empty" }, h("strong", {}, "This page could not be shown"), "Reload to try again."));
  }
  current = { route: found.r, match: found.match, controller, handle };
  root.focus({ preventScroll: true });
}

function unmountCurrent() {
  if (!current) return;
  current.controller.abort();
  if (current.handle.unmount) current.handle.unmount();
  current = null;
}

// ---- API key --------------------------------------------------------------------------------

const dialog = document.getElementById("key-dialog");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key-input");
const keyReason = document.getElementById("key-reason");
const keyButton = document.getElementById("key-button");

function showKeyButton() {
  keyButton.textContent = auth.key ? "API key ✓" : "API key";
  keyButton.title = auth.key ? "An API key is set for this tab" : "Set an API key";
}

function openKeyDialog(reason) {
  keyReason.textContent = reason;
  if (!dialog.open) {
    keyInput.value = "";
    dialog.showModal();
  }
  keyInput.focus();
}

auth.setHandler((error) => {
  const reason = error.status === 403
    ? "The server rejected this API key. Enter a valid one."
    : "This server requires an API key.";
  setLive("idle");
  openKeyDialog(reason);
});

keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return;
  dialog.close();
  auth.set(key);
  showKeyButton();
  route({ force: true });
});
document.getElementById("key-cancel").addEventListener("click", () => dialog.close());
document.getElementById("key-forget").addEventListener("click", () => {
  dialog.close();
  auth.set("");
  showKeyButton();
  route({ force: true });
});
keyButton.addEventListener("click", () => openKeyDialog(
  auth.key ? "Replace or forget the API key used by this tab." : "Enter the server's API key.",
));

// Never show a raw stack trace: unexpected script errors become a short note (details go to
// the browser console); auth errors are the key dialog's business, aborts are navigation.
window.addEventListener("unhandledrejection", (event) => {
  const reason = event.reason;
  if (reason instanceof AuthError || reason?.name === "AbortError") {
    event.preventDefault();
    return;
  }
  toast(reason instanceof ApiError ? reason.message : "Something went wrong in the page; reload to retry.", "error");
});
window.addEventListener("error", () => toast("Something went wrong in the page; reload to retry.", "error"));

window.addEventListener("hashchange", () => route());
showKeyButton();
route();
