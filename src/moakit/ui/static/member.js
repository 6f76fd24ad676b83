// moakit UI: the member drawer: full answer, attempts, input, and the references with what was kept.
//
// Untrusted text (model answers, questions, upstream errors) is put in the page with textContent
// only (el()/setText()); no module assigns innerHTML or builds markup from strings.

import { $, clear, el, fmtSeconds, setText } from "./dom.js";
import { messageNode, showToolCalls } from "./tools.js";

// -- member drawer: full answer, references with what was kept ------------------------------

function words(text) {
  const out = [];
  const re = /\S+/g;
  let m;
  while ((m = re.exec(text)) !== null) {
    const norm = m[0].toLowerCase().replace(/[^\p{L}\p{N}]+/gu, "");
    out.push({ start: m.index, end: m.index + m[0].length, norm: norm });
  }
  return out;
}

// Marks each word of `reference` that belongs to an n-gram also present in `answer`.
export function sharedMarks(reference, answer, n) {
  const refWords = words(reference);
  const grams = new Set();
  const ans = words(answer).map((w) => w.norm);
  for (let i = 0; i + n <= ans.length; i++) grams.add(ans.slice(i, i + n).join(" "));
  const marks = new Array(refWords.length).fill(false);
  for (let i = 0; i + n <= refWords.length; i++) {
    const key = refWords.slice(i, i + n).map((w) => w.norm).join(" ");
    if (grams.has(key)) for (let j = i; j < i + n; j++) marks[j] = true;
  }
  return { words: refWords, marks: marks };
}

function highlighted(reference, answer) {
  const box = el("div", "reference-text");
  const { words: ws, marks } = sharedMarks(reference, answer || "", 3);
  let pos = 0;
  let kept = 0;
  let i = 0;
  while (i < ws.length) {
    const on = marks[i];
    let j = i;
    while (j + 1 < ws.length && marks[j + 1] === on) j++;
    if (ws[i].start > pos) box.append(document.createTextNode(reference.slice(pos, ws[i].start)));
    const piece = reference.slice(ws[i].start, ws[j].end);
    box.append(on ? el("mark", "kept", piece) : document.createTextNode(piece));
    if (on) kept += j - i + 1;
    pos = ws[j].end;
    i = j + 1;
  }
  if (pos < reference.length) box.append(document.createTextNode(reference.slice(pos)));
  return { node: box, kept: ws.length ? kept / ws.length : 0 };
}

export function openMember(call) {
  const panel = $("member-panel");
  const error = call.error !== undefined ? call.error : call.status_message;
  setText($("member-title"), call.label + " (layer " + call.layer + ")");
  const tokensIn = call.usage ? call.usage.prompt_tokens : call.prompt_tokens;
  const tokensOut = call.usage ? call.usage.completion_tokens : call.completion_tokens;
  const meta = [
    (call.provider || "") + "/" + (call.model_name || call.model || ""),
    fmtSeconds(call.latency_s),
    call.ttft_s !== undefined && call.ttft_s !== null ? "ttft " + fmtSeconds(call.ttft_s) : "",
    tokensIn + "+" + tokensOut + " tokens",
    call.finish_reason ? "finish: " + call.finish_reason : "",
    call.cancelled ? "cancelled" : "",
    call.truncated ? "truncated" : "",
  ].filter(Boolean);
  setText($("member-meta"), meta.join(" · "));
  setText($("member-error"), error || "");
  setText($("member-answer"), call.output || "");
  showToolCalls($("member-calls"), call.tool_calls);

  const refs = $("member-references");
  clear(refs);
  const shown = call.references || [];
  let keptSum = 0;
  shown.forEach((ref) => {
    const item = el("li", "reference");
    item.append(el("div", "muted", ref.label + " · layer " + ref.layer + (ref.truncated ? " · truncated" : "")));
    if (ref.text === null || ref.text === undefined) {
      item.append(el("div", "muted", "text not stored (" + ref.text_hash + ")"));
    } else {
      const h = highlighted(ref.text, call.output);
      keptSum += h.kept;
      item.append(h.node);
    }
    refs.append(item);
  });
  if (!shown.length) refs.append(el("li", "muted", "none (first layer, or not recorded)"));
  setText($("member-kept"), shown.length ? "(" + Math.round((100 * keptSum) / shown.length) + "% of their words kept)" : "");

  const attempts = $("member-attempts");
  clear(attempts);
  (call.attempts || []).forEach((a) => {
    attempts.append(el("li", a.error ? "error" : "", fmtSeconds(a.latency_s) + (a.error ? " — " + a.error : " — ok")));
  });

  const input = $("member-input");
  clear(input);
  if (Array.isArray(call.input)) {
    call.input.forEach((m) => input.append(messageNode(m, "answer")));
  } else {
    input.append(el("p", "muted", call.input_hash ? "not stored (" + call.input_hash + ")" : "not recorded"));
  }
  panel.hidden = false;
}
