// moakit UI: DOM helpers and the API client.
//
// Untrusted text (model answers, questions, upstream errors) is put in the page with textContent
// only (el()/setText()); no module assigns innerHTML or builds markup from strings.

export const KEY_STORAGE = "moakit.apiKey";

// -- DOM helpers ------------------------------------------------------------------------

export function $(id) {
  return document.getElementById(id);
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function setText(node, text) {
  node.textContent = text === undefined || text === null ? "" : String(text);
}

export function fmtSeconds(s) {
  return typeof s === "number" ? s.toFixed(2) + "s" : "-";
}

export function fmtCost(c) {
  return typeof c === "number" ? "$" + c.toFixed(4) : "-";
}

export function fmtTime(epoch) {
  if (typeof epoch !== "number") return "-";
  const d = new Date(epoch * 1000);
  return d.toLocaleString();
}

export function showError(message) {
  const banner = $("error-banner");
  setText(banner, message);
  banner.hidden = !message;
}

// -- API ----------------------------------------------------------------------------------

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

export async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (e) {
    // not JSON: fall through to the status line
  }
  return "HTTP " + response.status;
}

export async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) {
    const message = await errorText(response);
    if (response.status === 401) setText($("auth-status"), "key refused: " + message);
    throw new Error(message);
  }
  return response.json();
}

// Reads "data: {...}\n\n" frames from a streamed fetch body; calls onEvent per frame.
export async function readSSE(response, onEvent) {
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
