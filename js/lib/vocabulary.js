// goan's status and resume-file-kind words for the frontend; tests/test_vocabulary.py keeps them equal to goan_core/vocabulary.py.
// They are the values the routes (/goan/jobs, /goan/pause) and events (goan.paused's kind) send. Plain constants, no DOM and no ComfyUI.

/** Where a job stands (Python's Status): keys are the member names, values what the server sends. */
export const STATUS = Object.freeze({
  QUEUED: "queued", // in ComfyUI's queue, not started (frontend only)
  LOADED: "loaded", // read from a resume file, not continued yet
  RUNNING: "running",
  PAUSING: "pausing", // a pause was asked for; the job stops after the current step
  PAUSED: "paused", // ended by a pause, with a resume file
  STOPPED: "stopped", // ended by a stop or ComfyUI's cancel, with a fail-safe resume file when possible
  FINISHED: "finished",
  FAILED: "failed", // ended by an error, with a fail-safe resume file when possible
  CANCELLED: "cancelled", // removed from the queue before it ran (frontend only)
});

/** Why a resume file was written (Python's FileKind): the `kind` of a goan.paused event and of job_info.json. */
export const FILE_KIND = Object.freeze({
  PAUSE: "pause",
  STOP: "stop",
  AUTOSAVE: "autosave",
  FAILSAFE: "failsafe", // written on an exception: an interrupt, out of memory, a bug
  FINISHED: "finished", // the end of a finished job, from which an f1 job can be extended
});

const TERMINAL = new Set([STATUS.PAUSED, STATUS.STOPPED, STATUS.FINISHED, STATUS.FAILED, STATUS.CANCELLED]);

/** True when a job with this status has ended (or left the queue) and will not change by itself. */
export function isTerminal(status) {
  return TERMINAL.has(status);
}

/**
 * True when a resume file of this kind was written by a pause the user asked for. A missing kind
 * counts as a pause, and so does the status word "paused" in place of the kind.
 */
export function isPauseKind(kind) {
  return !kind || kind === FILE_KIND.PAUSE || kind === STATUS.PAUSED;
}
