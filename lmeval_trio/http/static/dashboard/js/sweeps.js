// Sweeps: the list (#/sweeps) and one sweep (#/sweep/N) with progress per cell, a heatmap of
// its results (rows task/metric/filter × cells, coloured by value within each row, the
// baseline marked), the same numbers as a table, and the CSV export.
//
// Both views re-read their sweep(s) whenever GET /events says some job changed (no polling);
// reads are coalesced so a burst of changes costs one request at a time.

import { AuthError, api, follow } from "./api.js";
import { clear, fmtDuration, fmtMetric, fmtRelative, h, text } from "./dom.js";
import { badge, confirmDialog, downloadLink, progressBar, reportError, setBadge, setProgress, toast } from "./ui.js";

const LIST_PAGE = 50;

/** Run `load` now and after every job change, one at a time (a change meanwhile: once more). */
function liveReload(ctx, load) {
  let busy = false;
  let again = false;
  const run = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try {
      do { again = false; await load(); } while (again && !ctx.signal.aborted);
    } catch (error) {
      if (!(error instanceof AuthError) && error?.name !== "AbortError") reportError(error);
    } finally {
      busy = false;
    }
  };
  run();
  follow("/events", { signal: ctx.signal, onState: ctx.setLive, onEvent: (m) => { if (m.event === "jobs") run(); } });
}

function sweepProgress(sweep) {
  return { percent: sweep.progress_pct, eta_s: sweep.eta_s ?? undefined };
}

// ---- the list -----------------------------------------------------------------------------------

export function mountList(root, _params, ctx) {
  const tbody = h("tbody");
  const empty = h("div", { class: "empty", hidden: true }, "No sweeps yet. Submit one with POST /sweeps or `lmeval-trio sweep submit`.");
  const count = h("span", { class: "muted" });
  clear(
    root,
    h("div", { class: "page-head" }, h("h1", {}, "Sweeps"), count,
      h("span", { class: "sub" }, "Many jobs as one: a matrix of models, settings and tasks, followed and compared together.")),
    h("div", { class: "card flush" },
      h("div", { class: "table-scroll" },
        h("table", { class: "jobs", id: "sweeps-table" },
          h("thead", {}, h("tr", {}, h("th", {}, "Sweep"), h("th", {}, "Name"), h("th", {}, "Status"),
            h("th", {}, "Cells"), h("th", {}, "Progress"), h("th", {}, "Created"))),
          tbody)),
      empty),
  );
  liveReload(ctx, async () => {
    const page = await api(`/sweeps?order=desc&limit=${LIST_PAGE}`, { signal: ctx.signal });
    text(count, page.total ? `${page.total} in all` : "");
    empty.hidden = page.sweeps.length > 0;
    clear(tbody, page.sweeps.map((sweep) => {
      const bar = progressBar({ label: `Sweep ${sweep.sweep_id} progress` });
      setProgress(bar, sweepProgress(sweep), sweep.status);
      const done = sweep.counts.Completed || 0;
      const tr = h("tr", { dataset: { sweepId: sweep.sweep_id, status: sweep.status } },
        h("td", { class: "id" }, h("a", { href: `#/sweep/${sweep.sweep_id}` }, `#${sweep.sweep_id}`)),
        h("td", {}, sweep.name),
        h("td", {}, badge(sweep.status)),
        h("td", { class: "nowrap" }, `${done}/${sweep.total_cells} completed`),
        h("td", {}, bar),
        h("td", { class: "nowrap" }, fmtRelative(sweep.created_at)));
      tr.addEventListener("click", (e) => { if (!e.target.closest("a")) ctx.navigate(`#/sweep/${sweep.sweep_id}`); });
      return tr;
    }));
  });
  return {};
}

// ---- one sweep ----------------------------------------------------------------------------------

export function mountSweep(root, { match }, ctx) {
  const id = Number(match[1]);
  const title = h("h1", {}, `Sweep #${id}`);
  const status = badge("Queued", true);
  status.id = "sweep-status";
  const bar = progressBar({ big: true, label: "Sweep progress" });
  bar.id = "sweep-progress";
  const summary = h("span", { class: "sub", id: "sweep-summary" });
  const stopButton = h("button", { class: "btn danger", type: "button", id: "sweep-stop" }, "Stop");
  const resumeButton = h("button", { class: "btn", type: "button", id: "sweep-resume" }, "Resume failed and stopped");
  const deleteButton = h("button", { class: "btn danger", type: "button", id: "sweep-delete" }, "Delete");
  const cells = h("tbody");
  const heat = h("div", { id: "sweep-heatmap", class: "heatmap" });
  const table = h("div", { id: "sweep-results" });
  const csv = downloadLink(`/sweeps/${id}/results?format=csv`, "Download CSV", `sweep-${id}.csv`);
  csv.id = "sweep-csv";
  csv.classList.add("btn", "small");
  clear(
    root,
    h("div", { class: "page-head" }, title, status, h("div", { class: "spacer" }), stopButton, resumeButton, deleteButton, summary),
    h("div", { class: "card" }, bar),
    h("div", { class: "card flush" }, h("div", { class: "table-scroll" },
      h("table", { class: "jobs", id: "sweep-cells" },
        h("thead", {}, h("tr", {}, h("th", {}, "Cell"), h("th", {}, "Job"), h("th", {}, "Status"), h("th", {}, "Progress"), h("th", {}, "Reason"))),
        cells))),
    h("div", { class: "card" }, h("div", { class: "card-head" }, h("h2", {}, "Results"), h("div", { class: "spacer" }), csv), heat, table),
  );

  let resultsKey = "";
  const act = (button, action) => button.addEventListener("click", async () => {
    button.disabled = true;
    try { await action(); } catch (error) { reportError(error); } finally { button.disabled = false; }
  });
  act(stopButton, async () => {
    const done = await api(`/sweeps/${id}/stop`, { method: "POST" });
    toast(done.message);
  });
  act(resumeButton, async () => {
    const done = await api(`/sweeps/${id}/resume`, { method: "POST" });
    toast(done.message);
  });
  act(deleteButton, async () => {
    const ok = await confirmDialog({ title: `Delete sweep #${id}?`, message: "Its jobs are stopped and deleted with their logs and results.", confirm: "Delete", danger: true });
    if (!ok) return;
    await api(`/sweeps/${id}`, { method: "DELETE" });
    toast(`Sweep #${id} deleted.`);
    ctx.navigate("#/sweeps");
  });

  liveReload(ctx, async () => {
    let sweep;
    try {
      sweep = await api(`/sweeps/${id}`, { signal: ctx.signal });
    } catch (error) {
      if (error?.status === 404) {
        clear(root, h("div", { class: "card empty" }, h("strong", {}, `Sweep #${id} does not exist.`), h("a", { href: "#/sweeps" }, "Back to the sweeps")));
        return;
      }
      throw error;
    }
    text(title, `Sweep #${id}: ${sweep.name}`);
    setBadge(status, sweep.status);
    setProgress(bar, sweepProgress(sweep), sweep.status === "Queued" ? "Running" : sweep.status);
    const done = sweep.counts.Completed || 0;
    const eta = sweep.eta_s === null || sweep.eta_s === undefined ? "" : ` · ETA ${fmtDuration(sweep.eta_s)}`;
    text(summary, `${done}/${sweep.total_cells} cells completed · at most ${sweep.max_parallel ?? "any number"} at once${eta}`);
    stopButton.hidden = !sweep.cells.some((c) => c.status === "Queued" || c.status === "Running");
    resumeButton.hidden = !sweep.cells.some((c) => c.status === "Failed" || c.status === "Stopped" || c.status === null);
    clear(cells, sweep.cells.map((cell) => cellRow(cell, sweep.baseline)));
    const key = sweep.cells.map((c) => `${c.job_id}:${c.status}`).join(",");
    if (key !== resultsKey) {
      resultsKey = key;
      const results = await api(`/sweeps/${id}/results`, { signal: ctx.signal });
      clear(heat, heatmap(results));
      clear(table, resultsTable(results));
    }
  });
  return {};
}

function cellRow(cell, baseline) {
  const bar = progressBar({ label: `Cell ${cell.key} progress` });
  setProgress(bar, { percent: cell.progress_pct, eta_s: cell.eta_s ?? undefined }, cell.status || "Stopped");
  return h("tr", { dataset: { cell: cell.key, status: cell.status || "deleted" } },
    h("td", {}, cell.key, cell.key === baseline ? h("span", { class: "chip baseline-mark" }, "baseline") : null),
    h("td", { class: "id" }, cell.job_id === null ? "—" : h("a", { href: `#/job/${cell.job_id}` }, `#${cell.job_id}`)),
    h("td", {}, cell.status ? badge(cell.status) : "deleted"),
    h("td", {}, bar),
    h("td", { class: "muted" }, cell.reason || ""));
}

function rowName(row) {
  return `${row.task}${row.is_group ? " (group)" : ""} · ${row.metric}${row.filter && row.filter !== "none" ? ` · ${row.filter}` : ""}`;
}

/** Within one row, a value's place between the row's lowest and highest: 0..1 (0.5 if all equal). */
function scale(row, keys) {
  const numbers = keys.map((k) => row.values[k]).filter((v) => typeof v === "number" && Number.isFinite(v));
  const lo = Math.min(...numbers);
  const hi = Math.max(...numbers);
  return (v) => (typeof v !== "number" || !Number.isFinite(v) ? null : hi > lo ? (v - lo) / (hi - lo) : 0.5);
}

function heatmap(results) {
  if (!results.rows.length) return h("p", { class: "muted" }, "No results yet: they appear as cells complete.");
  const keys = results.columns.map((c) => c.key);
  const head = h("tr", {}, h("th", {}, "Task · metric"), keys.map((k) =>
    h("th", { class: k === results.baseline ? "baseline" : null, title: k === results.baseline ? "baseline" : k }, k === results.baseline ? `★ ${k}` : k)));
  const body = results.rows.map((row) => {
    const place = scale(row, keys);
    return h("tr", {}, h("th", { class: "row-name" }, rowName(row)), keys.map((k) => {
      const value = row.values[k];
      const where = place(value);
      const td = h("td", {
        class: `heat${k === results.baseline ? " baseline" : ""}`,
        title: `${k}: ${fmtMetric(value)}${row.stderr[k] === null || row.stderr[k] === undefined ? "" : ` ± ${fmtMetric(row.stderr[k])}`}`,
        dataset: { key: k, value: value === null || value === undefined ? "" : String(value) },
      }, fmtMetric(value));
      if (where !== null) td.style.backgroundColor = `hsl(${Math.round(10 + 110 * where)}, 70%, ${Math.round(88 - 18 * where)}%)`;
      return td;
    }));
  });
  return h("div", { class: "table-scroll" }, h("table", { class: "heat-table" }, h("thead", {}, head), h("tbody", {}, body)));
}

function resultsTable(results) {
  if (!results.rows.length) return null;
  const keys = results.columns.map((c) => c.key);
  return h("div", { class: "table-scroll" }, h("table", { class: "results" },
    h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", {}, "Metric"), h("th", {}, "Filter"), keys.map((k) => h("th", { class: "num" }, k)))),
    h("tbody", {}, results.rows.map((row) => h("tr", {},
      h("td", {}, row.task), h("td", {}, row.metric), h("td", {}, row.filter),
      keys.map((k) => h("td", { class: "num" }, fmtMetric(row.values[k]),
        row.stderr[k] === null || row.stderr[k] === undefined ? "" : ` ± ${fmtMetric(row.stderr[k])}`)))))));
}
