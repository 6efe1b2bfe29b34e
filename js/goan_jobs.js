// The goan job list in the browser: fed by ComfyUI's job API (GET /api/jobs, /api/jobs/{id}) or, on
// servers without it, its /queue; by the server's /goan/jobs and the websocket events. Actions (pause,
// cancel, download again, load, remove) go to the server; Cancel through POST /api/jobs/{id}/cancel
// where the server has it, else /queue and /interrupt.
import { api, toast, toastError, request, expectOk, downloadFile } from "./goan_comfy.js";
import {
  emptyState, applyQueue, applyServerJobs, applyEvent, markPausing, markCancelled, markDownloaded, removeJob,
  runningJob, findJob, shouldAutoDownload, applyNativeQueue, applyNativeJob, jobsApiPresent, cancelRequest, cancelOutcome,
  cancelRouteMissing, NATIVE_ACTIVE_JOBS,
} from "./lib/jobs.js";
import { STATUS, isTerminal } from "./lib/vocabulary.js";

const COMFY_EVENTS = ["execution_start", "executing", "progress", "executed", "execution_success", "execution_error", "execution_interrupted"];
const GOAN_EVENTS = ["goan.pausing", "goan.paused", "goan.autosaved", "goan.resumed"];

let state = emptyState();
const listeners = new Set();
let executing = { prompt_id: null, node: null };
let currentPrompt = null;
const autoDownloaded = new Set();
let refreshing = null;
let pollTimer = null;
let resumeLoader = null; // set by the resume module: (file record) => Promise
let nativeJobs = null; // whether the server has ComfyUI's job API: null until an answer tells (lib/jobs.js jobsApiPresent)
let nativeCancel = null; // whether it has POST /api/jobs/{id}/cancel too (false once that answered 404)

export function getState() {
  return state;
}
export function currentlyExecuting() {
  return executing;
}
export function onChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}
export function setResumeLoader(fn) {
  resumeLoader = fn;
}
/** Whether the server has ComfyUI's job API (true/false), or null while not known yet. */
export function jobsApi() {
  return nativeJobs;
}

function set(next) {
  if (next === state) return;
  state = next;
  notify();
}

function notify() {
  for (const fn of listeners) {
    try {
      fn(state);
    } catch (e) {
      console.error("[goan] listener failed", e);
    }
  }
}

/**
 * Re-read ComfyUI's queue and the server's goan jobs (the server may not know goan yet: 404 is fine).
 * The first answer of GET /api/jobs tells whether the server has the job API (remembered until the
 * server reconnects); without it, /queue is read instead.
 */
export function refresh() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      if (nativeJobs !== false) {
        const list = await request(NATIVE_ACTIVE_JOBS);
        nativeJobs = jobsApiPresent(list) ?? nativeJobs;
        if (nativeJobs) {
          await refreshNative(list);
          return;
        }
      }
      const q = await request("/queue");
      if (q.ok && q.json) set(applyQueue(state, q.json));
      const j = await request("/goan/jobs");
      if (j.ok && j.json) set(applyServerJobs(state, j.json));
    } catch (e) {
      console.warn("[goan] refresh failed", e);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** The job API's list, goan's word on which queued prompts are goan jobs, then how queued jobs that left ended. */
async function refreshNative(list) {
  const j = await request("/goan/jobs");
  const goan = j.ok && j.json ? j.json : { jobs: [], queue: [] };
  const merged = applyNativeQueue(state, list.json, goan.queue);
  set(applyServerJobs(merged.state, goan));
  for (const id of merged.left) set(applyNativeJob(state, id, await request(`/jobs/${encodeURIComponent(id)}`)));
}

function schedulePoll() {
  if (pollTimer) return;
  pollTimer = setInterval(() => {
    const active = state.order.some((id) => !isTerminal(state.jobs[id].status));
    if (active) refresh();
  }, 1500);
}

async function autoDownload(detail) {
  const seen = `${detail.prompt_id}/${detail.subfolder}/${detail.filename}`;
  if (autoDownloaded.has(seen)) return;
  autoDownloaded.add(seen);
  try {
    const name = await downloadFile({ filename: detail.filename, subfolder: detail.subfolder, type: detail.type || "output" });
    const job = findJob(state, detail.prompt_id, detail.node_id);
    if (job) set(markDownloaded(state, job.key));
    toast("success", "Paused", `Resume file downloaded: ${name}`);
  } catch (e) {
    toastError("Paused, but the download failed (use download again in the goan tab)", e);
  }
}

export function install() {
  for (const type of COMFY_EVENTS) {
    api.addEventListener(type, (e) => {
      let d = e.detail;
      if (type === "executing") {
        // The frontends hand "executing" over as the bare node id (display_node || node).
        const node = d !== null && typeof d === "object" ? d.display_node ?? d.node ?? null : d ?? null;
        const promptId = (d && typeof d === "object" && d.prompt_id) || currentPrompt;
        d = { node, prompt_id: promptId };
        executing = { prompt_id: node == null ? null : promptId, node };
        if (promptId && node != null && !findJob(state, promptId, node)) refresh();
      }
      d = d || {};
      if (type === "execution_start") {
        currentPrompt = d.prompt_id || null;
        refresh();
      }
      set(applyEvent(state, type, d));
      if (type === "execution_success" || type === "execution_error" || type === "execution_interrupted") {
        if (d.prompt_id === currentPrompt) currentPrompt = null;
        executing = { prompt_id: null, node: null };
        refresh();
      }
      if (type === "executing" && d.node == null) refresh();
      if (type === "executing" || type === "progress") notify();
    });
  }
  for (const type of GOAN_EVENTS) {
    api.addEventListener(type, (e) => {
      const d = e.detail || {};
      set(applyEvent(state, type, d));
      if (type === "goan.paused" && shouldAutoDownload(d)) autoDownload(d);
      else if (type === "goan.paused" && d.filename) {
        toast("info", "Stopped: a resume file was kept", `${d.filename} (download it from the goan tab)`, 8000);
      }
    });
  }
  api.addEventListener("status", () => refresh());
  api.addEventListener("reconnected", () => {
    nativeJobs = nativeCancel = null; // perhaps another ComfyUI now: ask again
    refresh();
  });
  schedulePoll();
  refresh();
}

// ---- actions -------------------------------------------------------------------------------

/** Pause the row `key`, or without one the sampler running now (the action bar's button). */
export async function pause(key) {
  const target = key ? state.jobs[key] : runningJob(state, executing);
  if (!target) {
    toast("info", "No goan task is running", "Pause applies to a running GoanSegmentSampler job.");
    return;
  }
  set(markPausing(state, target.key));
  toast("info", "Pausing task...", "The resume file downloads when the current step ends.");
  try {
    // Without a row the server pauses whichever sampler of the prompt runs.
    const json = key ? { prompt_id: target.prompt_id, node_id: target.node_id } : { prompt_id: target.prompt_id };
    const res = await request("/goan/pause", { method: "POST", json });
    expectOk(res, "Pause failed");
  } catch (e) {
    toastError("Pause failed", e);
    refresh();
  }
}

/** Cancel the prompt of row `key` (ComfyUI cancels whole prompts: every sampler in it). */
export async function cancel(key) {
  const job = state.jobs[key];
  if (!job) return;
  try {
    let native = nativeJobs === true && nativeCancel !== false;
    const send = ({ path, json }) => request(path, { method: "POST", json });
    let res = await send(cancelRequest(job, native));
    if (native && cancelRouteMissing(res)) { // a job list without the cancel route (ComfyUI 0.12-0.26)
      nativeCancel = native = false;
      res = await send(cancelRequest(job, false));
    } else if (native) {
      nativeCancel = true;
    }
    const answer = expectOk(res, "Cancel failed");
    if (cancelOutcome(answer, native) === "ended") {
      toast("info", "Nothing to cancel", "The task had already ended.");
    } else {
      set(markCancelled(state, key));
      toast("info", "Cancelled", job.status === STATUS.QUEUED ? "Removed from the queue." : "The task was interrupted.");
    }
  } catch (e) {
    toastError("Cancel failed", e);
  }
  refresh();
}

export async function downloadAgain(key) {
  const job = state.jobs[key];
  if (!job || !job.file) return;
  try {
    await downloadFile(job.file);
    set(markDownloaded(state, key));
  } catch (e) {
    toastError("Download failed", e);
  }
}

export async function loadForResume(key) {
  const job = state.jobs[key];
  if (!job || !job.file || !resumeLoader) return;
  await resumeLoader(job.file);
}

export function remove(key) {
  set(removeJob(state, key));
}

export const actions = { pause, cancel, download: downloadAgain, load: loadForResume, remove };
