// moakit UI: entry point: routing between the playground and the trace viewer.
//
// Untrusted text (model answers, questions, upstream errors) is put in the page with textContent
// only (el()/setText()); no module assigns innerHTML or builds markup from strings.

import { $, apiKey, KEY_STORAGE, setText } from "./dom.js";
import { loadStacks, renderShape, runQuery, stackNamed } from "./playground.js";
import { loadTraces, openTrace } from "./traces.js";

// -- routing ------------------------------------------------------------------------------

function route() {
  const hash = location.hash || "#/playground";
  const traces = hash.startsWith("#/traces");
  $("view-playground").hidden = traces;
  $("view-traces").hidden = !traces;
  $("nav-playground").classList.toggle("active", !traces);
  $("nav-traces").classList.toggle("active", traces);
  $("member-panel").hidden = true;
  if (!traces) return;
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
    renderShape(stackNamed($("stack-select").value));
  });
  $("run-button").addEventListener("click", runQuery);
  $("trace-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    loadTraces();
  });
  $("member-close").addEventListener("click", () => {
    $("member-panel").hidden = true;
  });
  window.addEventListener("hashchange", route);
  loadStacks().then(route);
}

init();
