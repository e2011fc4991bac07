// The Tasks page: browse and search the server's task catalog (GET /tasks, GET /tasks/{name}).

import { AuthError, api } from "./api.js";
import { clear, h } from "./dom.js";
import { reportError } from "./ui.js";

const PAGE = 50;

export function mount(root, { params }, ctx) {
  const query = h("input", { type: "search", id: "task-query", placeholder: "Search names, descriptions, tags", autocomplete: "off", spellcheck: "false", value: params.get("q") || "" });
  const kind = h("select", { id: "task-kind", "aria-label": "Kind" },
    h("option", { value: "" }, "All kinds"), h("option", { value: "task" }, "Tasks"),
    h("option", { value: "group" }, "Groups"), h("option", { value: "tag" }, "Tags"));
  const count = h("span", { class: "muted small", id: "task-count" });
  const body = h("tbody", { id: "task-rows" });
  const prev = h("button", { class: "btn small", type: "button" }, "Previous");
  const next = h("button", { class: "btn small", type: "button" }, "Next");
  const detail = h("div", { id: "task-detail" });
  clear(
    root,
    h("div", { class: "page-head" }, h("h1", {}, "Tasks"), h("span", { class: "sub" }, "Every task, group and tag the server's lm-eval knows.")),
    h("div", { class: "card" },
      h("div", { class: "toolbar" }, query, kind, count),
      h("table", { class: "table" },
        h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Kind"), h("th", {}, "Output type"), h("th", {}, "Description"))),
        body),
      h("div", { class: "form-actions" }, prev, next)),
    detail,
  );
  let offset = 0;
  let timer = null;

  async function load() {
    const search = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
    if (query.value) search.set("q", query.value);
    if (kind.value) search.set("kind", kind.value);
    try {
      const page = await api(`/tasks?${search}`, { signal: ctx.signal });
      clear(body, ...page.tasks.map(row));
      const last = Math.min(page.offset + page.tasks.length, page.total);
      clear(count, page.total ? `${page.offset + 1}–${last} of ${page.total}` : "No match");
      prev.disabled = offset === 0;
      next.disabled = last >= page.total;
    } catch (error) {
      if (error.name !== "AbortError" && !(error instanceof AuthError)) reportError(error);
    }
  }

  function row(entry) {
    const link = h("a", { href: "#", dataset: { task: entry.name } }, entry.name);
    link.addEventListener("click", (event) => { event.preventDefault(); show(entry.name); });
    return h("tr", {}, h("td", {}, link), h("td", {}, entry.kind), h("td", {}, entry.output_type || "—"), h("td", { class: "muted" }, entry.description || ""));
  }

  async function show(name) {
    try {
      const entry = await api(`/tasks/${encodeURIComponent(name)}`, { signal: ctx.signal });
      clear(detail, h("div", { class: "card", id: "task-config" },
        h("h2", {}, entry.name),
        h("p", { class: "muted" }, `${entry.kind}${entry.output_type ? ` · ${entry.output_type}` : ""}${entry.yaml_path ? ` · ${entry.yaml_path}` : ""}`),
        entry.subtasks.length ? h("p", {}, `Members: ${entry.subtasks.join(", ")}`) : null,
        entry.config ? h("pre", { class: "json" }, JSON.stringify(entry.config, null, 2)) : null));
    } catch (error) {
      if (error.name !== "AbortError" && !(error instanceof AuthError)) reportError(error);
    }
  }

  query.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { offset = 0; load(); }, 200); });
  kind.addEventListener("change", () => { offset = 0; load(); });
  prev.addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
  next.addEventListener("click", () => { offset += PAGE; load(); });
  load();
  return { unmount() { clearTimeout(timer); } };
}
