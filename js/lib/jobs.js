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
    skipped: null,
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
 * Goan jobs in ComfyUI's queue ({promptId, number, nodeId, running}): a pending one becomes "queued",
 * a running one "running" unless it is already pausing or has ended.
 */
function mergeQueued(state, entries) {
  let s = state;
  for (const { promptId, number, nodeId, running } of entries) {
    const prev = s.jobs[promptId];
    const patch = { number: number ?? (prev ? prev.number : null), node_id: (prev && prev.node_id) || nodeId };
    if (running) {
      if (!prev || prev.status === STATUS.QUEUED) patch.status = STATUS.RUNNING;
    } else if (!prev) {
      patch.status = STATUS.QUEUED;
    }
    s = put(s, promptId, patch);
  }
  return s;
}

/** Queued jobs that never ran and are no longer among `activeIds` (the prompts in ComfyUI's queue). */
export function jobsLeftQueue(state, activeIds) {
  return state.order.filter((id) => {
    const job = state.jobs[id];
    return job.status === STATUS.QUEUED && job.step === null && !activeIds.has(id);
  });
}

/**
 * Merge ComfyUI's GET /queue answer ({queue_running, queue_pending}; items are
 * [number, prompt_id, prompt, extra_data, outputs]): servers without the job API. A job that was
 * queued or running but is in neither list any more has left the queue: it is left as is (the
 * events or /goan/jobs say how it ended), except a queued one that never ran, which is marked
 * "cancelled" (this answer cannot say more).
 */
export function applyQueue(state, queue) {
  const entries = [];
  for (const [items, running] of [[queue && queue.queue_running, true], [queue && queue.queue_pending, false]]) {
    for (const item of items || []) {
      if (!Array.isArray(item) || item.length < 3 || !promptHasSampler(item[2])) continue;
      entries.push({ promptId: item[1], number: item[0], nodeId: samplerNodeId(item[2]), running });
    }
  }
  let s = mergeQueued(state, entries);
  for (const id of jobsLeftQueue(s, new Set(entries.map((e) => e.promptId)))) s = put(s, id, { status: STATUS.CANCELLED });
  return s;
}

// ---- ComfyUI's job API (GET /api/jobs, GET /api/jobs/{id}, POST /api/jobs/{id}/cancel) -----------

/** The job API's statuses, and the goan status each stands for where goan's server knows nothing better. */
const NATIVE_STATUS = {
  pending: STATUS.QUEUED,
  in_progress: STATUS.RUNNING,
  completed: STATUS.FINISHED,
  failed: STATUS.FAILED,
  cancelled: STATUS.CANCELLED,
};

/** The job list request: only what is in the queue (pending or running). */
export const NATIVE_ACTIVE_JOBS = "/jobs?status=in_progress,pending";

/**
 * What an answer ({ok, status, json}) to GET /api/jobs says about the server: true when it has
 * ComfyUI's job API (a 2xx with a `jobs` list), false when it has not (404: an older ComfyUI), null
 * when this answer cannot tell (a server error, no answer): ask again later.
 */
export function jobsApiPresent(res) {
  if (!res) return null;
  if (res.ok) return !!(res.json && Array.isArray(res.json.jobs));
  return res.status === 404 || res.status === 405 ? false : null;
}

/**
 * Merge ComfyUI's job list (`payload`: GET /api/jobs, {jobs: [{id, status, priority, ...}]}) with
 * goan's word on which queued prompts are goan jobs (`goanQueue`: /goan/jobs `queue`,
 * [{prompt_id, node_id, running}]; the job list does not say what a prompt holds). Returns the new
 * state and `left`: queued jobs that never ran and are in neither list, whose end GET /api/jobs/{id}
 * tells (`applyNativeJob`).
 */
export function applyNativeQueue(state, payload, goanQueue) {
  const native = new Map();
  for (const j of (payload && payload.jobs) || []) if (j && j.id) native.set(j.id, j);
  const entries = [];
  for (const g of goanQueue || []) {
    if (!g || !g.prompt_id) continue;
    const j = native.get(g.prompt_id);
    if (j && !(j.status === "pending" || j.status === "in_progress")) continue; // it has ended: the lookup says how
    entries.push({
      promptId: g.prompt_id,
      number: j && Number.isFinite(j.priority) ? j.priority : undefined,
      nodeId: g.node_id != null ? String(g.node_id) : null,
      running: j ? j.status === "in_progress" : !!g.running,
    });
  }
  const s = mergeQueued(state, entries);
  const active = new Set([...native.keys(), ...entries.map((e) => e.promptId)]);
  return { state: s, left: jobsLeftQueue(s, active) };
}

/**
 * Apply GET /api/jobs/{id} ({ok, status, json}) to a queued job that left the queue without running
 * goan's sampler: 404 (the server no longer knows it: removed from the queue) and "cancelled" make it
 * cancelled, "failed" failed (with ComfyUI's message), "completed" finished (e.g. a cached result).
 */
export function applyNativeJob(state, promptId, res) {
  const job = state.jobs[promptId];
  if (!job || job.status !== STATUS.QUEUED || !res) return state;
  if (res.status === 404) return update(state, promptId, { status: STATUS.CANCELLED });
  const status = res.ok && res.json ? NATIVE_STATUS[res.json.status] : undefined;
  if (!status || status === STATUS.QUEUED) return state;
  const patch = { status };
  if (status === STATUS.FAILED) {
    const err = res.json.execution_error;
    patch.error = (err && err.exception_message) || "execution error";
  }
  return update(state, promptId, patch);
}

/**
 * The request that cancels `job`: ComfyUI's POST /api/jobs/{id}/cancel (state-agnostic, and it
 * interrupts only if this very job still runs) when `native`; else POST /queue {delete} for a queued
 * job and POST /interrupt {prompt_id} for a running one. The job list came before the cancel route
 * (ComfyUI 0.12 lists jobs, 0.27 cancels them): use `native` while the cancel route has not answered
 * 404 (`cancelRouteMissing`).
 */
export function cancelRequest(job, native) {
  const id = job.prompt_id;
  if (native) return { path: `/jobs/${encodeURIComponent(id)}/cancel`, json: {} };
  if (job.status === STATUS.QUEUED) return { path: "/queue", json: { delete: [id] } };
  return { path: "/interrupt", json: { prompt_id: id } };
}

/** True when an answer to POST /api/jobs/{id}/cancel says the server has no such route. */
export function cancelRouteMissing(res) {
  return !!res && (res.status === 404 || res.status === 405);
}

/**
 * What a successful cancel answer means: "cancelled", or "ended" when the job API says there was
 * nothing to cancel ({cancelled: false}: the job had already finished).
 */
export function cancelOutcome(json, native) {
  return native && json && json.cancelled === false ? "ended" : "cancelled";
}

/** Merge the server's GET /goan/jobs answer: the server is authoritative for the jobs it knows. */
export function applyServerJobs(state, payload) {
  let s = state;
  for (const j of (payload && payload.jobs) || []) {
    if (!j || !j.prompt_id) continue;
    const patch = {};
    for (const k of ["job_id", "node_id", "section", "total_sections", "step", "steps", "skipped", "error", "parent", "root"]) {
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

/** "TeaCache skipped 12 calls": how many transformer calls TeaCache skipped so far; "" for none. */
export function skippedText(skipped) {
  const n = Number(skipped);
  if (!Number.isInteger(n) || n <= 0) return "";
  return `TeaCache skipped ${n} call${n === 1 ? "" : "s"}`;
}

/** Human text for a job's status column (the skipped calls last, also once the job has ended). */
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
  const skipped = skippedText(job.skipped);
  if (skipped) parts.push(skipped);
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
