// moakit UI: the grid of a run, layers as rows and members as cards (playground and viewer).
//
// Untrusted text (model answers, questions, upstream errors) is put in the page with textContent
// only (el()/setText()); no module assigns innerHTML or builds markup from strings.

import { clear, el, fmtSeconds, setText } from "./dom.js";
import { showToolCalls } from "./tools.js";

// -- the grid: layers as rows, members as cards (shared by playground and viewer) -----------

export class Grid {
  constructor(container, onOpen) {
    this.container = container;
    this.onOpen = onOpen;
    this.rows = new Map(); // key "L" -> {row, title, cards}
    this.cards = new Map(); // key "L:I" -> card
    clear(container);
  }

  row(layer, title) {
    const key = String(layer);
    let row = this.rows.get(key);
    if (!row) {
      const node = el("div", "layer");
      node.dataset.layer = key;
      const heading = el("div", "layer-title", title);
      const cards = el("div", "cards");
      node.append(heading, cards);
      this.container.append(node);
      row = { node: node, heading: heading, cards: cards };
      this.rows.set(key, row);
    }
    if (title) setText(row.heading, title);
    return row;
  }

  card(layer, index, label, model, role) {
    const key = layer + ":" + index;
    let card = this.cards.get(key);
    if (!card) {
      const row = this.row(layer);
      const node = el("div", "card");
      node.dataset.layer = String(layer);
      node.dataset.index = String(index);
      node.dataset.role = role || "proposer";
      node.dataset.status = "pending";
      node.tabIndex = 0;
      const head = el("div", "card-head");
      const title = el("span", "card-label", label);
      const status = el("span", "card-status", "waiting");
      head.append(title, status);
      const meta = el("div", "card-meta", model || "");
      const text = el("div", "card-text");
      const calls = el("div", "tool-calls");
      calls.hidden = true;
      node.append(head, meta, text, calls);
      row.cards.append(node);
      card = { node: node, title: title, status: status, meta: meta, text: text, calls: calls, data: null };
      const open = () => {
        if (card.data && this.onOpen) this.onOpen(card.data);
      };
      node.addEventListener("click", open);
      node.addEventListener("keydown", (e) => {
        if (e.key === "Enter") open();
      });
      this.cards.set(key, card);
    }
    if (label) setText(card.title, label);
    return card;
  }

  setStatus(card, status, label) {
    card.node.dataset.status = status;
    setText(card.status, label || status);
  }

  appendText(card, text) {
    card.text.textContent += text;
  }

  // A finished call: a MemberOutput from the engine or a stored call record.
  finish(card, out) {
    const failed = out.error !== undefined ? out.error : out.status_message;
    const output = out.output;
    const tokens =
      (out.usage ? out.usage.prompt_tokens : out.prompt_tokens) +
      "+" +
      (out.usage ? out.usage.completion_tokens : out.completion_tokens) +
      " tok";
    let status = "ok";
    let label = "✓ " + fmtSeconds(out.latency_s);
    if (out.cancelled) {
      status = "cancelled";
      label = "cut " + fmtSeconds(out.latency_s);
    } else if (failed !== null && failed !== undefined) {
      status = "failed";
      label = "✗ failed";
    } else if (out.truncated) {
      status = "truncated";
      label = "truncated " + fmtSeconds(out.latency_s);
    }
    this.setStatus(card, status, label);
    setText(card.meta, (out.model || out.model_name || "") + " · " + tokens);
    if (failed !== null && failed !== undefined) {
      setText(card.text, failed);
      card.text.classList.add("error");
    } else {
      setText(card.text, output || "");
      card.text.classList.remove("error");
    }
    // An answer made of tool calls (a final aggregator offered tools): the calls, as text.
    showToolCalls(card.calls, out.tool_calls);
    card.data = out;
  }
}
