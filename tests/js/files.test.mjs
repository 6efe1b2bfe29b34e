import { test } from "node:test";
import assert from "node:assert/strict";
import {
  routeFile, isResumeName, findResumeFile, planChunks, MAX_CHUNK, chunkUrl, makeUploadId, UPLOAD_ID_RE,
  downloadName, viewUrl, stem, uploadInChunks,
} from "../../js/lib/files.js";

test("routeFile sends .goan_resume to goan whatever the MIME type", () => {
  for (const [name, mime] of [["a.goan_resume", ""], ["A.GOAN_RESUME", "application/zip"], ["x y.goan_resume", "application/octet-stream"]]) {
    assert.equal(routeFile(name, mime), "goan_resume");
  }
});

test("routeFile leaves images, workflows and other files to ComfyUI", () => {
  assert.equal(routeFile("cat.png", "image/png"), "image");
  assert.equal(routeFile("cat.webp", ""), "image");
  assert.equal(routeFile("flow.json", "application/json"), "workflow");
  assert.equal(routeFile("flow.json", ""), "workflow");
  assert.equal(routeFile("clip.mp4", "video/mp4"), "other");
  assert.equal(routeFile("notes.txt", "text/plain"), "other");
  assert.equal(routeFile("archive.zip", "application/zip"), "other");
  assert.equal(routeFile("goan_resume.json", ""), "workflow");
  assert.equal(routeFile("x.goan_resume.png", "image/png"), "image");
});

test("isResumeName and findResumeFile", () => {
  assert.equal(isResumeName(" job.goan_resume "), true);
  assert.equal(isResumeName("job.goan_resume.part"), false);
  assert.equal(isResumeName(undefined), false);
  const files = [{ name: "a.png" }, { name: "b.goan_resume" }, { name: "c.goan_resume" }];
  assert.equal(findResumeFile(files).name, "b.goan_resume");
  assert.equal(findResumeFile([{ name: "a.png" }]), null);
  assert.equal(findResumeFile(null), null);
});

test("planChunks covers the file exactly with pieces of at most 16 MiB", () => {
  for (const size of [0, 1, MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, 3 * MAX_CHUNK + 12345]) {
    const pieces = planChunks(size);
    assert.ok(pieces.length >= 1);
    let off = 0;
    pieces.forEach((p, i) => {
      assert.equal(p.index, i);
      assert.equal(p.offset, off);
      assert.ok(p.length <= MAX_CHUNK);
      assert.equal(p.end - p.offset, p.length);
      off = p.end;
    });
    assert.equal(off, size);
    assert.equal(pieces.length, Math.max(1, Math.ceil(size / MAX_CHUNK)));
  }
  assert.deepEqual(planChunks(10, 4).map((p) => [p.offset, p.end]), [[0, 4], [4, 8], [8, 10]]);
});

test("planChunks refuses bad sizes and chunk sizes above 16 MiB", () => {
  assert.throws(() => planChunks(-1));
  assert.throws(() => planChunks(1.5));
  assert.throws(() => planChunks(10, 0));
  assert.throws(() => planChunks(10, MAX_CHUNK + 1));
});

test("upload ids match the server's pattern and chunkUrl encodes the name", () => {
  for (let i = 0; i < 50; i++) assert.match(makeUploadId(), UPLOAD_ID_RE);
  assert.match(makeUploadId(() => 0), UPLOAD_ID_RE);
  const url = chunkUrl("abcdefgh", { offset: 16 }, 20, "my job&1.goan_resume");
  assert.equal(url, "/goan/upload/abcdefgh?offset=16&total=20&filename=my+job%261.goan_resume");
  assert.throws(() => chunkUrl("short", { offset: 0 }, 1, "a"));
  assert.throws(() => chunkUrl("../../etc/passwd", { offset: 0 }, 1, "a"));
});

test("downloadName keeps the base name and always ends in .goan_resume", () => {
  assert.equal(downloadName({ filename: "goan_job_00003_.goan_resume", subfolder: "goan" }), "goan_job_00003_.goan_resume");
  assert.equal(downloadName({ filename: "sub/dir/x.goan_resume" }), "x.goan_resume");
  assert.equal(downloadName({ filename: "..\\evil" }), "evil.goan_resume");
  assert.equal(downloadName({ filename: 'a:b*c?.goan_resume' }), "a_b_c_.goan_resume");
  assert.equal(downloadName({ filename: "" }), "goan.goan_resume");
  assert.equal(downloadName({ filename: ".20260101-120000-ab12cd_000004_s0002_t000.goan_resume" }),
    "20260101-120000-ab12cd_000004_s0002_t000.goan_resume"); // a hidden autosave downloads visible
  assert.equal(downloadName(null), "goan.goan_resume");
});

test("viewUrl and stem", () => {
  assert.equal(viewUrl({ filename: "a b.goan_resume", subfolder: "goan", type: "output" }), "/view?filename=a+b.goan_resume&subfolder=goan&type=output");
  assert.equal(viewUrl({ filename: "a.goan_resume" }), "/view?filename=a.goan_resume&subfolder=&type=output");
  assert.equal(stem("dir/job.goan_resume"), "job");
  assert.equal(stem(".hidden"), ".hidden");
});

function fakeServer({ failAt = -1, error = "not a goan resume file: job_info.json is missing" } = {}) {
  const calls = [];
  let received = 0;
  const post = async (url, body) => {
    const u = new URL(url, "http://x");
    const offset = Number(u.searchParams.get("offset"));
    const total = Number(u.searchParams.get("total"));
    const bytes = new Uint8Array(await body.arrayBuffer());
    calls.push({ url, offset, total, length: bytes.length, first: bytes[0] });
    if (offset !== received) return { ok: false, status: 409, json: { error: "out of order" } };
    if (calls.length - 1 === failAt) return { ok: false, status: 400, json: { error } };
    received += bytes.length;
    if (received === total) {
      return { ok: true, status: 200, json: { done: true, name: "goan_resume/" + u.searchParams.get("filename"), subfolder: "goan_resume", type: "input" } };
    }
    return { ok: true, status: 200, json: { received } };
  };
  return { post, calls };
}

test("uploadInChunks sends the pieces in order and returns the server's name", async () => {
  const data = new Uint8Array(10).map((_, i) => i);
  const file = new File([data], "job.goan_resume");
  const srv = fakeServer();
  const progress = [];
  const res = await uploadInChunks(file, { post: srv.post, chunkSize: 4, uploadId: "abcdefgh", onProgress: (a, b) => progress.push([a, b]) });
  assert.equal(res.name, "goan_resume/job.goan_resume");
  assert.deepEqual(srv.calls.map((c) => [c.offset, c.length, c.first]), [[0, 4, 0], [4, 4, 4], [8, 2, 8]]);
  assert.ok(srv.calls.every((c) => c.total === 10 && c.url.startsWith("/goan/upload/abcdefgh?")));
  assert.deepEqual(progress, [[4, 10], [8, 10], [10, 10]]);
});

test("uploadInChunks goes on from what the server kept when it kept less", async () => {
  const data = new Uint8Array(10).map((_, i) => i);
  const calls = [];
  let have = 0;
  const post = async (url, body) => {
    const off = Number(new URL(url, "http://x").searchParams.get("offset"));
    const bytes = new Uint8Array(await body.arrayBuffer());
    calls.push([off, bytes.length, bytes[0]]);
    if (off !== have) return { ok: false, status: 409, json: { error: "out of order", received: have } };
    have += Math.min(bytes.length, 3); // a server that reads only part of each body
    return have === 10 ? { ok: true, status: 200, json: { done: true, name: "goan_resume/x.goan_resume" } } : { ok: true, status: 200, json: { received: have } };
  };
  const res = await uploadInChunks(new File([data], "x.goan_resume"), { post, chunkSize: 4 });
  assert.equal(res.name, "goan_resume/x.goan_resume");
  assert.deepEqual(calls, [[0, 4, 0], [3, 4, 3], [6, 4, 6], [9, 1, 9]]);
});

test("uploadInChunks gives up on a server that keeps nothing", async () => {
  const post = async () => ({ ok: true, status: 200, json: { received: 0 } });
  await assert.rejects(uploadInChunks(new File([new Uint8Array(5)], "x.goan_resume"), { post, chunkSize: 4 }), /stalled/);
});

test("uploadInChunks surfaces the server's error message", async () => {
  const file = new File([new Uint8Array(10)], "bad.goan_resume");
  const srv = fakeServer({ failAt: 2 });
  await assert.rejects(uploadInChunks(file, { post: srv.post, chunkSize: 4 }), /job_info.json is missing/);
  const srv2 = { post: async () => ({ ok: false, status: 500, json: null }) };
  await assert.rejects(uploadInChunks(file, { post: srv2.post }), /HTTP 500/);
  const srv3 = { post: async () => ({ ok: true, status: 200, json: { received: 10 } }) };
  await assert.rejects(uploadInChunks(file, { post: srv3.post }), /no file name/);
});

test("uploadInChunks uploads an empty file as one request", async () => {
  const srv = { calls: 0, post: async () => { srv.calls++; return { ok: false, status: 400, json: { error: "empty file" } }; } };
  await assert.rejects(uploadInChunks(new File([], "e.goan_resume"), { post: srv.post }), /empty file/);
  assert.equal(srv.calls, 1);
});
