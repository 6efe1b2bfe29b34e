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
