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

import { displayNames, missingLabels } from "../../js/lib/labels.js";

test("display names from a v1 and a v2 node definition", () => {
  const v1 = { name: "GoanSegmentSampler", input: {
    required: { gs: ["FLOAT", { display_name: "Distilled CFG" }], steps: ["INT", { default: 25 }], transformer: ["GOAN_TRANSFORMER"] },
    optional: { lws: ["INT", { display_name: "Latent Window Size" }] },
  } };
  assert.deepEqual(displayNames(v1), { gs: "Distilled CFG", lws: "Latent Window Size" });
  const v2 = { name: "X", inputs: { rs: { name: "rs", type: "FLOAT", display_name: "CFG Rescale" }, seed: { name: "seed" } } };
  assert.deepEqual(displayNames(v2), { rs: "CFG Rescale" });
  assert.deepEqual(displayNames(null), {});
  assert.deepEqual(displayNames({ input: {} }), {});
});

test("labels are set only where the widget shows its raw name", () => {
  const names = { gs: "Distilled CFG", rs: "CFG Rescale", lws: "Latent Window Size", seconds: "Video Length (s)" };
  const widgets = [
    { name: "gs" }, // pinned frontend: no label
    { name: "rs", label: "rs" }, // label equal to the name
    { name: "lws", label: "Latent Window Size" }, // a newer frontend set it already
    { name: "seconds", label: "Additional Video Length (s)" }, // goan's own label stays
    { name: "steps" }, // no display name
  ];
  assert.deepEqual(missingLabels(widgets, names), [["gs", "Distilled CFG"], ["rs", "CFG Rescale"]]);
  assert.deepEqual(missingLabels(undefined, names), []);
});
