// One job: live status, per-phase progress, log tail, actions, results, artifacts, samples.
//
// The page reads the last bytes of each log once, then follows GET /job/{id}/events from those
// offsets (Last-Event-ID), so a long log costs one bounded read, not a replay from byte 0.

import { AuthError, api, follow, request } from "./api.js";
import {
  clear, fmtBytes, fmtDate, fmtDuration, fmtMetric, h, jobDuration, modelArgsText, taskList, text,
} from "./dom.js";
import {
  ACTIVE, TERMINAL, badge, confirmDialog, downloadLink, progressBar, reportError, setBadge,
  setPhaseProgress, setProgress, toast,
} from "./ui.js";

const TAIL_BYTES = 64 * 1024;
const MAX_LOG_LINES = 2000;
const SAMPLE_RECORDS = 5;
const DELIVERY_LOOK = { delivered: "Completed", failed: "Failed", pending: "Queued" }; // badge colours
const SAMPLE_MAX_BYTES = 2 * 1024 * 1024;
const SAMPLES_FILE = /(?:^|\/)samples_(.+)_(\d{4}-\d{2}-\d{2}T[\d.:-]+)\.jsonl$/;

/** A scrolling log pane that keeps its last MAX_LOG_LINES lines. */
class LogPane {
  constructor(name) {
    this.name = name;
    this.lines = 0;
    this.pre = h("pre", { class: "log", id: `log-${name}`, tabindex: "0", "aria-label": `${name} log` });
    this.follow = true;
    this.pre.addEventListener("scroll", () => {
      const atEnd = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 4;
      this.follow = atEnd;
    });
  }

  note(message) {
    this.pre.append(h("span", { class: "note" }, `${message}\n`));
  }

  append(lines) {
    if (!lines.length) return;
    const chunk = lines.map((l) => l.replace(/[\r\n]+$/, "")).join("\n") + "\n";
    this.pre.append(document.createTextNode(chunk));
    this.lines += lines.length;
    while (this.lines > MAX_LOG_LINES && this.pre.firstChild) {
      const first = this.pre.firstChild;
      this.lines -= (first.textContent.match(/\n/g) || []).length;
      first.remove();
    }
    if (this.follow) this.pre.scrollTop = this.pre.scrollHeight;
  }
}

export function mount(root, { match }, ctx) {
  const jobId = Number(match[1]);
  let job = null;
  let terminalLoaded = false;

  const title = h("h1", {}, `Job #${jobId}`);
  const status = badge("Queued", true);
  status.id = "job-status";
  const subtitle = h("span", { class: "sub" });
  const stopButton = h("button", { class: "btn danger", type: "button", id: "stop-job", hidden: true }, "Stop");
  const resumeButton = h("button", { class: "btn", type: "button", id: "resume-job", hidden: true }, "Resume");
  const rerunButton = h("a", { class: "btn", href: `#/new?from=${jobId}`, id: "rerun-job" }, "Edit & re-run");
  const deleteButton = h("button", { class: "btn danger", type: "button", id: "delete-job" }, "Delete");
  const reason = h("div", { class: "callout reason", hidden: true, id: "job-reason" });

  const overall = progressBar({ big: true, label: "Overall progress" });
  overall.id = "job-progress";
  const phases = h("div", { class: "phases", id: "job-phases" });
  const phaseBars = new Map();
  const facts = h("dl", { class: "facts" });
  const attemptsCard = h("section", { class: "card", id: "job-attempts", hidden: true });
  let attemptsShown = null; // the attempts / status / retry_at the card was drawn for
  const command = h("pre", { class: "code", id: "job-command" });
  const requestJson = h("pre", { class: "code" });

  const logs = { stderr: new LogPane("stderr"), stdout: new LogPane("stdout") };
  let shown = "stderr";
  const logTabs = {};
  const logBody = h("div", {}, logs.stderr.pre);
  for (const name of ["stderr", "stdout"]) {
    logTabs[name] = h("button", { type: "button", role: "tab", "aria-selected": String(name === shown), id: `tab-${name}` }, name);
    logTabs[name].addEventListener("click", () => {
      shown = name;
      for (const [n, tab] of Object.entries(logTabs)) tab.setAttribute("aria-selected", String(n === name));
      clear(logBody, logs[name].pre);
      logs[name].pre.scrollTop = logs[name].pre.scrollHeight;
    });
  }

  const resultsBox = h("div", { id: "job-results" }, h("p", { class: "muted" }, "Results appear when the job has finished."));
  const artifactsBox = h("div", { id: "job-artifacts" }, h("p", { class: "muted" }, "Loading…"));
  const samplesCard = h("section", { class: "card", id: "job-samples", hidden: true });
  const deliveriesBox = h("div", { id: "job-deliveries-body" });
  const refreshDeliveries = h("button", { class: "btn", type: "button", id: "refresh-deliveries" }, "Refresh");
  const deliveriesCard = h("section", { class: "card", id: "job-deliveries", hidden: true },
    h("div", { class: "card-head" }, h("h2", {}, "Webhooks and exports"), h("div", { class: "spacer" }), refreshDeliveries),
    deliveriesBox);
  refreshDeliveries.addEventListener("click", () => loadDeliveries());
  const errorBox = h("div", { class: "callout error", role: "alert" });

  clear(
    root,
    h("a", { class: "back", href: "#/" }, "← All jobs"),
    h("div", { class: "page-head" }, title, status, h("div", { class: "spacer" }),
      h("div", { class: "btn-row" }, stopButton, resumeButton, rerunButton, deleteButton), subtitle),
    errorBox,
    reason,
    h("section", { class: "card" }, h("div", { class: "card-head" }, h("h2", {}, "Progress")), overall, phases),
    h("section", { class: "card" }, facts),
    attemptsCard,
    h(
      "section",
      { class: "card" },
      h("div", { class: "log-bar" }, h("h2", {}, "Log"), h("div", { class: "tabs", role: "tablist" }, logTabs.stderr, logTabs.stdout),
        h("div", { class: "spacer" }), downloadLink(`/job/${jobId}/artifacts/stderr.log`, "stderr.log", "stderr.log"),
        downloadLink(`/job/${jobId}/artifacts/stdout.log`, "stdout.log", "stdout.log")),
      logBody,
    ),
    h("section", { class: "card" }, h("div", { class: "card-head" }, h("h2", {}, "Results")), resultsBox),
    samplesCard,
    deliveriesCard,
    h(
      "div",
      { class: "grid-2" },
      h("section", { class: "card" }, h("h2", {}, "Artifacts"), artifactsBox),
      h("section", { class: "card" }, h("h2", {}, "Command"), command, h("details", { class: "more" }, h("summary", {}, "Request"), requestJson)),
    ),
  );

  function fact(label, value, id) {
    return h("div", {}, h("dt", {}, label), h("dd", { id }, value));
  }

  function showStatus(next) {
    const before = job && job.status;
    job = { ...(job || {}), ...next };
    if (job.status !== before) loadDeliveries();
    setBadge(status, job.status);
    const req = job.request || {};
    const tasks = taskList(req.tasks);
    const args = modelArgsText(req.model_args);
    text(subtitle, `${req.model ?? "hf"}${args ? ` · ${args}` : ""} · ${tasks.join(", ")}`);
    stopButton.hidden = !ACTIVE.has(job.status);
    text(stopButton, job.status === "Queued" ? "Dequeue" : "Stop");
    resumeButton.hidden = !(job.status === "Stopped" || job.status === "Failed");
    const duration = jobDuration(job);
    clear(
      facts,
      fact("Status", job.status, "fact-status"),
      fact("Created", fmtDate(job.created_at)),
      fact("Started", fmtDate(job.started_at)),
      fact("Finished", fmtDate(job.finished_at)),
      fact("Duration", fmtDuration(duration), "fact-duration"),
      fact("Exit code", job.exit_code ?? "—"),
      fact("Attempts", job.attempts ?? "—"),
      job.retry_at ? fact("Next attempt", fmtDate(job.retry_at), "fact-retry-at") : null,
      job.resumed_from ? fact("Resumes", h("a", { href: `#/job/${job.resumed_from}` }, `#${job.resumed_from}`)) : null,
      job.sweep_id ? fact("Sweep", h("a", { href: `#/sweep/${job.sweep_id}`, id: "job-sweep" }, `#${job.sweep_id} · ${job.sweep_cell ?? ""}`)) : null,
      job.gpus && job.gpus.length ? fact("GPUs", job.gpus.join(", ")) : null,
    );
    if (job.reason) {
      reason.hidden = false;
      reason.className = `callout reason ${job.status === "Failed" ? "error" : "warn"}`;
      text(reason, job.reason);
    } else {
      reason.hidden = true;
    }
    text(command, job.argument || "");
    text(requestJson, JSON.stringify(req, null, 2));
    followAttempts(next);
    if (job.progress) showProgress(job.progress);
    else setProgress(overall, overall._last, job.status);
    if (TERMINAL.has(job.status) && !terminalLoaded) {
      terminalLoaded = true;
      loadResults();
      loadArtifacts();
    }
  }

  // Status events carry the attempt count, not the history: a change re-reads the job.
  function followAttempts(next) {
    const drawnFor = `${job.attempts}|${job.status}|${job.retry_at}`;
    if (next.attempt_history) {
      attemptsShown = drawnFor;
      showAttempts(next.attempt_history);
    } else if (attemptsShown !== null && attemptsShown !== drawnFor) {
      attemptsShown = drawnFor;
      api(`/job/${jobId}`, { signal: ctx.signal }).then((detail) => showAttempts(detail.attempt_history || [])).catch(() => {});
    }
  }

  /** Each attempt (when a job may run more than once): how it ended, and where its output
   *  begins in each log (byte offsets, as GET /job/{id}/logs?offset= takes them). */
  function showAttempts(history) {
    const retrying = (job.request?.max_attempts ?? 1) > 1 || Boolean(job.retry_at);
    attemptsCard.hidden = !history.length || (history.length < 2 && !retrying);
    if (attemptsCard.hidden) return;
    const rows = history.map((a) => h(
      "tr",
      { dataset: { attempt: a.attempt } },
      h("td", { class: "num" }, a.attempt),
      h("td", {}, fmtDate(a.started_at)),
      h("td", {}, a.finished_at ? fmtDate(a.finished_at) : "—"),
      h("td", {}, a.outcome ? `${a.outcome}${a.retried ? " · retried" : ""}` : "running"),
      h("td", { class: "num" }, a.exit_code ?? "—"),
      h("td", { class: "num muted" }, `stdout ${a.stdout_offset} B · stderr ${a.stderr_offset} B`),
      h("td", { class: "reason-cell" }, a.reason ?? ""),
    ));
    clear(
      attemptsCard,
      h("div", { class: "card-head" }, h("h2", {}, "Attempts"),
        job.retry_at ? h("span", { class: "muted small", id: "attempts-retry-at" }, `next attempt ${fmtDate(job.retry_at)}`) : null),
      h("div", { class: "table-scroll" }, h("table", { class: "results", id: "attempts-table" },
        h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "Started"), h("th", {}, "Finished"),
          h("th", {}, "Outcome"), h("th", { class: "num" }, "Exit"), h("th", { class: "num" }, "Log from"), h("th", {}, "Reason"))),
        h("tbody", {}, rows))),
    );
  }

  function showProgress(progress) {
    overall._last = progress;
    setProgress(overall, progress, job ? job.status : "Running");
    const list = progress.phases || [];
    if (!list.length && !phaseBars.size) {
      if (!phases.firstChild) phases.append(h("p", { class: "muted small", id: "no-phases" }, "Phases appear when lm-eval starts sending requests to the model."));
      return;
    }
    phases.querySelector("#no-phases")?.remove();
    for (const phase of list) {
      let row = phaseBars.get(phase.name);
      if (!row) {
        const bar = progressBar({ label: `Phase ${phase.name}` });
        row = { bar, el: h("div", { class: "phase-row", dataset: { phase: phase.name } }, h("span", { class: "name", title: phase.name }, phase.name), bar) };
        phaseBars.set(phase.name, row);
        phases.append(row.el);
      }
      setPhaseProgress(row.bar, phase, job ? job.status : "Running");
    }
  }

  // ---- actions --------------------------------------------------------------------------------

  stopButton.addEventListener("click", async () => {
    stopButton.disabled = true;
    try { toast((await api(`/job/${jobId}/stop`, { method: "POST" })).message); } catch (error) { reportError(error); } finally { stopButton.disabled = false; }
  });
  resumeButton.addEventListener("click", async () => {
    resumeButton.disabled = true;
    try {
      const answer = await api(`/job/${jobId}/resume`, { method: "POST" });
      toast(answer.message);
      ctx.navigate(`#/job/${answer.job_id}`);
    } catch (error) { reportError(error); } finally { resumeButton.disabled = false; }
  });
  deleteButton.addEventListener("click", async () => {
    const active = job && ACTIVE.has(job.status);
    const ok = await confirmDialog({
      title: `Delete job #${jobId}?`,
      message: `${active ? "The job is stopped first. " : ""}Its record, logs, results and artifacts are removed for good.`,
      confirm: "Delete",
      danger: true,
    });
    if (!ok) return;
    try {
      await api(`/job/${jobId}`, { method: "DELETE" });
      toast(`Job #${jobId} deleted.`);
      ctx.navigate("#/");
    } catch (error) { reportError(error); }
  });

  // ---- results, artifacts, samples -----------------------------------------------------------

  async function loadResults() {
    try {
      const data = await api(`/job/${jobId}/results`, { signal: ctx.signal });
      const rows = (data.metrics || []).map((m) => h(
        "tr",
        {},
        h("td", { class: m.is_group ? "group" : "" }, m.task),
        h("td", {}, m.metric),
        h("td", { class: "muted" }, m.filter),
        h("td", { class: "num" }, fmtMetric(m.value)),
        h("td", { class: "num muted" }, Number.isFinite(m.stderr) ? `± ${fmtMetric(m.stderr)}` : "—"),
      ));
      const nSamples = Object.entries(data.n_samples || {}).map(([t, n]) => `${t}: ${n.effective ?? n}`).join(", ");
      clear(
        resultsBox,
        rows.length
          ? h("div", { class: "table-scroll" }, h("table", { class: "results", id: "results-table" },
            h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", {}, "Metric"), h("th", {}, "Filter"), h("th", { class: "num" }, "Value"), h("th", { class: "num" }, "± Stderr"))),
            h("tbody", {}, rows)))
          : h("p", { class: "muted" }, "The results file has no metrics."),
        h("p", { class: "muted small" },
          `lm-eval ${data.lm_eval_version || "?"}`,
          nSamples ? ` · samples per task: ${nSamples}` : "",
          " · ", h("a", { href: `#/compare?ids=${jobId}` }, "compare with other jobs →")),
      );
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError) return;
      const message = error.status === 404
        ? (job && job.status === "Completed" ? "This job wrote no results file." : `No results: the job ${job ? job.status.toLowerCase() : "ended"} before lm-eval wrote them.`)
        : `Could not load the results: ${error.message}`;
      clear(resultsBox, h("p", { class: "muted" }, message));
    }
  }

  // Webhook deliveries and MLflow exports (GET /job/{id}/deliveries): each with its last
  // attempt and next try; an export's run links to the tracking server.
  async function loadDeliveries() {
    try {
      const data = await api(`/job/${jobId}/deliveries`, { signal: ctx.signal });
      const list = data.deliveries || [];
      deliveriesCard.hidden = !list.length;
      const rows = list.map((d) => {
        const last = d.attempts.length ? d.attempts[d.attempts.length - 1] : null;
        const outcome = last ? (last.status_code ? `HTTP ${last.status_code}` : (last.error || "")) : "—";
        const where = d.link ? h("a", { href: d.link, target: "_blank", rel: "noopener noreferrer", class: "mlflow-run" }, "MLflow run →") : d.target;
        return h("tr", {},
          h("td", {}, d.kind), h("td", {}, d.event), h("td", {}, where), h("td", {}, h("span", { class: "badge", dataset: { status: DELIVERY_LOOK[d.status] || "Queued" } }, d.status)),
          h("td", { class: "num" }, String(d.attempts.length)), h("td", { class: "muted" }, outcome),
          h("td", { class: "muted" }, d.next_attempt_at ? fmtDate(d.next_attempt_at) : "—"));
      });
      clear(deliveriesBox, h("div", { class: "table-scroll" }, h("table", { class: "results", id: "deliveries-table" },
        h("thead", {}, h("tr", {}, ["Kind", "Event", "Target", "Status", "Tries", "Last attempt", "Next try"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows))));
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError) return;
      deliveriesCard.hidden = true;
    }
  }

  async function loadArtifacts() {
    try {
      const data = await api(`/job/${jobId}/artifacts`, { signal: ctx.signal });
      const list = data.artifacts || [];
      clear(
        artifactsBox,
        list.length
          ? h("ul", { class: "artifact-list" }, list.map((a) => h("li", {}, downloadLink(a.url, a.name, a.name.split("/").pop()), h("span", { class: "size" }, fmtBytes(a.size_bytes)))))
          : h("p", { class: "muted" }, "No files yet."),
      );
      const samples = list.filter((a) => SAMPLES_FILE.test(a.name));
      if (samples.length) showSamples(samples);
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError) return;
      clear(artifactsBox, h("p", { class: "muted" }, `Could not list the files: ${error.message}`));
    }
  }

  function showSamples(files) {
    samplesCard.hidden = false;
    const body = h("div", { id: "samples-body" });
    const tabs = h("div", { class: "tabs", role: "tablist" });
    const select = (file, tab) => {
      for (const t of tabs.children) t.setAttribute("aria-selected", String(t === tab));
      loadSamples(file, body);
    };
    files.forEach((file, i) => {
      const task = file.name.match(SAMPLES_FILE)[1];
      const tab = h("button", { type: "button", role: "tab", "aria-selected": String(i === 0), dataset: { task } }, task);
      tab.addEventListener("click", () => select(file, tab));
      tabs.append(tab);
    });
    clear(samplesCard, h("div", { class: "card-head" }, h("h2", {}, "Samples"), h("span", { class: "muted small" }, `first ${SAMPLE_RECORDS} records of --log_samples output`),
      h("div", { class: "spacer" }), h("a", { href: `#/job/${jobId}/samples`, id: "samples-link" }, "Explore all samples →")), tabs, body);
    loadSamples(files[0], body);
  }

  async function loadSamples(file, body) {
    clear(body, h("p", { class: "muted" }, "Loading…"));
    const controller = new AbortController();
    ctx.signal.addEventListener("abort", () => controller.abort(), { once: true });
    try {
      const response = await request(file.url, { signal: controller.signal, headers: { Accept: "*/*" } });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let complete = [];
      let read = 0;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { if (buffer.trim()) complete.push(buffer); break; }
        buffer += value;
        read += value.length;
        const parts = buffer.split("\n");
        buffer = parts.pop();
        complete = complete.concat(parts.filter((p) => p.trim()));
        if (complete.length >= SAMPLE_RECORDS || read > SAMPLE_MAX_BYTES) break;
      }
      controller.abort(); // the rest of a large samples file is not needed
      const records = complete.slice(0, SAMPLE_RECORDS).map((line) => { try { return JSON.parse(line); } catch { return null; } }).filter(Boolean);
      clear(body, records.length ? records.map(sampleCard) : h("p", { class: "muted" }, "No complete records in the first part of this file."),
        h("p", { class: "small" }, downloadLink(file.url, `Download ${file.name.split("/").pop()} (${fmtBytes(file.size_bytes)})`, file.name.split("/").pop())));
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError) return;
      clear(body, h("p", { class: "muted" }, `Could not read the samples: ${error.message}`));
    }
  }

  function short(value, limit = 600) {
    const s = typeof value === "string" ? value : JSON.stringify(value);
    return s.length > limit ? `${s.slice(0, limit)}…` : s;
  }

  function sampleCard(record) {
    const metrics = (record.metrics || []).filter((m) => m in record).map((m) => `${m} = ${fmtMetric(record[m])}`);
    const args = record.arguments || {};
    const firstArg = Object.values(args)[0];
    const prompt = firstArg && typeof firstArg === "object" ? firstArg.arg_0 : undefined;
    const responses = record.filtered_resps ?? record.resps;
    return h(
      "article",
      { class: "sample" },
      h("div", { class: "sample-head" }, h("strong", {}, `doc ${record.doc_id ?? "?"}`), record.filter ? h("span", { class: "muted" }, `filter: ${record.filter}`) : null,
        h("span", { class: "metric mono" }, metrics.join(" · "))),
      h("dl", { class: "kv" },
        prompt !== undefined ? [h("dt", {}, "prompt"), h("dd", {}, short(prompt))] : null,
        h("dt", {}, "target"), h("dd", {}, short(record.target ?? "")),
        h("dt", {}, "response"), h("dd", {}, short(responses ?? ""))),
      h("details", {}, h("summary", {}, "Full record"), h("pre", { class: "code" }, short(JSON.stringify(record, null, 2), 20000))),
    );
  }

  // ---- live: first the log tails, then the event stream from their ends ----------------------

  async function tail(stream) {
    try {
      const chunk = await api(`/job/${jobId}/logs?stream=${stream}&tail=${TAIL_BYTES}`, { signal: ctx.signal });
      let lines = chunk.lines || [];
      let next = chunk.next_offset;
      if (chunk.offset > 0 && lines.length) {
        lines = lines.slice(1); // the tail starts mid-line
        logs[stream].note(`… earlier output is in ${stream}.log`);
      }
      const last = lines[lines.length - 1];
      if (last !== undefined && !/[\r\n]$/.test(last)) {
        // An unfinished line: let the stream deliver it whole.
        lines = lines.slice(0, -1);
        next -= new TextEncoder().encode(last).length;
      }
      logs[stream].append(lines);
      return next;
    } catch (error) {
      if (error instanceof AuthError || error.name === "AbortError") throw error;
      return 0;
    }
  }

  (async () => {
    try {
      const first = await api(`/job/${jobId}`, { signal: ctx.signal });
      showStatus(first);
      const [stdout, stderr] = await Promise.all([tail("stdout"), tail("stderr")]);
      await follow(`/job/${jobId}/events`, {
        signal: ctx.signal,
        lastEventId: `${stdout}-${stderr}`,
        onState: (state) => ctx.setLive(state === "closed" ? "idle" : state),
        onEvent: ({ event, data }) => {
          if (event === "status") showStatus(data);
          else if (event === "progress") { if (job) job.progress = data; showProgress(data); }
          else if (event === "log") logs[data.stream]?.append(data.lines || []);
          else if (event === "end" && data.reason === "deleted") {
            clear(errorBox, "This job has been deleted. ", h("a", { href: "#/" }, "Back to the jobs"));
            stopButton.hidden = true;
            resumeButton.hidden = true;
          }
        },
      });
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError) return;
      if (error.status === 404) {
        clear(root, h("a", { class: "back", href: "#/" }, "← All jobs"), h("div", { class: "card empty" }, h("strong", {}, `Job #${jobId} does not exist`), "It may have been deleted."));
        return;
      }
      clear(errorBox, `Could not load the job: ${error.message}`);
    }
  })();

  const ticker = setInterval(() => {
    if (job && job.status === "Running") text(facts.querySelector("#fact-duration"), fmtDuration(jobDuration(job)));
  }, 1000);
  return { unmount: () => clearInterval(ticker) };
}
