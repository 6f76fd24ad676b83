// moakit UI: the eval report viewer: a `moa eval` results directory's summary, plots, and
// per-item records side by side across systems.
//
// Untrusted text (model answers, questions, upstream errors) is put in the page with textContent
// only (el()/setText()); no module assigns innerHTML or builds markup from strings.

import { $, clear, el, fmtCost, fmtSeconds, getJSON, headers, setText, showError } from "./dom.js";

const PAGE = 50;
let current = null; // { name, systems, offset }

function fmtScore(score) {
  if (score && typeof score === "object" && typeof score.mean === "number") {
    const ci = typeof score.low === "number" ? " [" + score.low.toFixed(3) + ", " +
      score.high.toFixed(3) + "]" : "";
    return score.mean.toFixed(3) + ci;
  }
  return score === null || score === undefined ? "–" : JSON.stringify(score);
}

export async function loadEvals() {
  const list = $("eval-list");
  clear(list);
  let body;
  try {
    body = await getJSON("/ui/api/evals");
  } catch (e) {
    list.append(el("li", "muted", "no eval results available (" + e.message + ")"));
    return;
  }
  body.data.forEach((r) => {
    const item = el("li");
    const link = el("a", "eval-link", r.name);
    link.href = "#/evals/" + encodeURIComponent(r.name);
    item.append(link, el("span", "muted", " · " + (r.dataset || "?") + " · " + (r.scorer || "?") +
      " · " + r.systems + " systems"));
    list.append(item);
  });
  if (!body.data.length) list.append(el("li", "muted", "no results directories found"));
}

async function plotImage(name, file) {
  // <img src> cannot send the API key: fetch the PNG with it and show it from a blob URL.
  const response = await fetch(
    "/ui/api/evals/" + encodeURIComponent(name) + "/plots/" + encodeURIComponent(file),
    { headers: headers() }
  );
  if (!response.ok) throw new Error("HTTP " + response.status);
  const img = el("img", "plot");
  img.alt = file;
  img.src = URL.createObjectURL(await response.blob());
  return img;
}

function summaryRows(summary) {
  const tbody = $("eval-summary").querySelector("tbody");
  clear(tbody);
  (summary.systems || []).forEach((s) => {
    const tr = el("tr", "eval-system");
    [
      s.name, s.kind, s.items, s.errors, fmtScore(s.score),
      (s.tokens_in ?? "–") + " / " + (s.tokens_out ?? "–"), fmtCost(s.cost_usd),
      fmtSeconds(s.latency_s_mean), fmtSeconds(s.ttft_s_mean),
    ].forEach((v) => tr.append(el("td", "", v)));
    tbody.append(tr);
  });
}

async function moreItems() {
  const { name, offset } = current;
  const body = await getJSON(
    "/ui/api/evals/" + encodeURIComponent(name) + "/items?offset=" + offset + "&limit=" + PAGE
  );
  const table = $("eval-items");
  if (offset === 0) {
    const head = table.querySelector("thead tr");
    clear(head);
    head.append(el("th", "", "item"));
    body.systems.forEach((s) => head.append(el("th", "", s)));
    clear(table.querySelector("tbody"));
    current.systems = body.systems;
  }
  const tbody = table.querySelector("tbody");
  body.data.forEach((item) => {
    const tr = el("tr", "eval-item");
    tr.append(el("td", "", item.item_id));
    current.systems.forEach((s) => {
      const td = el("td");
      const rec = item.systems[s];
      if (rec) {
        const score = rec.score === null || rec.score === undefined ? "–" : String(rec.score);
        td.append(el("div", "muted", "score " + score + " · " + fmtSeconds(rec.latency_s)));
        if (rec.error) td.append(el("div", "error", rec.error));
        td.append(el("div", "eval-answer", rec.final || ""));
      }
      tr.append(td);
    });
    tbody.append(tr);
  });
  current.offset = offset + body.data.length;
  setText($("eval-items-count"), "(" + current.offset + " of " + body.total + ")");
  $("eval-more").hidden = current.offset >= body.total;
}

export async function openEval(name) {
  let body;
  try {
    body = await getJSON("/ui/api/evals/" + encodeURIComponent(name));
  } catch (e) {
    showError("cannot open results: " + e.message);
    return;
  }
  showError("");
  const s = body.summary;
  setText($("eval-title"), body.name + " · " + (s.dataset || "?") + " · " + (s.scorer || "?"));
  summaryRows(s);
  const plots = $("eval-plots");
  clear(plots);
  for (const file of body.plots) {
    const figure = el("figure");
    try {
      figure.append(await plotImage(body.name, file));
    } catch (e) {
      figure.append(el("p", "error", file + ": " + e.message));
    }
    figure.append(el("figcaption", "muted", file));
    plots.append(figure);
  }
  if (!body.plots.length) plots.append(el("p", "muted", "no plots"));
  current = { name: body.name, systems: [], offset: 0 };
  await moreItems();
  $("eval-browser").hidden = true;
  $("eval-detail").hidden = false;
}

export function initEvals() {
  $("eval-more").addEventListener("click", () => {
    moreItems().catch((e) => showError(e.message));
  });
}
