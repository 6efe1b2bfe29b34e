// Plain logic for branching a loaded job: the sampler's widgets show the file's settings, so the
// widgets a user then changes are exactly what branches the job (see README, Branching).

/** Sampler widgets that hold a job setting of the same name (params.json). */
export const SETTING_WIDGETS = [
  "prompt", "negative_prompt", "seed", "steps", "cfg", "gs", "rs", "lws", "mode", "resolution", "sampler",
  "teacache", "teacache_threshold", "end_strength", "end_embeds",
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

/** The job a list row belongs with: the root of a branch, else the job itself (or its prompt while unknown). */
export function familyOf(job) {
  return job.root || job.job_id || `prompt:${job.prompt_id}`;
}

/**
 * Jobs reordered so that branches of one job follow each other: each family keeps the place of its
 * first (newest) member, members in their given order. Jobs without branches keep their order.
 */
export function groupBranches(jobs) {
  const families = new Map();
  for (const job of jobs) {
    const key = familyOf(job);
    if (!families.has(key)) families.set(key, []);
    families.get(key).push(job);
  }
  return [...families.values()].flat();
}
