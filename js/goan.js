// goan: resumable FramePack image-to-video, the ComfyUI frontend extension.
// Entry module; ComfyUI imports every .js under js/, only this one registers anything.
import { app, redraw, workflowGraph } from "./goan_comfy.js";
import { install as installJobs, onChange, getState, currentlyExecuting, pause, setResumeLoader, jobsApi } from "./goan_jobs.js";
import { registerTab } from "./goan_panel.js";
import { installInterceptors, addUploadButton, followResumeChoice, refreshLengthLabel, refreshAllLabels, restoreFromOutput } from "./goan_resume.js";
import { SAMPLER_TYPE, runningJob, nodeRunningJob, findJob } from "./lib/jobs.js";
import { nodesOfType } from "./lib/graph.js";
import { STATUS } from "./lib/vocabulary.js";
import { LOAD_RESUME_TYPE, displayNames, missingLabels } from "./lib/labels.js";

const PAUSE_LABEL = "Pause task";

/**
 * Show the definition's display names on goan's widgets where the frontend shows raw input names
 * (the pinned 1.27 frontend ignores display_name on widgets; newer ones set the label themselves,
 * and then nothing changes here).
 */
function applyDisplayNames(node) {
  const names = node.goanDisplayNames || (node.constructor && node.constructor.prototype && node.constructor.prototype.goanDisplayNames);
  if (!names) return;
  let changed = false;
  for (const [name, label] of missingLabels(node.widgets, names)) {
    const w = node.widgets.find((x) => x.name === name);
    w.label = label;
    const inp = (node.inputs || []).find((i) => i.widget && i.widget.name === name);
    if (inp && (!inp.label || inp.label === name)) inp.label = label;
    changed = true;
  }
  if (changed) redraw();
}

/**
 * The sampler's pause button: enabled only while this very node runs in a goan job. A button widget
 * on the canvas, and a DOM button with Vue nodes (Comfy.VueNodes.Enabled), where the widget's label
 * and disabled state are reactive and its callback runs on click.
 */
function addPauseButton(node) {
  if ((node.widgets || []).some((w) => w.name === "goan_pause")) return;
  const w = node.addWidget("button", "goan_pause", null, () => {
    const job = nodeJob(node);
    if (job) pause(job.key);
  }, { serialize: false });
  w.label = PAUSE_LABEL;
  w.serialize = false;
  w.disabled = true;
}

/** The sampler nodes with the ids ComfyUI runs them under ("12:5" inside subgraph node 12). */
function samplers() {
  return nodesOfType(workflowGraph(), SAMPLER_TYPE);
}

function executionIdsOf(node) {
  const found = samplers().find((s) => s.node === node);
  return found ? found.executionIds : [String(node.id)];
}

/** The running goan job of this sampler node (wherever it sits: `ids` are its execution ids), or null. */
function nodeJob(node, ids = executionIdsOf(node)) {
  return nodeRunningJob(getState(), currentlyExecuting(), ids);
}

function updatePauseButtons() {
  for (const { node, executionIds } of samplers()) {
    const w = (node.widgets || []).find((x) => x.name === "goan_pause");
    if (!w) continue;
    const job = nodeJob(node, executionIds);
    const ex = currentlyExecuting();
    const executed = ex.prompt_id && ex.node != null ? findJob(getState(), ex.prompt_id, ex.node) : null;
    const pausing = executed && executed.status === STATUS.PAUSING;
    const disabled = !job;
    const label = pausing && executionIds.includes(String(ex.node)) ? "Pausing task..." : PAUSE_LABEL;
    if (w.disabled !== disabled || w.label !== label) {
      w.disabled = disabled;
      w.label = label;
      redraw();
    }
  }
}

// Action bar (frontends >= 1.5x). The button cannot be disabled through the API, so it is greyed
// out in the DOM while no goan job runs and answers with a toast when clicked then. It is found by
// the class it is registered with (current frontends put a button's `class` on it); frontends that
// ignore `class` are matched by the tooltip they use as its aria-label.
const ACTION_TOOLTIP = "Pause the running goan task";
const ACTION_CLASS = "goan-action-pause";
function actionButtons() {
  const byClass = document.querySelectorAll(`button.${ACTION_CLASS}`);
  return byClass.length ? byClass : document.querySelectorAll(`button[aria-label="${ACTION_TOOLTIP}"]`);
}

function updateActionButton() {
  const disabled = !runningJob(getState(), currentlyExecuting());
  for (const b of actionButtons()) {
    b.classList.add(ACTION_CLASS);
    b.style.opacity = disabled ? "0.4" : "";
    b.setAttribute("aria-disabled", disabled ? "true" : "false");
  }
}

app.registerExtension({
  name: "goan.resume",

  actionBarButtons: [
    {
      icon: "pi pi-pause",
      label: "Pause",
      tooltip: ACTION_TOOLTIP,
      class: ACTION_CLASS,
      onClick: () => pause(),
    },
  ],

  async setup() {
    installJobs();
    installInterceptors();
    setResumeLoader(restoreFromOutput);
    if (!registerTab(app)) console.warn("[goan] this frontend has no sidebar tabs; the job list is unavailable");
    onChange(() => {
      updatePauseButtons();
      updateActionButton();
    });
    setInterval(() => {
      updatePauseButtons();
      updateActionButton();
    }, 1000);
    // jobOf(prompt id): the prompt's row when it has one sampler (the browser test's lookups)
    window.__goan = { ready: true, getState, jobOf: (promptId) => findJob(getState(), promptId), refreshAllLabels, samplers: () => samplers().map((s) => s.executionIds), jobsApi };
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData.name || "").startsWith("Goan")) return;
    const names = displayNames(nodeData);
    if (Object.keys(names).length) nodeType.prototype.goanDisplayNames = names;
    if (nodeData.name !== SAMPLER_TYPE) return;
    const orig = nodeType.prototype.onConnectionsChange;
    nodeType.prototype.onConnectionsChange = function (...args) {
      const r = orig ? orig.apply(this, args) : undefined;
      const node = this;
      setTimeout(() => refreshLengthLabel(node), 0);
      return r;
    };
  },

  nodeCreated(node) {
    applyDisplayNames(node);
    const type = node.comfyClass || node.type;
    if (type === SAMPLER_TYPE) {
      addPauseButton(node);
      setTimeout(() => refreshLengthLabel(node), 0);
    } else if (type === LOAD_RESUME_TYPE) {
      addUploadButton(node);
      followResumeChoice(node);
    }
  },

  loadedGraphNode(node) {
    applyDisplayNames(node);
    const type = node.comfyClass || node.type;
    if (type === SAMPLER_TYPE) setTimeout(() => refreshLengthLabel(node), 0);
  },

  afterConfigureGraph() {
    setTimeout(refreshAllLabels, 0);
  },
});
