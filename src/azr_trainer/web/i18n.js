// Translations and locale-aware formatting. Every visible string comes from i18n/<lang>.json:
// static markup through data-i18n attributes, dynamic text through t().

export const LANGUAGES = ["en", "ru"];
const STORAGE_KEY = "azr.lang";

let lang = "en";
let dict = {};
let fallback = {};
const listeners = new Set();
const cache = new Map();

async function loadDict(code) {
  if (!cache.has(code)) {
    const token = new URLSearchParams(location.search).get("token");
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const res = await fetch(`/static/i18n/${code}.json`, { cache: "no-cache", headers });
    if (!res.ok) throw new Error(`Cannot load translations for ${code}: ${res.status}`);
    cache.set(code, await res.json());
  }
  return cache.get(code);
}

export function initialLanguage() {
  let saved = null;
  try { saved = localStorage.getItem(STORAGE_KEY); } catch { /* private mode */ }
  if (LANGUAGES.includes(saved)) return saved;
  const wanted = (navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"]);
  for (const l of wanted) {
    const code = String(l || "").toLowerCase();
    if (code.startsWith("ru")) return "ru";
    if (code.startsWith("en")) return "en";
  }
  return "en";
}

export async function setLanguage(code, { save = true } = {}) {
  if (!LANGUAGES.includes(code)) code = "en";
  const [d, en] = await Promise.all([loadDict(code), loadDict("en")]);
  lang = code;
  dict = d;
  fallback = en;
  if (save) {
    try { localStorage.setItem(STORAGE_KEY, code); } catch { /* ignore */ }
  }
  document.documentElement.lang = code;
  applyI18n(document);
  for (const fn of listeners) {
    try { fn(code); } catch (e) { console.error(e); }
  }
}

export function currentLanguage() { return lang; }
export function locale() { return lang === "ru" ? "ru-RU" : "en-US"; }
export function onLanguageChange(fn) { listeners.add(fn); }

function lookup(table, key) {
  let node = table;
  for (const part of key.split(".")) {
    if (node == null || typeof node !== "object") return undefined;
    node = node[part];
  }
  return node;
}

function formatArg(value) {
  if (Array.isArray(value)) return value.map(formatArg).join(", ");
  if (typeof value === "number" && Number.isFinite(value)) {
    return Number.isInteger(value) ? fmtInt(value) : fmtNum(value, 3);
  }
  return value == null ? "" : String(value);
}

/** t("create.title"), t("gen.stats_tokens", {count: 3, n: "3"}) — a value that is an object of plural
 * forms ({one, few, many, other}) is chosen with Intl.PluralRules by params.count. */
export function t(key, params = {}) {
  let value = lookup(dict, key);
  if (value === undefined) value = lookup(fallback, key);
  if (value === undefined) {
    console.warn("missing translation", key);
    return key;
  }
  if (value && typeof value === "object") {
    const n = Number(params.count ?? 0);
    const form = new Intl.PluralRules(locale()).select(n);
    value = value[form] ?? value.other ?? Object.values(value)[0];
  }
  return String(value).replace(/\{(\w+)\}/g, (m, name) => (name in params ? formatArg(params[name]) : m));
}

const PLURAL_FORMS = new Set(["zero", "one", "two", "few", "many", "other"]);

/** Whether ``key`` names a sentence (or its plural forms) in this language or in English. */
export function hasText(key) {
  const value = lookup(dict, key) ?? lookup(fallback, key);
  return typeof value === "string" || (value != null && typeof value === "object"
    && Object.keys(value).every((k) => PLURAL_FORMS.has(k)));
}

/** A message the server sent as ``{code, params}`` (an API error, a run's status or warning, a
 * log line), in the page's current language: the catalogue's msg.<code>. A code the catalogue
 * does not know (an older server, a message not yet coded) shows the server's own words. */
export function messageText(m) {
  if (m == null) return "";
  if (typeof m !== "object") return String(m);
  if (typeof m.code === "string" && hasText(`msg.${m.code}`)) return t(`msg.${m.code}`, m.params || {});
  const own = m.message ?? m.detail ?? m.error;
  return typeof own === "string" ? own : "";
}

/** Fill [data-i18n] text, [data-i18n-attr="placeholder:key;title:key"] attributes, and
 * [data-i18n-args] (JSON) parameters for both. */
export function applyI18n(root = document) {
  const scope = root.querySelectorAll ? root : document;
  const nodes = [];
  if (scope.matches && scope.matches("[data-i18n],[data-i18n-attr]")) nodes.push(scope);
  nodes.push(...scope.querySelectorAll("[data-i18n],[data-i18n-attr]"));
  for (const el of nodes) {
    let args = {};
    if (el.dataset.i18nArgs) {
      try { args = JSON.parse(el.dataset.i18nArgs); } catch { args = {}; }
    }
    if (el.dataset.i18n) el.textContent = t(el.dataset.i18n, args);
    if (el.dataset.i18nAttr) {
      for (const pair of el.dataset.i18nAttr.split(";")) {
        const [attr, key] = pair.split(":").map((s) => s.trim());
        if (attr && key) el.setAttribute(attr, t(key, args));
      }
    }
  }
  if (scope === document) document.title = t("app.title");
}

/** Set an element's text from a key and remember the key, so a language switch re-renders it. */
export function setText(el, key, params) {
  if (!el) return;
  el.dataset.i18n = key;
  if (params) el.dataset.i18nArgs = JSON.stringify(params);
  else delete el.dataset.i18nArgs;
  el.textContent = t(key, params || {});
}

// ---- formatting -----------------------------------------------------------------------------

const nfCache = new Map();
function nf(options) {
  const k = locale() + JSON.stringify(options);
  if (!nfCache.has(k)) nfCache.set(k, new Intl.NumberFormat(locale(), options));
  return nfCache.get(k);
}

export function fmtInt(n) {
  if (n == null || !Number.isFinite(Number(n))) return t("common.none");
  return nf({ maximumFractionDigits: 0 }).format(Math.round(Number(n)));
}

export function fmtNum(n, digits = 2) {
  if (n == null || !Number.isFinite(Number(n))) return t("common.none");
  return nf({ maximumFractionDigits: digits, minimumFractionDigits: 0 }).format(Number(n));
}

export function fmtFixed(n, digits = 3) {
  if (n == null || !Number.isFinite(Number(n))) return t("common.none");
  return nf({ maximumFractionDigits: digits, minimumFractionDigits: digits }).format(Number(n));
}

export function fmtCompact(n) {
  if (n == null || !Number.isFinite(Number(n))) return t("common.none");
  return nf({ notation: "compact", maximumFractionDigits: 1 }).format(Number(n));
}

export function fmtPercent(frac, digits = 0) {
  if (frac == null || !Number.isFinite(Number(frac))) return t("common.none");
  return nf({ style: "percent", maximumFractionDigits: digits }).format(Number(frac));
}

export function fmtSci(n) {
  if (n == null || !Number.isFinite(Number(n))) return t("common.none");
  const v = Number(n);
  if (v === 0) return fmtInt(0);
  if (Math.abs(v) >= 0.01 && Math.abs(v) < 1e5) return fmtNum(v, 4);
  // 3e-4, 4.21e-4 (4,21e-4 in Russian): how people write learning rates
  const [mantissa, exponent] = v.toExponential(2).split("e");
  return `${fmtNum(Number(mantissa), 2)}e${Number(exponent)}`;
}

const BYTE_UNITS = ["byte", "kilobyte", "megabyte", "gigabyte", "terabyte"];
export function fmtBytes(n) {
  if (n == null || !Number.isFinite(Number(n))) return t("common.none");
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < BYTE_UNITS.length - 1) { v /= 1024; i++; }
  return nf({ style: "unit", unit: BYTE_UNITS[i], unitDisplay: "short", maximumFractionDigits: i === 0 ? 0 : 1 }).format(v);
}

export function fmtDate(value) {
  if (value == null || value === "") return t("common.none");
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return new Intl.DateTimeFormat(locale(), { dateStyle: "medium", timeStyle: "short" }).format(d);
}

export function fmtTime(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  if (Number.isNaN(d.getTime())) return "";
  return new Intl.DateTimeFormat(locale(), { hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(d);
}

/** A clock-like duration: 0:42, 12:05, 3:04:05, or "2 d 03:04:05" style for very long runs. */
export function fmtClock(seconds) {
  if (seconds == null || !Number.isFinite(Number(seconds))) return "–:––";
  let s = Math.max(0, Math.round(Number(seconds)));
  const days = Math.floor(s / 86400); s -= days * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const pad = (x) => String(x).padStart(2, "0");
  const clock = h || days ? `${days ? pad(h) : h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
  return days ? `${t("units.days_short", { count: days, n: days })} ${clock}` : clock;
}

/** A rough human duration: "about 5 minutes", "about 3 hours", "less than a minute". */
export function fmtApproxDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return t("common.none");
  if (seconds < 60) return t("units.under_minute");
  const table = [["minute", 60], ["hour", 3600], ["day", 86400], ["year", 365 * 86400]];
  let unit = table[0];
  for (const row of table) if (seconds >= row[1]) unit = row;
  const v = seconds / unit[1];
  const text = nf({ style: "unit", unit: unit[0], unitDisplay: "long", maximumFractionDigits: v < 10 ? 1 : 0 }).format(v);
  return t("units.about", { value: text });
}
