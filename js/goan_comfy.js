// Thin glue over ComfyUI's frontend: toasts, JSON requests, browser downloads, the graph's nodes.
// Works with the frontend ComfyUI 0.3.x pins (1.27.x) and the newest one (1.58.x); what differs is
// feature-detected (lib/toasts.js sendToast, lib/graph.js rootGraph), never read from a version number.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { downloadName, viewUrl } from "./lib/files.js";
import { allNodes, rootGraph } from "./lib/graph.js";
import { ERROR_LIFE, sendToast, toastLife, toastKey, toastDeduper, wrappable } from "./lib/toasts.js";

export { app, api };

const TOAST_STYLE_ID = "goan-toast-style";
// Toast text wraps between words, and long file names at the break opportunities lib/toasts.js adds
// (after / _ - .), not mid-word.
const TOAST_CSS = `
.p-toast-summary, .p-toast-detail, .p-toast-message-text { overflow-wrap: break-word; word-break: normal; }
`;
function injectToastStyle() {
  if (typeof document === "undefined" || document.getElementById(TOAST_STYLE_ID)) return;
  const s = document.createElement("style");
  s.id = TOAST_STYLE_ID;
  s.textContent = TOAST_CSS;
  document.head.append(s);
}

const shownToasts = toastDeduper();

/**
 * A toast through the workspace toast manager (toast.info/success/error, or toast.add on older
 * frontends); an alert dialog on frontends without one. Every toast leaves after its lifetime, and
 * one still on screen is not stacked again.
 */
export function toast(severity, summary, detail = undefined, life = undefined) {
  const ms = toastLife(severity, life);
  const key = toastKey(severity, summary, detail);
  const show = shownToasts.admit(key, ms, Date.now());
  (window.__goanToasts ||= []).push({ severity, summary, detail, life: ms, shown: show }); // a trace the browser test can read
  if (!show) return;
  const entry = { severity, summary: wrappable(summary), detail: wrappable(detail), life: ms };
  try {
    injectToastStyle();
    if (sendToast(app.extensionManager && app.extensionManager.toast, entry)) return;
  } catch (e) {
    console.warn("[goan] toast failed", e);
  }
  const text = detail ? `${summary}: ${detail}` : summary;
  if (app.ui && app.ui.dialog && typeof app.ui.dialog.show === "function") app.ui.dialog.show(text);
  else console.log("[goan]", text);
}

export function toastError(summary, err) {
  const msg = err && err.message ? err.message : String(err || "unknown error");
  console.error("[goan]", summary, err);
  toast("error", summary, msg, ERROR_LIFE);
}

/** fetch through ComfyUI's api (it adds the /api prefix and the user header); {ok, status, json}. */
export async function request(path, { method = "GET", json, body, headers } = {}) {
  const init = { method, headers: { ...(headers || {}) } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const res = await api.fetchApi(path, init);
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  return { ok: res.ok, status: res.status, json: data };
}

/** Throws an Error carrying the server's {error} message unless the answer is 2xx. */
export function expectOk(res, what) {
  if (res.ok) return res.json;
  const msg = (res.json && (res.json.error || res.json.message)) || `HTTP ${res.status}`;
  throw new Error(what ? `${what}: ${msg}` : msg);
}

/** Fetch an output file through /view and save it with the browser's download, as its own name. */
export async function downloadFile(file) {
  const res = await api.fetchApi(viewUrl(file));
  if (!res.ok) throw new Error(`could not fetch ${file.filename} (HTTP ${res.status})`);
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = downloadName(file);
  a.style.display = "none";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return a.download;
}

/** The workflow's root graph (app.rootGraph where the frontend has it, else app.graph). */
export function workflowGraph() {
  return rootGraph(app);
}

/** Every node of the workflow, inside subgraphs too (each once). */
function graphNodes() {
  return Array.from(new Set(allNodes(workflowGraph()).map((x) => x.node)));
}

export function nodesOfType(type) {
  return graphNodes().filter((n) => n.type === type || n.comfyClass === type);
}

export function redraw() {
  try {
    const g = workflowGraph();
    if (app.canvas && app.canvas.setDirty) app.canvas.setDirty(true, true); // the graph on screen, a subgraph too
    else if (g && g.setDirtyCanvas) g.setDirtyCanvas(true, true);
  } catch {
    /* drawing is best effort */
  }
}
