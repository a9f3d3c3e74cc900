// Start-up: language, tabs (kept in the URL hash), server health, and the shared polling that
// keeps models and runs fresh while training is live.

import { api } from "./api.js";
import { t, initialLanguage, setLanguage, currentLanguage, onLanguageChange } from "./i18n.js";
import { $, toast, store, refreshModels, refreshBooks, refreshRuns, LIVE_STATES, showChoice } from "./ui.js";
import { initCreate, showCreate } from "./create.js";
import { loadSettings } from "./settings.js";
import { initBooks, showBooks } from "./books.js";
import { initTraining, showTraining } from "./training.js";
import { initRuns, showRuns } from "./runs.js";
import { initGeneration, showGeneration } from "./generate.js";
import { initModels, showModels } from "./models.js";

const TABS = {
  create: showCreate,
  books: showBooks,
  training: showTraining,
  runs: showRuns,
  generation: showGeneration,
  models: showModels,
};
const ORDER = Object.keys(TABS);
let currentTab = null;

function tabFromHash() {
  const name = location.hash.replace(/^#/, "").split(/[/?]/)[0];
  return TABS[name] ? name : null;
}

function showTab(name, { focus = false } = {}) {
  if (!TABS[name]) name = "create";
  currentTab = name;
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", on ? "true" : "false");
    tab.tabIndex = on ? 0 : -1;
    if (on) tab.scrollIntoView({ block: "nearest", inline: "nearest" });
    if (on && focus) tab.focus();
  }
  for (const panel of document.querySelectorAll('[role="tabpanel"]')) {
    panel.hidden = panel.id !== `panel-${name}`;
  }
  try { TABS[name](); } catch (e) { console.error(e); }
}

function initTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => {
      if (location.hash !== `#${tab.dataset.tab}`) location.hash = `#${tab.dataset.tab}`;
      else showTab(tab.dataset.tab);
    });
    tab.addEventListener("keydown", (e) => {
      const i = ORDER.indexOf(tab.dataset.tab);
      let j = null;
      if (e.key === "ArrowRight") j = (i + 1) % ORDER.length;
      else if (e.key === "ArrowLeft") j = (i - 1 + ORDER.length) % ORDER.length;
      else if (e.key === "Home") j = 0;
      else if (e.key === "End") j = ORDER.length - 1;
      if (j == null) return;
      e.preventDefault();
      location.hash = `#${ORDER[j]}`;
      showTab(ORDER[j], { focus: true });
    });
  }
  window.addEventListener("hashchange", () => {
    const name = tabFromHash();
    if (name && name !== currentTab) showTab(name);
  });
}

function initLanguageSwitch() {
  for (const btn of document.querySelectorAll("[data-lang]")) {
    btn.addEventListener("click", () => setLanguage(btn.dataset.lang));
  }
  const mark = () => {
    for (const btn of document.querySelectorAll("[data-lang]")) {
      btn.setAttribute("aria-pressed", btn.dataset.lang === currentLanguage() ? "true" : "false");
    }
  };
  onLanguageChange(mark);
  mark();
}

let health = { ok: null, version: null };
function renderHealth() {
  const el = $("server-status");
  el.classList.toggle("ok", health.ok === true);
  el.classList.toggle("down", health.ok === false);
  el.querySelector(".text").textContent = health.ok === false ? t("app.server_down")
    : health.ok ? t("app.server_ok", { version: health.version || "" }) : t("common.loading");
}

async function checkHealth() {
  const wasDown = health.ok === false;
  try {
    const res = await api("/api/health");
    health = { ok: true, version: res && res.version };
    if (wasDown) {
      toast(t("app.server_back"), "success");
      refreshAll();
    }
  } catch {
    health = { ok: false, version: health.version };
  }
  renderHealth();
}

function refreshAll() {
  return Promise.allSettled([refreshModels(), refreshBooks(), refreshRuns()]);
}

async function main() {
  await setLanguage(initialLanguage(), { save: false });
  initLanguageSwitch();
  initTabs();
  await loadSettings(); // the forms' defaults and bounds
  initCreate();
  initBooks();
  initTraining();
  initRuns();
  initGeneration();
  initModels();
  onLanguageChange(renderHealth);
  // every select's chosen text as its tooltip, where a narrow field cuts it off
  const showChoices = () => { for (const sel of document.querySelectorAll("select")) showChoice(sel); };
  document.addEventListener("change", (e) => { if (e.target.tagName === "SELECT") showChoice(e.target); });
  onLanguageChange(showChoices);
  renderHealth();
  checkHealth();
  const results = await refreshAll();
  const failed = results.find((r) => r.status === "rejected");
  if (failed) toast(failed.reason.message, "error");
  let first = tabFromHash();
  if (!first) first = store.models.length ? "training" : "create";
  showTab(first);
  showChoices();
  document.body.classList.remove("loading");
  document.body.dataset.ready = "1";

  // Keep lists fresh: quickly while something trains, slowly otherwise.
  let tick = 0;
  let wasLive = false;
  setInterval(() => {
    if (document.hidden) return;
    tick++;
    const live = store.runs.some((r) => LIVE_STATES.has(r.state));
    const justEnded = wasLive && !live;
    wasLive = live;
    if (live || justEnded || tick % 5 === 0) {
      refreshRuns().catch(() => {});
      refreshModels().catch(() => {});
    }
    if (tick % 5 === 0 || health.ok === false) checkHealth();
  }, 2000);
  // A failed call or a dropped event stream: find out at once whether the server is gone.
  let lostTimer = 0;
  window.addEventListener("azr:connection-lost", () => {
    clearTimeout(lostTimer);
    lostTimer = setTimeout(checkHealth, 300);
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshAll(); });
}

main().catch((e) => {
  console.error(e);
  document.body.classList.remove("loading");
  const box = document.createElement("p");
  box.className = "fatal";
  box.textContent = String(e && e.message ? e.message : e);
  document.body.prepend(box);
});
