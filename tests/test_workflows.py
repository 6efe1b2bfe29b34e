"""The example workflows against the node definitions: types exist, widget values valid, links type-check."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from comfy_core_nodes import CORE_NODES
from comfy_workflow import check_workflow, node_info, set_widget, to_api, widget_names
from nodes_helpers import pack  # noqa: F401  (fixture)

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
NAMES = ["goan_image_to_video.json", "goan_resume.json", "goan_native_encoders.json", "goan_compare_branches.json"]


@pytest.fixture(scope="module")
def infos(pack):
    from goan_pack.nodes import NODE_CLASS_MAPPINGS

    assert not set(NODE_CLASS_MAPPINGS) & set(CORE_NODES)
    return {**CORE_NODES, **{name: node_info(cls) for name, cls in NODE_CLASS_MAPPINGS.items()}}


def load(name):
    return json.loads((WORKFLOWS / name).read_text(encoding="utf-8"))


def test_exactly_the_example_workflows_ship(pack):
    from goan_pack.nodes.routes import WORKFLOW_NAMES

    assert sorted(p.name for p in WORKFLOWS.glob("*.json")) == sorted(NAMES) == sorted(WORKFLOW_NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_is_sound(infos, name):
    assert check_workflow(load(name), infos) == []


@pytest.mark.parametrize("name", NAMES)
def test_workflow_converts_to_a_runnable_prompt(infos, name):
    prompt = to_api(load(name), infos)
    types = {node["class_type"] for node in prompt.values()}
    assert {"GoanSegmentSampler", "GoanPauseGate", "GoanSaveResume", "CreateVideo", "SaveVideo"} <= types
    assert "MarkdownNote" not in types
    for node_id, node in prompt.items():
        info = infos[node["class_type"]]
        for required in info["input_order"].get("required", []):
            assert required in node["inputs"], (name, node_id, required)
        for value in node["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                assert value[0] in prompt  # links point at nodes that run


def test_the_three_graphs_are_wired_as_documented(infos):
    flow = to_api(load("goan_image_to_video.json"), infos)
    by_type = {node["class_type"]: (node_id, node) for node_id, node in flow.items()}
    sampler_id, sampler = by_type["GoanSegmentSampler"]
    gate_id, gate = by_type["GoanPauseGate"]
    assert sampler["inputs"]["image"][0] == by_type["LoadImage"][0]
    assert gate["inputs"]["state"] == [sampler_id, 0] and gate["inputs"]["fps"] == [sampler_id, 2]
    assert by_type["CreateVideo"][1]["inputs"]["images"] == [gate_id, 0]
    assert by_type["CreateVideo"][1]["inputs"]["fps"] == [gate_id, 1]
    assert by_type["GoanSaveResume"][1]["inputs"]["state"] == [gate_id, 2]
    assert sampler["inputs"]["seconds"] == 5.0 and sampler["inputs"]["seed"] == 31337

    resume = to_api(load("goan_resume.json"), infos)
    by_type = {node["class_type"]: (node_id, node) for node_id, node in resume.items()}
    assert by_type["GoanSegmentSampler"][1]["inputs"]["resume_state"] == [by_type["GoanLoadResume"][0], 0]
    assert "image" not in by_type["GoanSegmentSampler"][1]["inputs"]
    assert by_type["GoanSegmentSampler"][1]["inputs"]["seconds"] == 0.0  # additional seconds: just finish

    native = to_api(load("goan_native_encoders.json"), infos)
    by_type = {node["class_type"]: (node_id, node) for node_id, node in native.items()}
    assert by_type["DualCLIPLoader"][1]["inputs"]["type"] == "hunyuan_video"
    inputs = by_type["GoanSegmentSampler"][1]["inputs"]
    assert inputs["positive"] == [by_type["CLIPTextEncode"][0], 0]
    assert inputs["clip_vision_output"] == [by_type["CLIPVisionEncode"][0], 0]
    assert inputs["vae"] == [by_type["VAELoader"][0], 0]
    assert "text_encoders" not in inputs and "goan_vae" not in inputs


def test_sampler_widgets_follow_the_contract(infos):
    names = widget_names(infos["GoanSegmentSampler"])
    assert names == ["prompt", "negative_prompt", "seed", None, "seconds", "steps", "cfg", "gs", "rs", "lws", "mode",
                     "resolution", "sampler", "autosave_every", "keep_last", "gpu_memory_preservation",
                     "teacache", "teacache_threshold", "end_strength", "end_embeds"]


@pytest.mark.parametrize("damage, phrase", [
    (lambda w: w["nodes"].append({"id": 99, "type": "NoSuchNode", "inputs": [], "outputs": []}), "unknown type"),
    (lambda w: _node(w, "GoanSegmentSampler")["widgets_values"].pop(), "widget values"),
    (lambda w: _set(w, "GoanSegmentSampler", "mode", "sideways"), "not one of"),
    (lambda w: _set(w, "GoanSegmentSampler", "steps", 0), "outside"),
    (lambda w: _set(w, "GoanSegmentSampler", "lws", 2.5), "whole number"),
    (lambda w: _set(w, "GoanSegmentSampler", "prompt", 3), "expected text"),
    (lambda w: w["links"][0].__setitem__(5, "LATENT"), "is not LATENT"),
    (lambda w: _node(w, "GoanPauseGate")["inputs"][0].__setitem__("link", None), "not connected"),
])
def test_checker_catches_broken_workflows(infos, damage, phrase):
    workflow = copy.deepcopy(load("goan_image_to_video.json"))
    damage(workflow)
    problems = check_workflow(workflow, infos)
    assert any(phrase in p for p in problems), problems


def _node(workflow, kind):
    return next(n for n in workflow["nodes"] if n["type"] == kind)


def _set(workflow, kind, name, value):
    set_widget(workflow, kind, name, value, {"GoanSegmentSampler": _INFOS["GoanSegmentSampler"]})


@pytest.fixture(autouse=True)
def _share_infos(infos):
    _INFOS.update(infos)


_INFOS: dict = {}


def test_the_compare_workflow_branches_one_resume_file_three_ways(infos):
    flow = to_api(load("goan_compare_branches.json"), infos)
    loaders = [k for k, v in flow.items() if v["class_type"] == "GoanLoadResume"]
    samplers = [v for v in flow.values() if v["class_type"] == "GoanSegmentSampler"]
    assert len(loaders) == 1 and len(samplers) == 3
    assert all(s["inputs"]["resume_state"] == [loaders[0], 0] and "text_encoders" in s["inputs"] for s in samplers)
    assert len({s["inputs"]["prompt"] for s in samplers}) == 3
    assert sum(v["class_type"] == "GoanSaveResume" for v in flow.values()) == 3
