// "My models": name, shape, parameters, file size, best val bpb, last trained; download as .pt
// (a direct link), as a Hugging Face folder (.zip) or as GGUF (f16, q8_0 or f32): those two are
// made by an export run, followed through its event stream, then downloaded; delete with confirmation.

import { api, enc, withToken, runStreamUrl } from "./api.js";
import { t, fmtInt, fmtCompact, fmtBytes, fmtFixed, fmtDate, onLanguageChange, messageText } from "./i18n.js";
import { $, h, toast, confirmDialog, store, subscribe, refreshModels, downloadUrl, upsertRun } from "./ui.js";
import { runMessage } from "./runstate.js";

export function shapeText(c = {}) {
  return t("models.shape", {
    layers: t("models.layers", { count: c.num_layers, n: c.num_layers }), d_model: c.d_model, heads: c.num_heads, d_ff: c.d_ff,
    vocab: fmtInt(c.vocab_size), seq: c.max_seq_len, tokenizer: t(`models.tokenizer.${c.tokenizer === "char" ? "char" : "bpe"}`),
  });
}

function downloadTarget(m) {
  const cps = Array.isArray(m.checkpoints) ? m.checkpoints : [];
  if (m.best_val_bpb != null && Number.isFinite(m.best_val_bpb)) return "best";
  if (cps.length) return String(Math.max(...cps));
  return null;
}

const GGUF_DTYPES = ["f16", "q8_0", "f32"];
const ggufDtype = new Map(); // model name → the GGUF precision picked, kept across re-renders

const ENDED = new Set(["completed", "failed", "cancelled", "paused", "interrupted"]);
const exporting = new Map(); // "model|format" → what its export run is doing, kept across re-renders

function setExporting(key, text) {
  if (text == null) exporting.delete(key); else exporting.set(key, text);
  render();
}

/** The export run ``id`` once it has ended: its events from the run stream (steps as progress),
 * or, where the stream breaks, the run asked for every second. */
function exportEnded(id, onStep) {
  return new Promise((resolve) => {
    let made = null;
    let finished = false;
    const finish = async () => {
      if (finished) return;
      finished = true;
      es.close();
      for (;;) {
        const run = await api(`/api/runs/${enc(id)}`).catch(() => null);
        if (run && !["queued", "running"].includes(run.state)) return resolve({ run, made });
        await new Promise((r) => setTimeout(r, 1000));
      }
    };
    const es = new EventSource(runStreamUrl(id));
    es.onmessage = (msg) => {
      let e;
      try { e = JSON.parse(msg.data); } catch { return; }
      if (e.type === "step") onStep(e.step || 0);
      else if (e.type === "export") made = e;
      else if (e.type === "status" && ENDED.has(e.state)) finish();
    };
    es.onerror = () => { finish(); };
  });
}

/** Make a Hugging Face zip or a GGUF file with an export run, show how far it is, then download it. */
async function exportAndDownload(m, target, format, dtype) {
  const key = `${m.name}|${format}`;
  if (exporting.has(key)) return;
  const what = t(format === "hf" ? "models.download_hf" : "models.download_gguf");
  setExporting(key, t("msg.export.page_waiting", { what }));
  try {
    const body = { format, checkpoint: target };
    if (dtype) body.dtype = dtype;
    const { run } = await api(`/api/models/${enc(m.name)}/exports`, { method: "POST", json: body });
    upsertRun(run);
    const { run: ended, made } = await exportEnded(run.id, (step) => {
      setExporting(key, t(step >= 1 ? "msg.export.page_writing" : "msg.export.page_reading", { what }));
    });
    upsertRun(ended);
    if (ended.state !== "completed") throw new Error(messageText(runMessage(ended)) || ended.state);
    toast(t("msg.export.page_ready", { what }), "success");
    if (made && made.note) toast((made.notes || []).map(messageText).join(" ") || made.note, "info");
    const a = h("a", { href: withToken(`/api/models/${enc(m.name)}/exports/${enc(run.id)}`), download: (made && made.file) || "", hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (e) {
    toast(t("msg.export.page_failed", { what, reason: e.message }), "error");
  } finally {
    setExporting(key, null);
  }
}

// The Hugging Face and GGUF buttons: each starts an export run while there is a checkpoint; disabled before.
function exportButtons(m, target, targetTitle) {
  const dtype = ggufDtype.get(m.name) || GGUF_DTYPES[0];
  const hfTitle = `${t("models.download_hf_title")} ${targetTitle}`;
  const ggufTitle = `${t("models.download_gguf_title")} ${targetTitle}`;
  const busy = (format) => exporting.has(`${m.name}|${format}`);
  const hf = h("button", {
    type: "button", class: "btn small", disabled: !target || busy("hf"), title: target ? hfTitle : targetTitle,
    style: "margin-left: 0;", i18n: "models.download_hf", dataset: { testid: "model-download-hf", name: m.name },
    onclick: () => exportAndDownload(m, target, "hf"),
  });
  const gguf = h("button", {
    type: "button", class: "btn small", disabled: !target || busy("gguf"), title: target ? ggufTitle : targetTitle,
    i18n: "models.download_gguf", dataset: { testid: "model-download-gguf", name: m.name },
    onclick: () => exportAndDownload(m, target, "gguf", ggufDtype.get(m.name) || GGUF_DTYPES[0]),
  });
  const select = h("select", {
    "aria-label": t("models.gguf_dtype"), title: t("models.gguf_dtype"), disabled: !target,
    style: "width: auto; padding: 3px 6px; font-size: .82rem;",
    dataset: { testid: "model-gguf-dtype", name: m.name },
    onchange: (e) => { ggufDtype.set(m.name, e.target.value); },
  }, GGUF_DTYPES.map((d) => h("option", { value: d, selected: d === dtype, text: d }))); // codes, the same in every language
  const status = [...exporting].filter(([k]) => k.startsWith(`${m.name}|`)).map(([, v]) => v).join(" ");
  return [hf, h("span", { style: "display: inline-flex; align-items: center; gap: 4px;" }, gguf, select),
    status ? h("span", { class: "muted small", role: "status", dataset: { testid: "model-export-status", name: m.name }, text: status }) : null];
}

function render() {
  const models = [...store.models].sort((a, b) => a.name.localeCompare(b.name));
  $("models-empty").hidden = models.length > 0 || !store.loaded.models;
  $("models-body").replaceChildren(...models.map((m) => {
    const c = m.config || {};
    const target = downloadTarget(m);
    let targetTitle = !target ? t("models.download_untrained")
      : target === "best" ? t("models.download_best") : t("models.download_step", { step: fmtInt(Number(target)) });
    if (target && m.training) targetTitle += ` ${t("models.download_training")}`;
    const dl = target
      ? h("a", {
        class: "btn small", href: withToken(downloadUrl(m.name, target)), download: `${m.name}.pt`,
        dataset: { testid: "model-download", name: m.name }, i18n: "models.download", title: targetTitle,
      })
      : h("button", { type: "button", class: "btn small", disabled: true, title: targetTitle, i18n: "models.download", dataset: { testid: "model-download", name: m.name } });
    const del = h("button", {
      type: "button", class: "btn small danger ghost", i18n: "common.delete", disabled: !!m.training,
      title: m.training ? t("models.delete_training") : null, dataset: { testid: "model-delete", name: m.name },
      onclick: () => deleteModel(m.name),
    });
    const nameCell = h("td", {}, h("strong", { text: m.name }));
    if (m.training) nameCell.append(" ", h("span", { class: "badge state-running", i18n: "models.training" }));
    const books = Array.isArray(m.books) && m.books.length ? h("div", { class: "muted small", text: t("models.books", { books: m.books.join(", ") }) }) : null;
    if (books) nameCell.append(books);
    return h("tr", { dataset: { testid: "model-row", name: m.name } },
      nameCell,
      h("td", { class: "shape", text: shapeText(c) }),
      h("td", { class: "num", text: fmtCompact(m.parameters), title: fmtInt(m.parameters) }),
      h("td", { class: "num", text: m.file_bytes ? fmtBytes(m.file_bytes) : t("common.none") }),
      h("td", { class: "num", text: Number.isFinite(m.best_val_bpb) ? fmtFixed(m.best_val_bpb, 3) : t("common.none") }),
      h("td", {}, m.last_trained ? fmtDate(m.last_trained) : h("span", { class: "muted", i18n: "models.never" }),
        m.trained_steps ? h("div", { class: "muted small", text: t("models.steps", { count: m.trained_steps, n: fmtInt(m.trained_steps) }) }) : null),
      h("td", { class: "cell-actions" },
        // the buttons wrap onto a second line where the table is narrow
        h("div", { style: "display: flex; flex-wrap: wrap; justify-content: flex-end; align-items: center; gap: 6px; min-width: 18.5rem;" },
          dl, ...exportButtons(m, target, targetTitle), del)));
  }));
}

async function deleteModel(name) {
  const ok = await confirmDialog({ title: t("models.delete_title"), text: t("models.delete_text", { name }), ok: t("common.delete") });
  if (!ok) return;
  try {
    await api(`/api/models/${enc(name)}`, { method: "DELETE" });
    toast(t("models.deleted", { name }), "success");
  } catch (e) {
    toast(e.message, "error");
  }
  refreshModels().catch(() => {});
}

export function initModels() {
  $("models-new").addEventListener("click", () => { location.hash = "#create"; });
  subscribe("models", render);
  onLanguageChange(render);
}

export function showModels() {
  refreshModels().catch((e) => toast(e.message, "error"));
}
