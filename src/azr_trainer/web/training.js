// "Training": choose a model and books (or self-play: a trained model against a reward; or AZR
// reasoning: a trained model proposes and solves programs a sandbox checks), see what the run
// will cost, and start it. The run it starts is watched by the monitor below the forms
// (runmonitor.js).

import { api, enc } from "./api.js";
import { t, fmtInt, fmtNum, fmtFixed, fmtCompact, fmtApproxDuration, onLanguageChange, setText, messageText } from "./i18n.js";
import { runMessage } from "./runstate.js";
import { roughSeconds } from "./create.js";
import { setting, applySetting, settingProblem } from "./settings.js";
import { initMonitor, showMonitor, selectRun } from "./runmonitor.js";
import { checkRun } from "./trainwarn.js";
import {
  $, h, toast, showError, fillSelect, setBusy, intValue, store, subscribe, refreshModels, refreshBooks,
  upsertRun, sortedRuns, bookChecks,
} from "./ui.js";

const TRAIN_PREFS = "azr.trainForm";

// ---- the form ----------------------------------------------------------------------------------

const selectedBooks = new Set();
let booksTouched = false; // until the user ticks a box, the choice follows the model (or the only book)
const speedCache = new Map();
let mode = "train"; // or "selfplay" or "reason": which run the form starts
const MODES = ["train", "selfplay", "reason"];
// Which settings each form shows; their defaults and bounds come from the server (settings.js).
// Training: the time first (the studio starts from ten minutes), the steps optional.
const TRAIN_FIELDS = ["minutes", "max_iterations", "batch_size", "learning_rate", "save_every", "eval_every"];
// Under "Advanced": empty unless typed in, so the model's plan (or the default) applies.
const ADVANCED_FIELDS = ["seq_len", "warmup_iters", "min_lr_ratio", "beta2", "weight_decay", "dropout", "patience"];
const SELFPLAY_FIELDS = ["reward", "max_iterations", "group_size", "temperature", "kl_weight", "lm_weight", "minutes"];
const REASON_FIELDS = ["mode", "max_iterations", "batch_size", "n_samples", "temperature", "learning_rate", "minutes"];
const MODE_PREFIX = { train: "train", selfplay: "train.sp", reason: "train.rs" };
// Reasoning prompts hold a program plus room for the answer: 200 + 64 tokens in the compact format
// of a char model, 512 + 64 in the paper's format for any other (reasoning.default_lengths).
const reasonMinSeq = (m) => ((m.config || {}).tokenizer === "char" ? 264 : 576);

function prefs() {
  try { return JSON.parse(localStorage.getItem(TRAIN_PREFS) || "{}"); } catch { return {}; }
}
function savePrefs() {
  const p = { model: $("t-model").value, mode };
  for (const k of TRAIN_FIELDS) p[k] = $(`t-${k}`).value;
  for (const k of SELFPLAY_FIELDS) p[`sp_${k}`] = $(`sp-${k}`).value;
  for (const k of REASON_FIELDS) p[`rs_${k}`] = $(`rs-${k}`).value;
  try { localStorage.setItem(TRAIN_PREFS, JSON.stringify(p)); } catch { /* ignore */ }
}

function setMode(value) {
  mode = MODES.includes(value) ? value : "train";
  for (const radio of document.querySelectorAll("input[name=t-mode]")) radio.checked = radio.value === mode;
  for (const el of $("train-form").querySelectorAll("[data-for-mode]")) el.hidden = el.dataset.forMode !== mode;
  setText($("train-start"), `${MODE_PREFIX[mode]}.start`);
  showError($("train-error"), "");
  renderModelInfo();  // the plan's settings are training's only
  renderEstimate();
}

// Reasoning mode runs programs the model writes and needs the Linux sandbox: off Linux the server
// says why in /api/health, and the mode is shown disabled with that reason before anything starts.
let reasonRefusal = null;
async function checkReasoning() {
  try {
    const health = await api("/api/health");
    reasonRefusal = health && health.reasoning && health.reasoning.available === false ? health.reasoning : null;
  } catch { return; } // the server is down: app.js says so; the next start of the page asks again
  renderReasonAvailability();
}

function renderReasonAvailability() {
  const radio = document.querySelector("input[name=t-mode][value=reason]");
  radio.disabled = !!reasonRefusal;
  const note = $("rs-unavailable");
  note.hidden = !reasonRefusal;
  note.textContent = reasonRefusal ? messageText(reasonRefusal) : "";
  if (reasonRefusal && mode === "reason") setMode("train");
}

function renderModelSelect() {
  const sel = $("t-model");
  const models = [...store.models].sort((a, b) => a.name.localeCompare(b.name));
  const want = sel.value || prefs().model;
  fillSelect(sel, models.map((m) => ({ value: m.name, label: m.training ? `${m.name} — ${t("train.model_training")}` : m.name })),
    { keep: false, placeholder: models.length ? null : t("train.no_models") });
  if (want && models.some((m) => m.name === want)) sel.value = want;
  renderModelInfo();
}

function currentModel() {
  return store.models.find((m) => m.name === $("t-model").value) || null;
}

let recipeShown = null; // the model whose plan last filled the form

/** An auto-sized model's plan fills the form once when the model is chosen (the server fills
 * the settings the form does not show from the same plan). */
function applyRecipe(m) {
  const name = m && m.recipe ? m.name : null;
  if (name === recipeShown) return;
  recipeShown = name;
  showAdvancedDefaults(name ? m.recipe.settings : null);
  if (!name) return;
  const s = m.recipe.settings || {};
  if (s.batch_size) $("t-batch_size").value = s.batch_size;
  if (s.learning_rate) $("t-learning_rate").value = s.learning_rate;
  if (m.recipe.minutes) { $("t-minutes").value = m.recipe.minutes; $("t-max_iterations").value = ""; }
}

/** The advanced fields start empty; their placeholder says what an empty one means. */
function showAdvancedDefaults(planned) {
  for (const k of ADVANCED_FIELDS) {
    const input = $(`t-${k}`);
    const value = planned && planned[k] != null ? planned[k] : setting("train", k).default;
    input.value = "";
    if (value == null) {
      input.dataset.i18nAttr = "placeholder:common.auto";
      input.placeholder = t("common.auto");
    } else {
      delete input.dataset.i18nAttr;
      input.placeholder = String(value);
    }
  }
}

function renderModelInfo() {
  const m = currentModel();
  const info = $("t-model-info");
  applyRecipe(m);
  if (!m) {
    info.replaceChildren();
    if (!store.models.length && store.loaded.models) info.append(h("a", { href: "#create", i18n: "train.create_first" }));
    return;
  }
  const c = m.config || {};
  info.textContent = t("train.model_info", {
    params: fmtCompact(m.parameters), layers: t("models.layers", { count: c.num_layers, n: c.num_layers }),
    d_model: c.d_model, seq: c.max_seq_len, steps: t("models.steps", { count: m.trained_steps || 0, n: fmtInt(m.trained_steps || 0) }),
  }) + (m.recipe && mode === "train" ? " " + t("train.recipe", { batch: m.recipe.settings.batch_size, lr: m.recipe.settings.learning_rate, minutes: m.recipe.minutes }) : "");
}

function renderBooks() {
  const box = $("t-books");
  const books = [...store.books].sort((a, b) => a.name.localeCompare(b.name));
  for (const name of [...selectedBooks]) if (!books.some((b) => b.name === name)) selectedBooks.delete(name);
  if (!booksTouched) {
    selectedBooks.clear();
    const m = currentModel();
    const planned = m && m.recipe && Array.isArray(m.recipe.books) ? m.recipe.books : [];
    const previous = (m && Array.isArray(m.books) ? m.books : planned).filter((n) => books.some((b) => b.name === n));
    if (previous.length) previous.forEach((n) => selectedBooks.add(n));
    else if (books.length === 1) selectedBooks.add(books[0].name);
  }
  if (!books.length) {
    box.replaceChildren(h("p", { class: "empty small" }, h("span", { i18n: "train.no_books" }), " ", h("a", { href: "#books", i18n: "train.upload_book" })));
    return;
  }
  box.replaceChildren(...bookChecks(books, selectedBooks, "train-book", (name, checked) => {
    booksTouched = true;
    checked ? selectedBooks.add(name) : selectedBooks.delete(name);
    $("t-books-msg").textContent = "";
    renderEstimate();
  }));
}

/** How fast this computer should train model `m` (its measured speed, from the server). */
async function modelSpeed(m) {
  const c = m.config || {};
  return shapeSpeed(m.name, { vocab_size: c.vocab_size, d_model: c.d_model, num_layers: c.num_layers, num_heads: c.num_heads, d_ff: c.d_ff, max_seq_len: c.max_seq_len, tokenizer: c.tokenizer || "bpe" });
}

/** This computer's training speed for a shape, asked once per `key`. */
async function shapeSpeed(key, shape) {
  if (speedCache.has(key)) return speedCache.get(key);
  const est = await api("/api/models/estimate", { method: "POST", json: shape });
  speedCache.set(key, est.speed);
  return est.speed;
}

/** Before training a model trained before: what happens to what it has (the run starts over;
 * its best model stays until the new run beats it, its checkpoints are set aside). */
function renderStartsOver(m) {
  const el = $("t-starts-over");
  el.hidden = !(mode === "train" && m && m.trained_steps > 0);
  if (el.hidden) return;
  const steps = t("models.steps", { count: m.trained_steps, n: fmtInt(m.trained_steps) });
  el.textContent = m.best_val_bpb == null ? t("train.starts_over_no_best", { steps })
    : measuredOnTheSame(m) ? t("train.starts_over", { steps, bpb: fmtFixed(m.best_val_bpb, 3) })
    : t("train.starts_over_other", { steps });
}

/** Whether a new run would measure on the held-out text the model's best was measured on (its
 * best then stays until beaten): the same books, in the same versions, window and held-out share. */
function measuredOnTheSame(m) {
  const chosen = [...selectedBooks];  // in the order the run reads them, as the server compares them
  const on = m.best_measured_on;
  if (!on) return JSON.stringify(chosen.sort()) === JSON.stringify([...(m.books || [])].sort());  // saved before it was recorded
  return JSON.stringify(chosen) === JSON.stringify(on.books)
    && chosen.every((name) => (store.books.find((b) => b.name === name) || {}).version === on.versions[name])
    && (intValue($("t-seq_len")) ?? (m.recipe && m.recipe.settings || {}).seq_len ?? null) === (on.seq_len ?? null)  // an empty field: the plan's
    && on.val_fraction === setting("train", "val_fraction").default;
}

let estimateSeq = 0;
/** What the run will cost: its time (the budget, or its steps at the model's speed), steps and tokens. */
async function renderEstimate() {
  const el = $("t-estimate");
  const m = currentModel();
  const iters = intValue($("t-max_iterations"));
  const minutes = floatValue($("t-minutes"));
  const budget = minutes > 0 ? 60 * minutes : null;
  const batch = intValue($("t-batch_size"));
  const books = [...selectedBooks];
  checkRun(mode === "train" && m && books.length && budget ? { model: m, books, minutes, batch_size: batch } : null, applyFix);
  renderStartsOver(m);
  el.classList.remove("error");
  if (mode === "selfplay" && m) { renderSelfPlayEstimate(el, m); return; }
  if (mode === "reason") { renderReasonEstimate(el, m); return; }
  if (mode !== "train" || !m || !(iters > 0 || budget) || !(batch > 0)) { el.textContent = ""; estimateSeq++; return; }
  const seq = (m.config && m.config.max_seq_len) || setting("model", "max_seq_len").default;
  const seqNo = ++estimateSeq;
  let speed = null;
  try { speed = await modelSpeed(m); } catch { speed = null; }
  if (seqNo !== estimateSeq) return;
  const chars = store.books.filter((b) => selectedBooks.has(b.name)).reduce((n, b) => n + (b.chars || 0), 0);
  // The speed this model really reached in its latest run beats any formula: its average over
  // the run (evaluations included), not its last step's.
  const measured = sortedRuns().find((r) => r.model === m.name && (r.kind || "train") === "train" && r.last_step && r.last_step.tokens_per_s > 0);
  const tps = measured ? averageSpeed(measured.last_step) : null;
  const stepSeconds = tps ? (batch * seq) / tps : speed ? roughSeconds(speed, batch * seq, 1) : null;
  const parts = [];
  if (iters > 0 && (!budget || (stepSeconds && iters * stepSeconds < budget))) {
    // the steps end the run
    const tokens = iters * batch * seq;
    parts.push(t("train.estimate_tokens", { tokens: fmtCompact(tokens) }));
    if (tps) parts.push(t("train.estimate_measured", { time: fmtApproxDuration(tokens / tps), tps: fmtInt(tps) }));
    else if (stepSeconds) parts.push(t("train.estimate_time", { time: fmtApproxDuration(iters * stepSeconds) }));
  } else {
    // the time ends it: how many steps and tokens fit in it
    parts.push(t("train.estimate_budget", { time: fmtApproxDuration(budget) }));
    if (stepSeconds) {
      const n = Math.max(1, Math.round(Math.min(iters > 0 ? iters : Infinity, budget / stepSeconds)));
      const steps = t("models.steps", { count: n, n: fmtInt(n) });
      parts.push(tps ? t("train.estimate_steps_measured", { steps, tps: fmtInt(tps) }) : t("train.estimate_steps", { steps }));
      parts.push(t("train.estimate_tokens", { tokens: fmtCompact(n * batch * seq) }));
    }
  }
  if (chars) parts.push(t("train.estimate_books", { chars: fmtCompact(chars) }));
  el.textContent = parts.join(" · ");
}

/** Tokens a second over a run, from its last step event; that step's own speed if it lacks them. */
function averageSpeed(step) {
  return step.tokens_seen > 0 && step.elapsed > 0 ? step.tokens_seen / step.elapsed : step.tokens_per_s;
}

// Seconds per decoded position of a self-play rollout on a CPU, beyond its arithmetic (the
// KV-cache generator's small kernels and Python, one position at a time).
const GEN_POSITION_S = 0.008;

/** The time line of a self-play or reasoning run (`prefix` train.sp or train.rs): its steps at
 * `perStep` seconds, or its time budget where that comes first (the run ends at either). */
function stepsEstimate(prefix, perStep, measured, iters, minutes) {
  const budget = minutes > 0 ? minutes * 60 : Infinity;
  const parts = [];
  if (perStep && iters > 0) {
    const how = measured ? "measured" : "rough";
    const seconds = fmtFixed(perStep, 1);
    if (iters * perStep <= budget) {
      parts.push(t(`${prefix}.estimate_${how}`, { time: fmtApproxDuration(iters * perStep), steps: fmtInt(iters), seconds }));
    } else {
      const fit = Math.max(1, Math.floor(budget / perStep));
      parts.push(t(`${prefix}.estimate_budget_${how}`, { time: fmtApproxDuration(budget), steps: fmtInt(fit), max: fmtInt(iters), seconds }));
      return parts.join(" · ");
    }
  }
  if (budget < Infinity) parts.push(t("train.sp.estimate_budget", { minutes: fmtNum(minutes) }));
  return parts.join(" · ");
}

/** How long a self-play run takes: its steps at the seconds per step this model's last
 * self-play run took, else a rough figure from its size; a time budget ends it sooner. */
async function renderSelfPlayEstimate(el, m) {
  const seqNo = ++estimateSeq;
  const iters = intValue($("sp-max_iterations"));
  const minutes = floatValue($("sp-minutes"));
  const measured = sortedRuns().find((r) => r.model === m.name && r.kind === "selfplay" && r.last_step && r.last_step.step_seconds > 0);
  let perStep = measured ? measured.last_step.step_seconds : null;
  // what is known now; a rough step time may wait for the server (the line of another mode must not linger)
  el.textContent = stepsEstimate("train.sp", perStep, !!measured, iters, minutes);
  if (!perStep && iters > 0) {
    let speed = null;
    try { speed = await modelSpeed(m); } catch { speed = null; }
    if (seqNo !== estimateSeq) return;
    if (speed) {
      // One step in training-token equivalents (forward 2, backward 4 per token): its rollouts
      // (prompt + continuation) generated, scored by the starting model and trained on, and a
      // batch of 8 windows of the book. Defaults as in selfplay.SelfPlayConfig.
      const seq = (m.config && m.config.max_seq_len) || setting("model", "max_seq_len").default;
      const rollout = Math.min(96, seq - Math.min(32, Math.floor(seq / 4)));
      const rows = setting("selfplay", "prompts_per_step").default * (intValue($("sp-group_size")) || setting("selfplay", "group_size").default);
      const tokens = (rows * Math.min(seq, rollout + 32) * 10) / 6 + 8 * seq;
      perStep = roughSeconds(speed, tokens, 1) + rollout * GEN_POSITION_S;
    }
  }
  if (seqNo !== estimateSeq) return;
  el.textContent = stepsEstimate("train.sp", perStep, !!measured, iters, minutes);
}

// The from-zero model's shape (from_zero.FROM_ZERO_SHAPE): its speed gives the pretraining's time.
const FROM_ZERO_SHAPE = { vocab_size: 384, d_model: 128, num_layers: 4, num_heads: 4, d_ff: 512, max_seq_len: 512, tokenizer: "char" };
// Seconds the sandbox takes to run one program a step proposes or solves (a fresh process each).
const SANDBOX_RUN_S = 0.05;

/** Whether model ``m`` has weights to start self-play or reasoning from (trained, or imported). */
const hasCheckpoint = (m) => !!m && (m.trained_steps > 0 || (m.checkpoints || []).length > 0);

/** Whether a trained model ``m``'s window is too short for reasoning prompts. */
const tooShortToReason = (m) => hasCheckpoint(m) && !!m.config && m.config.max_seq_len < reasonMinSeq(m);

/** Whether model ``m`` can start a reasoning run (trained, with a long enough context). */
function canReason(m) {
  return hasCheckpoint(m) && !!m.config && !tooShortToReason(m);
}

/** How long a reasoning run takes: its steps at the seconds per step of this model's last
 * reasoning run, else a rough figure from its size (as self-play's); and how long the from-zero
 * pretraining takes. The from-zero box is open while the chosen model cannot reason. */
async function renderReasonEstimate(el, m) {
  const seqNo = ++estimateSeq;
  const box = $("rs-from-zero");
  if (!box.dataset.touched) box.open = !canReason(m); // until the person opens or closes it
  const iters = intValue($("rs-max_iterations"));
  const minutes = floatValue($("rs-minutes"));
  // a trained model whose window is too short cannot reason at all: said here, before the start
  // (as an error, and only here), in place of a time
  const short = tooShortToReason(m);
  el.classList.toggle("error", short);
  const measured = m && !short && sortedRuns().find((r) => r.model === m.name && r.kind === "reason" && r.last_step && r.last_step.step_seconds > 0);
  let perStep = measured ? measured.last_step.step_seconds : null;
  const line = () => (short ? t("train.rs.err.seq", { model: m.name, seq: m.config.max_seq_len, min: reasonMinSeq(m) })
    : m ? stepsEstimate("train.rs", perStep, !!measured, iters, minutes) : "");
  el.textContent = line();  // what is known now; a rough step time may wait for the server
  renderZeroEstimate(seqNo);
  if (perStep || short || !m || !m.config || !(iters > 0)) return;
  try {
    const speed = await modelSpeed(m);
    // One step: tasks of three types, each proposed once and tried n_samples times; every
    // rollout reads its prompt and writes up to 64 tokens, then is trained on; each program
    // runs in the sandbox.
    const tasks = 3 * (intValue($("rs-batch_size")) || setting("reason", "batch_size").default);
    const rollouts = tasks * (1 + (intValue($("rs-n_samples")) || setting("reason", "n_samples").default));
    const prompt = reasonMinSeq(m);
    perStep = roughSeconds(speed, (rollouts * prompt * 10) / 6, 1) + 2 * 64 * GEN_POSITION_S + rollouts * SANDBOX_RUN_S;
  } catch { return; } // the estimate endpoint is busy: the next change asks again
  if (seqNo !== estimateSeq) return;
  el.textContent = line();
}

/** The from-zero box's pretraining time, at the from-zero shape's speed on this computer. */
async function renderZeroEstimate(seqNo) {
  const el = $("rs-zero-estimate");
  const zeroMinutes = floatValue($("rs-pretrain_minutes"));
  let zeroStep = null;
  if (zeroMinutes > 0) {
    try {
      const speed = await shapeSpeed(" from zero", FROM_ZERO_SHAPE);
      zeroStep = roughSeconds(speed, setting("from_zero", "batch_size").default * FROM_ZERO_SHAPE.max_seq_len, 1);
    } catch { /* the estimate endpoint is busy: the next change asks again */ }
  }
  if (seqNo !== estimateSeq) return;
  el.textContent = zeroStep ? t("train.rs.zero.estimate", {
    time: fmtApproxDuration(zeroMinutes * 60), steps: fmtInt(Math.max(1, Math.round(zeroMinutes * 60 / zeroStep))),
    seconds: fmtFixed(zeroStep, 1) }) : "";
}

/** A fix from the check before the start: the field takes the value, and the page rechecks. */
function applyFix(field, value) {
  const input = $(`t-${field}`);
  input.value = value;
  input.dispatchEvent(new Event("input", { bubbles: true }));
}

/** A decimal from a number field ("0,3" too); NaN when empty. */
function floatValue(input) {
  const raw = String(input.value).trim().replace(",", ".");
  return raw === "" ? NaN : Number(raw);
}

/** The form's value of setting `s`: a number (NaN when not one, null when empty) or the text. */
function fieldValue(input, s) {
  if (s.type === "int") return intValue(input);
  if (s.type === "float") return String(input.value).trim() === "" ? null : floatValue(input);
  return input.value;
}

// A run ends at its time budget or after its steps, whichever comes first.
const ENDS = ["minutes", "max_iterations"];

/** The settings a form shows, checked against their declarations; an empty one is left out
 * (the server's default). */
function readSettings(kind, prefix, names, errors) {
  const v = {};
  // Either end may be left empty while the other is given. A training run with neither would
  // get the studio's default time from the server: say instead that one is needed.
  const ends = ENDS.filter((k) => names.includes(k) && String($(`${prefix}-${k}`).value).trim() !== "");
  if (kind === "train" && !ends.length) errors.push(t("train.err.no_end"));
  for (const k of names) {
    const s = setting(kind, k);
    const input = $(`${prefix}-${k}`);
    const value = fieldValue(input, s);
    const either = ENDS.includes(k) && (ends.length || kind === "train");
    const problem = value == null && either ? null : settingProblem(s, value, input);
    if (problem) errors.push(problem);
    if (value != null) v[k] = value;
  }
  return v;
}

function trainRequest() {
  const errors = [];
  const v = { model: $("t-model").value, books: [...selectedBooks] };
  if (!v.model) errors.push(t("train.err.model"));
  if (!v.books.length) { errors.push(t("train.err.books")); $("t-books-msg").textContent = t("train.err.books"); $("t-books-msg").className = "msg error"; }
  Object.assign(v, readSettings("train", "t", TRAIN_FIELDS, errors));
  for (const k of ADVANCED_FIELDS) {
    const s = setting("train", k);
    const value = fieldValue($(`t-${k}`), s);
    if (value == null) continue;
    const problem = settingProblem(s, value, $(`t-${k}`));
    if (problem) errors.push(problem); else v[k] = value;
  }
  return { body: v, errors };
}

// Self-play and reasoning start from a trained checkpoint: say so before anything is sent.
// Returns false when an error was reported.
function checkStartModel(v, m, untrainedKey, errors) {
  if (!v.model) errors.push(t("train.err.model"));
  else if (m && !hasCheckpoint(m)) errors.push(t(untrainedKey, { model: v.model }));
  else return true;
  return false;
}

function selfPlayRequest() {
  const errors = [];
  const v = { model: $("t-model").value, kind: "selfplay" };
  checkStartModel(v, currentModel(), "train.sp.err.untrained", errors);
  Object.assign(v, readSettings("selfplay", "sp", SELFPLAY_FIELDS, errors));
  return { body: v, errors };
}

function reasonRequest() {
  const errors = [];
  const v = { model: $("t-model").value, kind: "reason" };
  const m = currentModel();
  checkStartModel(v, m, "train.rs.err.untrained", errors);
  Object.assign(v, readSettings("reason", "rs", REASON_FIELDS, errors));
  // a window too short is already said in red where the estimate goes: not said twice
  return { body: v, errors, blocked: tooShortToReason(m) };
}

/** The run ``id`` once it has ended, asking every half second; ``onUpdate`` sees each answer. */
async function runEnded(id, onUpdate) {
  for (;;) {
    const run = await api(`/api/runs/${enc(id)}`);
    onUpdate(run);
    if (!["queued", "running"].includes(run.state)) return run;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

/** A model for reasoning from zero: the server makes the model and queues the run that writes
 * its triplets book; once that run completed, a training run on that book is queued here, so
 * the next step is only "wait, then reason". */
async function createFromZero() {
  const msg = $("rs-create-msg");
  const name = $("rs-new-name").value.trim();
  const minutes = floatValue($("rs-pretrain_minutes"));
  const fail = (text) => { msg.textContent = text; msg.className = "msg error"; };
  if (!name) return fail(t("train.rs.zero.err_name"));
  const problem = settingProblem(setting("from_zero", "pretrain_minutes"), minutes);
  if (problem) return fail(problem);
  const btn = $("rs-create");
  setBusy(btn, true);
  msg.textContent = t("train.rs.zero.creating");
  msg.className = "msg";
  try {
    const made = await api("/api/reason/models", { method: "POST", json: { name } });
    upsertRun(made.run);
    const written = await runEnded(made.run.id, (run) => {
      upsertRun(run);
      msg.textContent = t("train.rs.zero.writing", { done: fmtInt(run.step || 0), total: fmtInt(run.params.corpus_docs) });
    });
    await Promise.all([refreshModels(), refreshBooks()]).catch(() => {});
    if (written.state !== "completed") return fail(messageText(runMessage(written)) || t("train.rs.zero.failed"));
    // The CLI's from-zero pretraining: a time budget, its batch and learning rate (settings: from_zero).
    const r = await api("/api/runs", { method: "POST", json: {
      model: name, books: [made.book], minutes,
      batch_size: setting("from_zero", "batch_size").default, learning_rate: setting("from_zero", "learning_rate").default,
    } });
    upsertRun(r);
    $("t-model").value = name;
    renderModelInfo();
    msg.textContent = t("train.rs.zero.done", { model: name, book: made.book, minutes: fmtNum(minutes) });
    msg.className = "msg ok";
    toast(t("train.rs.zero.toast", { model: name }), "success");
    await selectRun(r.id);
  } catch (err) {
    fail(err.message);
  } finally {
    setBusy(btn, false);
  }
}

async function startTraining(e) {
  e.preventDefault();
  const { body, errors, blocked } = mode === "selfplay" ? selfPlayRequest() : mode === "reason" ? reasonRequest() : trainRequest();
  showError($("train-error"), errors.join(" "));
  if (errors.length || blocked) return;
  const btn = $("train-start");
  setBusy(btn, true);
  try {
    const r = await api("/api/runs", { method: "POST", json: body });
    savePrefs();
    upsertRun(r);
    const prefix = MODE_PREFIX[mode];
    toast(t(r.state === "queued" ? `${prefix}.queued` : `${prefix}.started`, { model: body.model }), "success");
    await selectRun(r.id);
    refreshModels().catch(() => {});
    $("monitor").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (err) {
    showError($("train-error"), err);
  } finally {
    setBusy(btn, false);
  }
}

/** Defaults and bounds of every field, from the server's settings. */
function applySettings() {
  const apply = (kind, prefix, k) => {
    const s = setting(kind, k);
    applySetting($(`${prefix}-${k}`), s);
    const help = $(`${prefix}-${k}-help`);  // its text names the default and the bounds
    // A rate as written (0.0003), not rounded to the page's three decimals.
    const shown = (x) => (s.type === "float" && x != null ? String(x) : x);
    if (help && help.dataset.i18n) setText(help, help.dataset.i18n, { default: shown(s.default), min: shown(s.min), max: shown(s.max) });
  };
  for (const k of TRAIN_FIELDS) apply("train", "t", k);
  const iters = $("t-max_iterations");  // empty: the time ends the run
  iters.dataset.i18nAttr = "placeholder:train.until_time";
  iters.placeholder = t("train.until_time");
  for (const k of ADVANCED_FIELDS) apply("train", "t", k);
  showAdvancedDefaults(null);
  for (const k of SELFPLAY_FIELDS) apply("selfplay", "sp", k);
  for (const k of REASON_FIELDS) apply("reason", "rs", k);
  applySetting($("rs-pretrain_minutes"), setting("from_zero", "pretrain_minutes"));
  setText($("rs-pretrain_minutes-help"), "train.rs.zero.minutes_help", {
    batch_size: setting("from_zero", "batch_size").default,
  });
}

export function initTraining() {
  initMonitor();
  applySettings();
  const p = prefs();
  for (const k of TRAIN_FIELDS) {
    if (p[k] != null && p[k] !== "") $(`t-${k}`).value = p[k];
  }
  for (const k of SELFPLAY_FIELDS) {
    if (p[`sp_${k}`] != null && p[`sp_${k}`] !== "") $(`sp-${k}`).value = p[`sp_${k}`];
  }
  for (const k of REASON_FIELDS) {
    if (p[`rs_${k}`] != null && p[`rs_${k}`] !== "") $(`rs-${k}`).value = p[`rs_${k}`];
  }
  $("rs-create").addEventListener("click", createFromZero);
  // once the person opens or closes the from-zero box, it stays as they left it
  $("rs-from-zero").querySelector("summary").addEventListener("click", () => { $("rs-from-zero").dataset.touched = "1"; });
  for (const radio of document.querySelectorAll("input[name=t-mode]")) {
    radio.addEventListener("change", () => { if (radio.checked) { setMode(radio.value); savePrefs(); } });
  }
  setMode(p.mode);
  checkReasoning();
  for (const pill of document.querySelectorAll(".quick-picks .pill")) {
    pill.addEventListener("click", () => { $("t-max_iterations").value = pill.dataset.iters; renderEstimate(); });
  }
  $("train-form").addEventListener("submit", startTraining);
  $("train-form").addEventListener("input", () => { showError($("train-error"), ""); renderEstimate(); });
  $("t-model").addEventListener("change", () => {
    const m = currentModel();
    if (m && Array.isArray(m.books) && m.books.length) booksTouched = false; // follow the model's books
    renderBooks();
    renderModelInfo();
    renderEstimate();
  });

  subscribe("models", () => { renderModelSelect(); renderEstimate(); });
  subscribe("books", () => { renderBooks(); renderEstimate(); });
  subscribe("runs", () => renderEstimate());  // a finished run's speed makes the estimate
  onLanguageChange(() => {
    renderReasonAvailability();
    for (const pill of document.querySelectorAll(".quick-picks .pill")) pill.textContent = fmtCompact(Number(pill.dataset.iters));
    renderModelSelect();
    renderBooks();
    renderEstimate();
  });
  for (const pill of document.querySelectorAll(".quick-picks .pill")) pill.textContent = fmtCompact(Number(pill.dataset.iters));
}

export function showTraining() {
  renderModelSelect();
  renderBooks();
  renderEstimate();
  showMonitor();
}