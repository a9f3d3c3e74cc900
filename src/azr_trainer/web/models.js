// "My models": name, shape, parameters, file size, best val bpb, last trained; download as .pt;
// delete with confirmation.

import { api, enc, withToken } from "./api.js";
import { t, fmtInt, fmtCompact, fmtBytes, fmtFixed, fmtDate, onLanguageChange } from "./i18n.js";
import { $, h, toast, confirmDialog, store, subscribe, refreshModels, downloadUrl } from "./ui.js";

export function shapeText(c = {}) {
  return t("models.shape", {
    layers: t("models.layers", { count: c.num_layers, n: c.num_layers }), d_model: c.d_model, heads: c.num_heads, d_ff: c.d_ff,
    vocab: fmtInt(c.vocab_size), seq: c.max_seq_len, tokenizer: c.tokenizer || "bpe",
  });
}

function downloadTarget(m) {
  const cps = Array.isArray(m.checkpoints) ? m.checkpoints : [];
  if (m.best_val_bpb != null && Number.isFinite(m.best_val_bpb)) return "best";
  if (cps.length) return String(Math.max(...cps));
  return null;
}

function render() {
  const models = [...store.models].sort((a, b) => a.name.localeCompare(b.name));
  $("models-empty").hidden = models.length > 0 || !store.loaded.models;
  $("models-body").replaceChildren(...models.map((m) => {
    const c = m.config || {};
    const target = downloadTarget(m);
    const dl = target
      ? h("a", {
        class: "btn small", href: withToken(downloadUrl(m.name, target)), download: `${m.name}.pt`,
        dataset: { testid: "model-download", name: m.name }, i18n: "models.download",
        title: target === "best" ? t("models.download_best") : t("models.download_step", { step: fmtInt(Number(target)) }),
      })
      : h("button", { type: "button", class: "btn small", disabled: true, title: t("models.download_untrained"), i18n: "models.download", dataset: { testid: "model-download", name: m.name } });
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
      h("td", { class: "cell-actions" }, dl, del));
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
