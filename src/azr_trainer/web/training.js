// "Training": choose a model and books (or self-play: a trained model against a reward; or AZR
// reasoning: a trained model proposes and solves programs a sandbox checks), start a run, and
// watch it live. The monitor is built only from the run's events (SSE while it is
// live, the stored events otherwise), so a reload or a second tab shows the same state; the
// run's kind picks which stats and charts it shows.

import { api, enc, runStreamUrl, allRunEvents } from "./api.js";
import { t, fmtInt, fmtNum, fmtFixed, fmtSci, fmtCompact, fmtClock, fmtApproxDuration, fmtTime, fmtPercent, onLanguageChange, setText, messageText } from "./i18n.js";
import { LineChart, smooth, PALETTE } from "./charts.js";
import { RunState, TASK_TYPES, runMessage } from "./runstate.js";
import { roughSeconds } from "./create.js";
import { setting, applySetting, settingProblem } from "./settings.js";
import {
  $, h, toast, showError, fillSelect, setBusy, intValue, store, subscribe, refreshModels, refreshBooks,
  upsertRun, sortedRuns, runLabel, stateBadge, LIVE_STATES, showWhitespace,
} from "./ui.js";

const SESSION_RUN = "azr.monitorRun";
const TRAIN_PREFS = "azr.trainForm";

// ---- monitor state ------------------------------------------------------------------------------

let runId = null;
let run = null;          // the run record (GET /api/runs/{id})
let rs = null;           // RunState built from events
let source = null;       // EventSource while live
let reconnectTimer = 0;
let loadToken = 0;
let renderQueued = false;
let rendered = { samples: -1, log: -1, version: -1, kind: null };
let pendingAction = null;
let charts = null;

function makeCharts() {
  const fmtStep = (v) => fmtCompact(v);
  const empty = () => t("charts.no_data");
  const stepTitle = () => t("charts.step");
  return {
    loss: new LineChart($("chart-loss"), { formatX: fmtStep, formatY: (v) => fmtNum(v, 3), emptyText: empty, xTitle: stepTitle, legendEl: $("chart-loss-legend") }),
    reward: new LineChart($("chart-reward"), { formatX: fmtStep, formatY: (v) => fmtNum(v, 3), emptyText: empty, xTitle: stepTitle, legendEl: $("chart-reward-legend") }),
    kl: new LineChart($("chart-kl"), { formatX: fmtStep, formatY: (v) => fmtSci(v), emptyText: empty }),
    bpb: new LineChart($("chart-bpb"), { formatX: fmtStep, formatY: (v) => fmtNum(v, 3), emptyText: () => t("charts.no_eval"), legendEl: $("chart-bpb-legend") }),
    lr: new LineChart($("chart-lr"), { formatX: fmtStep, formatY: (v) => fmtSci(v), emptyText: empty }),
    tps: new LineChart($("chart-tps"), { formatX: fmtStep, formatY: (v) => fmtCompact(v), emptyText: empty }),
    // Reasoning: rates per task type, on a fixed 0–100% axis so runs and moments compare by eye.
    rsAcc: new LineChart($("chart-rs-acc"), { formatX: fmtStep, formatY: rate, yRange: [0, 1], emptyText: () => t("charts.no_eval"), xTitle: stepTitle, legendEl: $("chart-rs-acc-legend") }),
    rsValid: new LineChart($("chart-rs-valid"), { formatX: fmtStep, formatY: rate, yRange: [0, 1], emptyText: empty, legendEl: $("chart-rs-valid-legend") }),
    rsSolve: new LineChart($("chart-rs-solve"), { formatX: fmtStep, formatY: rate, yRange: [0, 1], emptyText: empty, legendEl: $("chart-rs-solve-legend") }),
    rsLoss: new LineChart($("chart-rs-loss"), { formatX: fmtStep, formatY: (v) => fmtNum(v, 3), emptyText: empty }),
  };
}

const rate = (v) => fmtPercent(v, 0);
const TYPE_COLORS = { deduction: PALETTE[0], abduction: PALETTE[1], induction: PALETTE[2] };

function closeStream() {
  if (source) { source.close(); source = null; }
  clearTimeout(reconnectTimer);
}

function openStream() {
  if (!runId || source) return;
  const id = runId;
  // After a reconnect, ask only for what we have not seen (events carry their number as seq).
  const es = new EventSource(runStreamUrl(id, rs.maxSeq + 1));
  source = es;
  es.onmessage = (msg) => {
    if (id !== runId) return;
    let e;
    try { e = JSON.parse(msg.data); } catch { return; }
    if (rs.ingest(e)) {
      if (e.type === "status") refreshRun();
      queueRender();
    }
  };
  es.onerror = () => {
    window.dispatchEvent(new Event("azr:connection-lost"));
    // Either the run finished and the server closed the stream, or the server went away.
    // Never let EventSource replay in a loop: close, ask for the run, and reconnect only if it is live.
    if (source === es) { es.close(); source = null; }
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(async () => {
      if (id !== runId) return;
      await refreshRun();
      if (id === runId && run && LIVE_STATES.has(run.state)) openStream();
    }, 1500);
  };
}

async function refreshRun() {
  if (!runId) return;
  const id = runId;
  try {
    const r = await api(`/api/runs/${enc(id)}`);
    if (id !== runId) return;
    const before = run && run.state;
    run = r;
    upsertRun(r);
    if (pendingAction && r.state !== before) pendingAction = null;
    if (LIVE_STATES.has(r.state)) openStream();
    else closeStream(); // the server keeps the stream open; a finished run needs no connection
    if (!LIVE_STATES.has(r.state) && before && LIVE_STATES.has(before)) {
      // finished, paused or interrupted: pick up any events the stream did not deliver,
      // and show the model's new checkpoints and best bpb everywhere
      catchUp(id);
      refreshModels().catch(() => {});
    }
    queueRender();
  } catch (e) {
    if (e.status === 404 && id === runId) {
      toast(e.message, "error");
      selectRun(null);
    }
  }
}

async function catchUp(id) {
  try {
    const evs = await allRunEvents(id, { after: Math.max(0, rs.maxSeq + 1) });
    if (id !== runId) return;
    let any = false;
    for (const e of evs) any = rs.ingest(e) || any;
    if (any) queueRender();
  } catch { /* the stream already gave us most of it */ }
}

export async function selectRun(id, { remember = true } = {}) {
  closeStream();
  runId = id || null;
  run = runId ? store.runs.find((r) => r.id === runId) || null : null;
  rs = new RunState(runId);
  rendered = { samples: -1, log: -1, version: -1, kind: null };
  pendingAction = null;
  if (remember) {
    try { runId ? sessionStorage.setItem(SESSION_RUN, runId) : sessionStorage.removeItem(SESSION_RUN); } catch { /* ignore */ }
  }
  renderRunPicker();
  render(); // at once, all of it: the previous run's badge and charts must not linger while this one loads
  if (!runId) return;
  const token = ++loadToken;
  try {
    run = await api(`/api/runs/${enc(runId)}`);
  } catch (e) {
    if (token === loadToken) toast(e.message, "error");
    return;
  }
  if (token !== loadToken) return;
  upsertRun(run);
  if (LIVE_STATES.has(run.state)) {
    openStream(); // replays history, then goes live
  } else {
    const id = runId;
    const evs = await allRunEvents(id).catch((e) => { toast(e.message, "error"); return []; });
    if (token !== loadToken) return;
    for (const e of evs) rs.ingest(e);
    if (LIVE_STATES.has((store.runs.find((r) => r.id === id) || {}).state)) openStream();
  }
  queueRender();
}

// ---- rendering ---------------------------------------------------------------------------------

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => { renderQueued = false; render(); }, 50);
}

function renderRunPicker() {
  const runs = sortedRuns();
  const opts = runs.map((r) => ({ value: r.id, label: `${runLabel(r)} — ${t(`state.${r.state}`)}` }));
  const sel = $("mon-run");
  fillSelect(sel, opts, { keep: false, placeholder: runs.length ? null : t("monitor.no_runs") });
  if (runId) sel.value = runId;
  sel.disabled = !runs.length;
}

function totalSteps() {
  return (run && run.max_iterations) || rs.maxIterations || (run && run.params && run.params.max_iterations) || null;
}

function currentStep() {
  const fromRun = run && Number.isFinite(run.step) ? run.step : 0;
  return Math.max(rs.step || 0, LIVE_STATES.has(run && run.state) ? 0 : fromRun);
}

/** A run's time budget in seconds (its `minutes` setting), or null. */
function budgetSeconds() {
  const m = run && run.params && run.params.minutes;
  return Number.isFinite(m) && m > 0 ? 60 * m : null;
}

function renderProgress() {
  const total = totalSteps();
  const step = currentStep();
  const budget = budgetSeconds();
  const elapsed = rs.lastStep && Number.isFinite(rs.lastStep.elapsed) ? rs.lastStep.elapsed : 0;
  let frac = total ? Math.min(1, step / total) : 0;
  if (budget) frac = Math.max(frac, Math.min(1, elapsed / budget));
  $("mon-progress-fill").style.width = `${(frac * 100).toFixed(2)}%`;
  const bar = $("mon-progress");
  bar.setAttribute("aria-valuenow", String(Math.round(frac * 100)));
  bar.classList.toggle("live", !!run && run.state === "running");
  const text = $("mon-progress-text");
  text.dataset.step = String(step);
  text.dataset.total = String(total || "");
  if (budget) setText(text, "monitor.progress_time", { step: fmtInt(step), elapsed: fmtClock(elapsed), budget: fmtClock(budget) });
  else setText(text, total ? "monitor.progress_text" : "monitor.progress_text_nototal", { step: fmtInt(step), total: fmtInt(total), pct: fmtPercent(frac, frac < 0.1 ? 1 : 0) });
  renderTime();
}

function renderTime() {
  const el = $("mon-time");
  const ev = rs && rs.lastStep;
  if (!ev) { el.textContent = ""; return; }
  let elapsed = ev.elapsed;
  let remaining = budgetSeconds() ? Math.max(0, Math.min(ev.eta ?? Infinity, budgetSeconds() - elapsed)) : ev.eta;
  if (run && run.state === "running" && ev.time) {
    const drift = Math.min(60, Math.max(0, Date.now() / 1000 - ev.time));
    elapsed += drift;
    remaining = Math.max(0, remaining - drift);
  }
  const done = run && !LIVE_STATES.has(run.state);
  if (done && run.state === "completed") remaining = 0;
  el.textContent = t(done && run.state !== "paused" && run.state !== "interrupted" ? "monitor.time_done" : "monitor.time", { elapsed: fmtClock(elapsed), remaining: fmtClock(remaining) });
  el.title = t("monitor.time_title");
}

/** "train", "selfplay" or "reason": from the run record, else from its start event. */
function runKind() {
  return (run && (run.kind || (run.params && run.params.kind))) || (rs && rs.kind) || "train";
}

function renderKind() {
  const kind = runKind();
  if (rendered.kind === kind) return;
  rendered.kind = kind;
  rendered.chartsDirty = true;
  for (const el of $("monitor").querySelectorAll("[data-for-kind]")) el.hidden = !el.dataset.forKind.split(" ").includes(kind);
}

function renderStats() {
  const ls = rs.lastStep;
  const le = rs.lastEval;
  $("st-loss").textContent = ls ? fmtFixed(ls.loss, 3) : t("common.none");
  $("st-reward").textContent = ls ? fmtFixed(ls.reward_mean, 3) : t("common.none");
  $("st-kl").textContent = ls ? fmtSci(ls.kl) : t("common.none");
  $("st-val-loss").textContent = le ? fmtFixed(le.val_loss, 3) : t("common.none");
  $("st-bpb").textContent = le && Number.isFinite(le.val_bpb) ? fmtFixed(le.val_bpb, 3) : t("common.none");
  const best = rs.bestBpb ?? (run && run.best_val_bpb);
  $("st-bpb-best").textContent = Number.isFinite(best) ? t("monitor.stat.best", { value: fmtFixed(best, 3) }) : "";
  $("st-lr").textContent = ls ? fmtSci(ls.lr) : t("common.none");
  $("st-tps").textContent = ls ? fmtInt(ls.tokens_per_s) : t("common.none");
  $("st-tokens").textContent = rs.tokensSeen != null ? fmtCompact(rs.tokensSeen) : t("common.none");
  if (runKind() === "reason") renderReasonStats(ls, le);
}

const typeMean = (e, suffix) => {
  const xs = e ? TASK_TYPES.map((k) => e[`${k}_${suffix}`]).filter(Number.isFinite) : [];
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null;
};

function renderReasonStats(ls, le) {
  $("st-rs-acc").textContent = le && Number.isFinite(le.mean_acc) ? fmtPercent(le.mean_acc, 1) : t("common.none");
  $("st-rs-acc-sub").textContent = le && Number.isFinite(le.mean_acc)
    ? TASK_TYPES.map((k) => `${t(`reason.short.${k}`)} ${fmtPercent(le[`${k}_acc`], 0)}`).join(" · ") : "";
  $("st-rs-valid").textContent = fmtPercent(typeMean(ls, "valid_rate"), 0);
  $("st-rs-solve").textContent = fmtPercent(typeMean(ls, "solve_acc"), 0);
  $("st-rs-pps").textContent = ls && Number.isFinite(ls.programs_per_s) ? fmtNum(ls.programs_per_s, 1) : t("common.none");
  const sizes = (ls && ls.buffer_sizes) || (le && le.buffer_sizes);
  $("st-rs-buffers").textContent = sizes ? TASK_TYPES.map((k) => fmtInt(sizes[k])).join(" / ") : t("common.none");
  $("st-rs-buffers").title = t("monitor.stat.rs_buffers_title");
}

/** One series per task type. */
function typeSeries(byType, opts = {}) {
  return TASK_TYPES.map((k) => ({ label: t(`reason.kind.${k}`), color: TYPE_COLORS[k], points: byType[k], width: 2, ...opts }));
}

/** A per-step series smoothed with weight w, over its raw points drawn faintly. */
function smoothedSeries(points, w, label, rawLabel, color, rawColor) {
  const raw = w > 0 && points.length > 1 ? [{ label: rawLabel, color: rawColor, points, width: 1, legend: false }] : [];
  return [...raw, { label, color, points: smooth(points, w), width: 2 }];
}

function renderCharts() {
  if (!charts) return;
  const w = Number($("mon-smoothing").value);
  $("mon-smoothing-out").textContent = fmtNum(w, 2);
  const logY = $("mon-logscale").checked;
  charts.loss.setLogY(logY);
  charts.reward.setLogY(logY);
  const c = PALETTE;
  charts.loss.setSeries([
    ...smoothedSeries(rs.loss, w, t("charts.train_loss"), t("charts.train_raw"), c[0], "rgba(37,99,235,.22)"),
    { label: t("charts.val_loss"), color: c[1], points: rs.valLoss, dash: [5, 4], markers: true, width: 2 },
  ]);
  charts.reward.setSeries([
    ...smoothedSeries(rs.reward, w, t("charts.reward"), t("charts.reward_raw"), c[2], "rgba(16,185,129,.25)"),
    { label: t("charts.eval_reward"), color: c[1], points: rs.evalReward, dash: [5, 4], markers: true, width: 2 },
  ]);
  const bpbSeries = [{ label: t("charts.val_bpb"), color: c[2], points: rs.valBpb, markers: true }];
  if (Number.isFinite(rs.xzBpb) && rs.valBpb.length) {  // xz's bpb: a flat dashed line across the evals
    const xs = [rs.valBpb[0][0], rs.valBpb[rs.valBpb.length - 1][0]];
    bpbSeries.push({ label: t("monitor.xz_bpb"), color: "#888", points: [...new Set(xs)].map((x) => [x, rs.xzBpb]), dash: [6, 4], width: 1.5 });
  }
  charts.bpb.setSeries(bpbSeries);
  charts.lr.setSeries([{ label: t("charts.lr"), color: c[3], points: rs.lr }]);
  charts.kl.setSeries([{ label: t("charts.kl"), color: c[4], points: rs.kl }]);
  charts.tps.setSeries([{ label: t("charts.tps"), color: c[5], points: smooth(rs.tps, 0.6) }]);
  if (runKind() === "reason") {
    charts.rsAcc.setSeries(typeSeries(rs.acc, { markers: true }));
    // A rate per step from a handful of tasks is noisy: smoothed like the loss.
    const sm = (byType) => Object.fromEntries(TASK_TYPES.map((k) => [k, smooth(byType[k], w)]));
    charts.rsValid.setSeries(typeSeries(sm(rs.valid)));
    charts.rsSolve.setSeries(typeSeries(sm(rs.solve)));
    charts.rsLoss.setSeries([{ label: t("charts.rs_loss"), color: c[3], points: smooth(rs.loss, w) }]);
  }
}

const RANK_KEYS = { best: "monitor.sample_best", worst: "monitor.sample_worst" };

/** Self-play samples carry their reward and whether they were the best or worst of their group. */
function sampleReward(s) {
  if (TASK_TYPES.includes(s.rank)) {  // a reasoning run's proposed task: rank is its type
    return h("span", { class: "sample-reward", dataset: { testid: "sample-task" }, text: t("monitor.rs_proposed", { kind: t(`reason.kind.${s.rank}`) }) });
  }
  if (!Number.isFinite(s.reward)) return null;
  const key = RANK_KEYS[s.rank] || "monitor.sample_reward";
  return h("span", { class: `sample-reward ${s.rank || ""}`, dataset: { testid: "sample-reward" }, text: t(key, { reward: fmtFixed(s.reward, 3) }) });
}

function renderSamples() {
  if (rendered.samples === rs.samples.length && rendered.lang === document.documentElement.lang) return;
  rendered.samples = rs.samples.length;
  rendered.lang = document.documentElement.lang;
  const list = $("mon-samples");
  const byStep = new Map();
  for (const s of rs.samples) {
    if (!byStep.has(s.step)) byStep.set(s.step, []);
    byStep.get(s.step).push(s);
  }
  const steps = [...byStep.keys()].sort((a, b) => b - a);
  list.replaceChildren(...steps.map((step) => h("li", { class: "timeline-item", dataset: { testid: "sample", step } },
    h("div", { class: "timeline-step", text: t("monitor.sample_step", { step: fmtInt(step) }) }),
    ...byStep.get(step).map((s) => h("div", { class: "sample" }, sampleReward(s),
      TASK_TYPES.includes(s.rank) ? null : h("span", { class: "sample-prompt", title: t("monitor.prompt"), text: showWhitespace(s.prompt) }),
      h("span", { class: "sample-text", text: String(s.text).replace(/\n{3,}/g, "\n\n") }))))));
  $("mon-sample-count").textContent = steps.length ? `(${fmtInt(steps.length)})` : "";
  $("mon-samples-empty").hidden = steps.length > 0;
  setText($("mon-samples-empty"), runKind() === "reason" ? "monitor.rs_samples_empty" : "monitor.samples_empty");
}

function logLine(entry) {
  const p = { ...entry.params };
  if (entry.msg) p.message = messageText(entry.msg);  // a coded message: in the page's language
  if (entry.key === "monitor.milestone_log") p.step = fmtInt(p.step);
  if (entry.key === "monitor.quality_log") { p.step = fmtInt(p.step); p.share = fmtPercent(p.share, 0); }
  if (entry.key === "log.step") {
    p.loss = fmtFixed(p.loss, 4); p.lr = fmtSci(p.lr); p.tps = fmtInt(p.tps); p.step = fmtInt(p.step);
  } else if (entry.key === "log.eval") {
    p.loss = fmtFixed(p.loss, 4); p.ppl = fmtNum(p.ppl, 2); p.bpb = fmtFixed(p.bpb, 4); p.step = fmtInt(p.step);
  } else if (entry.key === "log.sp_step") {
    p.reward = fmtFixed(p.reward, 3); p.kl = fmtSci(p.kl); p.tps = fmtInt(p.tps); p.step = fmtInt(p.step);
  } else if (entry.key === "log.sp_eval") {
    p.bpb = fmtFixed(p.bpb, 4); p.reward = fmtFixed(p.reward, 3); p.rep4 = fmtPercent(p.rep4, 1); p.step = fmtInt(p.step);
  } else if (entry.key === "log.rs_step") {
    p.loss = fmtFixed(p.loss, 4); p.valid = fmtPercent(p.valid, 0); p.solved = fmtPercent(p.solved, 0); p.pps = fmtNum(p.pps, 1); p.step = fmtInt(p.step);
  } else if (entry.key === "log.rs_eval") {
    for (const k of TASK_TYPES) p[k] = fmtPercent(p[k], 0);
    p.step = fmtInt(p.step);
  } else if (entry.key === "log.rs_started") {
    p.params = fmtInt(p.params); p.step = fmtInt(p.step); p.mode = t(`train.rs.mode_${p.mode}`);
  } else if (entry.key === "log.sp_started") {
    p.params = fmtInt(p.params); p.step = fmtInt(p.step);
  } else if (entry.key === "log.started") {
    p.params = fmtInt(p.params); p.tokens = fmtInt(p.tokens);
  } else if (p.state) {
    p.state = t(`state.${p.state}`);
  }
  const time = entry.time ? fmtTime(entry.time) : "";
  return `${time ? `[${time}] ` : ""}${t(entry.key, p)}`;
}

function renderLog() {
  if (rendered.log === rs.logTotal && rendered.logLang === document.documentElement.lang) return;
  rendered.log = rs.logTotal;
  rendered.logLang = document.documentElement.lang;
  const pre = $("mon-log");
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
  pre.textContent = rs.log.map(logLine).join("\n");
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

function renderControls() {
  const state = run && run.state;
  stateBadge($("mon-state"), state);
  $("mon-state").hidden = !state;
  const pause = $("mon-pause"), resume = $("mon-resume"), cancel = $("mon-cancel");
  pause.hidden = state !== "running";
  resume.hidden = !["paused", "interrupted", "failed"].includes(state);
  cancel.hidden = !["running", "queued", "paused", "interrupted"].includes(state);
  for (const b of [pause, resume, cancel]) setBusy(b, pendingAction != null);
  const msg = $("mon-message");
  const text = run && (run.message || run.message_code || run.code) && !["running", "completed"].includes(state)
    ? messageText(runMessage(run)) : "";
  const hint = state === "interrupted" ? t("monitor.interrupted_hint") : state === "paused" ? t("monitor.paused_hint") : "";
  msg.textContent = [hint, text].filter(Boolean).join(" ");
  msg.hidden = !msg.textContent;
  msg.className = `run-message ${state === "failed" ? "error" : ""}`;
}

function render() {
  const has = !!runId;
  $("mon-empty").hidden = has;
  $("panel-training").classList.toggle("has-run", has);
  $("mon-body").hidden = !has;
  renderControls();
  if (!has || !rs) return;
  renderKind();
  renderProgress();
  renderStats();
  if (rendered.version !== rs.version || rendered.chartsDirty) {
    rendered.version = rs.version;
    rendered.chartsDirty = false;
    renderCharts();
  }
  renderSamples();
  renderLog();
  if (runKind() === "reason") maybeLoadBuffers();
}

// ---- reasoning: the task buffers ---------------------------------------------------------------

const BUFFER_SHOWN = 6;  // newest tasks per buffer
let buffers = { runId: null, checkpoints: -1, loading: false, data: null, error: null, at: 0 };

/** Buffers live in the run's checkpoints: fetch them when a checkpoint event arrives (and
 * now and then while the run is live, in case an event was missed). */
function maybeLoadBuffers(force = false) {
  if (!runId || buffers.loading) return;
  const fresh = buffers.runId === runId && buffers.checkpoints === rs.checkpoints;
  const stale = run && LIVE_STATES.has(run.state) && Date.now() - buffers.at > 15000;
  if (fresh && !stale && !force) return;
  loadBuffers();
}

async function loadBuffers() {
  const id = runId, seen = rs.checkpoints;
  if (buffers.runId !== id) buffers = { runId: id, checkpoints: -1, loading: false, data: null, error: null, at: 0 };
  buffers.loading = true;
  if (!buffers.data) renderBuffers(); // another run's tasks must not linger
  try {
    const data = await api(`/api/runs/${enc(id)}/buffers?limit=${BUFFER_SHOWN}`);
    if (id !== runId) return;
    Object.assign(buffers, { data, error: null });
  } catch (e) {
    if (id !== runId) return;
    // 404: no checkpoint yet; anything else is worth showing as it is.
    Object.assign(buffers, { data: null, error: e.status === 404 ? t("monitor.buffers.none_yet") : e.message });
  } finally {
    if (buffers.runId === id) Object.assign(buffers, { loading: false, checkpoints: seen, at: Date.now() });
  }
  renderBuffers();
}

function taskView(task) {
  const io = task.kind === "induction"
    ? [h("p", { class: "task-message", text: `# ${task.message || ""}` }),
      h("ul", { class: "task-pairs" }, ...(task.pairs || []).map(([i, o]) => h("li", {}, h("code", { text: `f(${i}) = ${o}` }))))]
    : [h("p", { class: "task-io" }, h("code", { text: `f(${task.input}) = ${task.output}` }))];
  return h("li", { class: "task", dataset: { testid: "rs-task" } }, h("pre", { class: "task-code", text: task.code }), ...io);
}

function renderBuffers() {
  const box = $("rs-buffer-columns");
  const status = $("rs-buffers-status");
  const data = buffers.runId === runId ? buffers.data : null;
  if (!data) {
    box.replaceChildren();
    status.textContent = buffers.runId === runId && buffers.error ? buffers.error : (buffers.loading ? t("common.loading") : "");
    return;
  }
  status.textContent = t("monitor.buffers.as_of", { step: fmtInt(data.step) });
  box.replaceChildren(...TASK_TYPES.map((k) => {
    const tasks = [...(data.buffers[k] || [])].reverse(); // newest first
    return h("div", { class: "buffer", dataset: { testid: "rs-buffer", kind: k } },
      h("h4", {}, h("span", { class: "legend-swatch", style: `--swatch:${TYPE_COLORS[k]}` }), ` ${t(`reason.kind.${k}`)} `,
        h("span", { class: "count", text: t("monitor.buffers.size", { shown: fmtInt(tasks.length), total: fmtInt(data.sizes[k]) }) })),
      h("ol", { class: "task-list" }, ...tasks.map(taskView)));
  }));
}

async function control(action) {
  if (!runId) return;
  pendingAction = action;
  renderControls();
  try {
    const r = await api(`/api/runs/${enc(runId)}/${action}`, { method: "POST" });
    if (r && r.id === runId) {
      const changed = !run || r.state !== run.state;
      run = r;
      upsertRun(r);
      if (changed) pendingAction = null;
    }
    toast(t(`monitor.action_done.${action}`), "info");
    if (LIVE_STATES.has(run.state)) openStream();
  } catch (e) {
    pendingAction = null;
    toast(e.message, "error");
  }
  renderControls();
  setTimeout(() => { pendingAction = null; refreshRun(); }, 8000);
}

// ---- the form ----------------------------------------------------------------------------------

const selectedBooks = new Set();
let booksTouched = false; // until the user ticks a box, the choice follows the model (or the only book)
const flopsCache = new Map();
let mode = "train"; // or "selfplay" or "reason": which run the form starts
const MODES = ["train", "selfplay", "reason"];
// Which settings each form shows; their defaults and bounds come from the server (settings.js).
const TRAIN_FIELDS = ["max_iterations", "batch_size", "learning_rate", "save_every", "eval_every", "minutes"];
// Under "Advanced": empty unless typed in, so the model's plan (or the default) applies.
const ADVANCED_FIELDS = ["seq_len", "warmup_iters", "min_lr_ratio", "beta2", "weight_decay"];
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
  renderEstimate();
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
  }) + (m.recipe ? " " + t("train.recipe", { batch: m.recipe.settings.batch_size, lr: m.recipe.settings.learning_rate, minutes: m.recipe.minutes }) : "");
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
  box.replaceChildren(...books.map((b) => h("label", { class: "check-row", dataset: { testid: "train-book", name: b.name } },
    h("input", {
      type: "checkbox", value: b.name, checked: selectedBooks.has(b.name),
      onchange: (e) => {
        booksTouched = true;
        e.target.checked ? selectedBooks.add(b.name) : selectedBooks.delete(b.name);
        $("t-books-msg").textContent = "";
        renderEstimate();
      },
    }),
    h("span", { class: "check-label", text: b.name }),
    h("span", { class: "muted", text: t("books.chars_n", { n: fmtCompact(b.chars) }) }))));
}

async function modelFlops(m) {
  if (flopsCache.has(m.name)) return flopsCache.get(m.name);
  const c = m.config || {};
  const body = { vocab_size: c.vocab_size, d_model: c.d_model, num_layers: c.num_layers, num_heads: c.num_heads, d_ff: c.d_ff, max_seq_len: c.max_seq_len, tokenizer: c.tokenizer || "bpe" };
  const est = await api("/api/models/estimate", { method: "POST", json: body });
  flopsCache.set(m.name, est.flops_per_token);
  return est.flops_per_token;
}

let estimateSeq = 0;
async function renderEstimate() {
  const el = $("t-estimate");
  const m = currentModel();
  const iters = intValue($("t-max_iterations"));
  const batch = intValue($("t-batch_size"));
  if (mode === "selfplay" && m) { renderSelfPlayEstimate(el, m); return; }
  if (mode !== "train" || !m || !(iters > 0) || !(batch > 0)) { el.textContent = ""; estimateSeq++; return; }
  const seq = (m.config && m.config.max_seq_len) || setting("model", "max_seq_len").default;
  const tokens = iters * batch * seq;
  const seqNo = ++estimateSeq;
  let flops = null;
  try { flops = await modelFlops(m); } catch { flops = null; }
  if (seqNo !== estimateSeq) return;
  const chars = store.books.filter((b) => selectedBooks.has(b.name)).reduce((n, b) => n + (b.chars || 0), 0);
  const parts = [t("train.estimate_tokens", { tokens: fmtCompact(tokens) })];
  // The speed this model really reached in its latest run beats any formula.
  const measured = sortedRuns().find((r) => r.model === m.name && (r.kind || "train") === "train" && r.last_step && r.last_step.tokens_per_s > 0);
  if (measured) parts.push(t("train.estimate_measured", { time: fmtApproxDuration(tokens / measured.last_step.tokens_per_s), tps: fmtInt(measured.last_step.tokens_per_s) }));
  else if (flops) parts.push(t("train.estimate_time", { time: fmtApproxDuration(roughSeconds(flops, batch * seq, iters)) }));
  if (chars) parts.push(t("train.estimate_books", { chars: fmtCompact(chars) }));
  el.textContent = parts.join(" · ");
}

// Seconds per decoded position of a self-play rollout on a CPU, beyond its arithmetic (the
// KV-cache generator's small kernels and Python, one position at a time).
const GEN_POSITION_S = 0.008;

/** How long a self-play run takes: its steps at the seconds per step this model's last
 * self-play run took, else a rough figure from its size; a time budget ends it sooner. */
async function renderSelfPlayEstimate(el, m) {
  const seqNo = ++estimateSeq;
  const iters = intValue($("sp-max_iterations"));
  const minutes = floatValue($("sp-minutes"));
  const measured = sortedRuns().find((r) => r.model === m.name && r.kind === "selfplay" && r.last_step && r.last_step.step_seconds > 0);
  let perStep = measured ? measured.last_step.step_seconds : null;
  if (!perStep && iters > 0) {
    let flops = null;
    try { flops = await modelFlops(m); } catch { flops = null; }
    if (seqNo !== estimateSeq) return;
    if (flops) {
      // One step in training-token equivalents (forward 2, backward 4 per token): its rollouts
      // (prompt + continuation) generated, scored by the starting model and trained on, and a
      // batch of 8 windows of the book. Defaults as in selfplay.SelfPlayConfig.
      const seq = (m.config && m.config.max_seq_len) || setting("model", "max_seq_len").default;
      const rollout = Math.min(96, seq - Math.min(32, Math.floor(seq / 4)));
      const rows = setting("selfplay", "prompts_per_step").default * (intValue($("sp-group_size")) || setting("selfplay", "group_size").default);
      const tokens = (rows * Math.min(seq, rollout + 32) * 10) / 6 + 8 * seq;
      perStep = roughSeconds(flops, tokens, 1) + rollout * GEN_POSITION_S;
    }
  }
  if (seqNo !== estimateSeq) return;
  const budget = minutes > 0 ? minutes * 60 : Infinity;
  const parts = [];
  if (perStep && iters > 0) {
    const key = measured ? "train.sp.estimate_measured" : "train.sp.estimate_rough";
    parts.push(t(key, { time: fmtApproxDuration(Math.min(iters * perStep, budget)), steps: fmtInt(iters), seconds: fmtFixed(perStep, 1) }));
  }
  if (budget < Infinity) parts.push(t("train.sp.estimate_budget", { minutes: fmtNum(minutes) }));
  el.textContent = parts.join(" · ");
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

/** The settings a form shows, checked against their declarations; an empty one is left out
 * (the server's default). */
function readSettings(kind, prefix, names, errors) {
  const v = {};
  // With a time budget the number of steps may be left empty: the time ends the run.
  const budget = names.includes("minutes") && String($(`${prefix}-minutes`).value).trim() !== "";
  for (const k of names) {
    const s = setting(kind, k);
    const value = fieldValue($(`${prefix}-${k}`), s);
    const problem = value == null && k === "max_iterations" && budget ? null : settingProblem(s, value);
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
    const problem = settingProblem(s, value);
    if (problem) errors.push(problem); else v[k] = value;
  }
  return { body: v, errors };
}

// Self-play and reasoning start from a trained checkpoint: say so before anything is sent.
// Returns false when an error was reported.
function checkStartModel(v, m, untrainedKey, errors) {
  if (!v.model) errors.push(t("train.err.model"));
  else if (m && !(m.trained_steps > 0 || (m.checkpoints || []).length)) errors.push(t(untrainedKey, { model: v.model }));
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
  if (checkStartModel(v, m, "train.rs.err.untrained", errors) && m && m.config && m.config.max_seq_len < reasonMinSeq(m)) errors.push(t("train.rs.err.seq", { model: v.model, seq: m.config.max_seq_len, min: reasonMinSeq(m) }));
  Object.assign(v, readSettings("reason", "rs", REASON_FIELDS, errors));
  return { body: v, errors };
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
  const steps = intValue($("rs-pretrain_steps"));
  const fail = (text) => { msg.textContent = text; msg.className = "msg error"; };
  if (!name) return fail(t("train.rs.zero.err_name"));
  const problem = settingProblem(setting("from_zero", "pretrain_steps"), steps);
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
    // The CLI's from-zero pretraining: batch 16 at a high learning rate, evaluated now and then.
    const r = await api("/api/runs", { method: "POST", json: {
      model: name, books: [made.book], max_iterations: steps, save_every: steps,
      batch_size: setting("from_zero", "batch_size").default, learning_rate: setting("from_zero", "learning_rate").default,
    } });
    upsertRun(r);
    $("t-model").value = name;
    renderModelInfo();
    msg.textContent = t("train.rs.zero.done", { model: name, book: made.book, steps: fmtInt(steps) });
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
  const { body, errors } = mode === "selfplay" ? selfPlayRequest() : mode === "reason" ? reasonRequest() : trainRequest();
  showError($("train-error"), errors.join(" "));
  if (errors.length) return;
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

function pickInitialRun() {
  let saved = null;
  try { saved = sessionStorage.getItem(SESSION_RUN); } catch { /* ignore */ }
  const runs = sortedRuns();
  if (saved && runs.some((r) => r.id === saved)) return saved;
  const live = runs.find((r) => r.state === "running") || runs.find((r) => r.state === "queued");
  if (live) return live.id;
  return runs.length ? runs[0].id : null;
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
  for (const k of ADVANCED_FIELDS) apply("train", "t", k);
  showAdvancedDefaults(null);
  for (const k of SELFPLAY_FIELDS) apply("selfplay", "sp", k);
  for (const k of REASON_FIELDS) apply("reason", "rs", k);
  applySetting($("rs-pretrain_steps"), setting("from_zero", "pretrain_steps"));
  setText($("rs-pretrain_steps-help"), "train.rs.zero.steps_help", {
    batch_size: setting("from_zero", "batch_size").default,
    pretrain_minutes: setting("from_zero", "pretrain_time").default / 60,
  });
}

export function initTraining() {
  charts = makeCharts();
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
  for (const radio of document.querySelectorAll("input[name=t-mode]")) {
    radio.addEventListener("change", () => { if (radio.checked) { setMode(radio.value); savePrefs(); } });
  }
  setMode(p.mode);
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
  $("mon-run").addEventListener("change", (e) => selectRun(e.target.value || null));
  $("mon-pause").addEventListener("click", () => control("pause"));
  $("mon-resume").addEventListener("click", () => control("resume"));
  $("mon-cancel").addEventListener("click", () => control("cancel"));
  $("mon-smoothing").addEventListener("input", () => { rendered.chartsDirty = true; queueRender(); });
  $("mon-logscale").addEventListener("change", () => { rendered.chartsDirty = true; queueRender(); });

  subscribe("models", () => { renderModelSelect(); renderEstimate(); });
  subscribe("books", () => { renderBooks(); renderEstimate(); });
  subscribe("runs", () => {
    renderRunPicker();
    renderEstimate();
    if (runId) {
      const r = store.runs.find((x) => x.id === runId);
      if (r && run && r.state !== run.state) { refreshRun(); }
    } else if (store.loaded.runs) {
      const pick = pickInitialRun();
      if (pick) selectRun(pick, { remember: false });
    }
  });
  onLanguageChange(() => {
    for (const pill of document.querySelectorAll(".quick-picks .pill")) pill.textContent = fmtCompact(Number(pill.dataset.iters));
    renderModelSelect();
    renderBooks();
    renderEstimate();
    renderRunPicker();
    rendered.chartsDirty = true;
    rendered.samples = -1;
    rendered.log = -1;
    renderBuffers();
    queueRender();
  });
  for (const pill of document.querySelectorAll(".quick-picks .pill")) pill.textContent = fmtCompact(Number(pill.dataset.iters));
  // Tick the elapsed < remaining clock between events.
  setInterval(() => { if (run && run.state === "running") renderTime(); }, 1000);
  // The run record (state, message) is polled while the run is live or changing.
  setInterval(() => { if (runId && run && (LIVE_STATES.has(run.state) || pendingAction)) refreshRun(); }, 2500);
}

export function showTraining() {
  renderModelSelect();
  renderBooks();
  renderEstimate();
  if (charts) { rendered.chartsDirty = true; queueRender(); }
}

export function currentRunId() { return runId; }
