// "Create model": the original fields with presets, help, validation as you type, and live
// parameter / memory / time estimates from POST /api/models/estimate.

import { api } from "./api.js";
import { t, fmtInt, fmtCompact, fmtBytes, fmtApproxDuration, fmtPercent, onLanguageChange, setText, messageText } from "./i18n.js";
import { $, h, toast, showError, setBusy, intValue, store, subscribe, refreshModels } from "./ui.js";
import { setting, applySetting, settingProblem } from "./settings.js";
import { initAutoPlan, schedule as schedulePlan } from "./autoplan.js";

export const PARAMS = ["vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_seq_len"];

export const PRESETS = {
  tiny: { vocab_size: 2000, d_model: 128, num_layers: 2, num_heads: 4, d_ff: 512, max_seq_len: 128 },
  small: { vocab_size: 8000, d_model: 256, num_layers: 6, num_heads: 8, d_ff: 1024, max_seq_len: 256 },
  medium: { vocab_size: 10000, d_model: 384, num_layers: 8, num_heads: 6, d_ff: 1536, max_seq_len: 256 },
  large: { vocab_size: 15000, d_model: 512, num_layers: 12, num_heads: 8, d_ff: 2048, max_seq_len: 512 },
};

/** Rough seconds for `iters` training steps of `tokensPerIter` tokens at `speed`, this
 * computer's measured speed for a model (the `speed` of POST /api/models/estimate). */
export function roughSeconds(speed, tokensPerIter, iters) {
  return iters * (tokensPerIter * speed.seconds_per_token + speed.step_overhead_s);
}
const NAME_RE = /^[\p{L}\p{N}_][\p{L}\p{N}_.\- ]{0,63}$/u;
const RESERVED = new Set(["CON", "PRN", "AUX", "NUL", ...Array.from({ length: 10 }, (_, i) => `COM${i}`), ...Array.from({ length: 10 }, (_, i) => `LPT${i}`)]);

/** Client-side check of a name as the person types (the server's rules, and its sentences from
 * the shared catalogue). */
export function nameProblem(name) {
  const n = String(name || "").trim();
  if (!n) return t("msg.name.empty");
  if (n.includes("..") || n.includes("/") || n.includes("\\") || !NAME_RE.test(n) || n.endsWith(".")) return t("msg.name.invalid", { name: n });
  if (RESERVED.has(n.toUpperCase().split(".")[0])) return t("msg.name.reserved", { name: n });
  return null;
}

function divisorNear(n, target) {
  let best = 1;
  for (let d = 1; d <= n; d++) {
    if (n % d === 0 && (n / d) % 2 === 0 && Math.abs(d - target) < Math.abs(best - target)) best = d;
  }
  return best;
}

/** {errors: {field: msg}, warnings: {field: msg}} for the shape: at once, per field, as the person
 * types; the rules ModelConfig.validate also checks speak its sentences (msg.model.*). */
export function validateShape(v) {
  const errors = {};
  const warnings = {};
  // Bounds and the recommended ranges: settings.MODEL on the server (GET /api/settings).
  for (const p of PARAMS) {
    const problem = settingProblem(setting("model", p), v[p], $(`m-${p}`));  // named by its label
    if (v[p] == null) errors[p] = t("validate.required");
    else if (problem) errors[p] = problem;
  }
  if (!errors.d_model && !errors.num_heads) {
    if (v.d_model % v.num_heads) {
      errors.num_heads = t("msg.model.heads_divide", { d_model: v.d_model, num_heads: v.num_heads, suggest: divisorNear(v.d_model, v.num_heads) });
    } else if ((v.d_model / v.num_heads) % 2) {
      errors.num_heads = t("msg.model.head_dim_odd", { head_dim: v.d_model / v.num_heads });
    }
  }
  for (const p of PARAMS) {
    const typical = setting("model", p).typical;
    if (!typical || errors[p] || v[p] == null) continue;
    if (v[p] < typical[0] || v[p] > typical[1]) warnings[p] = t("validate.outside", { min: typical[0], max: typical[1] });
  }
  if (!errors.d_ff && !errors.d_model && v.d_ff !== v.d_model * 4) {
    warnings.d_ff = t("validate.d_ff_usual", { value: v.d_model * 4 });
  }
  if (v.tokenizer === "char" && !errors.vocab_size && v.vocab_size > 2000) {
    warnings.vocab_size = t("validate.char_vocab_big");
  }
  return { errors, warnings };
}

function readForm() {
  const v = { name: $("m-name").value.trim(), tokenizer: $("m-tokenizer").value };
  for (const p of PARAMS) v[p] = intValue($(`m-${p}`));
  return v;
}

function setForm(values) {
  for (const p of PARAMS) if (values[p] != null) $(`m-${p}`).value = values[p];
}

function setMsg(id, text, kind) {
  const el = $(id);
  el.textContent = text || "";
  el.className = `msg ${kind || ""}`;
  const input = el.parentElement.querySelector("input,select");
  if (input) input.setAttribute("aria-invalid", kind === "error" ? "true" : "false");
}

let touched = new Set();
// The shape a plan put in the fields (the auto plan, or a plan's fix): it was sized for these
// books and this computer, so the general advice for a shape picked by hand (recommended
// ranges, d_ff = 4 × d_model) is not shown against it until a field is changed.
let planShape = null;
let estimateTimer = 0;
let estimateAbort = null;
let lastEstimate = null;

function validateAll({ showAll = false } = {}) {
  const v = readForm();
  const { errors, warnings } = validateShape(v);
  const planned = planShape && PARAMS.every((p) => planShape[p] === v[p]);
  let nameErr = nameProblem(v.name);
  if (!nameErr && store.models.some((m) => m.name === v.name)) nameErr = t("msg.model.exists", { name: v.name });
  for (const p of PARAMS) {
    const show = showAll || touched.has(p) || v[p] != null;
    if (errors[p] && show) setMsg(`m-${p}-msg`, errors[p], "error");
    else if (warnings[p] && !planned) setMsg(`m-${p}-msg`, warnings[p], "warning");
    else setMsg(`m-${p}-msg`, "", "");
  }
  if (nameErr && (showAll || touched.has("name"))) setMsg("m-name-msg", nameErr, "error");
  else setMsg("m-name-msg", "", "");
  highlightPreset(v);
  return { v, ok: !nameErr && !Object.keys(errors).length, shapeOk: !Object.keys(errors).length };
}

function highlightPreset(v) {
  for (const btn of document.querySelectorAll("#create-form .preset")) {
    const p = PRESETS[btn.dataset.preset];
    const on = PARAMS.every((k) => p[k] === v[k]);
    btn.classList.toggle("active", on);
    btn.setAttribute("aria-pressed", on ? "true" : "false");
  }
}

function scheduleEstimate() {
  clearTimeout(estimateTimer);
  estimateTimer = setTimeout(runEstimate, 180);
}

async function runEstimate() {
  const { v, shapeOk } = validateAll();
  if (estimateAbort) estimateAbort.abort();
  if (!shapeOk) {
    lastEstimate = null;
    renderEstimate(null);
    setText($("est-status"), "create.estimate.fix_errors");
    return;
  }
  estimateAbort = new AbortController();
  const body = { vocab_size: v.vocab_size, d_model: v.d_model, num_layers: v.num_layers, num_heads: v.num_heads, d_ff: v.d_ff, max_seq_len: v.max_seq_len, tokenizer: v.tokenizer };
  if (v.name && !nameProblem(v.name)) body.name = v.name;
  try {
    const est = await api("/api/models/estimate", { method: "POST", json: body, signal: estimateAbort.signal });
    lastEstimate = { ...est, shape: v };
    renderEstimate(lastEstimate);
  } catch (e) {
    if (e.name === "AbortError") return;
    lastEstimate = null;
    renderEstimate(null);
    $("est-status").textContent = messageText(e);
  }
}

function renderEstimate(est) {
  const status = $("est-status");
  if (!est) {
    for (const id of ["est-params", "est-memory", "est-weights", "est-flops", "est-time-1k", "est-time-10k"]) $(id).textContent = t("common.none");
    renderSpeedNote(null);
    $("est-breakdown").replaceChildren();
    return;
  }
  const v = est.shape;
  $("est-params").textContent = fmtInt(est.parameters);
  $("est-params").title = fmtCompact(est.parameters);
  $("est-memory").textContent = fmtBytes(est.memory_bytes);
  $("est-weights").textContent = fmtBytes(est.parameters * 4);
  $("est-flops").textContent = t("create.estimate.flops_value", { value: fmtCompact(est.flops_per_token) });
  const tokensPerIter = 16 * v.max_seq_len;
  const secs = (iters) => (est.speed ? roughSeconds(est.speed, tokensPerIter, iters) : null);
  $("est-time-1k").textContent = fmtApproxDuration(secs(1000));
  $("est-time-10k").textContent = fmtApproxDuration(secs(10000));
  renderSpeedNote(est.speed);
  // the server's problems by code, so a language switch shows them in the new language
  const errs = est.problems ? est.problems.map(messageText) : est.errors || [];
  status.textContent = errs.join(" ");
  status.className = errs.length ? "note error" : "note";
  // where the parameters sit (approximate: embeddings, attention, feed-forward)
  const emb = v.vocab_size * v.d_model;
  const attn = v.num_layers * 4 * v.d_model * v.d_model;
  const ff = v.num_layers * 3 * v.d_model * v.d_ff;
  const total = emb + attn + ff;
  const parts = [["emb", emb], ["attn", attn], ["ff", ff]];
  const bar = h("div", { class: "stack-bar" }, parts.map(([k, n]) => h("span", { class: `seg seg-${k}`, style: `width:${(100 * n) / total}%` })));
  const legend = h("div", { class: "stack-legend" }, parts.map(([k, n]) =>
    h("span", { class: "legend-item" }, h("span", { class: `legend-swatch seg-${k}` }), `${t(`create.estimate.part_${k}`)} ${fmtPercent(n / total)}`)));
  $("est-breakdown").replaceChildren(h("div", { class: "note", text: t("create.estimate.breakdown") }), bar, legend);
}

let speedShown = null; // the last measured speed, kept while a wrong shape has none

/** The times' note names this computer's measured speed once an estimate brought it. */
function renderSpeedNote(speed) {
  if (speed) speedShown = speed;
  const note = $("est-note");
  if (speedShown) setText(note, "create.estimate.note", { gflops: fmtInt(speedShown.gflops), threads: fmtInt(speedShown.threads) });
  else setText(note, "create.estimate.note_pending");
}

async function presetParams() {
  // Show each preset's size on its button.
  await Promise.all(Object.entries(PRESETS).map(async ([key, shape]) => {
    const btn = document.querySelector(`#create-form .preset[data-preset=${key}]`);
    try {
      const est = await api("/api/models/estimate", { method: "POST", json: { ...shape, tokenizer: "bpe" } });
      btn.dataset.params = est.parameters;
      renderPresetSize(btn);
    } catch { /* the estimate endpoint may be busy; the preset still works */ }
  }));
}

function renderPresetSize(btn) {
  let tag = btn.querySelector(".preset-size");
  if (!btn.dataset.params) return;
  if (!tag) { tag = h("em", { class: "preset-size" }); btn.append(tag); }
  tag.textContent = t("create.preset.params", { n: fmtCompact(Number(btn.dataset.params)) });
}

async function submit(e) {
  e.preventDefault();
  for (const p of [...PARAMS, "name"]) touched.add(p);
  const { v, ok } = validateAll({ showAll: true });
  showError($("create-error"), "");
  if (!ok) {
    const first = $("create-form").querySelector("[aria-invalid=true]");
    if (first) first.focus();
    showError($("create-error"), t("create.fix_first"));
    return;
  }
  const btn = $("create-submit");
  setBusy(btn, true);
  try {
    const body = { name: v.name, tokenizer: v.tokenizer };
    for (const p of PARAMS) body[p] = v[p];
    const model = await api("/api/models", { method: "POST", json: body });
    toast(t("create.created", { name: model.name || v.name }), "success");
    await refreshModels().catch(() => {});
    renderDone(model.name || v.name);
    $("m-name").value = "";
    touched = new Set();
    validateAll();
  } catch (err) {
    showError($("create-error"), err);
  } finally {
    setBusy(btn, false);
  }
}

function renderDone(name) {
  let box = $("create-done");
  if (!box) {
    box = h("div", { id: "create-done", class: "next-step", role: "status", dataset: { testid: "create-done" } });
    $("create-form").append(box);
  }
  // with books already uploaded, training is the next step; without, uploading one is
  const train = h("a", { href: "#training", class: `btn small${store.books.length ? "" : " ghost"}`, i18n: "create.next_train" });
  box.replaceChildren(
    h("span", { i18n: ["create.done", { name }] }),
    ...(store.books.length ? [train] : [h("a", { href: "#books", class: "btn small", i18n: "create.next_books" }), train]),
  );
  box.hidden = false;
}

/** Bounds, defaults and the recommended ranges in the help, from the server's settings. */
function applySettings() {
  const defaults = {};
  for (const p of PARAMS) {
    const s = setting("model", p);
    applySetting($(`m-${p}`), s);
    defaults[p] = s.default;
    const help = $(`m-${p}-help`);
    if (help && s.typical) setText(help, help.dataset.i18n, { min: s.typical[0], max: s.typical[1] });
  }
  applySetting($("m-tokenizer"), setting("model", "tokenizer"));
  return defaults;
}

export function initCreate() {
  applySettings();
  for (const btn of document.querySelectorAll("#create-form .preset")) {
    btn.addEventListener("click", () => {
      setForm(PRESETS[btn.dataset.preset]);
      $("m-tokenizer").value = "bpe";
      scheduleEstimate();
      schedulePlan();  // the plan's warnings about these fields
    });
  }
  const form = $("create-form");
  form.addEventListener("input", (e) => {
    if (e.target.name) touched.add(e.target.name);
    const done = $("create-done");
    if (done) done.hidden = true;
    showError($("create-error"), "");
    validateAll();
    if (e.target.name !== "name") scheduleEstimate();
    if (PARAMS.includes(e.target.name) || e.target.name === "tokenizer") schedulePlan(); // its warnings
  });
  form.addEventListener("change", () => scheduleEstimate());
  form.addEventListener("submit", submit);
  subscribe("models", () => validateAll());
  onLanguageChange(() => {
    validateAll();
    renderEstimate(lastEstimate);
    if (!lastEstimate) scheduleEstimate();
    document.querySelectorAll("#create-form .preset").forEach(renderPresetSize);
  });
  scheduleEstimate();
  presetParams();
  initAutoPlan({
    shape: () => {
      const { v, shapeOk } = validateAll();
      if (!shapeOk) return null;
      const body = { tokenizer: v.tokenizer };
      for (const p of PARAMS) body[p] = v[p];
      return body;
    },
    fill: (model) => {
      setForm(model);
      if (model.tokenizer) $("m-tokenizer").value = model.tokenizer;
      planShape = Object.fromEntries(PARAMS.map((p) => [p, intValue($(`m-${p}`))]));
      validateAll();
      scheduleEstimate();
    },
    name: () => {
      touched.add("name");
      const { v } = validateAll();
      if ($("m-name-msg").textContent) { $("m-name").focus(); return null; }
      return v.name;
    },
    done: (name) => {
      renderDone(name);
      $("m-name").value = "";
      touched = new Set();
      validateAll();
    },
  });
}

export function showCreate() {
  validateAll();
}
