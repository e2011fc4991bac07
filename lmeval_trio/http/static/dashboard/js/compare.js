// Compare finished jobs: one grouped bar chart per metric (tasks × jobs, with error bars),
// the same numbers as a table, and a CSV export of that table.

import { AuthError, api } from "./api.js";
import { clear, fmtMetric, fmtRelative, h, modelArgsText, taskList, text } from "./dom.js";
import { PALETTE, groupedBarChart } from "./chart.js";
import { loadSelection, saveSelection } from "./jobs.js";
import { mountSignificance } from "./significance.js";
import { badge, saveBlob } from "./ui.js";

const PICK_PAGE = 20;

function idsFrom(params) {
  return [...new Set((params.get("ids") || "").split(",").map((s) => Number.parseInt(s, 10)).filter((n) => n > 0))];
}

/** Request fields whose values differ between the jobs: what tells them apart in a legend. */
function distinguishing(jobs) {
  const keys = new Set(jobs.flatMap((j) => Object.keys(j.request || {})));
  keys.delete("env_vars");
  const differing = [];
  for (const key of keys) {
    const values = new Set(jobs.map((j) => {
      const value = (j.request || {})[key] ?? null;
      return key === "tasks" ? taskList(value).join(",") : JSON.stringify(value);
    }));
    if (values.size > 1) differing.push(key);
  }
  return differing;
}

function labelFor(job, differing) {
  const req = job.request || {};
  const parts = [`#${job.job_id}`, String(req.model ?? "hf")];
  const extras = differing.filter((k) => k !== "model").map((k) => {
    const v = k === "model_args" ? modelArgsText(req[k]) : k === "tasks" ? taskList(req[k]).join(",") : req[k];
    return v === undefined ? null : `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`;
  }).filter(Boolean);
  return `${parts.join(" ")}${extras.length ? ` (${extras.join(", ")})` : ""}`;
}

function csvCell(value) {
  const s = value === null || value === undefined ? "" : String(value);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function mount(root, { params }, ctx) {
  let ids = idsFrom(params);
  const selection = new Set(ids.length ? ids : loadSelection());
  let pickOffsetPage = 0;
  let pickTotal = 0;

  const pickerBody = h("tbody");
  const pickRange = h("span", { class: "muted small" });
  const pickNewer = h("button", { class: "btn small", type: "button" }, "← Newer");
  const pickOlder = h("button", { class: "btn small", type: "button" }, "Older →");
  const compareButton = h("button", { class: "btn primary", type: "button", id: "compare-go" }, "Compare");
  const picker = h(
    "details",
    { class: "card", id: "compare-picker", open: ids.length < 2 },
    h("summary", { class: "card-head" }, h("h2", {}, "Pick completed jobs")),
    h("div", { class: "picker" }, h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", {}, "Job"), h("th", {}, "Model"), h("th", {}, "Tasks"), h("th", {}, "Finished"))), pickerBody)),
    h("div", { class: "form-actions" }, compareButton, h("div", { class: "spacer" }), pickRange, pickNewer, pickOlder),
  );
  const output = h("div", { id: "compare-output" });
  clear(
    root,
    h("div", { class: "page-head" }, h("h1", {}, "Compare jobs"), h("span", { class: "sub" }, "Metrics of finished jobs side by side, per task, with ± standard error.")),
    picker,
    output,
  );

  function showCompareButton() {
    compareButton.disabled = selection.size < 2 && selection.size !== 1;
    text(compareButton, `Compare ${selection.size || ""} ${selection.size === 1 ? "job" : "jobs"}`.replace("  ", " "));
  }

  compareButton.addEventListener("click", () => {
    saveSelection(selection);
    ctx.navigate(`#/compare?ids=${[...selection].sort((a, b) => a - b).join(",")}`);
  });
  pickNewer.addEventListener("click", () => { pickOffsetPage = Math.max(0, pickOffsetPage - 1); loadPicker(); });
  pickOlder.addEventListener("click", () => { pickOffsetPage += 1; loadPicker(); });

  async function loadPicker() {
    try {
      const probe = await api("/jobs?status=Completed&limit=1", { signal: ctx.signal });
      pickTotal = probe.total;
      const end = pickTotal - pickOffsetPage * PICK_PAGE;
      const offset = Math.max(0, end - PICK_PAGE);
      const data = end > 0 ? await api(`/jobs?status=Completed&limit=${end - offset}&offset=${offset}`, { signal: ctx.signal }) : { jobs: [] };
      const jobs = data.jobs.reverse();
      clear(pickerBody, jobs.length ? jobs.map((job) => {
        const box = h("input", { type: "checkbox", "aria-label": `Compare job ${job.job_id}` });
        box.checked = selection.has(job.job_id);
        box.addEventListener("change", () => {
          if (box.checked) selection.add(job.job_id); else selection.delete(job.job_id);
          showCompareButton();
        });
        const req = job.request || {};
        return h("tr", { dataset: { jobId: job.job_id } }, h("td", {}, box), h("td", {}, `#${job.job_id}`), h("td", {}, String(req.model ?? "hf"), " ", h("span", { class: "muted small" }, modelArgsText(req.model_args))),
          h("td", { class: "mono small" }, taskList(req.tasks).join(", ")), h("td", { class: "muted" }, fmtRelative(job.finished_at)));
      }) : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No completed jobs yet.")));
      const first = pickTotal ? pickOffsetPage * PICK_PAGE + 1 : 0;
      text(pickRange, pickTotal ? `${first}–${Math.min(pickTotal, first + jobs.length - 1)} of ${pickTotal}` : "");
      pickNewer.disabled = pickOffsetPage === 0;
      pickOlder.disabled = end - PICK_PAGE <= 0;
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError) return;
      clear(pickerBody, h("tr", {}, h("td", { colspan: 5 }, `Could not list the jobs: ${error.message}`)));
    }
  }

  async function loadComparison() {
    if (!ids.length) {
      clear(output, h("div", { class: "card empty" }, h("strong", {}, "Nothing to compare yet"), "Tick two or more completed jobs above (or in the jobs table)."));
      return;
    }
    clear(output, h("p", { class: "muted loading" }, "Loading results…"));
    const loaded = await Promise.all(ids.map(async (id) => {
      try {
        const [job, results] = await Promise.all([api(`/job/${id}`, { signal: ctx.signal }), api(`/job/${id}/results`, { signal: ctx.signal })]);
        return { id, job, results };
      } catch (error) {
        if (error instanceof AuthError || error.name === "AbortError") throw error;
        return { id, error: error.message };
      }
    })).catch(() => null);
    if (!loaded || ctx.signal.aborted) return;
    const ok = loaded.filter((x) => !x.error);
    const failed = loaded.filter((x) => x.error);
    const differing = distinguishing(ok.map((x) => x.job));
    const series = ok.map((x, i) => ({ id: x.id, name: labelFor(x.job, differing), color: PALETTE[i % PALETTE.length], results: x.results }));

    // Rows: (task, metric, filter) in first-seen order; charts: one per (metric, filter).
    const rows = new Map();
    for (const s of series) {
      for (const m of s.results.metrics || []) {
        const key = JSON.stringify([m.task, m.metric, m.filter]);
        if (!rows.has(key)) rows.set(key, { task: m.task, metric: m.metric, filter: m.filter, isGroup: m.is_group, cells: new Map() });
        rows.get(key).cells.set(s.id, m);
      }
    }
    const higherIsBetter = (task, metric) => {
      for (const s of series) {
        const v = s.results.results?.higher_is_better?.[task]?.[metric];
        if (typeof v === "boolean") return v;
      }
      return true;
    };

    const charts = new Map();
    for (const row of rows.values()) {
      const key = `${row.metric}|${row.filter}`;
      if (!charts.has(key)) charts.set(key, { metric: row.metric, filter: row.filter, tasks: [] });
      charts.get(key).tasks.push(row);
    }

    const legend = h("div", { class: "legend", id: "compare-legend" }, series.map((s) => h("span", {}, h("i", { style: { background: s.color } }), s.name)));
    const figures = [...charts.values()].map((c) => {
      const caption = c.filter && c.filter !== "none" ? `${c.metric} (${c.filter})` : c.metric;
      const svg = groupedBarChart({
        label: `${caption} by task`,
        categories: c.tasks.map((r) => r.task),
        series: series.map((s) => ({
          name: s.name,
          color: s.color,
          values: c.tasks.map((r) => {
            const m = r.cells.get(s.id);
            return m && typeof m.value === "number" ? { value: m.value, stderr: typeof m.stderr === "number" ? m.stderr : null } : null;
          }),
        })),
      });
      return h("figure", { class: "chart", dataset: { metric: c.metric } }, h("figcaption", {}, caption, higherIsBetter(c.tasks[0].task, c.metric) ? "" : h("span", { class: "muted small" }, " (lower is better)")), svg);
    });

    const head = h("tr", {}, h("th", {}, "Task"), h("th", {}, "Metric"), h("th", {}, "Filter"),
      series.map((s) => h("th", { class: "num" }, h("i", { class: "swatch", style: { background: s.color } }), s.name)),
      series.length === 2 ? h("th", { class: "num" }, "Δ (2nd − 1st)") : null);
    const bodyRows = [...rows.values()].map((row) => {
      const values = series.map((s) => row.cells.get(s.id)?.value).filter((v) => typeof v === "number");
      const better = higherIsBetter(row.task, row.metric);
      const best = values.length > 1 ? (better ? Math.max(...values) : Math.min(...values)) : null;
      const tied = values.length > 1 && values.every((v) => v === values[0]);
      const cells = series.map((s) => {
        const m = row.cells.get(s.id);
        if (!m) return h("td", { class: "num muted" }, "—");
        return h("td", { class: !tied && m.value === best ? "num best" : "num" }, fmtMetric(m.value), Number.isFinite(m.stderr) ? h("span", { class: "pm" }, `± ${fmtMetric(m.stderr)}`) : null);
      });
      let delta = null;
      if (series.length === 2) {
        const a = row.cells.get(series[0].id)?.value;
        const b = row.cells.get(series[1].id)?.value;
        delta = h("td", { class: "num" }, typeof a === "number" && typeof b === "number" ? `${b - a >= 0 ? "+" : ""}${fmtMetric(b - a)}` : "—");
      }
      return h("tr", {}, h("td", { class: row.isGroup ? "group" : "" }, row.task), h("td", {}, row.metric), h("td", { class: "muted" }, row.filter), cells, delta);
    });

    const csvButton = h("button", { class: "btn", type: "button", id: "export-csv" }, "Export CSV");
    csvButton.addEventListener("click", () => {
      const header = ["task", "metric", "filter", ...series.flatMap((s) => [`job_${s.id}_value`, `job_${s.id}_stderr`])];
      const lines = [header.map(csvCell).join(",")];
      for (const row of rows.values()) {
        lines.push([row.task, row.metric, row.filter, ...series.flatMap((s) => {
          const m = row.cells.get(s.id);
          return [m?.value, m?.stderr];
        })].map(csvCell).join(","));
      }
      saveBlob(new Blob([`${lines.join("\r\n")}\r\n`], { type: "text/csv" }), `lmeval-compare-${series.map((s) => s.id).join("-")}.csv`);
    });

    const significance = h("section", { class: "card", id: "compare-significance" });
    clear(
      output,
      ok.length >= 2 ? significance : null,
      failed.length ? h("div", { class: "callout warn" }, "Left out: ", failed.map((f, i) => [i ? "; " : "", h("a", { href: `#/job/${f.id}` }, `#${f.id}`), ` (${f.error})`])) : null,
      series.length
        ? [
          h("section", { class: "card" }, h("div", { class: "card-head" }, h("h2", {}, "Chart"), h("div", { class: "spacer" }), h("span", { class: "muted small" }, "error bars: ± standard error")), legend, h("div", { class: "charts", id: "compare-charts" }, figures)),
          h("section", { class: "card" }, h("div", { class: "card-head" }, h("h2", {}, "Table"), h("div", { class: "spacer" }), csvButton),
            h("div", { class: "table-scroll" }, h("table", { id: "compare-table" }, h("thead", {}, head), h("tbody", {}, bodyRows))),
            h("p", { class: "muted small" }, "Bold: the best value in the row (per the task's higher_is_better).")),
          h("section", { class: "card" }, h("h2", {}, "Jobs"), h("ul", { class: "artifact-list" }, ok.map((x) => h("li", {}, badge(x.job.status), h("a", { href: `#/job/${x.id}` }, series.find((s) => s.id === x.id).name), h("span", { class: "size" }, taskList((x.job.request || {}).tasks).join(", ")))))),
        ]
        : h("div", { class: "card empty" }, h("strong", {}, "No results to compare"), "The selected jobs have no results."),
    );
    if (ok.length >= 2) mountSignificance(significance, ok.map((x) => x.id), ctx.signal);
  }

  showCompareButton();
  loadPicker();
  loadComparison();
  return {
    update(nextParams) {
      ids = idsFrom(nextParams);
      picker.open = ids.length < 2;
      loadComparison();
      return true;
    },
  };
}
