// The run monitor on the Training page: one run's progress, time left, stats, charts, samples,
// log and (for reasoning) task buffers, with pause, resume and cancel. It is built only from the
// run's events (SSE while it is live, the stored events otherwise), so a reload or a second tab
// shows the same state; the run's kind picks which stats and charts it shows.

import { api, enc, runStreamUrl, allRunEvents } from "./api.js";
import { t, fmtInt, fmtNum, fmtFixed, fmtSci, fmtCompact, fmtClock, fmtTime, fmtPercent, onLanguageChange, setText, messageText, hasText } from "./i18n.js";
import { RunState, TASK_TYPES, runMessage } from "./runstate.js";
import { makeCharts, renderCharts, TYPE_COLORS } from "./monitorcharts.js";
import { $, h, toast, fillSelect, setBusy, store, subscribe, refreshModels, upsertRun, sortedRuns, stepTarget, runLabel, stateBadge, stateText, stoppingKey, LIVE_STATES, showWhitespace } from "./ui.js";

const SESSION_RUN = "azr.monitorRun";

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

// Export runs make a file, not a model (My models shows them): the monitor follows the others.
const monitoredRuns = () => sortedRuns().filter((r) => r.kind !== "export");

function renderRunPicker() {
  const runs = monitoredRuns();
  const opts = runs.map((r) => ({ value: r.id, label: `${runLabel(r)} — ${stateText(r)}` }));
  const sel = $("mon-run");
  fillSelect(sel, opts, { keep: false, placeholder: runs.length ? null : t("monitor.no_runs") });
  if (runId) sel.value = runId;
  sel.disabled = !runs.length;
}

function totalSteps() {
  if (budgetSeconds() && !(run && run.params && run.params.max_iterations)) return null;
  return stepTarget(run) || rs.maxIterations || null;
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
  const elapsed = rs.lastStep && Number.isFinite(rs.lastStep.elapsed) ? rs.lastStep.elapsed : (sinceStart() ?? 0);
  let frac = total ? Math.min(1, step / total) : 0;
  if (budget) frac = Math.max(frac, Math.min(1, elapsed / budget));
  $("mon-progress-fill").style.width = `${(frac * 100).toFixed(2)}%`;
  const bar = $("mon-progress");
  bar.setAttribute("aria-valuenow", String(Math.round(frac * 100)));
  bar.classList.toggle("live", !!run && run.state === "running");
  const text = $("mon-progress-text");
  text.dataset.step = String(step);
  text.dataset.total = String(total || "");
  if (budget && total) setText(text, "monitor.progress_both", { step: fmtInt(step), total: fmtInt(total), elapsed: fmtClock(elapsed), budget: fmtClock(budget) });
  else if (budget) setText(text, "monitor.progress_time", { step: fmtInt(step), elapsed: fmtClock(elapsed), budget: fmtClock(budget) });
  else setText(text, total ? "monitor.progress_text" : "monitor.progress_text_nototal", { step: fmtInt(step), total: fmtInt(total), pct: fmtPercent(frac, frac < 0.1 ? 1 : 0) });
  renderTime();
}

/** Seconds since a running run started, before its first step (the books read, the start model
 * measured: up to a minute on a busy laptop), so that its clock runs rather than sit at 0:00. */
function sinceStart() {
  const since = run && run.state === "running" && !(rs && rs.lastStep) ? Date.parse(run.started_at || "") : NaN;
  return Number.isFinite(since) ? Math.max(0, (Date.now() - since) / 1000) : null;
}

function renderTime() {
  const el = $("mon-time");
  const ev = rs && rs.lastStep;
  if (!ev) {
    const elapsed = sinceStart();
    el.textContent = elapsed === null ? "" : t("monitor.preparing", { elapsed: fmtClock(elapsed) });
    return;
  }
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
  const words = rs.realWords ?? (run && run.real_words);
  $("st-real-words").textContent = Number.isFinite(words) ? fmtPercent(words, 0) : t("common.none");
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
    // the reward's parts by their names in the page's language (a reward file's part: "custom")
    p.reward = [].concat(p.reward ?? []).map((k) => (hasText(`log.reward_part.${k}`) ? t(`log.reward_part.${k}`) : k)).join(" + ");
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
  stateBadge($("mon-state"), state, run);
  $("mon-state").hidden = !state;
  const pause = $("mon-pause"), resume = $("mon-resume"), cancel = $("mon-cancel");
  pause.hidden = state !== "running";
  resume.hidden = !["paused", "interrupted", "failed"].includes(state);
  cancel.hidden = !["running", "queued", "paused", "interrupted"].includes(state);
  setText(pause, "monitor.pause");
  setText(cancel, "monitor.cancel");
  // asked to stop (here, or in another tab): the button clicked says what is happening, disabled
  const stop = LIVE_STATES.has(state) && (run.stop_requested || (["pause", "cancel"].includes(pendingAction) ? pendingAction : null));
  if (stop) {
    const btn = stop === "pause" ? pause : cancel;
    pause.hidden = btn !== pause;
    cancel.hidden = btn !== cancel;
    for (const b of [pause, resume, cancel]) setBusy(b, false);
    btn.disabled = true;
    setText(btn, stoppingKey({ state, stop_requested: stop }));
  } else {
    for (const b of [pause, resume, cancel]) setBusy(b, pendingAction != null);
  }
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
    if (charts) renderCharts(charts, rs, runKind());
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

function pickInitialRun() {
  let saved = null;
  try { saved = sessionStorage.getItem(SESSION_RUN); } catch { /* ignore */ }
  const runs = monitoredRuns();
  if (saved && runs.some((r) => r.id === saved)) return saved;
  const live = runs.find((r) => r.state === "running") || runs.find((r) => r.state === "queued");
  if (live) return live.id;
  return runs.length ? runs[0].id : null;
}

export function initMonitor() {
  charts = makeCharts();
  $("mon-run").addEventListener("change", (e) => selectRun(e.target.value || null));
  $("mon-pause").addEventListener("click", () => control("pause"));
  $("mon-resume").addEventListener("click", () => control("resume"));
  $("mon-cancel").addEventListener("click", () => control("cancel"));
  $("mon-smoothing").addEventListener("input", () => { rendered.chartsDirty = true; queueRender(); });
  $("mon-logscale").addEventListener("change", () => { rendered.chartsDirty = true; queueRender(); });
  subscribe("runs", () => {
    renderRunPicker();
    if (runId) {
      const r = store.runs.find((x) => x.id === runId);
      if (r && run && r.state !== run.state) { refreshRun(); }
    } else if (store.loaded.runs) {
      const pick = pickInitialRun();
      if (pick) selectRun(pick, { remember: false });
    }
  });
  onLanguageChange(() => {
    renderRunPicker();
    rendered.chartsDirty = true;
    rendered.samples = -1;
    rendered.log = -1;
    renderBuffers();
    queueRender();
  });
  // Tick the elapsed < remaining clock between events.
  setInterval(() => { if (run && rs && run.state === "running") (rs.lastStep ? renderTime() : renderProgress()); }, 1000);
  // The run record (state, message) is polled while the run is live or changing.
  setInterval(() => { if (runId && run && (LIVE_STATES.has(run.state) || pendingAction)) refreshRun(); }, 2500);
}

/** The Training tab is shown: charts drawn while it was hidden have no size, so draw them again. */
export function showMonitor() {
  if (charts) { rendered.chartsDirty = true; queueRender(); }
}
