// "The best model for N minutes" on the Create page: pick books and minutes, read the plan in
// plain words (POST /api/models/plan: the shape this computer can train best in that time, and
// what is wrong with the shape in the manual fields), and create the model with its training
// recipe (POST /api/models with `auto`) in one click.

import { api } from "./api.js";
import { setting, settingProblem } from "./settings.js";
import { t, fmtInt, fmtCompact, fmtNum, onLanguageChange, messageText } from "./i18n.js";
import { $, h, toast, showError, setBusy, store, subscribe, refreshModels, bookChecks } from "./ui.js";

const chosen = new Set();
let touched = false;      // once the person picks books, the list stops following the uploads
let answer = null;        // the latest plan
let timer = 0;
let seq = 0;
let hooks = null;         // from create.js: the manual fields

/** The minutes asked, or null when the field is empty; a value out of the run's bounds is
 * refused with the same message as the Training page's time field (``problem``). */
function minutes() {
  const input = $("auto-minutes");
  const raw = String(input.value).trim().replace(",", ".");
  if (raw === "") { input.setAttribute("aria-invalid", "false"); return { m: null, problem: null }; }
  const m = Number(raw);
  const problem = settingProblem(setting("train", "minutes"), m, input);
  return { m: problem ? null : m, problem };
}

let shownBooks = null;

function renderBooks({ force = false } = {}) {
  const box = $("auto-books");
  const books = [...store.books].sort((a, b) => a.name.localeCompare(b.name));
  const key = JSON.stringify(books.map((b) => [b.name, b.chars]));
  if (key === shownBooks && !force) return; // the lists refresh every few seconds: nothing new
  shownBooks = key;
  for (const name of [...chosen]) if (!books.some((b) => b.name === name)) chosen.delete(name);
  if (!touched && !chosen.size && books.length === 1) chosen.add(books[0].name);
  if (!books.length) {
    box.replaceChildren(h("p", { class: "empty small" }, h("a", { href: "#books", i18n: "create.auto.no_books" })));
  } else {
    box.replaceChildren(...bookChecks(books, chosen, "auto-book", (name, checked) => {
      touched = true;
      checked ? chosen.add(name) : chosen.delete(name);
      schedule();
    }));
  }
  schedule();
}

/** Ask for the plan a moment after the last change (the manual fields count too: their warnings). */
export function schedule() {
  clearTimeout(timer);
  timer = setTimeout(refresh, 250);
}

async function refresh() {
  const { m, problem } = minutes();
  const mine = ++seq;
  if (!chosen.size || m == null) {
    answer = null;
    render(chosen.size ? "create.auto.need_minutes" : "create.auto.pick", chosen.size ? problem : null);
    return;
  }
  if (!answer) render("create.auto.planning");
  const body = { books: [...chosen], minutes: m };
  const shape = hooks && hooks.shape();
  if (shape) body.shape = shape;
  try {
    const r = await api("/api/models/plan", { method: "POST", json: body });
    if (mine !== seq) return;
    answer = { ...r, minutes: m };
    render(null);
  } catch (err) {
    if (mine !== seq) return;
    answer = null;
    render(null, messageText(err) || err.message);
  }
}

function tokenizerWords(model) {
  return t(model.tokenizer === "char" ? "create.auto.tok_char" : "create.auto.tok_bpe", { vocab: fmtInt(model.vocab_size) });
}

function render(key, error) {
  const summary = $("auto-summary");
  const warn = $("auto-warnings");
  $("auto-create").disabled = !answer;
  if (!answer) {
    summary.textContent = error || (key ? t(key) : "");
    summary.className = error ? "note error" : "note";
    warn.hidden = true;
    warn.replaceChildren();
    return;
  }
  const { model, recipe } = answer;
  const e = recipe.expected;
  summary.className = "note";
  summary.textContent = t("create.auto.summary", {
    params: fmtCompact(e.parameters), layers: t("models.layers", { count: model.num_layers, n: model.num_layers }),
    d_model: model.d_model, tokenizer: tokenizerWords(model), minutes: fmtNum(recipe.minutes, 2),
    steps: fmtInt(e.steps), tokens: fmtCompact(e.tokens), tps: fmtInt(e.tokens_per_s), epochs: fmtNum(e.epochs, 1),
  });
  // small books: the plan takes less time than asked, and says why
  if (recipe.minutes < answer.minutes) {
    const why = recipe.shorter_because === "floor" ? "create.auto.shorter_floor" : "create.auto.shorter";
    summary.append(h("span", { class: "plan-shorter", dataset: { testid: "plan-shorter" }, text: " " + t(why, {
      minutes: fmtNum(recipe.minutes, 2), asked: fmtNum(answer.minutes, 2), epochs: fmtInt(e.epochs) }) }));
  }
  // "more time than the books can use" is for a run's minutes: this plan already takes less
  const problems = (answer.problems || []).filter((p) => p.code !== "auto.epochs_learned");
  warn.hidden = !problems.length;
  warn.replaceChildren(...(problems.length ? [
    h("p", { text: t("create.auto.manual") }),
    ...problems.map((p) => h("p", { class: "plan-problem", dataset: { testid: "plan-problem", code: p.code } },
      messageText(p), " ", partialFix(p))),
    h("button", { type: "button", class: "btn small", dataset: { testid: "auto-use" }, text: t("create.auto.use"),
      onclick: () => { hooks.fill(model); schedule(); } }),
  ] : []));
}

/** A problem's own button where its fix sets fewer fields than the whole plan (the vocabulary
 * alone); the others are fixed by the plan's shape, the button under the list. */
function partialFix(p) {
  const fix = (p.fix && p.fix.model) || {};
  if (Object.keys(fix).length !== 1 || fix.vocab_size == null) return null;
  return h("button", { type: "button", class: "btn small ghost", dataset: { testid: "plan-fix", code: p.code },
    text: t("msg.plan.fix_vocab", { vocab_size: fmtInt(fix.vocab_size) }),
    onclick: () => { hooks.fill({ ...(hooks.shape() || {}), ...fix }); schedule(); } });
}

async function create() {
  if (!answer) return;
  const name = hooks.name();
  if (name == null) return; // create.js shows what is wrong with the name
  const btn = $("auto-create");
  setBusy(btn, true);
  showError($("create-error"), "");
  try {
    const m = answer.minutes;
    const planned = answer.recipe.minutes;
    hooks.fill(answer.model);
    schedule();  // the fields now hold the plan's shape: their warnings are checked again
    const model = await api("/api/models", { method: "POST", json: { name, auto: { books: [...chosen], minutes: m } } });
    toast(t("create.auto.created", { name: model.name, minutes: fmtNum(planned, 2) }), "success");
    await refreshModels().catch(() => {});
    hooks.done(model.name);
  } catch (err) {
    showError($("create-error"), err);
  } finally {
    setBusy(btn, false);
  }
}

/** `create`: shape() the manual fields (or null), fill(model) them from a plan, name() the
 * checked model name (or null), done(name) after creation. */
export function initAutoPlan(createHooks) {
  hooks = createHooks;
  $("auto-minutes").addEventListener("input", schedule);
  // Enter in the minutes field must not submit the manual form below.
  $("auto-minutes").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); schedule(); } });
  $("auto-create").addEventListener("click", create);
  subscribe("books", renderBooks);
  onLanguageChange(() => { renderBooks({ force: true }); render(null); });
  renderBooks();
}
