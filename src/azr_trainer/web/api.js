// The REST client: JSON calls, uploads with progress, and the two kinds of event streams
// (GET through EventSource, POST through fetch + ReadableStream). A page opened with
// ?token=T sends it as a bearer token, and in the query string where headers cannot go.

import { t, currentLanguage, messageText } from "./i18n.js";

const pageParams = new URLSearchParams(location.search);
export const token = pageParams.get("token") || null;

export class ApiError extends Error {
  /** ``code`` and ``params``: the catalogue message the server answered with (null for an
   * uncoded one), so the page can show it again in another language (messageText). */
  constructor(message, status, detail, code = null, params = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.code = code;
    this.params = params;
  }
}

/** The ApiError for a failed answer's JSON body. */
export function apiError(data, status, statusText) {
  const code = data && typeof data.code === "string" ? data.code : null;
  return new ApiError(errorText(data, status, statusText), status, data && data.detail, code,
    code ? (data.params || {}) : null);
}

/** Add ?token= to a URL used where no header can be sent (EventSource, downloads). */
export function withToken(url) {
  if (!token) return url;
  const u = new URL(url, location.origin);
  u.searchParams.set("token", token);
  return u.pathname + u.search;
}

function authHeaders(extra = {}) {
  // Errors come back in the page's language (the server also sends their code and parameters).
  const h = { "Accept-Language": currentLanguage(), ...extra };
  if (token) h.Authorization = `Bearer ${token}`;
  return h;
}

export function errorText(data, status, statusText) {
  if (data && typeof data.code === "string") {
    const text = messageText(data);
    if (text) return text;
  }
  const d = data && data.detail;
  if (typeof d === "string" && d) return d;
  if (Array.isArray(d) && d.length) {
    return d.map((x) => {
      const where = (x.loc || []).filter((p) => p !== "body" && p !== "query").join(".");
      return where ? `${where}: ${x.msg}` : x.msg;
    }).join("; ");
  }
  if (status === 401 || status === 403) return t("errors.auth");
  if (status >= 500) return t("errors.server", { status });
  return `${status} ${statusText || ""}`.trim();
}

export async function api(path, { method = "GET", json, body, signal } = {}) {
  const headers = authHeaders({ Accept: "application/json" });
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body, signal, cache: "no-store" });
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    window.dispatchEvent(new Event("azr:connection-lost"));
    throw new ApiError(t("errors.network"), 0);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) throw apiError(data, res.status, res.statusText);
  return data;
}

/** multipart upload with progress (fetch cannot report upload progress; XMLHttpRequest can). */
export function upload(path, formData, { onProgress, signal } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    if (token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Accept-Language", currentLanguage());
    xhr.upload.onprogress = (e) => { if (onProgress && e.lengthComputable) onProgress(e.loaded, e.total); };
    xhr.upload.onload = () => { if (onProgress) onProgress(1, 1, true); };
    xhr.onerror = () => reject(new ApiError(t("errors.network"), 0));
    xhr.onabort = () => reject(new DOMException("aborted", "AbortError"));
    xhr.onload = () => {
      let data = null;
      try { data = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch { data = null; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(apiError(data, xhr.status, xhr.statusText));
    };
    if (signal) signal.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(formData);
  });
}

/** Parse "data: ..." blocks out of a text/event-stream body; calls onEvent(parsed JSON). */
export function sseParser(onEvent) {
  let buffer = "";
  return (chunk, flush = false) => {
    buffer += chunk;
    buffer = buffer.replace(/\r\n?/g, "\n");
    let idx;
    const blocks = [];
    while ((idx = buffer.indexOf("\n\n")) >= 0) {
      blocks.push(buffer.slice(0, idx));
      buffer = buffer.slice(idx + 2);
    }
    if (flush && buffer.trim()) { blocks.push(buffer); buffer = ""; }
    for (const block of blocks) {
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (!data) continue;
      let obj;
      try { obj = JSON.parse(data); } catch { continue; }
      onEvent(obj);
    }
  };
}

/** POST a JSON body and read the server-sent events of the answer. Resolves when the stream ends. */
export async function postStream(path, json, { signal, onEvent }) {
  let res;
  try {
    res = await fetch(path, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(json),
      signal,
      cache: "no-store",
    });
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new ApiError(t("errors.network"), 0);
  }
  if (!res.ok) {
    let data = null;
    try { data = await res.json(); } catch { data = null; }
    throw apiError(data, res.status, res.statusText);
  }
  const feed = sseParser(onEvent);
  if (!res.body || !res.body.getReader) {
    feed(await res.text(), true);
    return;
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder("utf-8");
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    feed(decoder.decode(value, { stream: true }));
  }
  feed(decoder.decode(), true);
}

export function runStreamUrl(runId, after = 0) {
  const q = after > 0 ? `?after=${after}` : "";
  return withToken(`/api/runs/${encodeURIComponent(runId)}/stream${q}`);
}

/** Every event a run has recorded so far, page by page. */
export async function allRunEvents(runId, { signal, after = 0 } = {}) {
  const out = [];
  for (let i = 0; i < 1000; i++) {
    const res = await api(`/api/runs/${encodeURIComponent(runId)}/events?after=${after}`, { signal });
    const evs = (res && res.events) || [];
    out.push(...evs);
    const next = res && res.next != null ? res.next : after + evs.length;
    if (!evs.length || next === after) break;
    after = next;
  }
  return out;
}

export const enc = encodeURIComponent;
