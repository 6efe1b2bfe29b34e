import { test } from "node:test";
import assert from "node:assert/strict";
import {
  emptyState, applyQueue, applyServerJobs, applyEvent, markPausing, markCancelled, markDownloaded, removeJob,
  controlsFor, statusText, skippedText, listJobs, runningJob, promptHasSampler, STATUSES,
  shouldAutoDownload, applyNativeQueue, applyNativeJob, jobsApiPresent, cancelRequest, cancelOutcome, NATIVE_ACTIVE_JOBS,
  cancelRouteMissing, findJob, jobKey, nodeRunningJob, samplerNodeIds,
} from "../../js/lib/jobs.js";
import { isTerminal } from "../../js/lib/vocabulary.js";

const goanPrompt = { "3": { class_type: "GoanSegmentSampler", inputs: {} }, "9": { class_type: "GoanSaveResume", inputs: {} } };
const otherPrompt = { "1": { class_type: "KSampler", inputs: {} } };
const queue = (running, pending) => ({
  queue_running: running.map(([n, id, p]) => [n, id, p, {}, []]),
  queue_pending: pending.map(([n, id, p]) => [n, id, p, {}, []]),
});
/** The row of a prompt with one sampler, its key, and the prompts of the rows in order. */
const one = (s, promptId) => findJob(s, promptId) || undefined;
const keyOf = (s, promptId) => (findJob(s, promptId) || { key: jobKey(promptId, "nope") }).key;
const prompts = (s) => s.order.map((key) => s.jobs[key].prompt_id);
const enabled = (job) => Object.fromEntries(controlsFor(job).map((c) => [c.id, c.enabled]));

test("only prompts containing the goan sampler become jobs", () => {
  assert.equal(promptHasSampler(goanPrompt), true);
  assert.equal(promptHasSampler(otherPrompt), false);
  assert.equal(promptHasSampler(null), false);
  assert.deepEqual(samplerNodeIds(goanPrompt), ["3"]);
  const s = applyQueue(emptyState(), queue([[1, "a", goanPrompt]], [[2, "b", otherPrompt], [3, "c", goanPrompt]]));
  assert.deepEqual(prompts(s), ["a", "c"]);
  assert.equal(one(s, "a").status, "running");
  assert.equal(one(s, "c").status, "queued");
  assert.equal(one(s, "a").node_id, "3");
});

test("a full pause: running -> pausing -> paused, kept after the prompt ends", () => {
  let s = applyQueue(emptyState(), queue([], [[1, "a", goanPrompt]]));
  assert.equal(one(s, "a").status, "queued");
  s = applyEvent(s, "execution_start", { prompt_id: "a" });
  assert.equal(one(s, "a").status, "running");
  s = applyEvent(s, "progress", { prompt_id: "a", node: "3", value: 2, max: 8 });
  assert.deepEqual(one(s, "a").progress, { value: 2, max: 8 });
  assert.equal(applyEvent(s, "progress", { prompt_id: "a", node: "7", value: 1, max: 1 }), s); // another node's bar
  s = applyServerJobs(s, { jobs: [{ prompt_id: "a", status: "running", section: 0, total_sections: 2, step: 2, steps: 4 }] });
  assert.equal(statusText(one(s, "a")), "Running · section 1/2 · step 2/4 · 25%");
  s = markPausing(s, keyOf(s, "a"));
  assert.equal(one(s, "a").status, "pausing");
  // a late poll that still says "running" does not undo the user's pause
  s = applyServerJobs(s, { jobs: [{ prompt_id: "a", status: "running", step: 3, steps: 4 }] });
  assert.equal(one(s, "a").status, "pausing");
  s = applyEvent(s, "goan.pausing", { prompt_id: "a", node_id: "3" });
  assert.equal(one(s, "a").status, "pausing");
  s = applyEvent(s, "goan.paused", { prompt_id: "a", node_id: "3", job_id: "j1", filename: "j1.goan_resume", subfolder: "goan", type: "output", kind: "pause" });
  assert.equal(one(s, "a").status, "paused");
  assert.deepEqual(one(s, "a").file, { filename: "j1.goan_resume", subfolder: "goan", type: "output" });
  s = applyEvent(s, "execution_success", { prompt_id: "a" });
  assert.equal(one(s, "a").status, "paused");
  s = applyQueue(s, queue([], []));
  assert.equal(one(s, "a").status, "paused");
  assert.equal(statusText(one(s, "a")).startsWith("Paused"), true);
});

test("finish, failure, interrupt and cancel", () => {
  let s = applyQueue(emptyState(), queue([[1, "a", goanPrompt]], [[2, "b", goanPrompt], [3, "c", goanPrompt]]));
  s = applyEvent(s, "execution_success", { prompt_id: "a" });
  assert.equal(one(s, "a").status, "finished");
  s = applyEvent(s, "execution_start", { prompt_id: "b" });
  s = applyEvent(s, "execution_error", { prompt_id: "b", exception_message: "CUDA out of memory" });
  assert.equal(one(s, "b").status, "failed");
  assert.equal(one(s, "b").error, "CUDA out of memory");
  s = markCancelled(s, keyOf(s, "c"));
  assert.equal(one(s, "c").status, "cancelled");
  s = applyEvent(s, "execution_start", { prompt_id: "c" }); // cancelled stays cancelled
  assert.equal(one(s, "c").status, "cancelled");
  let t = applyQueue(emptyState(), queue([[1, "x", goanPrompt]], []));
  t = applyEvent(t, "execution_interrupted", { prompt_id: "x" });
  assert.equal(one(t, "x").status, "stopped");
  t = applyEvent(t, "goan.paused", { prompt_id: "x", filename: "f.goan_resume", subfolder: "", type: "output", kind: "failsafe" });
  assert.equal(one(t, "x").status, "stopped");
  assert.equal(one(t, "x").file.filename, "f.goan_resume");
});

test("a queued job that leaves the queue without running is cancelled", () => {
  let s = applyQueue(emptyState(), queue([], [[1, "a", goanPrompt]]));
  s = applyQueue(s, queue([], []));
  assert.equal(one(s, "a").status, "cancelled");
});

test("server jobs are authoritative and bring their file", () => {
  let s = applyServerJobs(emptyState(), { jobs: [
    { prompt_id: "p", job_id: "j", node_id: 3, status: "paused", section: 1, total_sections: 3, step: 2, steps: 4, file: { filename: "j.goan_resume", subfolder: "goan", type: "output" }, error: null },
    { prompt_id: "q", status: "bogus" },
    { status: "running" },
  ] });
  assert.equal(one(s, "p").status, "paused");
  assert.equal(one(s, "p").node_id, "3");
  assert.equal(one(s, "p").file.subfolder, "goan");
  assert.equal(one(s, "q").status, "queued");
  assert.equal(prompts(s).length, 2);
  assert.match(statusText(one(s, "p")), /section 2\/3 · step 2\/4/);
  s = applyServerJobs(s, null);
  assert.equal(prompts(s).length, 2);
});

test("goan.autosaved and the save node's output record the latest file", () => {
  let s = applyQueue(emptyState(), queue([[1, "a", goanPrompt]], []));
  s = applyEvent(s, "goan.autosaved", { prompt_id: "a", job_id: "j", filename: "j_1.goan_resume", subfolder: "goan", type: "output" });
  assert.equal(one(s, "a").file.filename, "j_1.goan_resume");
  assert.equal(one(s, "a").status, "running");
  s = applyEvent(s, "executed", { prompt_id: "a", node: "9", output: { goan_resume: [{ filename: "j_2.goan_resume", subfolder: "goan", type: "output" }] } });
  assert.equal(one(s, "a").file.filename, "j_2.goan_resume");
  s = applyEvent(s, "executed", { prompt_id: "zzz", output: { goan_resume: [{ filename: "x" }] } });
  assert.equal(one(s, "zzz"), undefined);
});

test("goan.resumed marks a job running", () => {
  const s = applyEvent(emptyState(), "goan.resumed", { prompt_id: "r", job_id: "j", section: 1, step: 2 });
  assert.equal(one(s, "r").status, "running");
  assert.equal(one(s, "r").section, 1);
});

test("ComfyUI events about non-goan prompts change nothing", () => {
  const s0 = emptyState();
  for (const t of ["execution_start", "executing", "progress", "execution_success", "execution_error", "execution_interrupted"]) {
    assert.equal(applyEvent(s0, t, { prompt_id: "other", node: "1" }), s0);
  }
  assert.equal(applyEvent(s0, "goan.paused", {}), s0);
  assert.equal(applyEvent(s0, "unknown", { prompt_id: "x" }), s0);
});

test("controls: always all five, in order, disabled when they do not apply", () => {
  const ids = controlsFor({ status: "queued" }).map((c) => c.id);
  assert.deepEqual(ids, ["pause", "cancel", "download", "load", "remove"]);
  for (const st of STATUSES) assert.equal(controlsFor({ status: st }).length, 5);
  assert.deepEqual(enabled({ status: "queued" }), { pause: false, cancel: true, download: false, load: false, remove: false });
  assert.deepEqual(enabled({ status: "running" }), { pause: true, cancel: true, download: false, load: false, remove: false });
  assert.deepEqual(enabled({ status: "pausing" }), { pause: false, cancel: true, download: false, load: false, remove: false });
  const f = { filename: "a.goan_resume" };
  assert.deepEqual(enabled({ status: "paused", file: f }), { pause: false, cancel: false, download: true, load: true, remove: true });
  assert.deepEqual(enabled({ status: "finished", file: f }), { pause: false, cancel: false, download: true, load: false, remove: true });
  assert.deepEqual(enabled({ status: "cancelled" }), { pause: false, cancel: false, download: false, load: false, remove: true });
  assert.ok(isTerminal("paused") && !isTerminal("pausing"));
});

test("list order, running job, downloaded flag and removal", () => {
  let s = applyQueue(emptyState(), queue([[1, "a", goanPrompt]], [[2, "b", goanPrompt]]));
  assert.deepEqual(listJobs(s).map((j) => j.prompt_id), ["b", "a"]);
  assert.equal(runningJob(s).prompt_id, "a");
  s = markDownloaded(s, keyOf(s, "a"));
  assert.equal(one(s, "a").downloaded, true);
  s = removeJob(s, keyOf(s, "a"));
  assert.deepEqual(prompts(s), ["b"]);
  assert.equal(runningJob(s), null);
  assert.equal(removeJob(s, keyOf(s, "nope")), s);
  assert.equal(markPausing(s, keyOf(s, "b")), s); // queued jobs cannot be paused
});

test("only a pause downloads at once; fail-safe and stop files wait in the list", () => {
  assert.equal(shouldAutoDownload({ filename: "a.goan_resume", kind: "pause" }), true);
  assert.equal(shouldAutoDownload({ filename: "a.goan_resume" }), true);
  assert.equal(shouldAutoDownload({ filename: "a.goan_resume", kind: "failsafe" }), false);
  assert.equal(shouldAutoDownload({ filename: "a.goan_resume", kind: "stop" }), false);
  assert.equal(shouldAutoDownload({ kind: "pause" }), false);
  assert.equal(shouldAutoDownload(null), false);
});

test("TeaCache's skipped calls come from /goan/jobs and show last in the status text, also after the end", () => {
  let s = applyServerJobs(emptyState(), { jobs: [{ prompt_id: "a", status: "running", section: 1, total_sections: 3, step: 4, steps: 25 }] });
  assert.equal(one(s, "a").skipped, null);
  assert.equal(statusText(one(s, "a")), "Running · section 2/3 · step 4/25");
  s = applyServerJobs(s, { jobs: [{ prompt_id: "a", status: "running", step: 5, steps: 25, skipped: 12 }] });
  assert.equal(one(s, "a").skipped, 12);
  assert.equal(statusText(one(s, "a")), "Running · section 2/3 · step 5/25 · TeaCache skipped 12 calls");
  s = applyServerJobs(s, { jobs: [{ prompt_id: "a", status: "running", step: 6, steps: 25 }] }); // a poll without the field keeps it
  assert.equal(one(s, "a").skipped, 12);
  s = applyServerJobs(s, { jobs: [{ prompt_id: "a", status: "finished", section: 2, step: 25, skipped: 31 }] });
  assert.match(statusText(one(s, "a")), /^Finished · .* · TeaCache skipped 31 calls$/);
});

test("skippedText: nothing for none or nonsense, singular for one", () => {
  for (const v of [0, null, undefined, -3, 1.5, "x", NaN]) assert.equal(skippedText(v), "");
  assert.equal(skippedText(1), "TeaCache skipped 1 call");
  assert.equal(skippedText("7"), "TeaCache skipped 7 calls");
});

// ---- ComfyUI's job API, with answers of the current server's shape (comfy_execution/jobs.py) ----------

const nativeJob = (id, status, priority) => ({ id, status, priority, create_time: 1767225600000, outputs_count: 0,
  previewable_outputs_count: 0, workflow_id: "wf-1" });
const page = (...jobs) => ({ jobs, pagination: { offset: 0, limit: null, total: jobs.length, has_more: false } });

test("the job API is detected from the list answer: present, absent (404), or not known yet", () => {
  assert.equal(NATIVE_ACTIVE_JOBS, "/jobs?status=in_progress,pending");
  assert.equal(jobsApiPresent({ ok: true, status: 200, json: page() }), true);
  assert.equal(jobsApiPresent({ ok: false, status: 404, json: null }), false); // ComfyUI 0.3.x: no such route
  assert.equal(jobsApiPresent({ ok: true, status: 200, json: "<html>" }), false);
  assert.equal(jobsApiPresent({ ok: false, status: 500, json: { error: "x" } }), null);
  assert.equal(jobsApiPresent(null), null);
});

test("the job list gives states and order; goan's queue word says which jobs are goan jobs", () => {
  const goanQueue = [{ prompt_id: "a", node_id: "12:5", running: true }, { prompt_id: "c", node_id: 3, running: false }];
  const { state: s, left } = applyNativeQueue(emptyState(),
    page(nativeJob("a", "in_progress", 7), nativeJob("b", "pending", 8), nativeJob("c", "pending", 9)), goanQueue);
  assert.deepEqual(prompts(s), ["a", "c"]); // b is not a goan job
  assert.equal(one(s, "a").status, "running");
  assert.equal(one(s, "a").node_id, "12:5"); // a sampler inside a subgraph
  assert.equal(one(s, "c").status, "queued");
  assert.equal(one(s, "c").node_id, "3");
  assert.equal(one(s, "c").number, 9);
  assert.deepEqual(left, []);
  // c starts running; a ran the sampler (goan's server knows it): neither is looked up
  const next = applyNativeQueue(applyServerJobs(s, { jobs: [{ prompt_id: "a", status: "paused" }] }),
    page(nativeJob("c", "in_progress", 9)), [{ prompt_id: "c", node_id: "3", running: true }]);
  assert.equal(one(next.state, "c").status, "running");
  assert.equal(one(next.state, "a").status, "paused");
  assert.deepEqual(next.left, []);
});

test("a queued job that left the queue without running: GET /api/jobs/{id} says how it ended", () => {
  let { state: s } = applyNativeQueue(emptyState(), page(nativeJob("q1", "pending", 1), nativeJob("q2", "pending", 2),
    nativeJob("q3", "pending", 3), nativeJob("q4", "pending", 4)),
  ["q1", "q2", "q3", "q4"].map((id) => ({ prompt_id: id, node_id: "3", running: false })));
  const after = applyNativeQueue(s, page(), []);
  assert.deepEqual(after.left, ["q1", "q2", "q3", "q4"]);
  s = after.state;
  assert.equal(one(s, "q1").status, "queued"); // not guessed: the lookup decides
  s = applyNativeJob(s, "q1", { ok: false, status: 404, json: { error: "Job not found" } });
  s = applyNativeJob(s, "q2", { ok: true, status: 200, json: { ...nativeJob("q2", "cancelled", 2) } });
  s = applyNativeJob(s, "q3", { ok: true, status: 200, json: { ...nativeJob("q3", "failed", 3),
    execution_error: { exception_message: "Value not in list: model", node_id: "4" } } });
  s = applyNativeJob(s, "q4", { ok: true, status: 200, json: nativeJob("q4", "completed", 4) }); // cached result
  assert.deepEqual(["q1", "q2", "q3", "q4"].map((id) => one(s, id).status), ["cancelled", "cancelled", "failed", "finished"]);
  assert.equal(one(s, "q3").error, "Value not in list: model");
  const still = applyNativeJob(s, "q4", { ok: false, status: 500, json: null });
  assert.equal(still, s);
});

test("Cancel uses POST /api/jobs/{id}/cancel where the server has the job API, else /queue or /interrupt", () => {
  const queued = { prompt_id: "9f1c6c1e-2b1e-4d59-9a53-6c1f6b2f0a11", status: "queued" };
  const running = { prompt_id: "p-run", status: "running" };
  assert.deepEqual(cancelRequest(queued, true), { path: "/jobs/9f1c6c1e-2b1e-4d59-9a53-6c1f6b2f0a11/cancel", json: {} });
  assert.deepEqual(cancelRequest(running, true), { path: "/jobs/p-run/cancel", json: {} });
  assert.deepEqual(cancelRequest(queued, false), { path: "/queue", json: { delete: [queued.prompt_id] } });
  assert.deepEqual(cancelRequest(running, false), { path: "/interrupt", json: { prompt_id: "p-run" } });
  assert.equal(cancelOutcome({ cancelled: true }, true), "cancelled");
  assert.equal(cancelOutcome({ cancelled: false }, true), "ended"); // it had already finished
  assert.equal(cancelOutcome(null, false), "cancelled"); // /interrupt answers with no body
  // ComfyUI 0.12-0.26 list jobs but have no cancel route: its 404 sends Cancel back to /queue and /interrupt
  assert.equal(cancelRouteMissing({ ok: false, status: 404, json: null }), true);
  assert.equal(cancelRouteMissing({ ok: false, status: 405, json: null }), true);
  assert.equal(cancelRouteMissing({ ok: true, status: 200, json: { cancelled: true } }), false);
  assert.equal(cancelRouteMissing({ ok: false, status: 500, json: { error: "x" } }), false);
});
