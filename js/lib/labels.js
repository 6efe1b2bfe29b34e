// Plain logic for the sampler's length widget label.

export const LENGTH_WIDGET = "seconds";
export const LENGTH_LABEL = "Video Length (s)";
export const ADDITIONAL_LENGTH_LABEL = "Additional Video Length (s)";
export const LOAD_RESUME_TYPE = "GoanLoadResume";

/**
 * The label of GoanSegmentSampler's `seconds` widget. It reads "Additional Video Length (s)"
 * when the job continues from a resume file: the graph was restored from one, or one of the
 * sampler's inputs is fed by a GoanLoadResume node. `upstreamTypes` lists the node types
 * directly linked into the sampler's inputs.
 */
export function lengthLabel({ restored = false, upstreamTypes = [] } = {}) {
  return restored || upstreamTypes.includes(LOAD_RESUME_TYPE) ? ADDITIONAL_LENGTH_LABEL : LENGTH_LABEL;
}

/**
 * Widget labels from a node definition: {input name: display_name} for every input whose options
 * carry a display_name. Reads the v1 shape ({input: {required: {name: [type, options]}, optional}})
 * and the v2 one ({inputs: {name: {name, display_name}}}).
 */
export function displayNames(nodeData) {
  const out = {};
  if (!nodeData || typeof nodeData !== "object") return out;
  const v1 = nodeData.input || {};
  for (const group of [v1.required, v1.optional]) {
    for (const [name, spec] of Object.entries(group || {})) {
      const opts = Array.isArray(spec) ? spec[1] : null;
      if (opts && typeof opts === "object" && typeof opts.display_name === "string" && opts.display_name) out[name] = opts.display_name;
    }
  }
  for (const [name, spec] of Object.entries(nodeData.inputs || {})) {
    if (spec && typeof spec === "object" && typeof spec.display_name === "string" && spec.display_name && !out[name]) out[name] = spec.display_name;
  }
  return out;
}

/**
 * Which widget labels to set: [[widget name, label]] for widgets that show their raw name (no label,
 * or the label is the name) although the definition gives a display name. A label the frontend or
 * goan already set (such as the length label) is kept.
 */
export function missingLabels(widgets, names) {
  const out = [];
  for (const w of widgets || []) {
    if (!w || !w.name || !Object.prototype.hasOwnProperty.call(names, w.name)) continue;
    if (w.label && w.label !== w.name) continue;
    out.push([w.name, names[w.name]]);
  }
  return out;
}
