import { test } from "node:test";
import assert from "node:assert/strict";
import { widgetValuesFromParams, SETTING_WIDGETS, groupBranches } from "../../js/lib/branches.js";
import { emptyState, applyServerJobs, applyEvent, listJobs } from "../../js/lib/jobs.js";
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
  assert.match(rowView(s.jobs.p4).ids, /^branch of job-a2 · job job-a3/);
  assert.doesNotMatch(rowView(s.jobs.p2).ids, /branch/);
  assert.deepEqual(groupBranches([]), []);
});
