// moakit UI: tool calls and tool results, as text (run view, trace viewer, member drawer).
//
// Untrusted text (model answers, questions, upstream errors) is put in the page with textContent
// only (el()/setText()); no module assigns innerHTML or builds markup from strings. A tool
// call's name and arguments are a model's output, a tool result the caller's data: both stay
// text.

import { el } from "./dom.js";

// A call in any of the shapes the page sees: the engine's {id, name, arguments}, a stored
// record's (arguments null when prompts are not stored), or OpenAI's {function: {...}}.
export function toolCallText(call) {
  const fn = call.function || call;
  const args = fn.arguments;
  if (args === null || args === undefined) {
    return fn.name + "(arguments not stored)";
  }
  return fn.name + "(" + (typeof args === "string" ? args : JSON.stringify(args)) + ")";
}

export function toolCallNode(call) {
  const node = el("div", "tool-call");
  node.append(el("span", "tool-call-tag", "tool call"));
  node.append(el("code", "tool-call-text", toolCallText(call)));
  if (call.id) node.title = "id " + call.id;
  return node;
}

// Fills `box` with one line per call (nothing when there are none).
export function showToolCalls(box, calls) {
  while (box.firstChild) box.removeChild(box.firstChild);
  (calls || []).forEach((call) => box.append(toolCallNode(call)));
  box.hidden = !(calls && calls.length);
}

function contentText(content) {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((p) => (p && p.type === "text" ? p.text : "[" + (p && p.type) + "]"))
      .join(" ");
  }
  return JSON.stringify(content);
}

// One input message (OpenAI's shape): its role and text, an assistant's tool calls, or a tool
// result with the call it answers.
export function messageNode(m, textClass) {
  const block = el("div", "message");
  block.dataset.role = m.role;
  const head = m.role === "tool" ? "tool result" + (m.tool_call_id ? " for " + m.tool_call_id : "") : m.role;
  block.append(el("div", "muted", head));
  const text = contentText(m.content);
  if (text || !(m.tool_calls && m.tool_calls.length)) {
    block.append(el("pre", textClass + (m.role === "tool" ? " tool-result" : ""), text));
  }
  (m.tool_calls || []).forEach((call) => block.append(toolCallNode(call)));
  return block;
}

// Whether the proposers' advice was written for this run or reused from an earlier one of the
// same user turn (runs with tools only).
export function adviceText(advice, from) {
  if (advice === "reused") return "advice reused" + (from ? " from run " + from : "");
  return "advice " + advice + " (the proposers answered for this run)";
}

// An adaptive decision (early exit, escalation, budget or route cut), as one line of text.
export function decisionText(d) {
  const skipped = (d.skipped || []).length ? "; skipped " + d.skipped.join(", ") : "";
  return "decision: " + d.kind + " (layer " + d.layer + "): " + d.detail + skipped;
}
