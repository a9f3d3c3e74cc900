// "Books": drag-and-drop upload with progress, detected encoding, preview, tokenization preview,
// manual encoding override (re-read the file with the encoding you choose), delete.

import { api, upload, enc, ApiError } from "./api.js";
import { t, fmtInt, fmtBytes, fmtDate, fmtPercent, fmtNum, onLanguageChange, setText } from "./i18n.js";
import { $, h, toast, showError, confirmDialog, fillSelect, setBusy, store, subscribe, refreshBooks } from "./ui.js";

export const ENCODINGS = ["utf-8", "cp1251", "koi8-r", "cp866", "mac-cyrillic", "iso-8859-5", "utf-16", "utf-16-le", "cp1252", "latin-1"];

const CHARS = "\u0000chars"; // the "no model: characters" choice of the tokenizer preview
let selected = null;   // name of the book shown on the right
let detail = null;     // its GET /api/books/{name} answer
const files = new Map(); // book name -> the File it was uploaded from (kept for re-reading)

/** "utf_8" -> "utf-8": the codec name as people write it. */
export function encodingLabel(codec) {
  return String(codec || "").replace(/_/g, "-").toLowerCase();
}

function fillEncodingSelect(select, { auto = true } = {}) {
  const opts = [];
  if (auto) opts.push({ value: "", label: t("books.enc.auto") });
  for (const e of ENCODINGS) opts.push({ value: e, label: `${e} — ${t(`books.enc.${e}`)}` });
  fillSelect(select, opts);
}

function renderList() {
  const list = $("book-list");
  const books = [...store.books].sort((a, b) => a.name.localeCompare(b.name));
  $("book-count").textContent = books.length ? `(${fmtInt(books.length)})` : "";
  $("books-empty").hidden = books.length > 0 || !store.loaded.books;
  list.replaceChildren(...books.map((b) => h("li", {},
    h("button", {
      type: "button", class: `item${b.name === selected ? " selected" : ""}`, "aria-current": b.name === selected ? "true" : null,
      dataset: { testid: "book-item", name: b.name }, onclick: () => selectBook(b.name),
    },
    h("span", { class: "item-title", text: b.name }),
    h("span", { class: "item-meta" },
      h("span", { class: "chip", text: encodingLabel(b.encoding) }),
      ` ${t("books.chars_n", { n: fmtInt(b.chars) })} · ${fmtBytes(b.source_bytes)}`)))));
  if (selected && store.loaded.books && !books.some((b) => b.name === selected)) clearDetail();
}

function clearDetail() {
  selected = null;
  detail = null;
  $("book-detail-body").hidden = true;
  $("book-detail-empty").hidden = false;
}

export async function selectBook(name) {
  selected = name;
  renderList();
  $("book-detail-empty").hidden = true;
  $("book-detail-body").hidden = false;
  $("bd-name").textContent = name;
  $("bd-tokens").replaceChildren();
  $("bd-override-msg").textContent = "";
  try {
    detail = await api(`/api/books/${enc(name)}`);
    if (selected !== name) return;
    renderDetail();
  } catch (e) {
    toast(e.message, "error");
  }
}

function renderDetail() {
  const b = detail;
  if (!b) return;
  $("bd-name").textContent = b.name;
  $("bd-encoding").textContent = encodingLabel(b.encoding);
  setText($("bd-detected"), b.detected ? "books.detected" : "books.chosen");
  $("bd-source-bytes").textContent = fmtBytes(b.source_bytes);
  $("bd-text-bytes").textContent = fmtBytes(b.text_bytes);
  $("bd-chars").textContent = fmtInt(b.chars);
  $("bd-lines").textContent = fmtInt(b.lines);
  $("bd-created").textContent = fmtDate(b.created_at);
  $("bd-original").textContent = b.original_filename || t("common.none");
  $("bd-original").title = b.original_filename || "";
  const preview = b.preview || "";
  $("bd-preview").textContent = preview + (b.chars > preview.length ? "\n…" : "");
  const ov = $("bd-override-encoding");
  if (!ov.value) ov.value = b.detected && encodingLabel(b.encoding) !== "cp1251" ? "cp1251" : "utf-8";
}

let tokenChoiceMade = false;
/** "1,9 символа на токен": the plural form follows the number as shown (two decimals). */
function perToken(ratio) {
  const shown = Math.round(ratio * 100) / 100;
  return t("books.tokens.per_token", { count: shown, ratio: fmtNum(shown, 2) });
}

function renderTokenModels() {
  // Trained models (they have a tokenizer) first, then the others, then plain characters.
  const models = [...store.models].sort((a, b) => (b.trained_steps > 0) - (a.trained_steps > 0) || a.name.localeCompare(b.name));
  const sel = $("bd-token-model");
  const opts = [...models.map((m) => ({ value: m.name, label: m.trained_steps > 0 ? m.name : `${m.name} — ${t("gen.untrained")}` })),
    { value: CHARS, label: t("books.tokens.characters") }];
  fillSelect(sel, opts, { keep: tokenChoiceMade });
  if (!tokenChoiceMade) sel.value = opts[0].value;
}

async function showTokens() {
  const model = $("bd-token-model").value;
  const box = $("bd-tokens");
  if (!selected) return;
  const btn = $("bd-token-go");
  setBusy(btn, true);
  box.replaceChildren(h("p", { class: "muted", text: t("common.loading") }));
  try {
    const q = model && model !== CHARS ? `model=${enc(model)}&` : "";
    const res = await api(`/api/books/${enc(selected)}/tokens?${q}limit=200`);
    const tokens = (res && res.tokens) || [];
    const chars = tokens.reduce((n, tok) => n + String(tok.text ?? "").length, 0);
    const chips = tokens.map((tok, i) => h("span", {
      class: `tok tok-${i % 4}`, title: `id ${tok.id}`, dataset: { id: tok.id },
      text: String(tok.text ?? "").replace(/ /g, "·").replace(/\n/g, "⏎\n").replace(/\t/g, "⇥"),
    }));
    box.replaceChildren(
      h("p", { class: "muted", text: t("books.tokens.summary", { count: tokens.length, n: fmtInt(tokens.length), chars: fmtInt(chars), per_token: perToken(chars / Math.max(1, tokens.length)) }) }),
      h("div", { class: "tok-wrap" }, chips));
  } catch (e) {
    const p = h("p", { class: "msg error" });
    showError(p, e);
    box.replaceChildren(p);
  } finally {
    setBusy(btn, false);
  }
}

// ---- uploads -----------------------------------------------------------------------------------

function uploadRow(file) {
  const fill = h("div", { class: "progress-fill" });
  const bar = h("div", { class: "progress small", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0", "aria-label": file.name }, fill);
  const status = h("span", { class: "upload-status", dataset: { testid: "upload-status" } });
  const row = h("li", { class: "upload-row", dataset: { testid: "upload-row" } },
    h("div", { class: "upload-top" }, h("span", { class: "upload-name", text: file.name }), h("span", { class: "muted", text: fmtBytes(file.size) })),
    bar, status);
  $("upload-list").prepend(row);
  const list = $("upload-list");
  while (list.children.length > 5) list.lastChild.remove();
  return {
    progress(loaded, total) {
      const pct = Math.round((100 * loaded) / Math.max(1, total));
      fill.style.width = `${pct}%`;
      bar.setAttribute("aria-valuenow", String(pct));
      setText(status, pct >= 100 ? "books.upload.decoding" : "books.upload.progress", { pct: fmtPercent(pct / 100) });
    },
    done(book) {
      fill.style.width = "100%";
      row.classList.add("ok");
      setText(status, "books.upload.done", { name: book.name, encoding: encodingLabel(book.encoding), n: fmtInt(book.chars) });
    },
    discard() { row.remove(); },
    fail(error) {
      row.classList.add("failed");
      showError(status, error);
    },
  };
}

const SILENT_ROW = { progress() {}, done() {}, fail() {}, discard() {} };

async function uploadFile(file, { name, encoding, overwrite = false, quiet = false } = {}) {
  const row = quiet ? SILENT_ROW : uploadRow(file);
  const form = new FormData();
  form.append("file", file, file.name);
  if (name) form.append("name", name);
  if (encoding) form.append("encoding", encoding);
  if (overwrite) form.append("overwrite", "true");
  row.progress(0, 1);
  try {
    const book = await upload("/api/books", form, { onProgress: (l, tot) => row.progress(l, tot) });
    row.done(book);
    if (!quiet) files.set(book.name, file);
    return book;
  } catch (e) {
    // A refused overwrite is not a failure the person needs to see: the caller asks what to do.
    if (overwrite && e instanceof ApiError && e.status === 409) row.discard();
    else row.fail(e);
    throw e;
  }
}

async function uploadFiles(list) {
  const chosen = [...list].filter(Boolean);
  if (!chosen.length) return;
  const nameInput = $("upload-name");
  const encoding = $("upload-encoding").value || null;
  let last = null;
  for (const file of chosen) {
    const name = chosen.length === 1 && nameInput.value.trim() ? nameInput.value.trim() : null;
    try {
      last = await uploadFile(file, { name, encoding });
      toast(t("books.upload.toast", { name: last.name, encoding: encodingLabel(last.encoding) }), "success");
    } catch (e) {
      toast(`${file.name}: ${e.message}`, "error");
    }
  }
  if (last) {
    nameInput.value = "";
    await refreshBooks().catch(() => {});
    selectBook(last.name);
  }
}

async function overrideEncoding(file) {
  if (!selected || !file) return;
  const encoding = $("bd-override-encoding").value || null;
  const name = selected;
  const msg = $("bd-override-msg");
  msg.className = "msg";
  setText(msg, "books.override.working");
  try {
    let book;
    try {
      book = await uploadFile(file, { name, encoding, overwrite: true });
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 409) throw e;
      // The server keeps the book and refuses to overwrite: ask, then replace it — but first
      // read the file under a temporary name, so that an encoding that fails loses nothing.
      const ok = await confirmDialog({ title: t("books.override.replace_title"), text: t("books.override.replace_text", { name }), ok: t("books.override.replace_ok") });
      if (!ok) { msg.textContent = ""; return; }
      const trial = `${name.slice(0, 48)}_reread_${Date.now() % 1000000}`;
      await uploadFile(file, { name: trial, encoding, quiet: true });
      await api(`/api/books/${enc(name)}`, { method: "DELETE" });
      book = await uploadFile(file, { name, encoding });
      await api(`/api/books/${enc(trial)}`, { method: "DELETE" }).catch(() => {});
    }
    setText(msg, "books.override.done", { encoding: encodingLabel(book.encoding) });
    await refreshBooks().catch(() => {});
    selectBook(book.name);
  } catch (e) {
    msg.className = "msg error";
    showError(msg, e);
  }
}

async function deleteBook() {
  if (!selected) return;
  const name = selected;
  const ok = await confirmDialog({ title: t("books.delete_title"), text: t("books.delete_text", { name }), ok: t("common.delete") });
  if (!ok) return;
  try {
    await api(`/api/books/${enc(name)}`, { method: "DELETE" });
    files.delete(name);
    toast(t("books.deleted", { name }), "success");
    clearDetail();
    await refreshBooks();
  } catch (e) {
    toast(e.message, "error");
  }
}

export function initBooks() {
  const zone = $("dropzone");
  const input = $("book-file");
  fillEncodingSelect($("upload-encoding"));
  fillEncodingSelect($("bd-override-encoding"), { auto: true });
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  input.addEventListener("change", () => { uploadFiles(input.files); input.value = ""; });
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  }
  for (const ev of ["dragleave", "dragend", "drop"]) {
    zone.addEventListener(ev, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files) uploadFiles(e.dataTransfer.files);
  });
  // Dropping a file anywhere else must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  $("bd-delete").addEventListener("click", deleteBook);
  $("bd-token-go").addEventListener("click", showTokens);
  $("bd-token-model").addEventListener("change", () => { tokenChoiceMade = true; showTokens(); });
  const ovFile = $("bd-override-file");
  $("bd-override-go").addEventListener("click", () => {
    const kept = selected && files.get(selected);
    if (kept) overrideEncoding(kept);
    else ovFile.click();
  });
  ovFile.addEventListener("change", () => { const f = ovFile.files[0]; ovFile.value = ""; if (f) overrideEncoding(f); });

  subscribe("books", renderList);
  subscribe("models", renderTokenModels);
  onLanguageChange(() => {
    fillEncodingSelect($("upload-encoding"));
    fillEncodingSelect($("bd-override-encoding"));
    renderList();
    renderDetail();
  });
}

export function showBooks() {
  refreshBooks().catch((e) => toast(e.message, "error"));
  renderTokenModels();
}
