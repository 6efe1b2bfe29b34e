// Plain logic for the goan job list: how events, the ComfyUI queue and the server's /goan/jobs
// change each job, and which controls apply to a job. No DOM and no ComfyUI here.

import { STATUS, isTerminal, isPauseKind } from "./vocabulary.js";
import { groupBranches } from "./branches.js";

export const SAMPLER_TYPE = "GoanSegmentSampler";

/** Every status a job in the list can have. */
export const STATUSES = [
  STATUS.QUEUED, STATUS.RUNNING, STATUS.PAUSING, STATUS.PAUSED, STATUS.STOPPED, STATUS.FINISHED, STATUS.FAILED, STATUS.CANCELLED,
];
/** The statuses taken from the server's /goan/jobs. */
const SERVER_STATUSES = new Set([STATUS.RUNNING, STATUS.PAUSING, STATUS.PAUSED, STATUS.STOPPED, STATUS.FINISHED, STATUS.FAILED]);

/** An empty job list: {jobs: {prompt_id: job}, order: [prompt_id...]} */
export function emptyState() {
  return { jobs: {}, order: [] };
}

function blank(promptId) {
  return {
    prompt_id: promptId,
    status: STATUS.QUEUED,
    node_id: null,
    job_id: null,
    section: null,
    total_sections: null,
    step: null,
    steps: null,
    file: null,
    error: null,
    parent: null,
    root: null,
    number: null,
    progress: null,
    downloaded: false,
  };
}

function put(state, promptId, patch) {
  const prev = state.jobs[promptId];
  const job = { ...(prev || blank(promptId)), ...patch };
  const jobs = { ...state.jobs, [promptId]: job };
  const order = prev ? state.order : [...state.order, promptId];
  return { jobs, order };
}

function update(state, promptId, patch) {
  // Only touches a job already known to be a goan job.
  if (!promptId || !state.jobs[promptId]) return state;
  return put(state, promptId, patch);
}

/** True when an API-format prompt (node id -> {class_type}) contains the goan sampler. */
export function promptHasSampler(prompt) {
  if (!prompt || typeof prompt !== "object") return false;
  return Object.values(prompt).some((n) => n && n.class_type === SAMPLER_TYPE);
}

/** The sampler's node id in an API-format prompt, or null. */
export function samplerNodeId(prompt) {
  if (!prompt || typeof prompt !== "object") return null;
  for (const [id, n] of Object.entries(prompt)) if (n && n.class_type === SAMPLER_TYPE) return id;
  return null;
}

function normFile(f) {
  if (!f || typeof f !== "object" || !f.filename) return null;
  return { filename: String(f.filename), subfolder: f.subfolder ? String(f.subfolder) : "", type: f.type || "output" };
}

/**
 * Merge ComfyUI's GET /queue answer ({queue_running, queue_pending}; items are
 * [number, prompt_id, prompt, extra_data, outputs]). Goan prompts that are pending become
 * "queued"; the running one becomes "running" unless it is already pausing or has ended.
 * A job that was queued or running but is in neither list any more has left the queue: it is
 * left as is (the events or /goan/jobs say how it ended), except a queued one that never ran,
 * which is marked "cancelled".
 */
export function applyQueue(state, queue) {
  let s = state;
  const seen = new Set();
  const take = (items, running) => {
    for (const item of items || []) {
      if (!Array.isArray(item) || item.length < 3) continue;
      const [number, promptId, prompt] = item;
      if (!promptHasSampler(prompt)) continue;
      seen.add(promptId);
      const prev = s.jobs[promptId];
      const patch = { number, node_id: (prev && prev.node_id) || samplerNodeId(prompt) };
      if (running) {
        if (!prev || prev.status === STATUS.QUEUED) patch.status = STATUS.RUNNING;
      } else if (!prev) {
        patch.status = STATUS.QUEUED;
      }
      s = put(s, promptId, patch);
    }
  };
  take(queue && queue.queue_running, true);
  take(queue && queue.queue_pending, false);
  for (const id of s.order) {
    const job = s.jobs[id];
    if (!seen.has(id) && job.status === STATUS.QUEUED && job.step === null) {
      s = put(s, id, { status: STATUS.CANCELLED });
    }
  }
  return s;
}

/** Merge the server's GET /goan/jobs answer: the server is authoritative for the jobs it knows. */
export function applyServerJobs(state, payload) {
  let s = state;
  for (const j of (payload && payload.jobs) || []) {
    if (!j || !j.prompt_id) continue;
    const patch = {};
    for (const k of ["job_id", "node_id", "section", "total_sections", "step", "steps", "error", "parent", "root"]) {
      if (j[k] !== undefined) patch[k] = j[k];
    }
    if (j.node_id !== undefined && j.node_id !== null) patch.node_id = String(j.node_id);
    if (SERVER_STATUSES.has(j.status)) {
      const prev = s.jobs[j.prompt_id];
      // A pause the user asked for stays "pausing" until the server says it ended.
      if (!(prev && prev.status === STATUS.PAUSING && j.status === STATUS.RUNNING)) patch.status = j.status;
      // A job cancelled here may still be reported as running for a moment.
      if (prev && prev.status === STATUS.CANCELLED && !isTerminal(j.status)) delete patch.status;
    }
    const f = normFile(j.file);
    if (f) patch.file = f;
    s = put(s, j.prompt_id, patch);
  }
  return s;
}

/**
 * Apply one websocket event {type, detail}. ComfyUI's events only touch jobs already known as goan
 * jobs (from /queue or /goan/jobs); goan's own events create the job when needed.
 */
export function applyEvent(state, type, d) {
  d = d || {};
  const id = d.prompt_id;
  switch (type) {
    case "execution_start":
      if (state.jobs[id] && state.jobs[id].status === STATUS.QUEUED) return update(state, id, { status: STATUS.RUNNING });
      return state;
    case "executing": {
      const job = state.jobs[id];
      if (!job || d.node === null || d.node === undefined) return state;
      if (job.status === STATUS.QUEUED) return update(state, id, { status: STATUS.RUNNING });
      return state;
    }
    case "progress": {
      const job = state.jobs[id];
      if (!job || String(d.node) !== String(job.node_id)) return state;
      // ComfyUI's bar counts steps over the whole job; /goan/jobs gives the step within a section.
      return update(state, id, { progress: { value: d.value, max: d.max } });
    }
    case "executed": {
      const out = d.output && d.output.goan_resume;
      if (!state.jobs[id] || !Array.isArray(out) || !out.length) return state;
      const f = normFile(out[0]);
      return f ? update(state, id, { file: f }) : state;
    }
    case "execution_success": {
      const job = state.jobs[id];
      if (!job) return state;
      if (job.status === STATUS.RUNNING) return update(state, id, { status: STATUS.FINISHED });
      return state; // pausing/paused: the goan events and /goan/jobs settle it
    }
    case "execution_error": {
      const job = state.jobs[id];
      if (!job || isTerminal(job.status)) return state;
      return update(state, id, { status: STATUS.FAILED, error: d.exception_message || "execution error" });
    }
    case "execution_interrupted": {
      const job = state.jobs[id];
      if (!job || isTerminal(job.status)) return state;
      return update(state, id, { status: job.status === STATUS.PAUSING ? STATUS.PAUSING : STATUS.STOPPED });
    }
    case "goan.pausing":
      if (!id) return state;
      return put(state, id, { status: STATUS.PAUSING, ...(d.node_id != null ? { node_id: String(d.node_id) } : {}) });
    case "goan.paused": {
      if (!id) return state;
      const patch = { status: isPauseKind(d.kind) ? STATUS.PAUSED : STATUS.STOPPED };
      if (d.job_id) patch.job_id = d.job_id;
      if (d.node_id != null) patch.node_id = String(d.node_id);
      const f = normFile(d);
      if (f) patch.file = f;
      return put(state, id, patch);
    }
    case "goan.autosaved": {
      if (!id) return state;
      const patch = {};
      if (d.job_id) patch.job_id = d.job_id;
      const f = normFile(d);
      if (f) patch.file = f;
      return put(state, id, patch);
    }
    case "goan.resumed":
      if (!id) return state;
      return put(state, id, {
        ...(state.jobs[id] && !isTerminal(state.jobs[id].status) && state.jobs[id].status !== STATUS.QUEUED ? {} : { status: STATUS.RUNNING }),
        job_id: d.job_id || (state.jobs[id] && state.jobs[id].job_id) || null,
        section: d.section ?? null,
        step: d.step ?? null,
        ...(d.parent ? { parent: String(d.parent), root: String(d.root || d.parent) } : {}),
      });
    default:
      return state;
  }
}

/**
 * Whether a goan.paused event downloads its file at once: yes for a pause (what the user asked
 * for); a fail-safe file written on Cancel or an error only shows in the job list ("download again").
 */
export function shouldAutoDownload(detail) {
  if (!detail || !detail.filename) return false;
  return isPauseKind(detail.kind);
}

/** The user asked to pause / cancel; the state shows it at once. */
export function markPausing(state, promptId) {
  const job = state.jobs[promptId];
  if (!job || job.status !== STATUS.RUNNING) return state;
  return update(state, promptId, { status: STATUS.PAUSING });
}

export function markCancelled(state, promptId) {
  const job = state.jobs[promptId];
  if (!job || isTerminal(job.status)) return state;
  return update(state, promptId, { status: STATUS.CANCELLED });
}

export function markDownloaded(state, promptId) {
  return update(state, promptId, { downloaded: true });
}

export function removeJob(state, promptId) {
  if (!state.jobs[promptId]) return state;
  const jobs = { ...state.jobs };
  delete jobs[promptId];
  return { jobs, order: state.order.filter((id) => id !== promptId) };
}

/**
 * The controls of one job row, in display order (controls first, on the left), each with
 * `enabled`. Controls never disappear: an inapplicable one is shown disabled.
 */
export function controlsFor(job) {
  const st = job.status;
  const hasFile = !!job.file;
  return [
    { id: "pause", label: "Pause", icon: "pi pi-pause", enabled: st === STATUS.RUNNING },
    { id: "cancel", label: "Cancel", icon: "pi pi-times", enabled: st === STATUS.RUNNING || st === STATUS.QUEUED || st === STATUS.PAUSING },
    { id: "download", label: "Download again", icon: "pi pi-download", enabled: hasFile && (st === STATUS.PAUSED || st === STATUS.STOPPED || st === STATUS.FAILED || st === STATUS.FINISHED || st === STATUS.RUNNING) },
    { id: "load", label: "Load to resume", icon: "pi pi-replay", enabled: hasFile && (st === STATUS.PAUSED || st === STATUS.STOPPED || st === STATUS.FAILED) },
    { id: "remove", label: "Remove from list", icon: "pi pi-trash", enabled: isTerminal(st) },
  ];
}

/** Human text for a job's status column. */
export function statusText(job) {
  const base = {
    [STATUS.QUEUED]: "Queued",
    [STATUS.RUNNING]: "Running",
    [STATUS.PAUSING]: "Pausing task...",
    [STATUS.PAUSED]: "Paused",
    [STATUS.STOPPED]: "Stopped (resumable)",
    [STATUS.FINISHED]: "Finished",
    [STATUS.FAILED]: "Failed",
    [STATUS.CANCELLED]: "Cancelled",
  }[job.status] || job.status;
  const parts = [base];
  if (job.total_sections) parts.push(`section ${Math.min((job.section ?? 0) + 1, job.total_sections)}/${job.total_sections}`);
  if (job.steps) parts.push(`step ${job.step ?? 0}/${job.steps}`);
  if (job.progress && job.progress.max && !isTerminal(job.status)) {
    parts.push(`${Math.floor((100 * job.progress.value) / job.progress.max)}%`);
  }
  return parts.join(" · ");
}

/** Jobs in list order (newest first), branches of one job together (see lib/branches.js). */
export function listJobs(state) {
  return groupBranches(state.order.map((id) => state.jobs[id]).reverse());
}

/** The prompt id of the job the action-bar/node pause should act on: the running goan job. */
export function runningJob(state) {
  for (const id of state.order) {
    const j = state.jobs[id];
    if (j.status === STATUS.RUNNING) return j;
  }
  return null;
}
