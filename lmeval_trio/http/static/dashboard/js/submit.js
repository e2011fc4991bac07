// The submit form, generated from the JobRequest schema in /openapi.json.
//
// The schema is derived from the installed lm-eval's own argument parser, so a flag that a new
// lm-eval adds appears here with its help text without touching the dashboard. The server is
// the validator: values are sent as typed and its 422/403 answers are shown beside the field.

import { AuthError, api, openapi } from "./api.js";
import { clear, h, text } from "./dom.js";
import { reportError, toast } from "./ui.js";

// Shown first, in this order, when the schema has them; everything else goes under "More".
// Half-width fields pair up: model|device, limit|num_fewshot, batch_size|include_path.
const PRIMARY = ["model", "device", "model_args", "tasks", "limit", "num_fewshot", "batch_size", "include_path", "log_samples"];
const SERVER = ["env_vars", "lm_eval_path"];
const WIDE = new Set(["model_args", "tasks", "gen_kwargs", "metadata", "env_vars", "samples"]);
const PLACEHOLDERS = {
  model: "hf",
  model_args: "pretrained=EleutherAI/pythia-160m,dtype=float32",
  tasks: "hellaswag,arc_easy",
  limit: "e.g. 100 or 0.1",
  num_fewshot: "e.g. 5",
  batch_size: "auto or 8",
  env_vars: "NAME=value, one per line (or a JSON object)",
};

class FieldError extends Error {
  constructor(field, message) { super(message); this.field = field; }
}

function resolve(schema, root) {
  if (schema && schema.$ref) {
    const path = schema.$ref.replace(/^#\//, "").split("/");
    return path.reduce((node, part) => (node ? node[part] : undefined), root);
  }
  return schema;
}

/** The JobRequest schema: the POST /job request body. */
export function jobRequestSchema(doc) {
  const body = doc?.paths?.["/job"]?.post?.requestBody?.content?.["application/json"]?.schema;
  const schema = resolve(body, doc);
  if (!schema || !schema.properties) throw new Error("the server's /openapi.json has no JobRequest schema");
  return schema;
}

function typesOf(prop, doc) {
  const types = new Set();
  for (const option of prop.anyOf || prop.oneOf || [prop]) {
    const s = resolve(option, doc) || {};
    if (s.type) types.add(s.type);
  }
  types.delete("null");
  return types;
}

/** How a property is edited: switch, number, bool_text, list, mapping, text. */
function kindOf(types) {
  if (types.size === 1 && types.has("boolean")) return "switch";
  if (types.size === 1 && types.has("object")) return "mapping";
  if (!types.has("string") && (types.has("number") || types.has("integer"))) return "number";
  if (types.has("boolean")) return "bool_text";
  if (types.has("array")) return "list";
  return "text";
}

const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

function parseField(field) {
  const { name, kind, types, input } = field;
  if (kind === "switch") return input.checked ? true : undefined;
  const raw = input.value.trim();
  if (raw === "") return undefined;
  switch (kind) {
    case "number":
      return NUMBER.test(raw) ? Number(raw) : raw; // the server names the field if it is wrong
    case "bool_text":
      if (raw.toLowerCase() === "true") return true;
      if (raw.toLowerCase() === "false") return false;
      return raw;
    case "mapping": {
      if (raw.startsWith("{")) {
        try { return JSON.parse(raw); } catch (e) { throw new FieldError(name, `Invalid JSON: ${e.message}`); }
      }
      const out = {};
      for (const line of raw.split("\n").map((l) => l.trim()).filter(Boolean)) {
        const eq = line.indexOf("=");
        if (eq <= 0) throw new FieldError(name, `Expected NAME=value, got "${line}"`);
        out[line.slice(0, eq).trim()] = line.slice(eq + 1);
      }
      return out;
    }
    default:
      if (types.has("object") && raw.startsWith("{")) {
        try { return JSON.parse(raw); } catch (e) { throw new FieldError(name, `Invalid JSON: ${e.message}`); }
      }
      return raw;
  }
}

function showValue(field, value) {
  const { kind, input } = field;
  if (kind === "switch") { input.checked = value === true; return; }
  if (value === undefined || value === null) { input.value = ""; return; }
  if (kind === "mapping" && typeof value === "object" && !Array.isArray(value)) {
    input.value = Object.entries(value).map(([k, v]) => `${k}=${v}`).join("\n");
  } else if (Array.isArray(value) && kind === "list") {
    input.value = value.join(",");
  } else if (typeof value === "object") {
    input.value = JSON.stringify(value);
  } else {
    input.value = String(value);
  }
}

function buildField(name, prop, required, doc) {
  const types = typesOf(prop, doc);
  const kind = kindOf(types);
  const id = `f-${name}`;
  const error = h("span", { class: "error", id: `${id}-error`, role: "alert", dataset: { errorFor: name } });
  const help = prop.description ? h("span", { class: "help", id: `${id}-help` }, prop.description) : null;
  const described = [help ? `${id}-help` : null, `${id}-error`].filter(Boolean).join(" ");
  const title = prop.title || name;
  const labelText = h(
    "span",
    { class: "label" },
    title,
    required ? h("span", { class: "req", title: "required" }, "*") : null,
    h("span", { class: "name" }, name),
  );
  let input;
  let wrapper;
  if (kind === "switch") {
    input = h("input", { type: "checkbox", id, name, "aria-describedby": described });
    wrapper = h("label", { class: "field check", dataset: { field: name } }, input, h("div", {}, labelText, help, error));
  } else {
    const common = { id, name, "aria-describedby": described, autocomplete: "off", spellcheck: "false" };
    input = kind === "mapping"
      ? h("textarea", { ...common, rows: 3, placeholder: PLACEHOLDERS[name] || "" })
      : h("input", {
        ...common,
        type: "text",
        inputmode: kind === "number" ? "decimal" : null,
        placeholder: PLACEHOLDERS[name] || (kind === "bool_text" ? "true, or a value" : ""),
        required: required || null,
      });
    wrapper = h("label", { class: WIDE.has(name) ? "field wide" : "field", dataset: { field: name } }, labelText, input, help, error);
  }
  return { name, kind, types, input, wrapper, error };
}

/** Task names from the catalog as you type (the last comma-separated word), and the output
 *  type and description of each name already entered. */
function suggestTasks(field, signal) {
  const list = h("datalist", { id: "task-suggestions" });
  const info = h("ul", { class: "task-info help", id: "task-info" });
  field.input.setAttribute("list", "task-suggestions");
  field.wrapper.append(list, info);
  const known = new Map();
  let timer = null;
  const names = () => field.input.value.split(",").map((n) => n.trim()).filter(Boolean);

  function describe() {
    clear(info, ...names().filter((n) => known.has(n)).map((n) => {
      const entry = known.get(n);
      const what = entry.output_type || entry.kind;
      return h("li", { dataset: { task: n } }, h("strong", {}, n), ` (${what})`, entry.description ? ` — ${entry.description}` : "");
    }));
  }

  async function lookup() {
    const words = field.input.value.split(",");
    const word = words[words.length - 1].trim();
    const wanted = names().filter((n) => !known.has(n));
    try {
      for (const name of wanted.slice(0, 5)) {
        const found = await api(`/tasks?${new URLSearchParams({ q: name, limit: "20" })}`, { signal });
        for (const entry of found.tasks) known.set(entry.name, entry);
      }
      if (word) {
        const found = await api(`/tasks?${new URLSearchParams({ q: word, limit: "20" })}`, { signal });
        const prefix = words.slice(0, -1).map((w) => w.trim()).filter(Boolean);
        clear(list, ...found.tasks.map((entry) => {
          known.set(entry.name, entry);
          const value = [...prefix, entry.name].join(",");
          return h("option", { value, label: `${entry.name} · ${entry.output_type || entry.kind}` });
        }));
      }
    } catch (error) {
      if (error.name !== "AbortError" && !(error instanceof AuthError)) list.replaceChildren();
    }
    describe();
  }

  field.input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(lookup, 150); });
}

export function mount(root, { params }, ctx) {
  const fields = new Map();
  let mode = "form";
  let extra = {}; // keys from the JSON editor that the form has no field for

  const formError = h("div", { class: "callout error", role: "alert", id: "form-error" });
  const note = h("div", { class: "callout info" });
  const primaryBox = h("div", { class: "fields" });
  const moreBox = h("div", { class: "fields" });
  const serverBox = h("div", { class: "fields" });
  const more = h("details", { class: "more", id: "more-options" }, h("summary", {}, "More lm-eval options"), moreBox);
  const serverMore = h("details", { class: "more", id: "server-options" }, h("summary", {}, "Server options (environment, executable)"), serverBox);
  const formPane = h("div", { id: "form-pane" }, primaryBox, more, serverMore);

  const editor = h("textarea", { class: "json-editor", id: "json-editor", spellcheck: "false", "aria-label": "Request JSON" });
  editor.value = "{}";
  const jsonStatus = h("div", { class: "json-status", id: "json-status" });
  const jsonErrors = h("div", { class: "callout error", id: "json-errors", role: "alert" });
  const jsonPane = h(
    "div",
    { id: "json-pane", hidden: true },
    h("p", { class: "muted small" }, "The request body as JSON: every field of POST /job, including ones the form does not show. Switching back to the form keeps your edits."),
    jsonErrors,
    editor,
    jsonStatus,
  );
  editor.addEventListener("input", () => {
    try {
      const value = JSON.parse(editor.value || "{}");
      const ok = value && typeof value === "object" && !Array.isArray(value);
      text(jsonStatus, ok ? "Valid JSON" : "The body must be a JSON object");
      jsonStatus.classList.toggle("bad", !ok);
    } catch (e) {
      text(jsonStatus, e.message);
      jsonStatus.classList.add("bad");
    }
  });

  const formTab = h("button", { type: "button", role: "tab", "aria-selected": "true", id: "tab-form" }, "Form");
  const jsonTab = h("button", { type: "button", role: "tab", "aria-selected": "false", id: "tab-json" }, "Advanced (JSON)");
  const submitButton = h("button", { class: "btn primary", type: "submit", id: "submit-job" }, "Queue job");
  const checkButton = h("button", { class: "btn", type: "button", id: "dry-run-job" }, "Check (dry run)");
  const report = h("div", { id: "dry-run-report", hidden: true });
  const resetButton = h("button", { class: "btn ghost", type: "button" }, "Reset");
  const form = h(
    "form",
    { class: "card", id: "job-form", novalidate: true },
    h("div", { class: "tabs", role: "tablist" }, formTab, jsonTab),
    formError,
    formPane,
    jsonPane,
    report,
    h("div", { class: "form-actions" }, submitButton, checkButton, resetButton, h("span", { class: "muted small" }, "Fields left empty use lm-eval's defaults.")),
  );

  clear(
    root,
    h("div", { class: "page-head" }, h("h1", {}, "New job"), h("span", { class: "sub" }, "Queue an lm-evaluation-harness run. The fields and their help come from the server's request schema.")),
    note,
    form,
  );
  note.hidden = true;
  const loading = h("p", { class: "muted loading" }, "Loading the request schema…");
  primaryBox.append(loading);

  function values() {
    const body = { ...extra };
    for (const field of fields.values()) {
      const value = parseField(field);
      if (value === undefined) delete body[field.name]; else body[field.name] = value;
    }
    return body;
  }

  function fill(body) {
    extra = {};
    for (const field of fields.values()) showValue(field, body[field.name]);
    for (const [key, value] of Object.entries(body)) if (!fields.has(key)) extra[key] = value;
    for (const field of fields.values()) {
      if (body[field.name] !== undefined && field.wrapper.closest("details")) field.wrapper.closest("details").open = true;
    }
  }

  function setMode(next) {
    clearErrors();
    if (next === mode) return;
    if (next === "json") {
      let body;
      try { body = values(); } catch (error) { if (error instanceof FieldError) { fieldError(error.field, [error.message]); return; } throw error; }
      editor.value = JSON.stringify(body, null, 2);
      editor.dispatchEvent(new Event("input"));
    } else {
      let body;
      try { body = JSON.parse(editor.value || "{}"); } catch (e) { showJsonErrors([`Invalid JSON: ${e.message}`]); return; }
      if (!body || typeof body !== "object" || Array.isArray(body)) { showJsonErrors(["The body must be a JSON object."]); return; }
      fill(body);
    }
    mode = next;
    formTab.setAttribute("aria-selected", String(mode === "form"));
    jsonTab.setAttribute("aria-selected", String(mode === "json"));
    formPane.hidden = mode !== "form";
    jsonPane.hidden = mode !== "json";
  }
  formTab.addEventListener("click", () => setMode("form"));
  jsonTab.addEventListener("click", () => setMode("json"));

  function clearErrors() {
    formError.replaceChildren();
    jsonErrors.replaceChildren();
    for (const field of fields.values()) {
      field.wrapper.classList.remove("invalid");
      field.input.removeAttribute("aria-invalid");
      field.error.replaceChildren();
    }
  }

  function fieldError(name, messages) {
    const field = fields.get(name);
    if (!field) return false;
    field.wrapper.classList.add("invalid");
    field.input.setAttribute("aria-invalid", "true");
    clear(field.error, messages.join(" · "));
    const details = field.wrapper.closest("details");
    if (details) details.open = true;
    return true;
  }

  function showJsonErrors(lines) {
    clear(jsonErrors, lines.length === 1 ? lines[0] : h("ul", {}, lines.map((l) => h("li", {}, l))));
  }

  /** Put each error beside its field; anything without a field goes in the box on top. */
  function showErrors(byField, general) {
    const jsonLines = [];
    const loose = [...general];
    for (const [name, messages] of byField) {
      jsonLines.push(`${name}: ${messages.join(" · ")}`);
      if (!fieldError(name, messages)) loose.push(`${name}: ${messages.join(" · ")}`);
    }
    if (mode === "json") {
      showJsonErrors([...general, ...jsonLines]);
    } else if (loose.length) {
      clear(formError, h("strong", {}, "The server refused the job:"), h("ul", {}, loose.map((l) => h("li", {}, l))));
    } else if (byField.size) {
      const names = [...byField.keys()];
      clear(formError, `Check the highlighted ${names.length === 1 ? "field" : "fields"}: ${names.join(", ")}.`);
    }
    const first = form.querySelector(".field.invalid input, .field.invalid textarea");
    if (mode === "form" && first) first.focus();
    else (mode === "json" ? jsonErrors : formError).scrollIntoView({ block: "nearest" });
  }

  function showApiError(error) {
    const body = error.body || {};
    if (error.status === 422 && Array.isArray(body.detail)) {
      const byField = new Map();
      const general = [];
      for (const item of body.detail) {
        const loc = Array.isArray(item.loc) ? item.loc : [];
        const name = loc[0] === "body" ? loc[1] : undefined;
        const msg = String(item.msg ?? "invalid value");
        if (typeof name === "string") {
          const list = byField.get(name) || [];
          if (!list.includes(msg)) list.push(msg);
          byField.set(name, list);
        } else {
          general.push(msg);
        }
      }
      showErrors(byField, general);
    } else if (error.status === 403 && body.field) {
      showErrors(new Map([[body.field, [`Not allowed by the server's policy: ${body.rule || error.message}`]]]), []);
    } else {
      showErrors(new Map(), [error.message]);
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    let body;
    try {
      if (mode === "json") {
        body = JSON.parse(editor.value || "{}");
        if (!body || typeof body !== "object" || Array.isArray(body)) throw new SyntaxError("the body must be a JSON object");
        fill(body); // so the form shows the same errors when switched back
      } else {
        body = values();
      }
    } catch (error) {
      if (error instanceof FieldError) showErrors(new Map([[error.field, [error.message]]]), []);
      else showErrors(new Map(), [`Invalid JSON: ${error.message}`]);
      return;
    }
    submitButton.disabled = true;
    try {
      await dryRun(body); // the report shows inline; the server judges the real submission
      const answer = await api("/job", { method: "POST", body, signal: ctx.signal });
      toast(answer.message || `Job ${answer.job_id} queued.`);
      ctx.navigate(`#/job/${answer.job_id}`);
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError) return;
      showApiError(error);
    } finally {
      submitButton.disabled = false;
    }
  });

  /** POST /job?dry_run=true and show its report; never throws (the real POST reports). */
  async function dryRun(body) {
    try {
      showReport(await api("/job?dry_run=true", { method: "POST", body, signal: ctx.signal }));
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError) return;
      report.hidden = true;
    }
  }

  function showReport(answer) {
    report.hidden = false;
    report.className = answer.ok ? "callout info" : "callout error";
    clear(
      report,
      h("strong", {}, answer.ok ? "Every check passes." : "Some checks fail:"),
      h("ul", { class: "checks" }, answer.checks.map((check) => h(
        "li",
        { dataset: { check: check.name, ok: String(check.ok) } },
        h("span", { class: check.ok ? "ok" : "bad" }, check.ok ? "✓ " : "✗ "),
        h("strong", {}, check.name),
        `: ${check.detail}`,
      ))),
    );
  }

  checkButton.addEventListener("click", async () => {
    clearErrors();
    let body;
    try {
      body = mode === "json" ? JSON.parse(editor.value || "{}") : values();
    } catch (error) {
      if (error instanceof FieldError) showErrors(new Map([[error.field, [error.message]]]), []);
      else showErrors(new Map(), [`Invalid JSON: ${error.message}`]);
      return;
    }
    checkButton.disabled = true;
    try {
      showReport(await api("/job?dry_run=true", { method: "POST", body, signal: ctx.signal }));
    } catch (error) {
      if (error.name === "AbortError" || error instanceof AuthError) return;
      report.hidden = true;
      showApiError(error);
    } finally {
      checkButton.disabled = false;
    }
  });

  resetButton.addEventListener("click", () => {
    clearErrors();
    fill({});
    editor.value = "{}";
    editor.dispatchEvent(new Event("input"));
  });

  (async () => {
    let doc;
    try {
      doc = await openapi();
    } catch (error) {
      if (!(error instanceof AuthError)) clear(primaryBox, h("div", { class: "callout error" }, `Could not load the request schema: ${error.message}`));
      return;
    }
    if (ctx.signal.aborted) return;
    let schema;
    try { schema = jobRequestSchema(doc); } catch (error) { clear(primaryBox, h("div", { class: "callout error" }, error.message)); return; }
    const required = new Set(schema.required || []);
    const names = Object.keys(schema.properties);
    const ordered = [
      ...PRIMARY.filter((n) => names.includes(n)),
      ...names.filter((n) => !PRIMARY.includes(n) && !SERVER.includes(n)).sort(),
      ...SERVER.filter((n) => names.includes(n)),
    ];
    loading.remove();
    for (const name of ordered) {
      const field = buildField(name, schema.properties[name], required.has(name), doc);
      fields.set(name, field);
      const box = PRIMARY.includes(name) || required.has(name) ? primaryBox : SERVER.includes(name) ? serverBox : moreBox;
      box.append(field.wrapper);
    }
    if (fields.has("tasks")) suggestTasks(fields.get("tasks"), ctx.signal);
    if (Object.keys(extra).length) fill({ ...extra }); // JSON typed before the schema arrived
    form.dataset.ready = "true";
    const from = Number.parseInt(params.get("from") || "", 10);
    if (from) await prefillFrom(from);
    else fields.get("model")?.input.focus();
  })();

  async function prefillFrom(jobId) {
    try {
      const job = await api(`/job/${jobId}`, { signal: ctx.signal });
      const request = { ...(job.request || {}) };
      const hidden = request.env_vars ? Object.keys(request.env_vars) : [];
      delete request.env_vars;
      fill(request);
      note.hidden = false;
      clear(
        note,
        `Copied from job #${jobId}. Change what you need and queue it.`,
        hidden.length ? ` Environment variables are not copied because their values are hidden: ${hidden.join(", ")}.` : "",
      );
    } catch (error) {
      reportError(error);
    }
  }

  return {};
}
