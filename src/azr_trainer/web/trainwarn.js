// The Training page's check before the start: the chosen model, books, minutes and batch against
// this computer (POST /api/models/plan with the model's shape), each problem in the page's
// language with a button that sets the value that fixes it: more minutes, a smaller batch; where
// only another shape helps (a vocabulary too big for the books), a link to the Create page.

import { api } from "./api.js";
import { t, fmtInt, fmtNum, onLanguageChange, messageText } from "./i18n.js";
import { $, h } from "./ui.js";

const SHAPE = ["vocab_size", "d_model", "num_layers", "num_heads", "d_ff", "max_seq_len", "tokenizer"];
let timer = 0;
let seq = 0;
let shown = null; // {problems, set}: the latest answer, redrawn on a language switch
let asked = null; // the latest request, as JSON: the page redraws often, the check runs on a change

/** Check `request` ({model, books, minutes, batch_size}; null: nothing to check) a moment after
 * the last change; `set(field, value)` applies a fix to the form. */
export function checkRun(request, set) {
  let body = null;
  if (request) {
    const c = request.model.config || {};
    const shape = Object.fromEntries(SHAPE.filter((k) => c[k] != null).map((k) => [k, c[k]]));
    body = { books: [...request.books].sort(), minutes: request.minutes, shape };
    if (request.batch_size > 0) body.batch_size = request.batch_size;
  }
  const key = JSON.stringify(body);
  if (key === asked) return;
  asked = key;
  clearTimeout(timer);
  const mine = ++seq;
  render(null); // the last answer's fixes were for other values
  if (!body) return;
  timer = setTimeout(async () => {
    try {
      const r = await api("/api/models/plan", { method: "POST", json: body });
      if (mine === seq) render({ problems: r.problems || [], set });
    } catch {
      if (mine === seq) render(null); // the start itself says what is wrong with the request
    }
  }, 300);
}

function fixButton(p, set) {
  const run = (p.fix && p.fix.run) || {};
  if (run.batch_size != null) {
    return h("button", { type: "button", class: "btn small ghost", dataset: { testid: "train-fix", code: p.code },
      text: t("msg.plan.fix_batch", { batch_size: fmtInt(run.batch_size) }), onclick: () => set("batch_size", run.batch_size) });
  }
  if (run.minutes != null) {
    return h("button", { type: "button", class: "btn small ghost", dataset: { testid: "train-fix", code: p.code },
      text: t("msg.plan.fix_minutes", { minutes: fmtNum(run.minutes, 0) }), onclick: () => set("minutes", run.minutes) });
  }
  return h("a", { href: "#create", class: "btn small ghost", dataset: { testid: "train-fix-create", code: p.code }, text: t("msg.plan.other_model") });
}

function render(answer) {
  shown = answer;
  const box = $("t-warnings");
  const problems = answer ? answer.problems : [];
  box.hidden = !problems.length;
  box.replaceChildren(...problems.map((p) => h("p", { class: "plan-problem", dataset: { testid: "train-problem", code: p.code } },
    messageText(p), " ", fixButton(p, answer.set))));
}

onLanguageChange(() => render(shown));
