import { test } from "node:test";
import assert from "node:assert/strict";
import { widgetValuesFromParams, SETTING_WIDGETS, groupBranches } from "../../js/lib/branches.js";
import {
  emptyState, applyServerJobs, applyEvent, applyQueue, applyNativeQueue, applyNativeJob, listJobs, findJob, jobKey,
  samplerNodeIds, nodeRunningJob, runningJob, markPausing, markCancelled, statusText,
} from "../../js/lib/jobs.js";
import { rowView } from "../../js/lib/rows.js";

test("the sampler's widgets take the file's settings, nothing else", () => {
  const params = { prompt: "[0s] a cat [2s] a dog", seed: 7, cfg: 1.0, mode: "f1", teacache: false, crf: 16,
                   seconds: 5, extra: "x", steps: { evil: 1 } };
  assert.deepEqual(widgetValuesFromParams(params),
                   { prompt: "[0s] a cat [2s] a dog", seed: 7, cfg: 1.0, mode: "f1", teacache: false });
  assert.ok(!SETTING_WIDGETS.includes("seconds"));  // the length widget means additional seconds when continuing
  // the end frame's settings too: a widget left at its default would otherwise branch (or be refused)
  assert.deepEqual(widgetValuesFromParams({ end_strength: 0.8, end_embeds: 0.5 }), { end_strength: 0.8, end_embeds: 0.5 });
  assert.deepEqual(widgetValuesFromParams(null), {});
});

test("branches of one job are listed together, marked as branches", () => {
  let s = emptyState();
  s = applyServerJobs(s, { jobs: [
    { prompt_id: "p1", job_id: "job-a", status: "paused" },
    { prompt_id: "p2", job_id: "job-b", status: "finished" },
    { prompt_id: "p3", job_id: "job-a2", status: "running", parent: "job-a", root: "job-a" },
  ] });
  s = applyEvent(s, "goan.resumed", { prompt_id: "p4", job_id: "job-a3", section: 1, step: 0, parent: "job-a2", root: "job-a" });
  const order = listJobs(s).map((j) => j.job_id);
  assert.deepEqual(order, ["job-a3", "job-a2", "job-a", "job-b"]);
  assert.match(rowView(findJob(s, "p4")).ids, /^branch of job-a2 · job job-a3/);
  assert.doesNotMatch(rowView(findJob(s, "p2")).ids, /branch/);
  assert.deepEqual(groupBranches([]), []);
});

// ---- one prompt, three samplers (workflows/goan_compare_branches.json): a row each --------------

const threeBranches = { "4": { class_type: "GoanSegmentSampler" }, "5": { class_type: "GoanSegmentSampler" },
  "6": { class_type: "GoanSegmentSampler" }, "2": { class_type: "GoanLoadResume" } };
const queued = (running) => ({ queue_running: running ? [[1, "p", threeBranches, {}, []]] : [],
  queue_pending: running ? [] : [[1, "p", threeBranches, {}, []]] });
const row = (s, node) => s.jobs[jobKey("p", node)];

test("three samplers branching one file in one prompt: three rows, each with its own progress, pause and file", () => {
  assert.deepEqual(samplerNodeIds(threeBranches), ["4", "5", "6"]);
  let s = applyQueue(emptyState(), queued(false));
  assert.deepEqual(s.order, ["p@4", "p@5", "p@6"]);
  assert.ok(s.order.every((k) => s.jobs[k].status === "queued"));
  s = applyEvent(s, "execution_start", { prompt_id: "p" });
  assert.ok(s.order.every((k) => s.jobs[k].status === "running"));
  assert.equal(statusText(row(s, "6")), "Running · waiting to start");
  for (const [node, job] of [["4", "job-b1"], ["5", "job-b2"], ["6", "job-b3"]]) {
    s = applyEvent(s, "goan.resumed", { prompt_id: "p", node_id: node, job_id: job, section: 1, step: 0, parent: "job-a", root: "job-a" });
  }
  s = applyEvent(s, "progress", { prompt_id: "p", node: "5", value: 3, max: 9 });
  assert.deepEqual(row(s, "5").progress, { value: 3, max: 9 });
  assert.equal(row(s, "4").progress, null);
  s = applyEvent(s, "goan.paused", { prompt_id: "p", node_id: "5", job_id: "job-b2", filename: "b2.goan_resume", subfolder: "goan_resume/job-b2", type: "output", kind: "pause" });
  assert.deepEqual(s.order.map((k) => s.jobs[k].status), ["running", "paused", "running"]);
  // the save nodes' outputs name their job
  s = applyEvent(s, "executed", { prompt_id: "p", node: "9", output: { goan_resume: [{ filename: "b3.goan_resume", subfolder: "goan_resume/job-b3", type: "output", job_id: "job-b3" }] } });
  assert.equal(row(s, "6").file.filename, "b3.goan_resume");
  assert.equal(row(s, "4").file, null);
  // an older server's output without the job id cannot say which row: nothing changes
  assert.equal(applyEvent(s, "executed", { prompt_id: "p", node: "9", output: { goan_resume: [{ filename: "x.goan_resume" }] } }), s);
  s = applyEvent(s, "execution_success", { prompt_id: "p" });
  assert.deepEqual(s.order.map((k) => s.jobs[k].status), ["finished", "paused", "finished"]);
  // listed together, as branches of one job, each with its own id
  const views = listJobs(s).map(rowView);
  assert.deepEqual(views.map((v) => v.ids.split(" · ").slice(0, 2).join(" · ")),
    ["branch of job-a · job job-b3", "branch of job-a · job job-b2", "branch of job-a · job job-b1"]);
});

test("the server's jobs and goan's queue word make a row per sampler; a lookup per prompt that left the queue", () => {
  let s = applyServerJobs(emptyState(), { jobs: [
    { prompt_id: "p", node_id: 4, job_id: "b1", status: "finished" },
    { prompt_id: "p", node_id: "5", job_id: "b2", status: "running", step: 2, steps: 4 },
  ] });
  assert.deepEqual(s.order, ["p@4", "p@5"]);
  const q = [{ prompt_id: "q", node_id: "4", running: false }, { prompt_id: "q", node_id: "5", running: false }];
  const { state, left } = applyNativeQueue(s, { jobs: [{ id: "q", status: "pending", priority: 3 }] }, q);
  assert.deepEqual(state.order, ["p@4", "p@5", "q@4", "q@5"]);
  const gone = applyNativeQueue(state, { jobs: [] }, []);
  assert.deepEqual(gone.left, ["q"]); // once per prompt
  const ended = applyNativeJob(gone.state, "q", { ok: false, status: 404, json: null });
  assert.deepEqual(["q@4", "q@5"].map((k) => ended.jobs[k].status), ["cancelled", "cancelled"]);
  // a message without a sampler cannot pick one of several rows
  assert.equal(findJob(s, "p"), null);
  assert.equal(applyEvent(s, "goan.autosaved", { prompt_id: "p", filename: "x.goan_resume" }), s);
});

test("pause buttons and the action bar act on the sampler ComfyUI executes; Cancel takes the whole prompt", () => {
  let s = applyQueue(emptyState(), queued(true));
  s = applyServerJobs(s, { jobs: [{ prompt_id: "p", node_id: "4", status: "running", step: 1, steps: 4 }] });
  const ex = { prompt_id: "p", node: "4" };
  assert.equal(nodeRunningJob(s, ex, ["4"]).key, "p@4");
  assert.equal(nodeRunningJob(s, ex, ["5"]), null); // waits for its turn: no step reported, not executing
  assert.equal(nodeRunningJob(s, { prompt_id: "p", node: "5" }, ["5"]).key, "p@5");
  assert.equal(nodeRunningJob(s, { prompt_id: null, node: null }, ["4"]), null);
  assert.equal(runningJob(s, { prompt_id: "p", node: "6" }).key, "p@6");
  assert.equal(runningJob(s, null).key, "p@4");
  // one sampler in the prompt: its button is live from the prompt's start (a pause before it starts applies then)
  let one = applyQueue(emptyState(), { queue_running: [[1, "o", { "3": { class_type: "GoanSegmentSampler" } }, {}, []]], queue_pending: [] });
  assert.equal(nodeRunningJob(one, { prompt_id: "o", node: "1" }, ["3"]).key, "o@3");
  s = markPausing(s, "p@5");
  assert.deepEqual(s.order.map((k) => s.jobs[k].status), ["running", "pausing", "running"]);
  s = markCancelled(s, "p@4");
  assert.deepEqual(s.order.map((k) => s.jobs[k].status), ["cancelled", "cancelled", "cancelled"]);
});
