// The "goan" sidebar tab: one row per goan job, controls first on the left. A control that does not
// apply to a job is shown disabled, never hidden, so the layout stays put.
import { controlsFor, statusText, listJobs } from "./lib/jobs.js";
import { STATUS } from "./lib/vocabulary.js";
import { downloadName } from "./lib/files.js";
import { getState, onChange, refresh, actions } from "./goan_jobs.js";

const STYLE_ID = "goan-panel-style";
const CSS = `
.goan-panel { padding: 8px; font-size: 13px; color: var(--fg-color, #ddd); display: flex; flex-direction: column; gap: 8px; min-width: 0; }
.goan-panel h3 { margin: 0; font-size: 14px; display: flex; align-items: center; gap: 6px; }
.goan-panel .goan-hint { color: var(--descrip-text, #999); font-size: 12px; margin: 0; }
.goan-panel .goan-list { display: flex; flex-direction: column; }
.goan-panel .goan-job { border-top: 1px solid var(--border-color, #444); padding: 6px 0; min-width: 0; }
.goan-panel .goan-head { display: flex; align-items: center; gap: 6px; min-width: 0; }
.goan-panel .goan-controls { display: flex; gap: 2px; flex: none; }
.goan-panel button.goan-btn { width: 26px; height: 26px; padding: 0; border-radius: 4px;
  border: 1px solid var(--border-color, #555); background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd); cursor: pointer; }
.goan-panel button.goan-btn:hover:not(:disabled) { background: var(--comfy-menu-bg, #333); border-color: var(--fg-color, #aaa); }
.goan-panel button.goan-btn:disabled { opacity: 0.35; cursor: not-allowed; }
.goan-panel .goan-status { font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.goan-panel .goan-sub { color: var(--descrip-text, #999); font-size: 11px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
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

const STATUS_WORD = {
  [STATUS.QUEUED]: "Queued", [STATUS.RUNNING]: "Running", [STATUS.PAUSING]: "Pausing task...", [STATUS.PAUSED]: "Paused",
  [STATUS.STOPPED]: "Stopped", [STATUS.FINISHED]: "Finished", [STATUS.FAILED]: "Failed", [STATUS.CANCELLED]: "Cancelled",
};

/** One job: its controls first, on the left (all of them, inapplicable ones disabled), then its state. */
function row(job) {
  const controls = el("div", { class: "goan-controls" });
  for (const c of controlsFor(job)) {
    const btn = el("button", {
      class: "goan-btn",
      type: "button",
      title: c.enabled ? c.label : `${c.label} (not available: the job is ${job.status})`,
      "aria-label": c.label,
      "data-goan-action": c.id,
      "data-prompt-id": job.prompt_id,
      disabled: !c.enabled,
      onclick: () => actions[c.id] && actions[c.id](job.prompt_id),
    }, el("i", { class: c.icon }));
    controls.append(btn);
  }
  const full = statusText(job);
  const detail = full.split(" · ").slice(1).join(" · ");
  const box = el("div", { class: `goan-job goan-st-${job.status}`, "data-goan-job": job.prompt_id },
    el("div", { class: "goan-head" }, controls,
      el("span", { class: "goan-status", "data-goan-status": job.status, title: full }, STATUS_WORD[job.status] || job.status)),
  );
  if (detail) box.append(el("div", { class: "goan-sub", title: full }, detail));
  const ids = `${job.job_id ? `job ${job.job_id} · ` : ""}prompt ${String(job.prompt_id).slice(0, 8)}`;
  box.append(el("div", { class: "goan-sub", title: ids }, ids));
  if (job.error) box.append(el("div", { class: "goan-sub", title: job.error }, job.error));
  if (job.file) {
    const name = downloadName(job.file);
    box.append(el("div", { class: "goan-sub", title: name }, name));
    box.append(el("div", { class: "goan-sub" },
      el("a", { class: "goan-again", "data-goan-link": "download", title: `download ${name} again`, onclick: () => actions.download(job.prompt_id) }, "download again")));
  }
  return box;
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
  // Rows are rebuilt only when what they show changes, so a click never lands on a replaced button.
  const rows = new Map();
  const empty = el("div", { class: "goan-empty" }, "No goan jobs yet.");
  const draw = () => {
    const jobs = listJobs(getState());
    const next = jobs.map((job) => {
      const key = JSON.stringify([job, controlsFor(job)]);
      const have = rows.get(job.prompt_id);
      if (have && have.key === key) return have.tr;
      const tr = row(job);
      rows.set(job.prompt_id, { key, tr });
      return tr;
    });
    for (const id of rows.keys()) if (!jobs.some((j) => j.prompt_id === id)) rows.delete(id);
    const want = next.length ? next : [empty];
    const same = want.length === body.children.length && want.every((tr, i) => body.children[i] === tr);
    if (!same) body.replaceChildren(...want);
  };
  onChange(draw);
  draw();
  return { root, draw };
}

/** Register the sidebar tab (both frontends have registerSidebarTab). Returns false when absent. */
export function registerTab(app) {
  const mgr = app.extensionManager;
  if (!mgr || typeof mgr.registerSidebarTab !== "function") return false;
  const panel = createPanel();
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
