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

/**
 * An empty job list: {jobs: {key: job}, order: [key...]}. A row is one goan sampler of one prompt
 * (`jobKey`): a workflow with three samplers branching one resume file queues one prompt and shows
 * three rows.
 */
export function emptyState() {
  return { jobs: {}, order: [] };
}

/** The key of the row of sampler `nodeId` (its execution id, a string; null: not known) in prompt `promptId`. */
export function jobKey(promptId, nodeId) {
  return `${promptId}@${nodeId ?? ""}`;
}

/** The keys of the rows of one prompt, oldest first. */
export function rowsOfPrompt(state, promptId) {
  return state.order.filter((key) => state.jobs[key].prompt_id === promptId);
}

/**
 * The key of the row a message about (promptId, nodeId) is for: that sampler's row; without a node,
 * the prompt's only row (null when it has several), else a new row's key.
 */
function keyFor(state, promptId, nodeId) {
  if (nodeId != null) return jobKey(promptId, String(nodeId));
  const rows = rowsOfPrompt(state, promptId);
  if (rows.length > 1) return null;
  return rows.length ? rows[0] : jobKey(promptId, null);
}

/** The row of `promptId` (and sampler `nodeId` when given) the user means, or null. */
export function findJob(state, promptId, nodeId) {
  const key = keyFor(state, promptId, nodeId);
  return (key && state.jobs[key]) || null;
}

function blank(promptId, nodeId) {
  return {
    key: jobKey(promptId, nodeId),
    prompt_id: promptId,
    status: STATUS.QUEUED,
    node_id: nodeId,
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

/** Create or change the row of (promptId, nodeId); a message without a node goes to the prompt's only row. */
function put(state, promptId, nodeId, patch) {
  const key = keyFor(state, promptId, nodeId);
  if (key === null) return state; // several samplers and no word on which: /goan/jobs will say
  const prev = state.jobs[key];
  const job = { ...(prev || blank(promptId, nodeId == null ? null : String(nodeId))), ...patch };
  const jobs = { ...state.jobs, [key]: job };
  const order = prev ? state.order : [...state.order, key];
  return { jobs, order };
}

/** Change one existing row (by key); rows only exist for goan jobs. */
function update(state, key, patch) {
  if (!key || !state.jobs[key]) return state;
  return { jobs: { ...state.jobs, [key]: { ...state.jobs[key], ...patch } }, order: state.order };
}

/** Apply `patchOf(job)` (a patch, or null for none) to every row of a prompt: ComfyUI's events are per prompt. */
function updatePrompt(state, promptId, patchOf) {
  let s = state;
  for (const key of rowsOfPrompt(state, promptId)) {
    const patch = patchOf(s.jobs[key]);
    if (patch) s = update(s, key, patch);
  }
  return s;
}

/** True when an API-format prompt (node id -> {class_type}) contains the goan sampler. */
export function promptHasSampler(prompt) {
  if (!prompt || typeof prompt !== "object") return false;
  return Object.values(prompt).some((n) => n && n.class_type === SAMPLER_TYPE);
}

/** The node ids of the goan samplers in an API-format prompt (each one a row), in prompt order. */
export function samplerNodeIds(prompt) {
  if (!prompt || typeof prompt !== "object") return [];
  return Object.entries(prompt).filter(([, n]) => n && n.class_type === SAMPLER_TYPE).map(([id]) => id);
}

function normFile(f) {
  if (!f || typeof f !== "object" || !f.filename) return null;
  return { filename: String(f.filename), subfolder: f.subfolder ? String(f.subfolder) : "", type: f.type || "output" };
}

/**
 * Goan samplers in ComfyUI's queue ({promptId, number, nodeId, running}): a pending one becomes
 * "queued", one in the running prompt "running" unless it is already pausing or has ended.
 */
function mergeQueued(state, entries) {
  let s = state;
  for (const { promptId, number, nodeId, running } of entries) {
    const prev = s.jobs[jobKey(promptId, nodeId)];
    const patch = { number: number ?? (prev ? prev.number : null) };
    if (running) {
      if (!prev || prev.status === STATUS.QUEUED) patch.status = STATUS.RUNNING;
    } else if (!prev) {
      patch.status = STATUS.QUEUED;
    }
    s = put(s, promptId, nodeId, patch);
  }
  return s;
}

/** The prompts of queued rows that never ran and are no longer among `activeIds` (the prompts in ComfyUI's queue). */
export function promptsLeftQueue(state, activeIds) {
  const left = new Set();
  for (const key of state.order) {
    const job = state.jobs[key];
    if (job.status === STATUS.QUEUED && job.step === null && !activeIds.has(job.prompt_id)) left.add(job.prompt_id);
  }
  return [...left];
}

/** Mark the queued rows of the prompts `promptIds` that never ran cancelled. */
function cancelNeverRan(state, promptIds) {
  let s = state;
  for (const id of promptIds) {
    s = updatePrompt(s, id, (job) => (job.status === STATUS.QUEUED && job.step === null ? { status: STATUS.CANCELLED } : null));
  }
  return s;
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
      if (!Array.isArray(item) || item.length < 3) continue;
      for (const nodeId of samplerNodeIds(item[2])) entries.push({ promptId: item[1], number: item[0], nodeId, running });
    }
  }
  const s = mergeQueued(state, entries);
  return cancelNeverRan(s, promptsLeftQueue(s, new Set(entries.map((e) => e.promptId))));
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
 * goan's word on which queued prompts hold goan samplers (`goanQueue`: /goan/jobs `queue`,
 * [{prompt_id, node_id, running}], one entry per sampler; the job list does not say what a prompt
 * holds). Returns the new state and `left`: the prompts of queued rows that never ran and are in
 * neither list, whose end GET /api/jobs/{id} tells (`applyNativeJob`).
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
  return { state: s, left: promptsLeftQueue(s, active) };
}

/**
 * Apply GET /api/jobs/{id} ({ok, status, json}) to the queued rows of a prompt that left the queue
 * without running goan's sampler: 404 (the server no longer knows it: removed from the queue) and
 * "cancelled" make them cancelled, "failed" failed (with ComfyUI's message), "completed" finished
 * (e.g. a cached result).
 */
export function applyNativeJob(state, promptId, res) {
  if (!res) return state;
  let patch = null;
  if (res.status === 404) {
    patch = { status: STATUS.CANCELLED };
  } else {
    const status = res.ok && res.json ? NATIVE_STATUS[res.json.status] : undefined;
    if (!status || status === STATUS.QUEUED) return state;
    patch = { status };
    if (status === STATUS.FAILED) {
      const err = res.json.execution_error;
      patch.error = (err && err.exception_message) || "execution error";
    }
  }
  return updatePrompt(state, promptId, (job) => (job.status === STATUS.QUEUED ? patch : null));
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
    for (const k of ["job_id", "section", "total_sections", "step", "steps", "skipped", "error", "parent", "root"]) {
      if (j[k] !== undefined) patch[k] = j[k];
    }
    const key = keyFor(s, j.prompt_id, j.node_id);
    if (key === null) continue;
    if (SERVER_STATUSES.has(j.status)) {
      const prev = s.jobs[key];
      // A pause the user asked for stays "pausing" until the server says it ended.
      if (!(prev && prev.status === STATUS.PAUSING && j.status === STATUS.RUNNING)) patch.status = j.status;
      // A job cancelled here may still be reported as running for a moment.
      if (prev && prev.status === STATUS.CANCELLED && !isTerminal(j.status)) delete patch.status;
    }
    const f = normFile(j.file);
    if (f) patch.file = f;
    s = put(s, j.prompt_id, j.node_id, patch);
  }
  return s;
}

/**
 * Apply one websocket event {type, detail}. ComfyUI's events only touch jobs already known as goan
 * jobs (from /queue or /goan/jobs), the prompt-wide ones (start, success, error, interrupt) every
 * row of the prompt; goan's own events name their sampler (`node_id`) and create its row when needed.
 */
export function applyEvent(state, type, d) {
  d = d || {};
  const id = d.prompt_id;
  switch (type) {
    case "execution_start":
      return updatePrompt(state, id, (job) => (job.status === STATUS.QUEUED ? { status: STATUS.RUNNING } : null));
    case "executing":
      if (d.node === null || d.node === undefined) return state;
      return updatePrompt(state, id, (job) => (job.status === STATUS.QUEUED ? { status: STATUS.RUNNING } : null));
    case "progress":
      // ComfyUI's bar counts steps over the whole job; /goan/jobs gives the step within a section.
      if (d.node === null || d.node === undefined) return state;
      return update(state, jobKey(id, String(d.node)), { progress: { value: d.value, max: d.max } });
    case "executed": {
      // The save node's output: the file of the job it names (older servers: the prompt's only row).
      const out = d.output && d.output.goan_resume;
      const f = Array.isArray(out) && out.length ? normFile(out[0]) : null;
      if (!f) return state;
      const rows = rowsOfPrompt(state, id);
      const named = out[0].job_id ? rows.filter((key) => state.jobs[key].job_id === out[0].job_id) : rows;
      return named.length === 1 ? update(state, named[0], { file: f }) : state;
    }
    case "execution_success":
      // pausing/paused: the goan events and /goan/jobs settle it
      return updatePrompt(state, id, (job) => (job.status === STATUS.RUNNING ? { status: STATUS.FINISHED } : null));
    case "execution_error":
      return updatePrompt(state, id, (job) => (isTerminal(job.status) ? null
        : { status: STATUS.FAILED, error: d.exception_message || "execution error" }));
    case "execution_interrupted":
      return updatePrompt(state, id, (job) => (isTerminal(job.status) ? null
        : { status: job.status === STATUS.PAUSING ? STATUS.PAUSING : STATUS.STOPPED }));
    case "goan.pausing":
      if (!id) return state;
      return put(state, id, d.node_id, { status: STATUS.PAUSING });
    case "goan.paused": {
      if (!id) return state;
      const patch = { status: isPauseKind(d.kind) ? STATUS.PAUSED : STATUS.STOPPED };
      if (d.job_id) patch.job_id = d.job_id;
      const f = normFile(d);
      if (f) patch.file = f;
      return put(state, id, d.node_id, patch);
    }
    case "goan.autosaved": {
      if (!id) return state;
      const patch = {};
      if (d.job_id) patch.job_id = d.job_id;
      const f = normFile(d);
      if (f) patch.file = f;
      return put(state, id, d.node_id, patch);
    }
    case "goan.resumed": {
      if (!id) return state;
      const prev = findJob(state, id, d.node_id);
      return put(state, id, d.node_id, {
        ...(prev && !isTerminal(prev.status) && prev.status !== STATUS.QUEUED ? {} : { status: STATUS.RUNNING }),
        job_id: d.job_id || (prev && prev.job_id) || null,
        section: d.section ?? null,
        step: d.step ?? null,
        ...(d.parent ? { parent: String(d.parent), root: String(d.root || d.parent) } : {}),
      });
    }
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

/** The user asked to pause the row `key`; the state shows it at once. */
export function markPausing(state, key) {
  const job = state.jobs[key];
  if (!job || job.status !== STATUS.RUNNING) return state;
  return update(state, key, { status: STATUS.PAUSING });
}

/** The user cancelled row `key`: ComfyUI cancels whole prompts, so every row of its prompt that has not ended. */
export function markCancelled(state, key) {
  const job = state.jobs[key];
  if (!job) return state;
  return updatePrompt(state, job.prompt_id, (j) => (isTerminal(j.status) ? null : { status: STATUS.CANCELLED }));
}

export function markDownloaded(state, key) {
  return update(state, key, { downloaded: true });
}

export function removeJob(state, key) {
  if (!state.jobs[key]) return state;
  const jobs = { ...state.jobs };
  delete jobs[key];
  return { jobs, order: state.order.filter((k) => k !== key) };
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
  // its prompt runs, its sampler has not started: loaders first, or another branch of the prompt
  if (job.status === STATUS.RUNNING && job.step === null && !job.progress) parts.push("waiting to start");
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

/**
 * The row the action bar's pause acts on: the sampler ComfyUI executes now (`executing`:
 * {prompt_id, node}) when it is a running row, else the first running row.
 */
export function runningJob(state, executing) {
  const now = executing && executing.prompt_id && executing.node != null ? state.jobs[jobKey(executing.prompt_id, String(executing.node))] : null;
  if (now && now.status === STATUS.RUNNING) return now;
  for (const key of state.order) {
    const j = state.jobs[key];
    if (j.status === STATUS.RUNNING) return j;
  }
  return null;
}

/**
 * The running row of a sampler node whose execution ids are `ids` (a node inside a subgraph runs
 * as "12:5"), for its pause button, or null. A prompt may hold several samplers, all "running"
 * while the prompt runs: the button is live for the one ComfyUI executes, for one that has
 * started (the server reported its step), and, in a prompt with a single sampler, from the
 * prompt's start (a pause asked before the sampler starts applies when it does).
 */
export function nodeRunningJob(state, executing, ids) {
  const promptId = executing && executing.prompt_id;
  if (!promptId) return null;
  const rows = rowsOfPrompt(state, promptId).map((key) => state.jobs[key]);
  const job = rows.find((j) => ids.includes(String(j.node_id)));
  if (!job || job.status !== STATUS.RUNNING) return null;
  return ids.includes(String(executing.node)) || job.step !== null || rows.length === 1 ? job : null;
}
