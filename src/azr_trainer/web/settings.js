// The settings the forms offer, as the server declares them (GET /api/settings, made from
// settings.py): each field's default, bounds and unit come from there, never from this page,
// so the page, the API, the command line and the trainer cannot drift apart.

import { api } from "./api.js";
import { t } from "./i18n.js";

let SETTINGS = null;

/** Fetch the declarations once; the forms are filled from them at start. */
export async function loadSettings() {
  SETTINGS = await api("/api/settings");
  return SETTINGS;
}

/** The declaration of `name` in `group` (train, selfplay, reason, from_zero, model). */
export function setting(group, name) {
  const s = SETTINGS && SETTINGS[group] && SETTINGS[group][name];
  if (!s) throw new Error(`No setting ${group}.${name} from the server`);
  return s;
}

export function cores() {
  return SETTINGS ? SETTINGS.cores : null;
}

/** Give an input its bounds, step and (unless `keepValue`) the default; an automatic
 * default (none) leaves it empty with the placeholder "auto". */
export function applySetting(input, s, { keepValue = false } = {}) {
  if (input.tagName === "SELECT") {
    if (s.choices) {
      for (const opt of [...input.options]) if (!s.choices.includes(opt.value)) opt.remove();
    }
  } else {
    input.step = s.type === "int" ? "1" : "any";
    if (s.min != null) input.min = String(s.min); else input.removeAttribute("min");
    if (s.max != null) input.max = String(s.max); else input.removeAttribute("max");
    if (s.default == null) {
      input.dataset.i18nAttr = "placeholder:common.auto";
      input.placeholder = t("common.auto");
    }
  }
  input.dataset.default = s.default == null ? "" : String(s.default);
  if (!keepValue) input.value = s.default == null ? "" : String(s.default);
}

/** Why `value` (a number from the form, or null when empty) is not a valid `s`, else null.
 * The same messages, from the same catalogue, as the server's; with the form's `input`, they
 * name the field by the label the person sees (not the setting's own name), and the field is
 * marked while its value is wrong. */
export function settingProblem(s, value, input = null) {
  const problem = describeProblem(s, value, fieldName(s, input));
  if (input) input.setAttribute("aria-invalid", problem ? "true" : "false");
  return problem;
}

function fieldName(s, input) {
  const label = input && input.id && document.querySelector(`label[for="${input.id}"] [data-i18n], label[for="${input.id}"][data-i18n]`);
  const text = label && label.textContent.trim();
  return text ? t("common.quoted", { text }) : s.name;
}

function describeProblem(s, value, name) {
  const p = { name, value };
  if (value == null) return s.default == null ? null : t("msg.settings.required", p);
  if (s.type === "int" && !Number.isInteger(value)) return t("msg.settings.whole", p);
  if ((s.type === "int" || s.type === "float") && !Number.isFinite(value)) return t("msg.settings.number", p);
  if (s.choices && !s.choices.includes(value)) return t("msg.settings.choice", { ...p, choices: s.choices.join(", ") });
  if (s.min != null && (s.min_open ? value <= s.min : value < s.min)) {
    return t(s.min_open ? "msg.settings.above" : "msg.settings.at_least", { ...p, min: s.min });
  }
  if (s.max != null && (s.max_open ? value >= s.max : value > s.max)) {
    if (s.name === "threads") return t("msg.settings.threads_cores", { ...p, cores: s.max });
    return t(s.max_open ? "msg.settings.below" : "msg.settings.at_most", { ...p, max: s.max });
  }
  return null;
}
