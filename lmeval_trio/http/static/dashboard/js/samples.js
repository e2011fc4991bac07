// The Samples page of one job (#/job/ID/samples): every logged sample through
// GET /job/{id}/samples, by task, correctness, filter and text, paged along the cursors.

import { AuthError, api } from "./api.js";
import { clear, fmtMetric, h } from "./dom.js";

const PAGE = 20;
const SHOWN_CHARS = 4000;
const SAMPLES_FILE = /(?:^|\/)samples_(.+)_(\d{4}-\d{2}-\d{2}T[\d.:-]+)\.jsonl$/;

export function mount(root, { match, params }, ctx) {
  const jobId = match[1];
  const task = h("select", { id: "samples-task", "aria-label": "Task" });
  const correct = h("select", { id: "samples-correct", "aria-label": "Correctness" },
    h("option", { value: "" }, "Right and wrong"), h("option", { value: "false" }, "Wrong only"),
    h("option", { value: "true" }, "Right only"));
  const metric = h("select", { id: "samples-metric", "aria-label": "Judged by metric", hidden: true });
  const filter = h("select", { id: "samples-filter", "aria-label": "Filter" });
  const query = h("input", { type: "search", id: "samples-query", placeholder: "Search prompt, target, responses", autocomplete: "off", spellcheck: "false", value: params.get("q") || "" });
  const count = h("span", { class: "muted small", id: "samples-count" });
  const list = h("div", { id: "samples-list" });
  const prev = h("button", { class: "btn small", type: "button", id: "samples-prev", disabled: true }, "Previous");
  const next = h("button", { class: "btn small", type: "button", id: "samples-next", disabled: true }, "Next");
  const message = h("div", { id: "samples-message" });
  clear(
    root,
    h("a", { class: "back", href: `#/job/${jobId}` }, `← Job #${jobId}`),
    h("div", { class: "page-head" }, h("h1", {}, `Samples of job #${jobId}`),
      h("span", { class: "sub" }, "Each document's prompt, target, responses and metrics, as lm-eval logged them.")),
    message,
    h("div", { class: "card" },
      h("div", { class: "toolbar" }, task, correct, metric, filter, query, count),
      list,
      h("div", { class: "form-actions" }, prev, next)),
  );

  const limit = Math.min(200, Math.max(1, Number.parseInt(params.get("limit") || "", 10) || PAGE));
  const wanted = { task: params.get("task") || "", correct: params.get("correct") || "", filter: params.get("filter") || "" };
  correct.value = wanted.correct;
  let cursors = [null]; // cursors[i] opens page i
  let pageIndex = 0;
  let timer = null;
  let loading = 0;

  function search() {
    const out = new URLSearchParams({ limit: String(limit) });
    if (task.value) out.set("task", task.value);
    if (correct.value) out.set("correct", correct.value);
    if (!metric.hidden && metric.value) out.set("metric", metric.value);
    if (filter.value) out.set("filter", filter.value);
    if (query.value) out.set("q", query.value);
    if (cursors[pageIndex]) out.set("cursor", cursors[pageIndex]);
    return out;
  }

  async function load() {
    const mine = ++loading;
    try {
      const page = await api(`/job/${jobId}/samples?${search()}`, { signal: ctx.signal });
      if (mine !== loading) return;
      clear(message);
      options(task, page.tasks.map((t) => [t, t]), page.task);
      options(filter, [["", "All filters"], ...page.filters.map((f) => [f, f])], filter.value || wanted.filter);
      const binary = page.binary_metrics;
      correct.disabled = binary.length === 0;
      correct.title = binary.length ? "" : "No 0/1 metric in this task: every sample is neither right nor wrong";
      metric.hidden = binary.length < 2;
      if (binary.length > 1) options(metric, binary.map((m) => [m, `by ${m}`]), metric.value || binary[0]);
      cursors[pageIndex + 1] = page.next_cursor;
      const first = page.offset + 1;
      const last = page.offset + page.samples.length;
      clear(count, page.total ? `${first}–${last} of ${page.total.toLocaleString()}` : "No sample matches");
      clear(list, page.samples.length ? page.samples.map(sampleCard) : h("p", { class: "muted" }, "No sample matches these filters."));
      prev.disabled = pageIndex === 0;
      next.disabled = !page.next_cursor;
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError || mine !== loading) return;
      clear(list);
      clear(count);
      prev.disabled = next.disabled = true;
      clear(message, h("div", { class: "callout error", role: "alert", id: "samples-error" }, explain(error)));
    }
  }

  function explain(error) {
    if (error.status === 404 && /log_samples/.test(error.message)) {
      return "This job logged no samples: run it with log_samples on (the form's \"Log samples\") to explore them here.";
    }
    if (error.status === 409) return "The samples come when the job has ended (lm-eval writes them at the end).";
    return `Could not load the samples: ${error.message}`;
  }

  function restart() {
    cursors = [null];
    pageIndex = 0;
    load();
  }

  task.addEventListener("change", () => { filter.value = ""; wanted.filter = ""; metric.value = ""; restart(); });
  correct.addEventListener("change", restart);
  metric.addEventListener("change", restart);
  filter.addEventListener("change", () => { wanted.filter = filter.value; restart(); });
  query.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(restart, 250); });
  prev.addEventListener("click", () => { pageIndex = Math.max(0, pageIndex - 1); load(); });
  next.addEventListener("click", () => { if (cursors[pageIndex + 1]) { pageIndex += 1; load(); } });
  // Without a task named, the first task whose samples file the job wrote (the API wants one
  // when there are several); a job without any gets the API's own explanation.
  (async () => {
    if (!wanted.task) {
      try {
        const files = (await api(`/job/${jobId}/artifacts`, { signal: ctx.signal })).artifacts || [];
        const found = files.map((a) => a.name.match(SAMPLES_FILE)).filter(Boolean).map((m) => m[1]);
        wanted.task = found.sort()[0] || "";
      } catch (error) {
        if (error.name === "AbortError" || error instanceof AuthError) return;
      }
    }
    if (wanted.task) options(task, [[wanted.task, wanted.task]], wanted.task);
    load();
  })();
  return { unmount() { clearTimeout(timer); } };
}

/** Fill a select with [value, label] pairs, keeping `chosen` selected. */
function options(select, pairs, chosen) {
  const current = [...select.options].map((o) => `${o.value}\u0000${o.textContent}`).join("\u0001");
  const wanted = pairs.map(([v, l]) => `${v}\u0000${l}`).join("\u0001");
  if (current !== wanted) clear(select, pairs.map(([v, l]) => h("option", { value: v }, l)));
  if (pairs.some(([v]) => v === chosen)) select.value = chosen;
}

function clip(value) {
  const s = typeof value === "string" ? value : JSON.stringify(value, null, 1);
  return s && s.length > SHOWN_CHARS ? `${s.slice(0, SHOWN_CHARS)}… (${s.length.toLocaleString()} characters)` : s ?? "";
}

/** The request texts lm-eval sent: arg_0 of each gen_args (one per choice for multiple choice). */
function prompts(prompt) {
  if (!prompt || typeof prompt !== "object") return [clip(prompt)];
  return Object.values(prompt).map((args) => (args && typeof args === "object" && "arg_0" in args
    ? [args.arg_0, args.arg_1].filter((x) => x !== undefined).map(clip).join("  ⟶  ")
    : clip(args)));
}

function sampleCard(sample) {
  const verdicts = Object.entries(sample.correct || {}).filter(([, ok]) => ok !== null);
  const mark = verdicts.length ? (verdicts.every(([, ok]) => ok) ? "right" : "wrong") : null;
  const metrics = Object.entries(sample.metrics || {}).map(([name, value]) => `${name} = ${fmtMetric(value)}`);
  const requests = prompts(sample.prompt);
  return h(
    "article",
    { class: "sample", dataset: { doc: String(sample.doc_id), filter: sample.filter, verdict: mark || "none" } },
    h("div", { class: "sample-head" },
      h("strong", {}, `doc ${sample.doc_id}`),
      h("span", { class: "muted" }, `filter: ${sample.filter}`),
      mark ? h("span", { class: `verdict ${mark}` }, mark === "right" ? "✓ right" : "✗ wrong") : null,
      h("span", { class: "metric mono" }, metrics.join(" · "))),
    h("dl", { class: "kv" },
      h("dt", {}, requests.length > 1 ? `prompt (${requests.length} requests)` : "prompt"),
      h("dd", {}, requests.map((text) => h("pre", { class: "code prompt" }, text))),
      h("dt", {}, "target"), h("dd", { class: "target" }, clip(sample.target)),
      h("dt", {}, "response"), h("dd", { class: "response" }, clip(sample.filtered_resps)),
      h("dt", {}, "raw"), h("dd", { class: "muted" }, clip(sample.resps))),
    h("details", {}, h("summary", {}, "Document and hashes"),
      h("pre", { class: "code" }, clip(JSON.stringify({ doc: sample.doc, doc_hash: sample.doc_hash, prompt_hash: sample.prompt_hash, target_hash: sample.target_hash }, null, 2)))),
  );
}
