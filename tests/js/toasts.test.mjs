import { test } from "node:test";
import assert from "node:assert/strict";
import { toastLife, toastKey, toastDeduper, wrappable, unwrappable, sendToast, DEFAULT_LIFE, ERROR_LIFE, MAX_LIFE } from "../../js/lib/toasts.js";

test("every toast has a finite lifetime", () => {
  assert.equal(toastLife("info"), DEFAULT_LIFE);
  assert.equal(toastLife("success", 0), DEFAULT_LIFE);
  assert.equal(toastLife("error", undefined), ERROR_LIFE);
  assert.equal(toastLife("info", Infinity), DEFAULT_LIFE);
  assert.equal(toastLife("info", 8000), 8000);
  assert.equal(toastLife("info", 600000), MAX_LIFE);
});

test("a repeat of a toast still on screen is dropped; after its life it shows again", () => {
  const d = toastDeduper();
  const k = toastKey("info", "Pausing task...", "x");
  assert.equal(d.admit(k, 5000, 0), true);
  assert.equal(d.admit(k, 5000, 100), false);
  assert.equal(d.admit(toastKey("info", "Pausing task...", "y"), 5000, 100), true);
  assert.equal(d.admit(k, 5000, 4999), false);
  assert.equal(d.admit(k, 5000, 5000), true);
  assert.equal(d.admit(toastKey("error", "other"), 10, 5200), true);
  assert.equal(d.size(), 2); // expired entries ("y") are forgotten
});

test("long file names get break opportunities at separators, short text is unchanged", () => {
  const name = "goan_resume/goan_job_0123456789abcdef_section3.goan_resume";
  const w = wrappable(`Uploaded as ${name}; add a node.`);
  assert.ok(w.startsWith("Uploaded as goan_\u200bresume/\u200bgoan_\u200bjob_\u200b0123456789abcdef_\u200bsection3.\u200bgoan_\u200bresume;"));
  assert.equal(unwrappable(w), `Uploaded as ${name}; add a node.`);
  assert.equal(wrappable("Resume state loaded. Add to queue to continue."), "Resume state loaded. Add to queue to continue.");
  assert.equal(wrappable("pasted.goan_resume"), "pasted.goan_resume");
  assert.equal(wrappable("C:\\Users\\someone\\Downloads\\x.goan_resume"), "C:\\\u200bUsers\\\u200bsomeone\\\u200bDownloads\\\u200bx.\u200bgoan_\u200bresume");
  assert.equal(wrappable(undefined), undefined);
  // a word with no separators stays whole (the CSS may still wrap it anywhere as a last resort)
  assert.equal(wrappable("a".repeat(40)), "a".repeat(40));
});

// A toast manager of the current frontend's shape (ToastManager: success/error/info/warning(title, options),
// add() deprecated) and one of the pinned 1.27 frontend's (add only).
function recorder(methods) {
  const calls = [];
  const m = {};
  for (const name of methods) m[name] = (...args) => calls.push([name, ...args]);
  return { m, calls };
}

test("toasts use the frontend's toast.info/success/error where it has them, else toast.add", () => {
  const current = recorder(["success", "error", "info", "warning", "loading", "add", "dismiss"]);
  assert.equal(sendToast(current.m, { severity: "success", summary: "Paused", detail: "file.goan_resume", life: 5000 }), "success");
  assert.equal(sendToast(current.m, { severity: "error", summary: "Cancel failed", detail: "HTTP 500", life: 10000 }), "error");
  assert.equal(sendToast(current.m, { severity: "info", summary: "Pausing task...", life: 5000 }), "info");
  assert.equal(sendToast(current.m, { severity: "warn", summary: "Careful", life: 5000 }), "warning");
  assert.deepEqual(current.calls, [
    ["success", "Paused", { description: "file.goan_resume", duration: 5000, closable: true }],
    ["error", "Cancel failed", { description: "HTTP 500", duration: 10000, closable: true }],
    ["info", "Pausing task...", { description: undefined, duration: 5000, closable: true }],
    ["warning", "Careful", { description: undefined, duration: 5000, closable: true }],
  ]); // never the deprecated add
  const pinned = recorder(["add", "remove", "removeAll", "addAlert"]);
  const entry = { severity: "info", summary: "Cancelled", detail: "Removed from the queue.", life: 5000 };
  assert.equal(sendToast(pinned.m, entry), "add");
  assert.deepEqual(pinned.calls, [["add", entry]]);
  assert.equal(sendToast({}, entry), null);
  assert.equal(sendToast(undefined, entry), null);
});
