// "Generation": model + checkpoint, prompt and sampling settings; the text streams in, Stop
// aborts it, and the memorisation meter shows which stretches were copied from the books.

import { api, enc, postStream, ApiError } from "./api.js";
import { t, fmtInt, fmtNum, fmtFixed, fmtPercent, fmtBytes, onLanguageChange, setText, messageText } from "./i18n.js";
import { $, h, showError, fillSelect, setBusy, intValue, store, subscribe, refreshModels, toast } from "./ui.js";
import { setting, applySetting } from "./settings.js";

const PREFS = "azr.genForm";
let abort = null;
let last = null; // {prompt, text, memorisation, tokens, seconds, stopped}
let checkpointsFor = null;
let loadedSig = null;

function prefs() {
  try { return JSON.parse(localStorage.getItem(PREFS) || "{}"); } catch { return {}; }
}
function savePrefs() {
  const p = {};
  for (const id of ["g-model", "g-max_length", "g-temperature", "g-top_k", "g-top_p", "g-rep", "g-seed"]) p[id] = $(id).value;
  try { localStorage.setItem(PREFS, JSON.stringify(p)); } catch { /* ignore */ }
}

function renderModels() {
  const sel = $("g-model");
  const models = [...store.models].sort((a, b) => a.name.localeCompare(b.name));
  const want = sel.value || prefs()["g-model"];
  fillSelect(sel, models.map((m) => ({
    value: m.name,
    label: (m.checkpoints && m.checkpoints.length) || m.trained_steps ? m.name : `${m.name} — ${t("gen.untrained")}`,
  })), { keep: false, placeholder: models.length ? null : t("gen.no_models") });
  if (want && models.some((m) => m.name === want)) sel.value = want;
  else {
    const trained = models.find((m) => (m.checkpoints && m.checkpoints.length) || m.trained_steps);
    if (trained) sel.value = trained.name;
  }
  // Reload the checkpoint list when the model changed or gained checkpoints (or the last load failed).
  if (sel.value !== checkpointsFor || signature(sel.value) !== loadedSig) loadCheckpoints();
}

function signature(name) {
  const m = store.models.find((x) => x.name === name);
  // a run ending (training true → false) may have left a self-play or reasoning checkpoint
  return m ? `${name}|${(m.checkpoints || []).join(",")}|${m.best_val_bpb ?? ""}|${m.training}` : `${name}|`;
}

async function loadCheckpoints() {
  const name = $("g-model").value;
  checkpointsFor = name;
  loadedSig = signature(name);
  const sel = $("g-checkpoint");
  if (!name) { fillSelect(sel, [], { keep: false }); updateGoState(); return; }
  let cps = [];
  try {
    cps = await api(`/api/models/${enc(name)}/checkpoints`);
  } catch (e) {
    if (name === checkpointsFor) { showError($("gen-error"), e); loadedSig = null; }
  }
  if (name !== checkpointsFor) return;
  cps = Array.isArray(cps) ? cps : [];
  const opts = [];
  const kind = (c) => c.kind || (c.best ? "best" : "step");
  const bpb = (c) => (Number.isFinite(c.val_bpb) ? fmtFixed(c.val_bpb, 3) : t("common.none"));
  const value = (c) => (c.checkpoint != null ? String(c.checkpoint) : String(c.step));
  // pretraining's best, then its newest (which follows a run still training), then the newest
  // self-play and reasoning checkpoints, then every step
  const pretraining = cps.filter((c) => ["best", "step"].includes(kind(c))).sort((a, b) => b.step - a.step);
  const best = cps.find((c) => c.best);
  if (best) opts.push({ value: "best", label: t("gen.cp_best", { step: fmtInt(best.step), bpb: bpb(best) }) });
  if (pretraining.length) opts.push({ value: "latest", label: t("gen.cp_latest", { step: fmtInt(pretraining[0].step) }) });
  for (const c of cps) {
    if (kind(c) === "init") opts.push({ value: value(c), label: t("gen.cp_init", { size: fmtBytes(c.bytes) }) });
    else if (["selfplay", "reason"].includes(kind(c))) opts.push({ value: value(c), label: t(`gen.cp_${kind(c)}`, { step: fmtInt(c.step), size: fmtBytes(c.bytes) }) });
  }
  for (const c of pretraining) {
    if (c.best && value(c) === "best") continue;
    opts.push({ value: String(c.step), label: t("gen.cp_step", { step: fmtInt(c.step), size: fmtBytes(c.bytes), bpb: bpb(c) }) });
  }
  // unique values (best may also be listed as a step)
  const seen = new Set();
  fillSelect(sel, opts.filter((o) => (seen.has(o.value) ? false : seen.add(o.value))), { placeholder: opts.length ? null : t("gen.no_checkpoints") });
  sel.dataset.count = String(cps.length);
  updateGoState();
}

function updateGoState() {
  const hasModel = !!$("g-model").value;
  const hasCp = Number($("g-checkpoint").dataset.count || 0) > 0;
  $("gen-go").disabled = !!abort || !hasModel || !hasCp;
  $("gen-go").title = !hasModel ? t("gen.no_models") : !hasCp ? t("gen.no_checkpoints") : "";
  $("gen-stop").disabled = !abort;
}

function renderSliders() {
  $("g-temperature-out").textContent = fmtNum(Number($("g-temperature").value), 2);
  const p = Number($("g-top_p").value);
  $("g-top_p-out").textContent = p >= 1 ? t("gen.off") : fmtNum(p, 2);
  const r = Number($("g-rep").value);
  $("g-rep-out").textContent = r <= 1 ? t("gen.off") : fmtNum(r, 2);
}

function readBody() {
  const errors = [];
  const maxLength = intValue($("g-max_length"));
  const topK = intValue($("g-top_k"));
  const seed = intValue($("g-seed"));
  if (!Number.isInteger(maxLength) || maxLength < 1) errors.push(t("gen.err.max_length"));
  if (topK != null && (!Number.isInteger(topK) || topK < 0)) errors.push(t("gen.err.top_k"));
  if (seed != null && !Number.isInteger(seed)) errors.push(t("gen.err.seed"));
  const cp = $("g-checkpoint").value;
  const body = {
    model: $("g-model").value,
    prompt: $("g-prompt").value,
    checkpoint: cp && /^\d+$/.test(cp) ? Number(cp) : cp || "best",
    max_length: maxLength,
    temperature: Number($("g-temperature").value),
    top_k: topK ?? 0,
    top_p: Number($("g-top_p").value),
    repetition_penalty: Number($("g-rep").value),
  };
  if (seed != null) body.seed = seed;
  return { body, errors };
}

function renderOutput() {
  const out = $("gen-output");
  if (!last) {
    out.replaceChildren(h("span", { class: "placeholder", i18n: "gen.output_empty" }));
    $("gen-stats").textContent = "";
    $("gen-memo").hidden = true;
    $("gen-copy").disabled = true;
    return;
  }
  const promptEl = h("span", { class: "gen-prompt", title: t("gen.prompt"), text: last.prompt });
  const textEl = h("span", { class: "gen-text", dataset: { testid: "gen-text" } });
  const spans = mergeSpans(last.memorisation && last.memorisation.spans, last.text.length);
  let pos = 0;
  for (const s of spans) {
    if (s.start > pos) textEl.append(last.text.slice(pos, s.start));
    textEl.append(h("mark", { class: "copied", title: t("gen.memo.span_title", { book: s.book ?? "?", n: fmtInt(s.end - s.start) }), text: last.text.slice(s.start, s.end) }));
    pos = s.end;
  }
  if (pos < last.text.length) textEl.append(last.text.slice(pos));
  const children = [promptEl, textEl];
  if (abort) children.push(h("span", { class: "cursor", "aria-hidden": "true" }));
  out.replaceChildren(...children);
  out.classList.toggle("streaming", !!abort);
  out.scrollTop = out.scrollHeight;
  const parts = [t("gen.stats_tokens", { count: last.tokens, n: fmtInt(last.tokens) })];
  if (last.seconds > 0) parts.push(t("gen.stats_speed", { s: fmtNum(last.seconds, last.seconds < 10 ? 2 : 1), tps: fmtNum(last.tokens / last.seconds, 1) }));
  if (last.stopped) parts.push(t("gen.stopped"));
  $("gen-stats").textContent = parts.join(" · ");
  // An early model writes bytes that make no letter (shown as �): say so, or it reads as a wrong encoding.
  $("gen-bytes-note").hidden = !last.text.includes("\ufffd");
  $("gen-copy").disabled = !last.text;
  renderMemo();
}

function mergeSpans(spans, length) {
  if (!Array.isArray(spans)) return [];
  const sorted = spans
    .map((s) => ({ ...s, start: Math.max(0, s.start | 0), end: Math.min(length, s.end | 0) }))
    .filter((s) => s.end > s.start)
    .sort((a, b) => a.start - b.start);
  const out = [];
  for (const s of sorted) {
    const prev = out[out.length - 1];
    if (prev && s.start < prev.end) {
      if (s.end > prev.end) out.push({ ...s, start: prev.end });
    } else out.push(s);
  }
  return out;
}

function renderMemo() {
  const box = $("gen-memo");
  const m = last && last.memorisation;
  if (!m) { box.hidden = true; return; }
  box.hidden = false;
  const frac = Math.max(0, Math.min(1, Number(m.copied_fraction) || 0));
  $("gen-memo-share").textContent = t("gen.memo.share", { pct: fmtPercent(frac, frac > 0 && frac < 0.1 ? 1 : 0) });
  const fill = $("gen-memo-fill");
  fill.style.width = `${(frac * 100).toFixed(1)}%`;
  const level = frac < 0.1 ? "low" : frac < 0.4 ? "mid" : "high";
  fill.className = `meter-fill ${level}`;
  $("gen-memo-meter").setAttribute("aria-valuenow", String(Math.round(frac * 100)));
  setText($("gen-memo-verdict"), `gen.memo.verdict_${level}`);
  const spans = [...(m.spans || [])].sort((a, b) => (b.length ?? b.end - b.start) - (a.length ?? a.end - a.start)).slice(0, 5);
  $("gen-memo-spans").replaceChildren(...spans.map((s) => {
    const text = last.text.slice(s.start, s.end);
    const n = s.length ?? s.end - s.start;
    return h("li", {},
      h("q", { text: text.length > 160 ? `${text.slice(0, 160)}…` : text }),
      h("span", { class: "muted", text: ` — ${t("gen.memo.span", { count: n, n: fmtInt(n), book: s.book ?? "?" })}` }));
  }));
  if (!spans.length) $("gen-memo-spans").append(h("li", { class: "muted", i18n: "gen.memo.none" }));
}

async function generate(e) {
  e.preventDefault();
  if (abort) return;
  const { body, errors } = readBody();
  showError($("gen-error"), errors.join(" "));
  if (errors.length || !body.model) return;
  savePrefs();
  abort = new AbortController();
  $("gen-output").dataset.done = "0";
  const started = performance.now();
  last = { prompt: body.prompt, text: "", memorisation: null, tokens: 0, seconds: 0, stopped: false };
  updateGoState();
  setBusy($("gen-go"), true);
  renderOutput();
  let pending = false;
  const repaint = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; renderOutput(); });
  };
  try {
    try {
      await postStream("/api/generate/stream", body, {
        signal: abort.signal,
        onEvent: (ev) => {
          if (ev.error || ev.detail) throw new ApiError(messageText(ev), 500, ev.error || ev.detail, ev.code || null, ev.params || null);
          if (typeof ev.delta === "string") { last.text += ev.delta; last.tokens++; }
          if (ev.done) {
            if (typeof ev.text === "string") last.text = ev.text;
            if (Number.isFinite(ev.tokens)) last.tokens = ev.tokens;
            last.memorisation = ev.memorisation || null;
          }
          last.seconds = (performance.now() - started) / 1000;
          repaint();
        },
      });
    } catch (err) {
      if (!(err instanceof ApiError) || (err.status !== 404 && err.status !== 405)) throw err;
      // No streaming endpoint: ask for the whole answer at once.
      const res = await api("/api/generate", { method: "POST", json: body, signal: abort.signal });
      last.text = res.text || "";
      last.tokens = Number.isFinite(res.tokens) ? res.tokens : Array.isArray(res.tokens) ? res.tokens.length : 0;
      last.memorisation = res.memorisation || null;
    }
  } catch (err) {
    if (err.name === "AbortError") last.stopped = true;
    else showError($("gen-error"), err);
  } finally {
    last.seconds = (performance.now() - started) / 1000;
    abort = null;
    setBusy($("gen-go"), false);
    updateGoState();
    renderOutput();
    $("gen-output").dataset.done = "1";
  }
}

/** Defaults and bounds from the server's settings; a slider spans the recommended range and
 * stands at its end for "off" (top_p). */
function applySettings() {
  applySetting($("g-max_length"), setting("generate", "max_length"));
  applySetting($("g-top_k"), setting("generate", "top_k"));
  const seed = setting("generate", "seed");
  $("g-seed").step = "1";
  $("g-seed").min = String(seed.min);
  $("g-seed").max = String(seed.max);
  for (const [id, name] of [["g-temperature", "temperature"], ["g-top_p", "top_p"], ["g-rep", "repetition_penalty"]]) {
    const s = setting("generate", name);
    const el = $(id);
    el.min = String(s.typical[0]);
    el.max = String(s.typical[1]);
    el.value = String(s.default ?? s.typical[1]);
  }
  const temp = setting("generate", "temperature");
  setText($("g-temperature-help"), "gen.help.temperature", { min: String(temp.typical[0]), max: String(temp.typical[1]), default: String(temp.default) });
  setText($("g-top_k-help"), "gen.help.top_k", { default: setting("generate", "top_k").default });
}

export function initGeneration() {
  applySettings();
  const p = prefs();
  for (const id of ["g-max_length", "g-temperature", "g-top_k", "g-top_p", "g-rep", "g-seed"]) {
    if (p[id] != null && p[id] !== "") $(id).value = p[id];
  }
  $("gen-form").addEventListener("submit", generate);
  $("gen-form").addEventListener("input", (e) => { renderSliders(); if (e.target.id !== "g-prompt") showError($("gen-error"), ""); });
  $("g-model").addEventListener("change", () => { showError($("gen-error"), ""); loadCheckpoints(); });
  $("gen-stop").addEventListener("click", () => { if (abort) abort.abort(); });
  $("g-prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); $("gen-form").requestSubmit(); }
  });
  $("gen-copy").addEventListener("click", async () => {
    if (!last) return;
    try {
      await navigator.clipboard.writeText(last.prompt + last.text);
      toast(t("gen.copied"), "success");
    } catch (e) {
      toast(e.message, "error");
    }
  });
  subscribe("models", renderModels);
  onLanguageChange(() => { renderSliders(); renderModels(); checkpointsFor = null; loadCheckpoints(); renderOutput(); });
  renderSliders();
}

export function showGeneration() {
  refreshModels().catch(() => {});
  checkpointsFor = null;
  renderModels();
  if (!$("g-model").value) loadCheckpoints();
}
