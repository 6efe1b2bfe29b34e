import { test } from "node:test";
import assert from "node:assert/strict";
import { widgetValuesFromParams, SETTING_WIDGETS } from "../../js/lib/branches.js";

test("the sampler's widgets take the file's settings, nothing else", () => {
  const params = { prompt: "[0s] a cat [2s] a dog", seed: 7, cfg: 1.0, mode: "f1", teacache: false, crf: 16,
                   seconds: 5, extra: "x", steps: { evil: 1 } };
  assert.deepEqual(widgetValuesFromParams(params),
                   { prompt: "[0s] a cat [2s] a dog", seed: 7, cfg: 1.0, mode: "f1", teacache: false });
  assert.ok(!SETTING_WIDGETS.includes("seconds"));  // the length widget means additional seconds when continuing
  assert.deepEqual(widgetValuesFromParams(null), {});
});
