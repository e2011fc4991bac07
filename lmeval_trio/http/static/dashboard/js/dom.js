// DOM building and formatting helpers. Everything is built with createElement and
// textContent, never innerHTML, so job data (task names, log lines, samples) cannot inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

/** h("div", {class: "x", onClick: fn}, child...) -> element; "svg:rect" makes SVG elements. */
export function h(tag, props, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "style") {
      Object.assign(el.style, value); // CSSOM: allowed by the page's content security policy
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key === "className" ? "class" : key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function text(el, value) {
  const next = value === null || value === undefined ? "" : String(value);
  if (el.textContent !== next) el.textContent = next;
}

// ---- formatting -------------------------------------------------------------------------

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(hrs / 24)}d ${hrs % 24}h`;
}

export function parseTime(iso) {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

export function fmtDate(iso) {
  const t = parseTime(iso);
  if (t === null) return "—";
  return new Date(t).toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function fmtRelative(iso) {
  const t = parseTime(iso);
  if (t === null) return "—";
  const s = (Date.now() - t) / 1000;
  if (s < 5) return "just now";
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(t).toLocaleDateString(undefined, { month: "short", day: "numeric", year: "numeric" });
}

/** Seconds a job ran (or has been running): finished (or now) minus started. */
export function jobDuration(job) {
  const start = parseTime(job.started_at);
  if (start === null) return null;
  const end = parseTime(job.finished_at) ?? (job.status === "Running" ? Date.now() : null);
  return end === null ? null : (end - start) / 1000;
}

export function fmtRate(rate) {
  if (rate === null || rate === undefined || !Number.isFinite(rate)) return null;
  if (rate >= 1000) return `${Math.round(rate).toLocaleString()} it/s`;
  if (rate >= 10) return `${rate.toFixed(1)} it/s`;
  if (rate >= 1) return `${rate.toFixed(2)} it/s`;
  return `${(1 / rate).toFixed(1)} s/it`;
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i === 0 ? v : v.toFixed(v >= 10 ? 0 : 1)} ${units[i]}`;
}

export function fmtMetric(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value) && Math.abs(value) >= 1) return value.toLocaleString();
  return Math.abs(value) >= 1000 ? value.toFixed(1) : value.toFixed(4);
}

export function plural(n, word) {
  return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
}

/** "tiny_mc,tiny_gen" or ["a","b"] -> ["tiny_mc","tiny_gen"] */
export function taskList(tasks) {
  if (Array.isArray(tasks)) return tasks.map(String);
  if (typeof tasks === "string") return tasks.split(",").map((t) => t.trim()).filter(Boolean);
  return [];
}

export function modelArgsText(args) {
  if (args === null || args === undefined) return "";
  return typeof args === "string" ? args : JSON.stringify(args);
}
