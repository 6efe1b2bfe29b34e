// Plain logic for branching a loaded job: the sampler's widgets show the file's settings, so the
// widgets a user then changes are exactly what branches the job (see README, Branching).

/** Sampler widgets that hold a job setting of the same name (params.json). */
export const SETTING_WIDGETS = [
  "prompt", "negative_prompt", "seed", "steps", "cfg", "gs", "rs", "lws", "mode", "resolution", "sampler",
  "teacache", "teacache_threshold",
];

/** {widget name: value} to put into the sampler from a resume file's params (unknown or missing ones left out). */
export function widgetValuesFromParams(params) {
  const values = {};
  if (!params || typeof params !== "object") return values;
  for (const name of SETTING_WIDGETS) {
    const value = params[name];
    if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") values[name] = value;
  }
  return values;
}
