// The "goan" sidebar tab: one row per goan job, controls first on the left. A control that does not
// apply to a job is shown disabled, never hidden, so the layout stays put.
import { listJobs } from "./lib/jobs.js";
import { rowView, rowUpdates, listUpdates, ROW_PARTS } from "./lib/rows.js";
import { getState, onChange, refresh, actions } from "./goan_jobs.js";

const STYLE_ID = "goan-panel-style";
const CSS = `
.goan-panel { padding: 8px; font-size: 13px; color: var(--fg-color, #ddd); display: flex; flex-direction: column; gap: 8px; min-width: 0; }
.goan-panel h3 { margin: 0; font-size: 14px; display: flex; align-items: center; gap: 6px; }
.goan-panel .goan-hint { color: var(--descrip-text, #999); font-size: 12px; margin: 0; }
.goan-panel .goan-list { display: flex; flex-direction: column; }
.goan-panel .goan-job { border-top: 1px solid var(--border-color, #444); padding: 6px 0; min-width: 0; }
.goan-panel .goan-head { display: flex; flex-wrap: wrap; align-items: center; gap: 6px; min-width: 0; }
.goan-panel .goan-controls { display: flex; gap: 2px; flex: none; }
.goan-panel button.goan-btn { width: 26px; height: 26px; padding: 0; border-radius: 4px;
  border: 1px solid var(--border-color, #555); background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd); cursor: pointer; }
.goan-panel button.goan-btn:hover:not(:disabled) { background: var(--comfy-menu-bg, #333); border-color: var(--fg-color, #aaa); }
.goan-panel button.goan-btn:disabled { opacity: 0.35; cursor: not-allowed; }
.goan-panel .goan-status { font-weight: 600; flex: 1 1 auto; min-width: 0; white-space: normal; overflow-wrap: anywhere; }
.goan-panel .goan-sub { color: var(--descrip-text, #999); font-size: 11px; min-width: 0; white-space: normal; overflow-wrap: anywhere; }
.goan-panel .goan-sub[hidden] { display: none; }
.goan-panel a.goan-again { color: var(--p-primary-color, #6af); cursor: pointer; font-size: 11px; text-decoration: underline; }
.goan-panel .goan-empty { color: var(--descrip-text, #999); font-style: italic; border-top: 1px solid var(--border-color, #444); padding: 6px 0; }
.goan-panel .goan-st-paused .goan-status, .goan-panel .goan-st-stopped .goan-status { color: #e0b050; }
.goan-panel .goan-st-running .goan-status, .goan-panel .goan-st-pausing .goan-status { color: #6c6; }
.goan-panel .goan-st-failed .goan-status { color: #e66; }
`;

function injectStyle() {
  if (document.getElementById(STYLE_ID)) return;
  const s = document.createElement("style");
  s.id = STYLE_ID;
  s.textContent = CSS;
  document.head.append(s);
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

/** One job's row, built once with all its controls and text slots; `update(view)` changes only what differs. */
function makeRow(key, promptId) {
  const controls = el("div", { class: "goan-controls" });
  const buttons = new Map();
  const status = el("span", { class: "goan-status" });
  const box = el("div", { class: "goan-job", "data-goan-job": key, "data-prompt-id": promptId }, el("div", { class: "goan-head" }, controls, status));
  const parts = {};
  for (const part of ROW_PARTS) {
    parts[part] = el("div", { class: `goan-sub goan-${part}`, hidden: true });
    box.append(parts[part]);
  }
  const link = el("a", { class: "goan-again", "data-goan-link": "download", onclick: () => actions.download(key) }, "download again");
  const linkRow = el("div", { class: "goan-sub", hidden: true }, link);
  box.append(linkRow);
  let shown = null;
  const apply = (u) => {
    if (u.kind === "status") {
      box.className = `goan-job goan-st-${u.status}`;
      status.textContent = u.word;
      status.title = u.full;
      status.dataset.goanStatus = u.status;
    } else if (u.kind === "text") {
      const d = parts[u.part];
      if (d.textContent !== u.text) d.textContent = u.text;
      d.title = u.title || "";
      d.hidden = !u.text;
    } else if (u.kind === "control") {
      const b = buttons.get(u.id);
      b.disabled = !u.enabled;
      b.title = u.title;
    } else if (u.kind === "file") {
      linkRow.hidden = !u.hasFile;
      link.title = u.hasFile ? `download ${u.file} again` : "";
    }
  };
  const update = (view) => {
    if (!shown) {
      for (const c of view.controls) {
        const btn = el("button", {
          class: "goan-btn", type: "button", "aria-label": c.label, "data-goan-action": c.id,
          onclick: () => actions[c.id] && actions[c.id](key),
        }, el("i", { class: c.icon }));
        buttons.set(c.id, btn);
        controls.append(btn);
      }
    }
    const ups = rowUpdates(shown, view);
    for (const u of ups) apply(u);
    shown = view;
    return ups.length;
  };
  return { box, update };
}

export function createPanel() {
  injectStyle();
  const root = el("div", { class: "goan-panel", "data-goan-panel": "" });
  const body = el("div", { class: "goan-list" });
  root.append(
    el("h3", {}, el("i", { class: "pi pi-pause-circle" }), "goan jobs"),
    el("p", { class: "goan-hint" }, "Pause a running job to download its .goan_resume file; drop that file on the canvas to continue it later."),
    body,
  );
  // Each job's row and buttons are made once and updated in place (lib/rows.js says what changed),
  // so a click never lands on a replaced button while the job makes progress.
  const rows = new Map();
  const empty = el("div", { class: "goan-empty" }, "No goan jobs yet.");
  const stats = { draws: 0, rowsMade: 0 };
  const draw = () => {
    stats.draws++;
    const jobs = listJobs(getState());
    const lu = listUpdates(rows.keys(), jobs.map((j) => j.key));
    const byKey = new Map(jobs.map((j) => [j.key, j]));
    for (const key of lu.remove) rows.delete(key);
    for (const key of lu.add) {
      rows.set(key, makeRow(key, byKey.get(key).prompt_id));
      stats.rowsMade++;
    }
    for (const job of jobs) rows.get(job.key).update(rowView(job));
    const want = lu.order.length ? lu.order.map((id) => rows.get(id).box) : [empty];
    const same = want.length === body.children.length && want.every((tr, i) => body.children[i] === tr);
    if (!same) body.replaceChildren(...want);
  };
  onChange(draw);
  draw();
  return { root, draw, stats };
}

/** Register the sidebar tab (both frontends have registerSidebarTab). Returns false when absent. */
export function registerTab(app) {
  const mgr = app.extensionManager;
  if (!mgr || typeof mgr.registerSidebarTab !== "function") return false;
  const panel = createPanel();
  window.__goanPanelStats = panel.stats; // draws and rows made, for the browser test
  mgr.registerSidebarTab({
    id: "goan",
    icon: "pi pi-pause-circle",
    title: "goan",
    label: "goan",
    tooltip: "goan jobs: pause, download, resume",
    type: "custom",
    render: (container) => {
      // The frontend may call render again on the same container: mount the one panel, once.
      if (panel.root.parentElement !== container) container.replaceChildren(panel.root);
      panel.draw();
      refresh();
    },
  });
  return true;
}
