import { test } from "node:test";
import assert from "node:assert/strict";
import { lengthLabel, LENGTH_LABEL, ADDITIONAL_LENGTH_LABEL } from "../../js/lib/labels.js";

test("a fresh sampler reads Video Length (s)", () => {
  assert.equal(LENGTH_LABEL, "Video Length (s)");
  assert.equal(lengthLabel(), LENGTH_LABEL);
  assert.equal(lengthLabel({ upstreamTypes: ["LoadImage", "GoanModelLoader"] }), LENGTH_LABEL);
});

test("fed by GoanLoadResume or restored from a file: Additional Video Length (s)", () => {
  assert.equal(ADDITIONAL_LENGTH_LABEL, "Additional Video Length (s)");
  assert.equal(lengthLabel({ upstreamTypes: ["GoanLoadResume"] }), ADDITIONAL_LENGTH_LABEL);
  assert.equal(lengthLabel({ restored: true }), ADDITIONAL_LENGTH_LABEL);
  assert.equal(lengthLabel({ restored: false, upstreamTypes: [] }), LENGTH_LABEL);
});
