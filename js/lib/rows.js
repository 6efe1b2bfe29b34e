// Plain logic for the goan job list's rows: what one row shows (a flat view of a job), and which
// parts of an existing row change between two views. The panel builds each row and its buttons
// once and applies only these updates, so a button under the pointer is never replaced while a job
// makes progress (a click whose press and release land on different elements is lost).
// No DOM here.

import { controlsFor, statusText } from "./jobs.js";
import { STATUS } from "./vocabulary.js";
import { downloadName } from "./files.js";

export const STATUS_WORD = {
  [STATUS.QUEUED]: "Queued", [STATUS.RUNNING]: "Running", [STATUS.PAUSING]: "Pausing task...", [STATUS.PAUSED]: "Paused",
  [STATUS.STOPPED]: "Stopped", [STATUS.FINISHED]: "Finished", [STATUS.FAILED]: "Failed", [STATUS.CANCELLED]: "Cancelled",
};

/** The text parts of a row, in display order below the head line; an empty string hides the part. */
export const ROW_PARTS = ["detail", "ids", "error", "file"];

/**
 * Everything one row shows, as plain values: {prompt_id, status, word, full, detail, ids, error,
 * file, hasFile, controls: [{id, label, icon, enabled, title}]}.
 */
export function rowView(job) {
  const full = statusText(job);
  const detail = full.split(" · ").slice(1).join(" · ");
  const branch = job.parent ? `branch of ${job.parent} · ` : "";
  const ids = `${branch}${job.job_id ? `job ${job.job_id} · ` : ""}prompt ${String(job.prompt_id).slice(0, 8)}`;
  const file = job.file ? downloadName(job.file) : "";
  return {
    prompt_id: job.prompt_id,
    status: job.status,
    word: STATUS_WORD[job.status] || String(job.status),
    full,
    detail,
    ids,
    error: job.error ? String(job.error) : "",
    file,
    hasFile: !!file,
    controls: controlsFor(job).map((c) => ({
      id: c.id,
      label: c.label,
      icon: c.icon,
      enabled: !!c.enabled,
      title: c.enabled ? c.label : `${c.label} (not available: the job is ${job.status})`,
    })),
  };
}

/**
 * The updates that turn a row showing `prev` into one showing `next`, as a list of
 *   {kind: "status", status, word, full}     the head's status word, its class and tooltip
 *   {kind: "text", part, text}               one of ROW_PARTS (its title is the text, or `full` for detail)
 *   {kind: "control", id, enabled, title}    one button's enabled state and tooltip
 *   {kind: "file", hasFile, file}            the "download again" link shows or hides
 * `prev` null (a new row) yields every update. Nothing that stayed the same is listed.
 */
export function rowUpdates(prev, next) {
  const out = [];
  const p = prev || {};
  if (p.status !== next.status || p.word !== next.word || p.full !== next.full) {
    out.push({ kind: "status", status: next.status, word: next.word, full: next.full });
  }
  for (const part of ROW_PARTS) {
    if (p[part] !== next[part] || (part === "detail" && p.full !== next.full)) {
      out.push({ kind: "text", part, text: next[part], title: part === "detail" ? next.full : next[part] });
    }
  }
  const before = new Map(((p.controls) || []).map((c) => [c.id, c]));
  for (const c of next.controls) {
    const b = before.get(c.id);
    if (!b || b.enabled !== c.enabled || b.title !== c.title) out.push({ kind: "control", id: c.id, enabled: c.enabled, title: c.title });
  }
  if (p.hasFile !== next.hasFile || p.file !== next.file) out.push({ kind: "file", hasFile: next.hasFile, file: next.file });
  return out;
}

/**
 * How the list's rows change: {add: [prompt_id], remove: [prompt_id], order: [prompt_id]} from the
 * ids shown now (`have`, any iterable) and the jobs to show (`want`, in display order).
 */
export function listUpdates(have, want) {
  const h = new Set(have);
  const w = new Set(want);
  return {
    add: want.filter((id) => !h.has(id)),
    remove: [...h].filter((id) => !w.has(id)),
    order: [...want],
  };
}
