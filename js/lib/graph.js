// Plain logic over the frontend's graph objects: the workflow's root graph on every frontend, and
// every node with the id ComfyUI runs it under, inside subgraphs too. No DOM and no ComfyUI import.

/**
 * The workflow's root graph: `app.rootGraph` where the frontend has it (there `app.graph` is
 * deprecated), else `app.graph` (older frontends).
 */
export function rootGraph(app) {
  if (!app) return null;
  return ("rootGraph" in app ? app.rootGraph : app.graph) || null;
}

/** The nodes directly in one graph or subgraph. */
export function graphNodes(graph) {
  return graph ? Array.from(graph.nodes || graph._nodes || []) : [];
}

function innerGraph(node) {
  if (!node || !node.subgraph) return null;
  if (typeof node.isSubgraphNode === "function" && !node.isSubgraphNode()) return null;
  return node.subgraph;
}

/**
 * Every node of `graph` and of the subgraphs its subgraph nodes hold, each with its execution id:
 * "7" at the top, "12:7" for node 7 inside subgraph node 12, "3:12:7" one level deeper. A subgraph
 * placed twice lists its nodes twice, under two ids (the node objects are shared).
 */
export function allNodes(graph, prefix = "", open = new Set()) {
  const found = [];
  open.add(graph); // the graphs being walked: a subgraph never contains itself, but a damaged one must not hang us
  for (const node of graphNodes(graph)) {
    const executionId = `${prefix}${node.id}`;
    found.push({ node, executionId });
    const inner = innerGraph(node);
    if (inner && !open.has(inner)) found.push(...allNodes(inner, `${executionId}:`, open));
  }
  open.delete(graph);
  return found;
}

/** The nodes of one type (node type or comfyClass) anywhere in the workflow: [{node, executionIds}]. */
export function nodesOfType(graph, type) {
  const ids = new Map();
  for (const { node, executionId } of allNodes(graph)) {
    if (node.type !== type && node.comfyClass !== type) continue;
    if (!ids.has(node)) ids.set(node, []);
    ids.get(node).push(executionId);
  }
  return Array.from(ids, ([node, executionIds]) => ({ node, executionIds }));
}
