// moakit UI: the trace viewer: list and filter recorded queries, open one as a grid.
//
// Untrusted text (model answers, questions, upstream errors) is put in the page with textContent
// only (el()/setText()); no module assigns innerHTML or builds markup from strings.

import { $, clear, el, fmtCost, fmtSeconds, fmtTime, getJSON, setText, showError } from "./dom.js";
import { Grid } from "./grid.js";
import { openMember } from "./member.js";
import { adviceText, decisionText, messageNode, showToolCalls } from "./tools.js";

// -- trace viewer -------------------------------------------------------------------------

export async function loadTraces() {
  const params = new URLSearchParams();
  const stack = $("filter-stack").value;
  const status = $("filter-status").value;
  const since = $("filter-since").value;
  if (stack) params.set("stack", stack);
  if (status) params.set("status", status);
  if (since) params.set("since", String(Date.now() / 1000 - Number(since)));
  let body;
  try {
    body = await getJSON("/ui/api/traces?" + params.toString());
  } catch (e) {
    showError("cannot list traces: " + e.message);
    return;
  }
  showError("");
  const tbody = $("trace-list").querySelector("tbody");
  clear(tbody);
  body.data.forEach((t) => {
    const tr = el("tr", "trace-row");
    tr.dataset.id = t.id;
    tr.dataset.status = t.status;
    [fmtTime(t.start_time), t.stack_name, t.status, fmtSeconds(t.latency_s), t.total_tokens,
      fmtCost(t.cost_usd), t.question].forEach((v, i) => {
      const td = el("td", i === 2 ? "status-" + t.status : "", v);
      tr.append(td);
    });
    tr.addEventListener("click", () => {
      location.hash = "#/traces/" + encodeURIComponent(t.id);
    });
    tbody.append(tr);
  });
  if (!body.data.length) {
    const tr = el("tr");
    const td = el("td", "muted", "no traces match");
    td.colSpan = 7;
    tr.append(td);
    tbody.append(tr);
  }
}

export async function openTrace(id) {
  let record;
  try {
    record = await getJSON("/ui/api/traces/" + encodeURIComponent(id));
  } catch (e) {
    showError("cannot open trace: " + e.message);
    return;
  }
  showError("");
  const q = record.query;
  const header = $("trace-header");
  clear(header);
  header.dataset.status = q.status;
  header.append(el("h2", "", q.stack_name + " · " + q.status));
  header.append(el("p", "muted", [
    "run " + q.id, fmtTime(q.start_time), fmtSeconds(q.latency_s),
    q.prompt_tokens + "+" + q.completion_tokens + " tokens", fmtCost(q.cost_usd),
    q.llm_calls + " calls", q.serial_rounds + " rounds", "via " + q.source,
  ].join(" · ")));
  if (q.status_message) header.append(el("p", "error", q.status_message));
  if (q.advice) header.append(el("p", "advice", adviceText(q.advice, q.advice_from)));
  for (const d of q.decisions || []) header.append(el("p", "decision", decisionText(d)));
  if (Array.isArray(q.input)) {
    q.input.forEach((m) => header.append(messageNode(m, "answer question")));
  }
  const grid = new Grid($("trace-grid"), openMember);
  const layers = new Map();
  record.calls.forEach((c) => {
    if (!layers.has(c.layer)) layers.set(c.layer, []);
    layers.get(c.layer).push(c);
  });
  [...layers.keys()].sort((a, b) => a - b).forEach((layer) => {
    const calls = layers.get(layer);
    const isAgg = calls.every((c) => c.role === "aggregator");
    const answered = calls.filter((c) => c.output !== null && c.status_message === null).length;
    grid.row(layer, (isAgg ? "aggregator" : "layer " + layer) + " · " + answered + "/" + calls.length + " answered");
    calls.sort((a, b) => a.index - b.index).forEach((c) => {
      grid.finish(grid.card(layer, c.index, c.label, c.model_name, c.role), c);
    });
  });
  setText($("trace-final"), q.output || "");
  showToolCalls($("trace-final-calls"), q.tool_calls);
  $("trace-browser").hidden = true;
  $("trace-detail").hidden = false;
}
