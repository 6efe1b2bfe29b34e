import { test } from "node:test";
import assert from "node:assert/strict";
import { toastLife, toastKey, toastDeduper, wrappable, unwrappable, DEFAULT_LIFE, ERROR_LIFE, MAX_LIFE } from "../../js/lib/toasts.js";

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
