// moakit UI: the playground: a stack's shape, then a live run over SSE.
//
// Untrusted text (model answers, questions, upstream errors) is put in the page with textContent
// only (el()/setText()); no module assigns innerHTML or builds markup from strings.

import {
  $, clear, el, errorText, fmtCost, fmtSeconds, getJSON, headers, readSSE, setText, showError,
} from "./dom.js";
import { Grid } from "./grid.js";
import { openMember } from "./member.js";
import { adviceText, decisionText, showToolCalls } from "./tools.js";

// -- playground ---------------------------------------------------------------------------

let stacks = [];

let running = null; // the AbortController of the run in progress

export function stackNamed(name) {
  return stacks.find((s) => s.name === name);
}

export function stopQuery() {
  if (running) running.abort();
}

export function renderShape(stack) {
  const box = $("shape");
  clear(box);
  if (!stack) return;
  if (stack.error) {
    box.append(el("p", "error", "unavailable: " + stack.error));
    return;
  }
  const facts = [
    stack.llm_calls + " LLM calls",
    stack.serial_rounds + " serial rounds",
    stack.estimated_cost_usd === null
      ? "cost unknown (no prices)"
      : "≈ " + fmtCost(stack.estimated_cost_usd),
  ];
  box.append(el("p", "muted", facts.join(" · ")));
  if (stack.description) box.append(el("p", "muted", stack.description));
  stack.layers.forEach((members, i) => {
    const row = el("div", "shape-row");
    row.append(el("span", "shape-layer", "layer " + (i + 1)));
    members.forEach((m) => row.append(el("span", "chip", m.label)));
    box.append(row);
  });
  const agg = el("div", "shape-row");
  agg.append(el("span", "shape-layer", "aggregator"));
  agg.append(el("span", "chip chip-agg", stack.aggregator.label));
  stack.fallbacks.forEach((f) => agg.append(el("span", "chip", "fallback: " + f.label)));
  box.append(agg);
}

export async function loadStacks() {
  try {
    const body = await getJSON("/ui/api/stacks");
    stacks = body.data;
  } catch (e) {
    showError("cannot list stacks: " + e.message);
    return;
  }
  showError("");
  for (const select of [$("stack-select"), $("filter-stack")]) {
    const keep = select.id === "filter-stack" ? select.options[0] : null;
    clear(select);
    if (keep) select.append(keep);
    stacks.forEach((s) => {
      const option = el("option", "", s.name);
      option.value = s.name;
      select.append(option);
    });
  }
  // Open on a stack that can run (a preset whose key is missing cannot), keeping a choice the
  // user already made.
  const select = $("stack-select");
  const chosen = stackNamed(select.dataset.chosen || "");
  const usable = chosen && !chosen.error ? chosen : stacks.find((s) => !s.error) || stacks[0];
  if (usable) select.value = usable.name;
  renderShape(usable);
  if (stacks.length && !stacks.some((s) => !s.error)) {
    showError("no stack can run on this server: " + stacks[0].name + ": " + stacks[0].error);
  }
}

function runSummary(result) {
  const usage = result.usage || { prompt_tokens: 0, completion_tokens: 0 };
  return [
    result.llm_calls + " calls",
    result.serial_rounds + " rounds",
    usage.prompt_tokens + "+" + usage.completion_tokens + " tokens",
    fmtSeconds(result.latency_s),
    fmtCost(result.cost_usd),
  ].join(" · ");
}

export async function runQuery() {
  const stack = $("stack-select").value;
  const prompt = $("question").value;
  const button = $("run-button");
  const stop = $("stop-button");
  const final = $("final-answer");
  const shape = stackNamed(stack);
  // Never silent: say why nothing runs.
  if (!shape) {
    showError("choose a stack first");
    return;
  }
  if (shape.error) {
    showError("the stack " + stack + " cannot run: " + shape.error);
    return;
  }
  if (!prompt.trim()) {
    showError("type a question first");
    $("question").focus();
    return;
  }
  const grid = new Grid($("live-grid"), openMember);
  const aggLayer = (shape.layers || []).length + 1;
  let aggregators = 0;
  let aggCard = null;
  setText(final, "");
  showToolCalls($("final-calls"), []);
  setText($("run-advice"), "");
  $("run-decisions").replaceChildren();
  setText($("run-summary"), "");
  $("open-trace").hidden = true;
  showError("");
  button.disabled = true;
  stop.disabled = false;
  running = new AbortController();
  setText($("run-status"), "running…");

  function aggregatorRow() {
    grid.row(aggLayer, "aggregator");
  }

  const handlers = {
    run(ev) {
      const link = $("open-trace");
      link.href = "#/traces/" + encodeURIComponent(ev.run_id);
      link.dataset.runId = ev.run_id;
    },
    LayerStarted(ev) {
      grid.row(ev.layer, "layer " + ev.layer);
      ev.members.forEach((label, i) => grid.card(ev.layer, i, label, ""));
    },
    MemberStarted(ev) {
      const card = grid.card(ev.layer, ev.index, ev.label, ev.model);
      grid.setStatus(card, "running", ev.attempt > 1 ? "retry " + ev.attempt : "running");
      setText(card.text, "");
    },
    MemberDelta(ev) {
      grid.appendText(grid.card(ev.layer, ev.index), ev.text);
    },
    MemberFinished(ev) {
      const out = ev.output;
      grid.finish(grid.card(out.layer, out.index, out.label, out.model), out);
    },
    LayerFinished(ev) {
      const layer = ev.result;
      grid.row(ev.layer, "layer " + ev.layer + " · " + layer.answered + "/" +
        layer.members.length + " answered · " + fmtSeconds(layer.latency_s));
    },
    AggregatorStarted(ev) {
      aggregatorRow();
      const index = typeof ev.index === "number" ? ev.index : aggregators;
      aggregators += 1;
      aggCard = grid.card(aggLayer, index, ev.label, ev.model, "aggregator");
      grid.setStatus(aggCard, "running", "on " + ev.references + " references");
      setText(aggCard.text, "");
    },
    TextDelta(ev) {
      final.textContent += ev.text;
      if (aggCard) grid.appendText(aggCard, ev.text);
    },
    Decided(ev) {
      // An early exit, escalation, budget or route cut, as the engine decided it.
      $("run-decisions").append(el("li", "decision", decisionText(ev.decision)));
    },
    ToolCalls(ev) {
      // The final answer's calls, checked against the tools' schemas before they were sent.
      showToolCalls($("final-calls"), ev.calls);
    },
    AggregatorFailed(ev) {
      const out = ev.failed;
      grid.finish(grid.card(out.layer, out.index, out.label, out.model, "aggregator"), out);
      if (ev.had_text) {
        setText(final, "");
      }
    },
    RunFinished(ev) {
      const result = ev.result;
      result.aggregators.forEach((out) =>
        grid.finish(grid.card(out.layer, out.index, out.label, out.model, "aggregator"), out)
      );
      setText(final, result.final);
      showToolCalls($("final-calls"), result.tool_calls);
      setText($("run-advice"), result.advice ? adviceText(result.advice, result.advice_from) : "");
      setText($("run-summary"), runSummary(result));
      setText($("run-status"), "done");
      $("open-trace").hidden = false;
      final.scrollIntoView({ block: "nearest" });
    },
    error(ev) {
      const result = ev.result;
      if (result) {
        result.aggregators.forEach((out) =>
          grid.finish(grid.card(out.layer, out.index, out.label, out.model, "aggregator"), out)
        );
      }
      showError(ev.message);
      setText($("run-status"), "failed");
      $("open-trace").hidden = false;
    },
  };
  handlers.AggregatorAttemptFailed = handlers.AggregatorFailed;
  handlers.RunFailed = handlers.error;

  const signal = running.signal;
  try {
    const response = await fetch("/ui/api/run", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ stack: stack, prompt: prompt }),
      signal: signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    await readSSE(response, (ev) => {
      const handle = handlers[ev.type];
      if (handle) handle(ev);
    });
  } catch (e) {
    if (signal.aborted) {
      // Stop: the server sees the connection close and cancels the run's calls.
      setText($("run-status"), "stopped");
    } else {
      showError(e.message);
      setText($("run-status"), "failed");
      final.scrollIntoView({ block: "nearest" });
    }
  } finally {
    running = null;
    button.disabled = false;
    stop.disabled = true;
  }
}
