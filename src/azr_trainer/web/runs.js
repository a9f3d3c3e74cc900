// "Runs": every training, self-play and reasoning run, with its state and best val bpb; tick two
// or more to overlay their loss curves (a self-play or reasoning run's own loss is a policy loss,
// so only a self-play run's validation loss is comparable). Finished runs keep their charts: rebuilt from stored events.

import { api, enc } from "./api.js";
import { t, fmtInt, fmtFixed, fmtNum, fmtCompact, fmtDate, onLanguageChange, messageText } from "./i18n.js";
import { LineChart, smooth, PALETTE } from "./charts.js";
import { RunState, runMessage } from "./runstate.js";
import { $, h, toast, fillSelect, store, subscribe, refreshRuns, sortedRuns, stepTarget, stateBadge, LIVE_STATES } from "./ui.js";
import { selectRun } from "./runmonitor.js";

const COMPARE_KEY = "azr.compare";
const KIND_KEYS = ["train", "selfplay", "reason", "corpus", "export"];
let chart = null;
let compare = new Set();
const loaded = new Map(); // run id -> {rs, next, loading}

function loadCompare() {
  try { compare = new Set(JSON.parse(localStorage.getItem(COMPARE_KEY) || "[]")); } catch { compare = new Set(); }
}
function saveCompare() {
  try { localStorage.setItem(COMPARE_KEY, JSON.stringify([...compare])); } catch { /* ignore */ }
}

function shortId(id) {
  const s = String(id);
  return s.length > 10 ? s.slice(-8) : s;
}

function renderFilter() {
  const models = [...new Set(store.runs.map((r) => r.model))].sort();
  fillSelect($("runs-filter"), [{ value: "", label: t("runs.all_models") }, ...models.map((m) => ({ value: m, label: m }))]);
}

function renderTable() {
  const filter = $("runs-filter").value;
  const runs = sortedRuns().filter((r) => !filter || r.model === filter);
  for (const id of [...compare]) if (store.loaded.runs && !store.runs.some((r) => r.id === id)) compare.delete(id);
  $("runs-empty").hidden = runs.length > 0 || !store.loaded.runs;
  const colorOf = colorMap();
  $("runs-body").replaceChildren(...runs.map((r) => {
    const badge = h("span", {});
    stateBadge(badge, r.state, r);
    const checked = compare.has(r.id);
    const box = h("input", {
      type: "checkbox", checked, "aria-label": t("runs.compare_run", { id: shortId(r.id) }), dataset: { testid: "run-compare" },
      onchange: (e) => { e.target.checked ? compare.add(r.id) : compare.delete(r.id); saveCompare(); renderTable(); updateChart(); },
    });
    const swatch = checked ? h("span", { class: "legend-swatch", style: `--swatch:${colorOf.get(r.id)}` }) : null;
    const total = stepTarget(r);
    return h("tr", { dataset: { testid: "run-row", id: r.id, state: r.state } },
      h("td", { class: "cell-check" }, box, swatch),
      h("td", {}, h("code", { text: `#${shortId(r.id)}`, title: r.id })),
      h("td", { text: r.model }),
      h("td", { dataset: { testid: "run-kind" }, i18n: `kind.${KIND_KEYS.includes(r.kind) ? r.kind : "train"}` }),
      h("td", { class: "ellipsis", text: (r.books || []).join(", "), title: (r.books || []).join(", ") }),
      h("td", {}, badge, ...runNotes(r)),
      h("td", { class: "num", text: total ? `${fmtInt(r.step || 0)} / ${fmtInt(total)}` : fmtInt(r.step || 0) }),
      h("td", { class: "num", text: Number.isFinite(r.best_val_bpb) ? fmtFixed(r.best_val_bpb, 3) : t("common.none") }),
      h("td", { text: fmtDate(r.started_at || r.created_at) }),
      h("td", { class: "cell-actions" }, h("button", {
        type: "button", class: "btn small ghost", i18n: "runs.open", dataset: { testid: "run-open" },
        onclick: () => { selectRun(r.id); location.hash = "#training"; },
      })));
  }));
}

/** Under a run's state: why it stopped (not for a running or finished one) and its newest
 * milestone, both in the page's language. */
function runNotes(r) {
  const notes = [];
  const text = ["running", "queued", "completed"].includes(r.state) ? "" : messageText(runMessage(r));
  if (text) notes.push(h("div", { class: "muted ellipsis run-note", title: text, text, dataset: { testid: "run-note" } }));
  const ms = r.milestones || [];
  if (ms.length) {
    const last = ms[ms.length - 1];
    const said = t("runs.milestone", { step: fmtInt(last.step ?? 0), message: messageText(last) });
    const all = ms.map((m) => messageText(m)).join("\n");
    notes.push(h("div", { class: "ellipsis run-milestone", title: all, text: said, dataset: { testid: "run-milestone" } }));
  }
  // how the text reads and the bar it should beat: the share of real words in its samples, and
  // its val bpb against xz's on the same held-out text
  const quality = [];
  if (Number.isFinite(r.real_words)) quality.push(t("runs.real_words", { percent: fmtNum(100 * r.real_words, 0) }));
  const ev = r.last_eval || {};
  if (Number.isFinite(ev.xz_bpb) && Number.isFinite(ev.val_bpb)) {
    quality.push(t(ev.val_bpb < ev.xz_bpb ? "runs.xz_beaten" : "runs.xz_behind", { bpb: fmtFixed(ev.val_bpb, 2), xz: fmtFixed(ev.xz_bpb, 2) }));
  }
  if (quality.length) notes.push(h("div", { class: "muted ellipsis run-quality", text: quality.join(" · "), dataset: { testid: "run-quality" } }));
  return notes;
}

function colorMap() {
  const ids = sortedRuns().filter((r) => compare.has(r.id)).map((r) => r.id).reverse();
  return new Map(ids.map((id, i) => [id, PALETTE[i % PALETTE.length]]));
}

async function loadEvents(id) {
  let entry = loaded.get(id);
  if (!entry) { entry = { rs: new RunState(id), next: 0, loading: null }; loaded.set(id, entry); }
  if (entry.loading) return entry.loading;
  entry.loading = (async () => {
    try {
      for (let i = 0; i < 1000; i++) {
        const res = await api(`/api/runs/${enc(id)}/events?after=${entry.next}`);
        const evs = (res && res.events) || [];
        for (const e of evs) entry.rs.ingest(e);
        const next = res && res.next != null ? res.next : entry.next + evs.length;
        if (!evs.length || next === entry.next) break;
        entry.next = next;
      }
    } catch (e) {
      toast(e.message, "error");
    } finally {
      entry.loading = null;
    }
  })();
  return entry.loading;
}

async function updateChart({ fetch = true } = {}) {
  const ids = [...compare].filter((id) => store.runs.some((r) => r.id === id));
  if (fetch) await Promise.all(ids.map((id) => {
    const r = store.runs.find((x) => x.id === id);
    const entry = loaded.get(id);
    if (!entry || LIVE_STATES.has(r.state) || entry.lastState !== r.state) {
      return loadEvents(id).then(() => { loaded.get(id).lastState = r.state; });
    }
    return null;
  }));
  drawChart();
}

function drawChart() {
  const w = Number($("cmp-smoothing").value);
  $("cmp-smoothing-out").textContent = fmtNum(w, 2);
  chart.setLogY($("cmp-log").checked);
  const showVal = $("cmp-val").checked;
  const colorOf = colorMap();
  const series = [];
  for (const r of sortedRuns().reverse()) {
    if (!compare.has(r.id)) continue;
    const entry = loaded.get(r.id);
    if (!entry) continue;
    const color = colorOf.get(r.id);
    const name = `${r.model} #${shortId(r.id)}`;
    if (r.kind !== "selfplay" && r.kind !== "reason") series.push({ label: t("runs.series_train", { run: name }), color, points: smooth(entry.rs.loss, w), width: 2 });
    if (showVal && entry.rs.valLoss.length) {
      series.push({ label: t("runs.series_val", { run: name }), color, points: entry.rs.valLoss, dash: [5, 4], markers: true, width: 1.5 });
    }
  }
  chart.setSeries(series);
}

export function initRuns() {
  loadCompare();
  chart = new LineChart($("chart-compare"), {
    formatX: (v) => fmtCompact(v), formatY: (v) => fmtNum(v, 3),
    emptyText: () => t("runs.compare_empty"), xTitle: () => t("charts.step"), legendEl: $("chart-compare-legend"),
  });
  $("runs-filter").addEventListener("change", renderTable);
  $("cmp-smoothing").addEventListener("input", drawChart);
  $("cmp-log").addEventListener("change", drawChart);
  $("cmp-val").addEventListener("change", drawChart);
  subscribe("runs", () => {
    renderFilter();
    renderTable();
    if (!$("panel-runs").hidden) updateChart();
  });
  onLanguageChange(() => { renderFilter(); renderTable(); drawChart(); });
}

export function showRuns() {
  renderFilter();
  renderTable();
  refreshRuns().catch((e) => toast(e.message, "error"));
  updateChart();
}
