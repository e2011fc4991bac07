// Shared widgets: status badges, progress bars, toasts, a confirm dialog and downloads.

import { AuthError, auth, request } from "./api.js";
import { fmtDuration, fmtRate, h, text } from "./dom.js";

export const STATUSES = ["Queued", "Running", "Completed", "Failed", "Stopped"];
export const ACTIVE = new Set(["Queued", "Running"]);
export const TERMINAL = new Set(["Completed", "Failed", "Stopped"]);

export function badge(status, big = false) {
  return h("span", { class: big ? "badge big" : "badge", dataset: { status } }, status);
}

export function setBadge(el, status) {
  el.dataset.status = status;
  text(el, status);
}

/** A progress bar: track + fill, then "42% · phase · ETA". Update it with setProgress. */
export function progressBar({ big = false, label = "Progress" } = {}) {
  const fill = h("div", { class: "progress-fill" });
  const el = h(
    "div",
    {
      class: big ? "progress big" : "progress",
      role: "progressbar",
      "aria-label": label,
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": "0",
    },
    h("div", { class: "progress-track" }, fill),
    h(
      "div",
      { class: "progress-meta" },
      h("span", { class: "pct" }),
      h("span", { class: "phase" }),
      h("span", { class: "eta" }),
    ),
  );
  return el;
}

/** Show an overall progress dict ({percent, phase, n, total, eta_s, ...}) for a job status. */
export function setProgress(el, progress, status) {
  const p = progress || {};
  let percent = Number.isFinite(p.percent) ? p.percent : 0;
  if (status === "Completed") percent = 100;
  percent = Math.max(0, Math.min(100, Math.round(percent)));
  el.dataset.status = status;
  el.setAttribute("aria-valuenow", String(percent));
  el.querySelector(".progress-fill").style.width = `${percent}%`;
  text(el.querySelector(".pct"), `${percent}%`);
  let phase = "";
  if (status === "Queued") phase = "waiting for a slot";
  else if (p.phase) phase = p.total ? `${p.phase} ${p.n ?? 0}/${p.total}` : p.phase;
  else if (status === "Running") phase = "starting…";
  text(el.querySelector(".phase"), phase);
  el.querySelector(".phase").title = phase;
  text(el.querySelector(".eta"), status === "Running" && Number.isFinite(p.eta_s) ? `ETA ${fmtDuration(p.eta_s)}` : "");
}

/** One phase's bar with its own numbers: n/total, rate, elapsed, ETA. */
export function setPhaseProgress(el, phase, status) {
  const total = phase.total || 0;
  const percent = total ? Math.min(100, Math.round((100 * (phase.n || 0)) / total)) : 0;
  el.dataset.status = status === "Running" && percent < 100 ? "Running" : (status === "Running" ? "Completed" : status);
  el.setAttribute("aria-valuenow", String(percent));
  el.querySelector(".progress-fill").style.width = `${percent}%`;
  text(el.querySelector(".pct"), `${percent}%`);
  // No "0/0": a phase without a bar yet is starting; without a known total, a count.
  const counted = total ? `${(phase.n ?? 0).toLocaleString()}/${total.toLocaleString()}` : "";
  const parts = [counted || (phase.n ? `${phase.n.toLocaleString()} done` : "starting")];
  const rate = fmtRate(phase.rate_per_s);
  if (rate) parts.push(rate);
  if (Number.isFinite(phase.elapsed_s)) parts.push(`${fmtDuration(phase.elapsed_s)} elapsed`);
  text(el.querySelector(".phase"), parts.join(" · "));
  const eta = percent < 100 && Number.isFinite(phase.eta_s) ? `ETA ${fmtDuration(phase.eta_s)}` : "";
  text(el.querySelector(".eta"), eta);
}

// ---- toasts ---------------------------------------------------------------------------------

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const el = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  box.append(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

// ---- confirm dialog -------------------------------------------------------------------------

/** A styled confirm(): resolves true when the person confirms. */
export function confirmDialog({ title, message, confirm = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const ok = h("button", { class: danger ? "btn danger solid" : "btn primary", type: "button" }, confirm);
    const cancel = h("button", { class: "btn", type: "button" }, "Cancel");
    const dialog = h(
      "dialog",
      { class: "modal", "aria-label": title },
      h(
        "div",
        { class: "modal-body" },
        h("h2", {}, title),
        h("p", { class: "muted" }, message),
        h("div", { class: "modal-actions" }, h("div", { class: "spacer" }), cancel, ok),
      ),
    );
    const finish = (value) => { dialog.close(); dialog.remove(); resolve(value); };
    ok.addEventListener("click", () => finish(true));
    cancel.addEventListener("click", () => finish(false));
    dialog.addEventListener("cancel", (e) => { e.preventDefault(); finish(false); });
    document.body.append(dialog);
    dialog.showModal();
    ok.focus();
  });
}

// ---- downloads ------------------------------------------------------------------------------

/** Save a Blob under `filename`. */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/**
 * A link to an API file. Without a key it is a plain link (the browser streams it to disk);
 * with a key the click fetches it with the Authorization header and saves the blob.
 */
export function downloadLink(url, label, filename) {
  const a = h("a", { href: url, download: filename || "" }, label);
  a.addEventListener("click", async (event) => {
    if (!auth.key) return;
    event.preventDefault();
    try {
      const response = await request(url, { headers: { Accept: "*/*" } });
      saveBlob(await response.blob(), filename || url.split("/").pop());
    } catch (error) {
      toast(error.message || "Download failed", "error");
    }
  });
  return a;
}

/** Report an error from an action; auth errors are left to the key dialog. */
export function reportError(error) {
  if (!error || error.name === "AbortError" || error instanceof AuthError) return;
  toast(error.message || "Something went wrong.", "error");
}
