// moakit UI: playground (live run over SSE) and trace viewer. No framework, no build step.
//
// Every text that comes from a model, a user or an upstream error is untrusted: it is put in
// the page with textContent (via el()/setText()) only. This file never assigns innerHTML,
// outerHTML or insertAdjacentHTML, and never builds markup from strings.
"use strict";

(function () {
  const KEY_STORAGE = "moakit.apiKey";

  // -- DOM helpers ------------------------------------------------------------------------

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function setText(node, text) {
    node.textContent = text === undefined || text === null ? "" : String(text);
  }

  function fmtSeconds(s) {
    return typeof s === "number" ? s.toFixed(2) + "s" : "-";
  }

  function fmtCost(c) {
    return typeof c === "number" ? "$" + c.toFixed(4) : "-";
  }

  function fmtTime(epoch) {
    if (typeof epoch !== "number") return "-";
    const d = new Date(epoch * 1000);
    return d.toLocaleString();
  }

  function showError(message) {
    const banner = $("error-banner");
    setText(banner, message);
    banner.hidden = !message;
  }

  // -- API ----------------------------------------------------------------------------------

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const key = apiKey();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) {
      // not JSON: fall through to the status line
    }
    return "HTTP " + response.status;
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: headers() });
    if (!response.ok) {
      const message = await errorText(response);
      if (response.status === 401) setText($("auth-status"), "key refused: " + message);
      throw new Error(message);
    }
    return response.json();
  }

  // Reads "data: {...}\n\n" frames from a streamed fetch body; calls onEvent per frame.
  async function readSSE(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = frame
          .split("\n")
          .filter((line) => line.startsWith("data: "))
          .map((line) => line.slice(6))
          .join("\n");
        if (data) onEvent(JSON.parse(data));
      }
    }
  }

  // -- the grid: layers as rows, members as cards (shared by playground and viewer) -----------

  class Grid {
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
        node.append(head, meta, text);
        row.cards.append(node);
        card = { node: node, title: title, status: status, meta: meta, text: text, data: null };
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
      card.data = out;
    }
  }

  // -- playground ---------------------------------------------------------------------------

  let stacks = [];

  function renderShape(stack) {
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

  async function loadStacks() {
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
    renderShape(stacks[0]);
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

  async function runQuery() {
    const stack = $("stack-select").value;
    const prompt = $("question").value;
    const button = $("run-button");
    const final = $("final-answer");
    const grid = new Grid($("live-grid"), openMember);
    const layerCount = (stacks.find((s) => s.name === stack) || { layers: [] }).layers.length;
    const aggLayer = layerCount + 1;
    let aggregators = 0;
    let aggCard = null;
    setText(final, "");
    setText($("run-summary"), "");
    $("open-trace").hidden = true;
    showError("");
    button.disabled = true;
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
        const layer = ev.layer;
        grid.row(layer.index, "layer " + layer.index + " · " + layer.answered + "/" +
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
      AggregatorFailed(ev) {
        const out = ev.failed;
        grid.finish(grid.card(out.layer, out.index, out.label, out.model, "aggregator"), out);
        if (ev.discard_text || ev.had_text) {
          setText(final, "");
        }
      },
      RunFinished(ev) {
        const result = ev.result;
        result.aggregators.forEach((out) =>
          grid.finish(grid.card(out.layer, out.index, out.label, out.model, "aggregator"), out)
        );
        setText(final, result.final);
        setText($("run-summary"), runSummary(result));
        setText($("run-status"), "done");
        $("open-trace").hidden = false;
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

    try {
      const response = await fetch("/ui/api/run", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ stack: stack, prompt: prompt }),
      });
      if (!response.ok) throw new Error(await errorText(response));
      await readSSE(response, (ev) => {
        const handle = handlers[ev.type];
        if (handle) handle(ev);
      });
    } catch (e) {
      showError(e.message);
      setText($("run-status"), "failed");
    } finally {
      button.disabled = false;
    }
  }

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
  function sharedMarks(reference, answer, n) {
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

  function openMember(call) {
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
      call.input.forEach((m) => {
        const block = el("div", "message");
        block.append(el("div", "muted", m.role));
        block.append(el("pre", "answer", typeof m.content === "string" ? m.content : JSON.stringify(m.content)));
        input.append(block);
      });
    } else {
      input.append(el("p", "muted", call.input_hash ? "not stored (" + call.input_hash + ")" : "not recorded"));
    }
    panel.hidden = false;
  }

  // -- trace viewer -------------------------------------------------------------------------

  async function loadTraces() {
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

  async function openTrace(id) {
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
    if (Array.isArray(q.input)) {
      q.input.forEach((m) => header.append(el("pre", "answer question", m.role + ": " + m.content)));
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
    $("trace-browser").hidden = true;
    $("trace-detail").hidden = false;
  }

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
      renderShape(stacks.find((s) => s.name === $("stack-select").value));
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
})();
