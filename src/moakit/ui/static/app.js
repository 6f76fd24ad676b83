// moakit UI: entry point: routing between the playground, the trace viewer and the evals.
//
// Untrusted text (model answers, questions, upstream errors) is put in the page with textContent
// only (el()/setText()); no module assigns innerHTML or builds markup from strings.

import { $, apiKey, KEY_STORAGE, setText } from "./dom.js";
import { loadStacks, renderShape, runQuery, stackNamed, stopQuery } from "./playground.js";
import { initEvals, loadEvals, openEval } from "./evals.js";
import { loadTraces, openTrace } from "./traces.js";

// -- routing ------------------------------------------------------------------------------

function routeEvals(hash) {
  const name = hash.slice("#/evals/".length);
  if (hash.startsWith("#/evals/") && name) {
    openEval(decodeURIComponent(name));
  } else {
    $("eval-browser").hidden = false;
    $("eval-detail").hidden = true;
    loadEvals();
  }
}

function route() {
  const hash = location.hash || "#/playground";
  const view = hash.startsWith("#/traces") ? "traces" : hash.startsWith("#/evals") ? "evals" : "playground";
  for (const name of ["playground", "traces", "evals"]) {
    $("view-" + name).hidden = view !== name;
    $("nav-" + name).classList.toggle("active", view === name);
  }
  $("member-panel").hidden = true;
  if (view === "evals") return routeEvals(hash);
  if (view !== "traces") return;
  const id = hash.slice("#/traces/".length);
  if (hash.startsWith("#/traces/") && id) {
    openTrace(decodeURIComponent(id));
  } else {
    $("trace-browser").hidden = false;
    $("trace-detail").hidden = true;
    loadTraces();
  }
}

function init() {
  $("api-key").value = apiKey();
  $("auth-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    setText($("auth-status"), "key set for this tab");
    loadStacks().then(route);
  });
  $("stack-select").addEventListener("change", () => {
    $("stack-select").dataset.chosen = $("stack-select").value;
    renderShape(stackNamed($("stack-select").value));
  });
  $("run-button").addEventListener("click", runQuery);
  $("stop-button").addEventListener("click", stopQuery);
  $("trace-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    loadTraces();
  });
  $("member-close").addEventListener("click", () => {
    $("member-panel").hidden = true;
  });
  initEvals();
  window.addEventListener("hashchange", route);
  loadStacks().then(route);
}

init();
