// The jobs table: status filter, newest-first pages, live rows driven by GET /events.
//
// /events says "something changed" (with counts by status); the table then re-reads the page
// it shows, so thousands of jobs cost one page of JSON per change, never a full listing.
// The API lists jobs oldest first; newest-first pages are computed from the total.

import { AuthError, api, follow } from "./api.js";
import { clear, fmtDate, fmtDuration, fmtRelative, h, jobDuration, modelArgsText, taskList, text } from "./dom.js";
import { ACTIVE, STATUSES, badge, progressBar, reportError, setBadge, setProgress, toast } from "./ui.js";

const PAGE_SIZES = [25, 50, 100, 200];
const SELECTION_KEY = "lmeval-trio.compare";

export function loadSelection() {
  try { return new Set(JSON.parse(sessionStorage.getItem(SELECTION_KEY) || "[]").map(Number)); } catch { return new Set(); }
}

export function saveSelection(ids) {
  try { sessionStorage.setItem(SELECTION_KEY, JSON.stringify([...ids])); } catch { /* ignore */ }
}

function stateFrom(params) {
  const status = STATUSES.includes(params.get("status")) ? params.get("status") : "";
  const limit = PAGE_SIZES.includes(Number(params.get("limit"))) ? Number(params.get("limit")) : 25;
  const page = Math.max(0, Number.parseInt(params.get("page") || "0", 10) || 0);
  return { status, limit, page };
}

function hashFor({ status, limit, page }) {
  const q = new URLSearchParams();
  if (status) q.set("status", status);
  if (limit !== 25) q.set("limit", String(limit));
  if (page) q.set("page", String(page));
  const s = q.toString();
  return s ? `#/jobs?${s}` : "#/";
}

export function mount(root, { params }, ctx) {
  let state = stateFrom(params);
  let counts = null; // {Queued: n, ...} from the last /events message
  let total = null;
  let loading = false;
  let again = false;
  const rows = new Map(); // job id -> {tr, update}
  const selection = loadSelection();

  const filterButtons = new Map();
  const filters = h("div", { class: "segmented", role: "group", "aria-label": "Filter by status" });
  for (const status of ["", ...STATUSES]) {
    const count = h("span", { class: "count" });
    const button = h(
      "button",
      { type: "button", "aria-pressed": String(state.status === status), dataset: { status: status || "All" } },
      status || "All",
      count,
    );
    button.addEventListener("click", () => ctx.navigate(hashFor({ ...state, status, page: 0 })));
    filterButtons.set(status, { button, count });
    filters.append(button);
  }

  const compareButton = h("button", { class: "btn", type: "button", id: "compare-selected" }, "Compare selected");
  compareButton.addEventListener("click", () => ctx.navigate(`#/compare?ids=${[...selection].sort((a, b) => a - b).join(",")}`));
  const clearButton = h("button", { class: "btn ghost small", type: "button" }, "Clear");
  clearButton.addEventListener("click", () => {
    selection.clear();
    saveSelection(selection);
    for (const box of tbody.querySelectorAll("input[type=checkbox]")) box.checked = false;
    showSelection();
  });

  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "jobs", id: "jobs-table" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { title: "Select finished jobs to compare" }, ""),
        h("th", {}, "Job"),
        h("th", {}, "Model"),
        h("th", {}, "Tasks"),
        h("th", {}, "Status"),
        h("th", {}, "Progress"),
        h("th", {}, "Started"),
        h("th", { class: "num" }, "Duration"),
        h("th", {}, ""),
      ),
    ),
    tbody,
  );
  const empty = h("div", { class: "empty", hidden: true });
  const range = h("span", { class: "muted" });
  const newer = h("button", { class: "btn small", type: "button" }, "← Newer");
  const older = h("button", { class: "btn small", type: "button" }, "Older →");
  const sizeSelect = h("select", { "aria-label": "Jobs per page" }, PAGE_SIZES.map((n) => h("option", { value: n }, `${n} per page`)));
  sizeSelect.value = String(state.limit);
  newer.addEventListener("click", () => ctx.navigate(hashFor({ ...state, page: Math.max(0, state.page - 1) })));
  older.addEventListener("click", () => ctx.navigate(hashFor({ ...state, page: state.page + 1 })));
  sizeSelect.addEventListener("change", () => ctx.navigate(hashFor({ ...state, limit: Number(sizeSelect.value), page: 0 })));
  const errorBox = h("div", { class: "callout error", role: "alert" });

  clear(
    root,
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, "Jobs"),
      h("div", { class: "spacer" }),
      h("a", { class: "btn primary", href: "#/new" }, "New job"),
    ),
    h("div", { class: "toolbar" }, filters, h("div", { class: "spacer" }), clearButton, compareButton),
    errorBox,
    h(
      "div",
      { class: "card flush" },
      h("div", { class: "table-scroll" }, table),
      empty,
      h("div", { class: "pager" }, range, sizeSelect, newer, older),
    ),
  );

  function showSelection() {
    compareButton.textContent = selection.size ? `Compare selected (${selection.size})` : "Compare selected";
    compareButton.disabled = selection.size < 2;
    compareButton.classList.toggle("primary", selection.size >= 2);
    clearButton.hidden = selection.size === 0;
  }

  function showCounts() {
    const all = counts ? Object.values(counts).reduce((a, b) => a + b, 0) : null;
    for (const [status, { button, count }] of filterButtons) {
      const n = counts ? (status ? counts[status] || 0 : all) : null;
      text(count, n === null ? "" : n.toLocaleString());
      button.setAttribute("aria-pressed", String(state.status === status));
    }
  }

  function buildRow(job) {
    const check = h("input", { type: "checkbox", "aria-label": `Select job ${job.job_id} for comparison` });
    check.checked = selection.has(job.job_id);
    check.addEventListener("click", (e) => e.stopPropagation());
    check.addEventListener("change", () => {
      if (check.checked) selection.add(job.job_id); else selection.delete(job.job_id);
      saveSelection(selection);
      showSelection();
    });
    const status = badge(job.status);
    const bar = progressBar({ label: `Job ${job.job_id} progress` });
    const model = h("td", { class: "cell-model" });
    const tasks = h("td", {});
    const started = h("td", { class: "nowrap" });
    const duration = h("td", { class: "nowrap num" });
    const actions = h("td", { class: "nowrap" });
    const link = h("a", { href: `#/job/${job.job_id}` }, `#${job.job_id}`);
    const tr = h(
      "tr",
      { dataset: { jobId: job.job_id } },
      h("td", {}, check),
      h("td", { class: "id" }, link),
      model,
      tasks,
      h("td", {}, status),
      h("td", {}, bar),
      started,
      duration,
      actions,
    );
    tr.addEventListener("click", (e) => {
      if (e.target.closest("a, button, input")) return;
      ctx.navigate(`#/job/${job.job_id}`);
    });
    let last = null;
    const update = (next) => {
      last = next;
      tr.dataset.status = next.status;
      setBadge(status, next.status);
      setProgress(bar, next.progress, next.status);
      check.disabled = next.status !== "Completed";
      check.title = next.status === "Completed" ? "Select to compare" : "Only completed jobs have results to compare";
      const req = next.request || {};
      const args = modelArgsText(req.model_args);
      clear(model, h("span", {}, String(req.model ?? "hf")), args ? h("span", { class: "args", title: args }, args) : null);
      const names = taskList(req.tasks);
      clear(
        tasks,
        h("div", { class: "chips", title: names.join(", ") },
          names.slice(0, 3).map((t) => h("span", { class: "chip" }, t)),
          names.length > 3 ? h("span", { class: "chip more" }, `+${names.length - 3}`) : null),
      );
      text(started, next.started_at ? fmtRelative(next.started_at) : (next.status === "Queued" ? "queued" : "—"));
      started.title = next.started_at ? fmtDate(next.started_at) : `queued ${fmtDate(next.queued_at)}`;
      text(duration, fmtDuration(jobDuration(next)));
      if (ACTIVE.has(next.status) && !actions.firstChild) {
        const stop = h("button", { class: "btn danger small", type: "button" }, next.status === "Queued" ? "Dequeue" : "Stop");
        stop.addEventListener("click", async (e) => {
          e.stopPropagation();
          stop.disabled = true;
          try { toast((await api(`/job/${next.job_id}/stop`, { method: "POST" })).message); } catch (error) { reportError(error); stop.disabled = false; }
        });
        actions.append(stop);
      } else if (!ACTIVE.has(next.status)) {
        actions.replaceChildren();
      }
    };
    update(job);
    return { tr, update, tick: () => last && text(duration, fmtDuration(jobDuration(last))) };
  }

  function render(jobs) {
    const seen = new Set();
    let previous = null;
    for (const job of jobs) {
      seen.add(job.job_id);
      let row = rows.get(job.job_id);
      if (row) row.update(job); else { row = buildRow(job); rows.set(job.job_id, row); }
      const anchor = previous ? previous.nextSibling : tbody.firstChild;
      if (anchor !== row.tr) tbody.insertBefore(row.tr, anchor);
      previous = row.tr;
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    }
    const first = total ? state.page * state.limit + 1 : 0;
    const last = Math.min(total, (state.page + 1) * state.limit);
    text(range, total ? `${first.toLocaleString()}–${last.toLocaleString()} of ${total.toLocaleString()}` : "");
    newer.disabled = state.page === 0;
    older.disabled = last >= total;
    empty.hidden = jobs.length > 0;
    if (!jobs.length) {
      clear(empty, state.status
        ? [h("strong", {}, `No ${state.status.toLowerCase()} jobs`), "Try another filter."]
        : [h("strong", {}, "No jobs yet"), h("a", { href: "#/new" }, "Submit the first one →")]);
    }
  }

  function expectedTotal() {
    if (!counts) return null;
    if (state.status) return counts[state.status] || 0;
    return Object.values(counts).reduce((a, b) => a + b, 0);
  }

  async function fetchPage() {
    const base = state.status ? `status=${encodeURIComponent(state.status)}&` : "";
    let guess = expectedTotal() ?? total;
    for (let attempt = 0; attempt < 4; attempt += 1) {
      if (guess === null) {
        guess = (await api(`/jobs?${base}limit=1`, { signal: ctx.signal })).total;
      }
      const lastPage = Math.max(0, Math.ceil(guess / state.limit) - 1);
      if (state.page > lastPage) {
        state = { ...state, page: lastPage };
        history.replaceState(null, "", hashFor(state));
      }
      const end = guess - state.page * state.limit; // exclusive, counted from the oldest
      const offset = Math.max(0, end - state.limit);
      const limit = end - offset;
      if (limit <= 0) {
        const check = await api(`/jobs?${base}limit=1`, { signal: ctx.signal });
        if (check.total === 0) return { jobs: [], total: 0 };
        guess = check.total;
        continue;
      }
      const data = await api(`/jobs?${base}limit=${limit}&offset=${offset}`, { signal: ctx.signal });
      if (data.total === guess) return { jobs: data.jobs.reverse(), total: data.total };
      guess = data.total; // jobs came or went between the two reads: recompute the window
    }
    const data = await api(`/jobs?${base}limit=${state.limit}`, { signal: ctx.signal });
    return { jobs: data.jobs.reverse(), total: data.total };
  }

  async function refresh() {
    if (loading) { again = true; return; }
    loading = true;
    try {
      do {
        again = false;
        const data = await fetchPage();
        total = data.total;
        errorBox.replaceChildren();
        render(data.jobs);
      } while (again && !ctx.signal.aborted);
    } catch (error) {
      if (error.name !== "AbortError" && !(error instanceof AuthError)) {
        clear(errorBox, `Could not load the jobs: ${error.message}`);
      }
    } finally {
      loading = false;
    }
  }

  showSelection();
  showCounts();
  refresh();
  follow("/events", {
    signal: ctx.signal,
    onState: ctx.setLive,
    onEvent: (message) => {
      if (message.event !== "jobs") return;
      counts = message.data.counts || null;
      showCounts();
      refresh();
    },
  });
  const ticker = setInterval(() => { for (const row of rows.values()) row.tick(); }, 1000);

  return {
    unmount: () => clearInterval(ticker),
    update(nextParams) {
      const next = stateFrom(nextParams);
      if (next.limit !== state.limit || next.status !== state.status) {
        for (const row of rows.values()) row.tr.remove();
        rows.clear();
      }
      state = next;
      sizeSelect.value = String(state.limit);
      showCounts();
      refresh();
      return true;
    },
  };
}
