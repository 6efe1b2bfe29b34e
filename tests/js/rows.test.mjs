import { test } from "node:test";
import assert from "node:assert/strict";
import { rowView, rowUpdates, listUpdates, ROW_PARTS } from "../../js/lib/rows.js";
import { emptyState, applyServerJobs, applyEvent, markPausing, findJob } from "../../js/lib/jobs.js";

function running(progress) {
  let s = applyServerJobs(emptyState(), { jobs: [{ prompt_id: "p1", status: "running", node_id: "7", job_id: "j1", section: 0, total_sections: 3, step: 1, steps: 10 }] });
  if (progress !== undefined) s = applyEvent(s, "progress", { prompt_id: "p1", node: "7", value: progress, max: 30 });
  return findJob(s, "p1");
}

test("a new row gets every update: status, all text parts, every control, the file link", () => {
  const ups = rowUpdates(null, rowView(running()));
  assert.equal(ups.filter((u) => u.kind === "status").length, 1);
  assert.deepEqual(ups.filter((u) => u.kind === "text").map((u) => u.part), ROW_PARTS);
  assert.deepEqual(ups.filter((u) => u.kind === "control").map((u) => u.id), ["pause", "cancel", "download", "load", "remove"]);
  assert.equal(ups.filter((u) => u.kind === "file").length, 1);
});

test("the same job twice: nothing to update", () => {
  assert.deepEqual(rowUpdates(rowView(running(3)), rowView(running(3))), []);
});

test("progress changes only the detail text, never a control", () => {
  const ups = rowUpdates(rowView(running(3)), rowView(running(12)));
  assert.deepEqual(ups.map((u) => u.kind), ["status", "text"]); // the status tooltip carries the full text
  const st = ups[0];
  assert.equal(st.word, "Running");
  assert.match(st.full, /40%/);
  assert.equal(ups[1].part, "detail");
  assert.match(ups[1].text, /40%/);
  assert.equal(ups.some((u) => u.kind === "control"), false);
});

test("progress within the same percent: no update at all", () => {
  // 30 steps: 3/30 and 3/30 (a repeated event) give the same text
  assert.deepEqual(rowUpdates(rowView(running(3)), rowView(running(3))), []);
});

test("pausing: the status word and the controls that change state, nothing else", () => {
  const job = running(3);
  const s = markPausing({ jobs: { [job.key]: job }, order: [job.key] }, job.key);
  const ups = rowUpdates(rowView(job), rowView(s.jobs[job.key]));
  const st = ups.find((u) => u.kind === "status");
  assert.equal(st.status, "pausing");
  assert.equal(st.word, "Pausing task...");
  const ctl = ups.filter((u) => u.kind === "control");
  // pause turns off; cancel stays on (untouched); the disabled ones only get a new tooltip
  assert.deepEqual(ctl.map((u) => [u.id, u.enabled]), [["pause", false], ["download", false], ["load", false], ["remove", false]]);
  for (const u of ctl) assert.match(u.title, /not available: the job is pausing/);
  assert.equal(ups.some((u) => u.kind === "file"), false);
});

test("a paused job with a file: download and load enabled, the file name and link appear", () => {
  const job = running(3);
  const s = applyEvent({ jobs: { [job.key]: job }, order: [job.key] }, "goan.paused", { prompt_id: "p1", kind: "pause", filename: "goan_abc.goan_resume", subfolder: "goan_resume", type: "output" });
  const ups = rowUpdates(rowView(job), rowView(findJob(s, "p1")));
  const ctl = Object.fromEntries(ups.filter((u) => u.kind === "control").map((u) => [u.id, u.enabled]));
  assert.equal(ctl.download, true);
  assert.equal(ctl.load, true);
  assert.equal(ctl.remove, true);
  assert.equal(ctl.pause, false);
  const file = ups.find((u) => u.kind === "file");
  assert.equal(file.hasFile, true);
  assert.ok(file.file.endsWith(".goan_resume"));
  const text = ups.find((u) => u.kind === "text" && u.part === "file");
  assert.equal(text.text, file.file);
});

test("an error shows as its own text part and hides again when gone", () => {
  const a = rowView(running());
  const b = rowView({ ...running(), status: "failed", error: "boom" });
  const ups = rowUpdates(a, b);
  assert.deepEqual(ups.find((u) => u.kind === "text" && u.part === "error"), { kind: "text", part: "error", text: "boom", title: "boom" });
  const back = rowUpdates(b, a).find((u) => u.kind === "text" && u.part === "error");
  assert.equal(back.text, "");
});

test("rowView: ids, status word, titles of disabled controls", () => {
  const v = rowView(running());
  assert.equal(v.word, "Running");
  assert.equal(v.ids, "job j1 · prompt p1");
  assert.equal(v.controls.find((c) => c.id === "pause").title, "Pause");
  assert.equal(v.controls.find((c) => c.id === "remove").title, "Remove from list (not available: the job is running)");
});

test("listUpdates: rows are added and removed by id, the rest kept", () => {
  assert.deepEqual(listUpdates(["a", "b"], ["c", "a"]), { add: ["c"], remove: ["b"], order: ["c", "a"] });
  assert.deepEqual(listUpdates(new Map([["a", 1]]).keys(), ["a"]), { add: [], remove: [], order: ["a"] });
  assert.deepEqual(listUpdates([], []), { add: [], remove: [], order: [] });
});

test("more calls skipped by TeaCache: the row's detail text changes in place, no control is touched", () => {
  const a = rowView({ ...running(3), skipped: 4 });
  const b = rowView({ ...running(3), skipped: 9 });
  assert.match(a.detail, /TeaCache skipped 4 calls$/);
  const ups = rowUpdates(a, b);
  assert.deepEqual(ups.map((u) => u.kind), ["status", "text"]);
  assert.equal(ups[1].part, "detail");
  assert.match(ups[1].text, /step 1\/10 · 10% · TeaCache skipped 9 calls$/);
});
