// Shared page helpers: element building, toasts, the confirm dialog, and the store of
// models / books / runs that every tab reads and refreshes.

import { api } from "./api.js";
import { t, setText, hasText, fmtCompact } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

/** h("div", {class: "x", dataset: {testid: "y"}, onclick}, child, "text", ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "text") el.textContent = v;
    else if (k === "i18n") { const [key, params] = Array.isArray(v) ? v : [v]; setText(el, key, params); }
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ---- toasts -----------------------------------------------------------------------------------

export function toast(message, kind = "info", { timeout } = {}) {
  const box = $("toasts");
  const el = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status", dataset: { testid: `toast-${kind}` } },
    h("span", { class: "toast-text", text: message }),
    h("button", { type: "button", class: "toast-close", "aria-label": t("common.close"), text: "×", onclick: () => el.remove() }));
  box.append(el);
  const ms = timeout ?? (kind === "error" ? 9000 : 4500);
  setTimeout(() => { el.classList.add("leaving"); setTimeout(() => el.remove(), 300); }, ms);
  return el;
}

/** Show an error under a form: a text, or an error with the server's ``code`` and ``params``,
 * which is then shown again in the new language when the language changes. */
export function showError(el, error) {
  if (!el) return;
  if (error && typeof error === "object" && error.code && hasText(`msg.${error.code}`)) {
    setText(el, `msg.${error.code}`, error.params || {});
    el.hidden = false;
    return;
  }
  const text = error && typeof error === "object" ? error.message : error;
  delete el.dataset.i18n;
  delete el.dataset.i18nArgs;
  el.textContent = text || "";
  el.hidden = !text;
}

// ---- confirm dialog ---------------------------------------------------------------------------

export function confirmDialog({ title, text, ok }) {
  const dlg = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok || t("common.delete");
  return new Promise((resolve) => {
    const done = () => { dlg.removeEventListener("close", done); resolve(dlg.returnValue === "ok"); };
    dlg.returnValue = "";
    dlg.addEventListener("close", done);
    dlg.showModal();
    dlg.querySelector("[value=cancel]").focus();
  });
}

// ---- form helpers -----------------------------------------------------------------------------

export function fillSelect(select, options, { keep = true, placeholder } = {}) {
  const prev = keep ? select.value : null;
  select.replaceChildren();
  if (placeholder) select.append(h("option", { value: "", text: placeholder }));
  for (const o of options) {
    const opt = h("option", { value: o.value, text: o.label });
    if (o.disabled) opt.disabled = true;
    select.append(opt);
  }
  if (prev != null && options.some((o) => String(o.value) === prev)) select.value = prev;
  showChoice(select);
  return select.value;
}

/** A select's chosen text as its tooltip: a long choice cut off by a narrow field stays readable. */
export function showChoice(select) {
  const opt = select.selectedOptions && select.selectedOptions[0];
  select.title = opt ? opt.textContent : "";
}

export function setBusy(btn, busy) {
  btn.disabled = !!busy;
  btn.classList.toggle("busy", !!busy);
  btn.setAttribute("aria-busy", busy ? "true" : "false");
}

/** One checkbox row per book (name and size), ticked when `chosen` has it; `onToggle(name, checked)`
 * after the person changes one. The Create page's auto plan and the Training form both use it. */
export function bookChecks(books, chosen, testid, onToggle) {
  return books.map((b) => h("label", { class: "check-row", dataset: { testid, name: b.name } },
    h("input", {
      type: "checkbox", value: b.name, checked: chosen.has(b.name),
      onchange: (e) => onToggle(b.name, e.target.checked),
    }),
    h("span", { class: "check-label", text: b.name, title: b.name }),
    h("span", { class: "muted", text: t("books.chars_n", { n: fmtCompact(b.chars) }) })));
}

export function intValue(input) {
  const raw = String(input.value).trim();
  if (raw === "") return null;
  const n = Number(raw);
  return Number.isFinite(n) ? n : NaN;
}

export const STATES = ["queued", "running", "paused", "completed", "failed", "cancelled", "interrupted"];
export const LIVE_STATES = new Set(["queued", "running"]);

/** The sentence for a live run asked to pause or cancel: it saves and evaluates before it ends
 * (seconds, more on a busy machine), and "Running" would read as if the click did nothing. */
export function stoppingKey(run) {
  const stop = run && LIVE_STATES.has(run.state) && run.stop_requested;
  return stop ? `monitor.stopping.${stop === "pause" ? "pause" : "cancel"}` : null;
}

/** A run's state in words: its state, or that it is stopping. */
export function stateText(run) {
  return t(stoppingKey(run) || `state.${STATES.includes(run.state) ? run.state : "other"}`);
}

/** `run`: the run record, to say that a live run is stopping (data-state stays its state). */
export function stateBadge(el, state, run = null) {
  const stopping = stoppingKey(run);
  el.className = `badge state-${stopping ? "stopping" : state || "none"}`;
  el.dataset.state = state || "";
  el.dataset.stopping = stopping ? run.stop_requested : "";
  setText(el, stopping || (state ? `state.${STATES.includes(state) ? state : "other"}` : "common.none"));
  if (state && !stopping && !STATES.includes(state)) el.textContent = state;
}

export function downloadUrl(name, checkpoint) {
  const q = new URLSearchParams({ format: "pt" });
  if (checkpoint != null && checkpoint !== "") q.set("checkpoint", checkpoint);
  return `/api/models/${encodeURIComponent(name)}/download?${q}`;
}

// ---- the store ----------------------------------------------------------------------------------

const listeners = { models: new Set(), books: new Set(), runs: new Set() };
export const store = { models: [], books: [], runs: [], loaded: { models: false, books: false, runs: false } };

export function subscribe(kind, fn) { listeners[kind].add(fn); }

function emit(kind) {
  for (const fn of listeners[kind]) {
    try { fn(store[kind]); } catch (e) { console.error(e); }
  }
}

const inflight = {};
async function refresh(kind, path) {
  if (inflight[kind]) return inflight[kind];
  inflight[kind] = (async () => {
    try {
      const data = await api(path);
      store[kind] = Array.isArray(data) ? data : [];
      store.loaded[kind] = true;
      emit(kind);
    } finally {
      inflight[kind] = null;
    }
    return store[kind];
  })();
  return inflight[kind];
}

export const refreshModels = () => refresh("models", "/api/models");
export const refreshBooks = () => refresh("books", "/api/books");
export const refreshRuns = () => refresh("runs", "/api/runs");

export function upsertRun(run) {
  if (!run || !run.id) return;
  const i = store.runs.findIndex((r) => r.id === run.id);
  if (i >= 0) store.runs[i] = { ...store.runs[i], ...run };
  else store.runs.unshift(run);
  emit("runs");
}

/** Runs newest first, whatever order the server used. */
export function sortedRuns(runs = store.runs) {
  const when = (r) => Date.parse(r.created_at || r.started_at || 0) || 0;
  return [...runs].sort((a, b) => when(b) - when(a) || String(b.id).localeCompare(String(a.id)));
}

/** The number of steps a run counts to, or null: a run with only a time budget has none of its
 * own (its trainer counts to a billion). */
export function stepTarget(run) {
  const params = (run && run.params) || {};
  if (params.minutes > 0 && !params.max_iterations) return null;
  return (run && run.max_iterations) || params.max_iterations || null;
}

export function runLabel(run) {
  const shortId = String(run.id).length > 10 ? String(run.id).slice(-8) : String(run.id);
  if (run.kind === "selfplay") return `${run.model} · ${t("kind.selfplay")} · #${shortId}`;
  if (run.kind === "reason") return `${run.model} · ${t("kind.reason")} · #${shortId}`;
  if (run.kind === "corpus") return `${run.model} · ${t("kind.corpus")} · #${shortId}`;
  if (run.kind === "export") return `${run.model} · ${t("kind.export")} · #${shortId}`;
  return `${run.model} · #${shortId}`;
}

/** Visible text with newlines shown as ⏎ (for prompts). */
export function showWhitespace(s) {
  return String(s ?? "").replace(/\n/g, "⏎").replace(/\t/g, "⇥");
}
