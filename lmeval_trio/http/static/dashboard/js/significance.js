// The Compare page's significance section (GET /compare): each job against a baseline per
// task/metric/filter with Δ, p and a mark where the difference is significant at alpha; the
// comparability mismatches (which block any mark); the paired comparisons from samples, and
// the flipped documents side by side (GET /compare/flips: prompt, target, each job's answer).

import { AuthError, api } from "./api.js";
import { clear, fmtMetric, h, text } from "./dom.js";
import { downloadLink } from "./ui.js";

const FLIPS_PAGE = 10;

function fmtP(p) {
  if (typeof p !== "number") return "—";
  return p < 1e-4 ? p.toExponential(1) : p.toFixed(4);
}

function fmtDelta(d) {
  return typeof d === "number" ? `${d >= 0 ? "+" : ""}${fmtMetric(d)}` : "—";
}

function show(value) {
  if (value === null || value === undefined) return "—";
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** Mount the section into `root` for `ids`; returns nothing (it reloads on its own inputs). */
export function mountSignificance(root, ids, signal) {
  const baseline = h("select", { id: "sig-baseline", "aria-label": "Baseline job" }, ids.map((id) => h("option", { value: id }, `#${id}`)));
  const alpha = h("input", { id: "sig-alpha", type: "number", min: "0.0001", max: "0.5", step: "0.01", value: "0.05", "aria-label": "alpha" });
  const body = h("div", { id: "sig-body" }, h("p", { class: "muted loading" }, "Testing differences…"));
  const report = h("span", { id: "sig-report" });
  clear(
    root,
    h("div", { class: "card-head" }, h("h2", {}, "Significance"), h("div", { class: "spacer" }),
      h("label", { class: "small" }, "Baseline ", baseline), " ", h("label", { class: "small" }, "alpha ", alpha), " ", report),
    body,
  );
  const load = async () => {
    const query = `jobs=${ids.join(",")}&baseline=${baseline.value}&alpha=${encodeURIComponent(alpha.value)}`;
    clear(report, downloadLink(`/compare/report?${query}`, "Download report (HTML)", `lmeval-compare-${ids.join("-")}.html`));
    try {
      const found = await api(`/compare?${query}`, { signal });
      clear(body, rowsTable(found), mismatches(found), paired(found, signal));
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError) return;
      clear(body, h("div", { class: "callout warn" }, `No significance test: ${error.message}`));
    }
  };
  baseline.addEventListener("change", load);
  alpha.addEventListener("change", load);
  load();
}

function rowsTable(found) {
  const others = found.jobs.filter((id) => id !== found.baseline);
  const head = h("tr", {}, h("th", {}, "Task"), h("th", {}, "Metric"), h("th", {}, "Filter"), h("th", { class: "num" }, `#${found.baseline} (baseline)`),
    others.map((id) => [h("th", { class: "num" }, `#${id}`), h("th", { class: "num" }, "Δ"), h("th", { class: "num" }, "p"), h("th", {}, "")]));
  const rows = found.rows.map((row) => {
    const byJob = new Map(row.jobs.map((c) => [c.job_id, c]));
    const base = byJob.get(found.baseline);
    return h("tr", { dataset: { task: row.task, metric: row.metric } }, h("td", {}, row.task), h("td", {}, row.metric), h("td", { class: "muted" }, row.filter),
      h("td", { class: "num" }, fmtMetric(base.value), typeof base.stderr === "number" ? h("span", { class: "pm" }, `± ${fmtMetric(base.stderr)}`) : null),
      others.map((id) => {
        const c = byJob.get(id);
        const mark = c.significant ? "✔ significant" : c.mismatches.length ? "⚠ not comparable" : c.test ? "" : "no test";
        return [
          h("td", { class: "num" }, fmtMetric(c.value), typeof c.stderr === "number" ? h("span", { class: "pm" }, `± ${fmtMetric(c.stderr)}`) : null),
          h("td", { class: c.significant ? "num best" : "num" }, fmtDelta(c.delta)),
          h("td", { class: "num" }, fmtP(c.p_value)),
          h("td", { class: c.significant ? "sig-mark significant" : "sig-mark", title: c.note || "" }, mark),
        ];
      }));
  });
  return h("div", {},
    h("div", { class: "table-scroll" }, h("table", { id: "sig-table" }, h("thead", {}, head), h("tbody", {}, rows))),
    h("p", { class: "muted small" }, `✔: two-sided z test on lm-eval's standard errors, p < ${found.alpha}. A task whose runs are not comparable is never marked.`));
}

function mismatches(found) {
  if (!found.mismatches.length) return h("p", { id: "sig-mismatches", class: "muted" }, "No mismatches: the runs are comparable on every shared task.");
  return h("div", { id: "sig-mismatches" }, h("h3", {}, "Mismatches"),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "Task"), h("th", {}, "Kind"), h("th", {}, "Baseline"), h("th", {}, "This job"))),
      h("tbody", {}, found.mismatches.map((m) => h("tr", {}, h("td", {}, `#${m.job_id}`), h("td", {}, m.task ?? "(whole run)"), h("td", { class: "warn" }, m.kind), h("td", { class: "mono small" }, show(m.baseline)), h("td", { class: "mono small" }, show(m.value)))))));
}

function paired(found, signal) {
  if (!found.paired.length) return h("p", { class: "muted" }, "No paired comparison: no two of these jobs logged samples of a shared task.");
  const flips = h("div", { id: "sig-flips" });
  const rows = found.paired.map((p) => {
    const button = p.test ? h("button", { class: "btn small", type: "button" }, "Show flips") : null;
    if (button) button.addEventListener("click", () => loadFlips(flips, [found.baseline, p.job_id], p, 0, signal));
    return h("tr", {}, h("td", {}, `#${p.job_id}`), h("td", {}, p.task), h("td", {}, p.metric), h("td", { class: "muted" }, p.filter), h("td", { class: "num" }, p.matched),
      h("td", { class: "num" }, p.correct_to_wrong ?? "—"), h("td", { class: "num" }, p.wrong_to_correct ?? "—"), h("td", { class: "num" }, fmtP(p.p_value)),
      h("td", { class: p.significant ? "sig-mark significant" : "sig-mark", title: p.note || "" }, p.significant ? "✔ significant" : p.mismatches.length ? "⚠ not comparable" : ""), h("td", {}, button));
  });
  return h("div", {}, h("h3", {}, "Paired comparisons (from samples)"),
    h("table", { id: "sig-paired" }, h("thead", {}, h("tr", {}, h("th", {}, "Job"), h("th", {}, "Task"), h("th", {}, "Metric"), h("th", {}, "Filter"), h("th", { class: "num" }, "Matched"),
      h("th", { class: "num" }, "Correct→wrong"), h("th", { class: "num" }, "Wrong→correct"), h("th", { class: "num" }, "McNemar p"), h("th", {}, ""), h("th", {}, ""))), h("tbody", {}, rows)),
    flips);
}

async function loadFlips(root, jobs, entry, offset, signal) {
  const query = `jobs=${jobs.join(",")}&task=${encodeURIComponent(entry.task)}&filter=${encodeURIComponent(entry.filter)}&metric=${encodeURIComponent(entry.metric)}&offset=${offset}&limit=${FLIPS_PAGE}`;
  try {
    const page = await api(`/compare/flips?${query}`, { signal });
    const prev = h("button", { class: "btn small", type: "button", disabled: offset === 0 }, "← Previous");
    const next = h("button", { class: "btn small", type: "button", disabled: offset + FLIPS_PAGE >= page.total }, "Next →");
    prev.addEventListener("click", () => loadFlips(root, jobs, entry, Math.max(0, offset - FLIPS_PAGE), signal));
    next.addEventListener("click", () => loadFlips(root, jobs, entry, offset + FLIPS_PAGE, signal));
    const range = page.total ? `${offset + 1}–${Math.min(page.total, offset + page.flips.length)} of ${page.total}` : "none";
    clear(root, h("h3", {}, `Flipped documents: ${entry.task} ${entry.metric} (#${jobs[0]} → #${jobs[1]})`),
      h("div", { class: "form-actions" }, prev, h("span", { class: "muted small", id: "sig-flips-range" }, range), next),
      page.flips.map((flip) => flipCard(flip, jobs)));
  } catch (error) {
    if (error.name === "AbortError" || error instanceof AuthError) return;
    clear(root, h("div", { class: "callout warn" }, error.message));
  }
}

function flipCard(flip, jobs) {
  const docs = jobs.map((id) => flip.documents[String(id)] || {});
  const prompt = docs[0].arguments ?? docs[1].arguments;
  return h("div", { class: "card flip", dataset: { docId: flip.doc_id } },
    h("div", { class: "card-head" }, h("strong", {}, `doc ${flip.doc_id}`), " ", h("span", { class: "muted small" }, flip.direction.replace(/_/g, " "))),
    h("div", { class: "small" }, h("strong", {}, "Prompt: "), h("pre", { class: "mono small" }, show(prompt))),
    h("div", { class: "small" }, h("strong", {}, "Target: "), h("span", { class: "mono" }, show(docs[0].target ?? docs[1].target))),
    h("div", { class: "flip-sides" }, jobs.map((id, i) => h("div", { class: "flip-side" }, h("strong", {}, `#${id}`),
      h("div", { class: "small" }, "response: ", h("span", { class: "mono" }, show(docs[i].filtered_resps))),
      h("div", { class: "small muted" }, "metrics: ", show(docs[i].metrics))))));
}
