import { test } from "node:test";
import assert from "node:assert/strict";
import { rootGraph, allNodes, nodesOfType, graphNodes } from "../../js/lib/graph.js";

// Graph objects of the current frontend's shape: LGraph.nodes, SubgraphNode.isSubgraphNode() and .subgraph.
const node = (id, type) => ({ id, type, comfyClass: type });
const subgraphNode = (id, subgraph) => ({ id, type: "a1b2-subgraph-uuid", subgraph, isSubgraphNode: () => true });

test("the root graph is app.rootGraph where it exists, else app.graph", () => {
  const g = { nodes: [] };
  assert.equal(rootGraph({ rootGraph: g, graph: { nodes: [1] } }), g);
  assert.equal(rootGraph({ graph: g }), g);
  const current = { get rootGraph() { return g; }, get graph() { throw new Error("deprecated: must not be read"); } };
  assert.equal(rootGraph(current), g);
  assert.equal(rootGraph(null), null);
  assert.deepEqual(graphNodes({ _nodes: [1, 2] }), [1, 2]); // older litegraph keeps them in _nodes
});

test("samplers inside subgraphs are found, with the ids ComfyUI runs them under", () => {
  const inner = { nodes: [node(5, "GoanSegmentSampler"), node(6, "GoanSaveResume")] };
  const deeper = { nodes: [node(2, "GoanSegmentSampler")] };
  const middle = { nodes: [subgraphNode(9, deeper)] };
  const root = { nodes: [node(1, "LoadImage"), subgraphNode(12, inner), subgraphNode(13, inner), node(4, "GoanSegmentSampler"),
    subgraphNode(3, middle)] };
  const samplers = nodesOfType(root, "GoanSegmentSampler");
  assert.deepEqual(samplers.map((s) => [s.node.id, s.executionIds]), [[5, ["12:5", "13:5"]], [4, ["4"]], [2, ["3:9:2"]]]);
  assert.equal(allNodes(root).length, 5 + 2 * 2 + 2);
  const plain = { id: 8, type: "X", subgraph: inner, isSubgraphNode: () => false }; // not a subgraph node
  assert.equal(allNodes({ nodes: [plain] }).length, 1);
  const loop = { nodes: [] };
  loop.nodes.push(subgraphNode(1, loop)); // a damaged graph does not hang the walk
  assert.equal(allNodes(loop).length, 1);
});
