// The JSON API client: the API key, errors people can read, and Server-Sent Events over fetch().
//
// EventSource cannot send an Authorization header, so event streams are read with fetch() and
// a stream reader instead; that also lets us send Last-Event-ID ourselves when reconnecting.

const KEY_STORAGE = "lmeval-trio.api-key";

const keyListeners = new Set();
let authHandler = () => {};

export const auth = {
  get key() {
    try { return sessionStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
  },
  set(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
    } catch { /* storage disabled: the key lives for this page only */ }
    for (const listener of keyListeners) listener(key);
  },
  onChange(listener) { keyListeners.add(listener); return () => keyListeners.delete(listener); },
  /** Called with an AuthError whenever the server wants a (different) key. */
  setHandler(handler) { authHandler = handler; },
};

export class ApiError extends Error {
  constructor(status, body, message) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** 401, or a 403 that is about the key (policy refusals name a rule). */
export class AuthError extends ApiError {}

function headersFor(extra) {
  const headers = new Headers(extra || {});
  const key = auth.key;
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return headers;
}

/** A sentence for an error body, whatever its shape (never a stack trace or raw HTML). */
export function describeError(status, body) {
  const detail = body && typeof body === "object" ? body.detail : undefined;
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail
      .map((d) => {
        const loc = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
        return loc ? `${loc}: ${d.msg}` : String(d.msg ?? "invalid");
      })
      .join("; ");
  }
  const generic = {
    0: "Cannot reach the server. Is it running?",
    401: "This server needs an API key.",
    403: "Not allowed.",
    404: "Not found.",
    409: "Not possible in the job's current state.",
    413: "The request is too large.",
    429: "The queue is full; try again shortly.",
    500: "The server hit an internal error (details are in its log).",
    502: "The server is unreachable (bad gateway).",
    503: "The server is not accepting work right now.",
  };
  return generic[status] || `The server answered HTTP ${status}.`;
}

async function errorFrom(response) {
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  const message = describeError(response.status, body);
  const isAuth = response.status === 401
    || (response.status === 403 && !(body && typeof body === "object" && "rule" in body));
  if (isAuth) {
    const error = new AuthError(response.status, body, message);
    authHandler(error);
    return error;
  }
  return new ApiError(response.status, body, message);
}

/** fetch() with the key; resolves to the raw Response when ok, else throws ApiError. */
export async function request(path, { method = "GET", body, signal, headers } = {}) {
  const extra = { Accept: "application/json", ...(headers || {}) };
  if (body !== undefined) extra["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headersFor(extra),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new ApiError(0, null, describeError(0, null));
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** A JSON API call. */
export async function api(path, options) {
  const response = await request(path, options);
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : null;
}

let schemaPromise = null;
/** /openapi.json, fetched once (it only changes when the server's lm-eval does). */
export function openapi() {
  if (!schemaPromise) {
    schemaPromise = api("/openapi.json").catch((error) => { schemaPromise = null; throw error; });
  }
  return schemaPromise;
}

// ---- Server-Sent Events ---------------------------------------------------------------------

/** Parse an event stream body; yields {event, data, id} (data JSON-decoded when it parses). */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "message";
  let data = [];
  let id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length) {
            const raw = data.join("\n");
            let parsed = raw;
            try { parsed = JSON.parse(raw); } catch { /* keep text */ }
            yield { event, data: parsed, id };
          }
          event = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * Follow an event stream until it sends `end` or `signal` aborts, reconnecting with
 * Last-Event-ID after network errors. onState gets "live" | "reconnecting" | "closed".
 */
export async function follow(path, { onEvent, onState = () => {}, signal, lastEventId = null }) {
  let lastId = lastEventId;
  let delay = 500;
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await request(path, { signal, headers });
      onState("live");
      delay = 500;
      for await (const message of readEvents(response)) {
        if (message.id) lastId = message.id;
        onEvent(message);
        if (message.event === "end") { onState("closed"); return; }
      }
    } catch (error) {
      if (signal.aborted || (error && error.name === "AbortError")) return;
      if (error instanceof AuthError) { onState("closed"); return; } // the key dialog takes over
      if (error instanceof ApiError && error.status === 404) {
        onEvent({ event: "end", data: { reason: "deleted" }, id: null });
        onState("closed");
        return;
      }
    }
    if (signal.aborted) return;
    onState("reconnecting");
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, delay);
      signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
    delay = Math.min(delay * 2, 10_000);
  }
}
