import { test } from "node:test";
import assert from "node:assert/strict";
import { STATUS, FILE_KIND, isTerminal, isPauseKind } from "../../js/lib/vocabulary.js";

test("the words cannot be changed at run time", () => {
  assert.ok(Object.isFrozen(STATUS) && Object.isFrozen(FILE_KIND));
  assert.equal(STATUS.RUNNING, "running");
  assert.equal(FILE_KIND.FAILSAFE, "failsafe");
});

test("terminal statuses: ended or left the queue", () => {
  const terminal = Object.values(STATUS).filter(isTerminal).sort();
  assert.deepEqual(terminal, ["cancelled", "failed", "finished", "paused", "stopped"]);
});

test("a pause file is one of kind pause, or with no kind", () => {
  assert.ok(isPauseKind(FILE_KIND.PAUSE) && isPauseKind(undefined) && isPauseKind("") && isPauseKind("paused"));
  for (const k of [FILE_KIND.STOP, FILE_KIND.AUTOSAVE, FILE_KIND.FAILSAFE, FILE_KIND.FINISHED]) assert.ok(!isPauseKind(k), k);
});
