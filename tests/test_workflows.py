"""The example workflows against the node definitions: types exist, widget values valid, links type-check;
the model files each expects are named in its note, in workflows/README.md and in ComfyUI's missing-model
entries (`properties.models`), all from goan_core's table of the usual files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from comfy_core_nodes import CORE_NODES
from comfy_workflow import check_workflow, node_info, set_widget, to_api, widget_names
from nodes_helpers import pack  # noqa: F401  (fixture)

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"
NAMES = ["goan_image_to_video.json", "goan_resume.json", "goan_diffusers_folders.json", "goan_compare_branches.json"]
USUAL_FILE_WORKFLOWS = ["goan_image_to_video.json", "goan_resume.json", "goan_compare_branches.json"]
# The widgets of ComfyUI's loaders (and goan's transformer loader) that name a model file, and its folder.
FILE_WIDGETS = {"GoanTransformerLoader": {"model": "diffusion_models"},
                "DualCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
                "CLIPVisionLoader": {"clip_name": "clip_vision"}, "VAELoader": {"vae_name": "vae"}}


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


def by_type(prompt):
    return {node["class_type"]: (node_id, node) for node_id, node in prompt.items()}


def test_the_graphs_are_wired_as_documented(infos):
    from goan_core.models import usual_file

    flow = by_type(to_api(load("goan_image_to_video.json"), infos))
    sampler_id, sampler = flow["GoanSegmentSampler"]
    gate_id, gate = flow["GoanPauseGate"]
    assert sampler["inputs"]["image"][0] == flow["LoadImage"][0]
    assert gate["inputs"]["state"] == [sampler_id, 0] and gate["inputs"]["fps"] == [sampler_id, 2]
    assert flow["CreateVideo"][1]["inputs"]["images"] == [gate_id, 0]
    assert flow["CreateVideo"][1]["inputs"]["fps"] == [gate_id, 1]
    assert flow["GoanSaveResume"][1]["inputs"]["state"] == [gate_id, 2]
    assert sampler["inputs"]["seconds"] == 5.0 and sampler["inputs"]["seed"] == 31337

    for name in USUAL_FILE_WORKFLOWS:  # the usual files, through ComfyUI's own loaders
        prompt = to_api(load(name), infos)
        graph = by_type(prompt)
        clip = graph["DualCLIPLoader"][1]["inputs"]
        assert (clip["clip_name1"], clip["clip_name2"], clip["type"]) == (
            usual_file("text_encoder_2").name, usual_file("text_encoder").name, "hunyuan_video")
        assert graph["CLIPVisionLoader"][1]["inputs"]["clip_name"] == usual_file("image_encoder").name
        assert graph["VAELoader"][1]["inputs"]["vae_name"] == usual_file("vae").name
        assert graph["GoanTransformerLoader"][1]["inputs"]["model"] == usual_file("transformer").name
        for sampler in (node for node in prompt.values() if node["class_type"] == "GoanSegmentSampler"):
            inputs = sampler["inputs"]
            assert inputs["transformer"] == [graph["GoanTransformerLoader"][0], 0]
            assert inputs["clip"] == [graph["DualCLIPLoader"][0], 0]
            assert inputs["clip_vision"] == [graph["CLIPVisionLoader"][0], 0]  # goan encodes the bucketed crop
            assert inputs["vae"] == [graph["VAELoader"][0], 0]
            assert not {"positive", "clip_vision_output", "text_encoders", "image_encoder", "goan_vae"} & set(inputs)
        assert not {"CLIPTextEncode", "CLIPVisionEncode"} & set(graph)  # one prompt per sampler: its own

    resume = by_type(to_api(load("goan_resume.json"), infos))
    assert resume["GoanSegmentSampler"][1]["inputs"]["resume_state"] == [resume["GoanLoadResume"][0], 0]
    assert "image" not in resume["GoanSegmentSampler"][1]["inputs"]
    assert resume["GoanSegmentSampler"][1]["inputs"]["seconds"] == 0.0  # additional seconds: just finish

    folders = by_type(to_api(load("goan_diffusers_folders.json"), infos))
    inputs = folders["GoanSegmentSampler"][1]["inputs"]
    for loader, name in (("GoanVAELoader", "goan_vae"), ("GoanTextEncoderLoader", "text_encoders"),
                         ("GoanImageEncoderLoader", "image_encoder"), ("GoanTransformerLoader", "transformer")):
        assert inputs[name] == [folders[loader][0], 0]


def file_widgets(workflow, infos):
    """[(node, folder, file name)] of every model file a workflow's loaders name."""
    found = []
    for node in workflow["nodes"]:
        names = widget_names(infos[node["type"]]) if node["type"] in infos else []
        for widget, folder in FILE_WIDGETS.get(node["type"], {}).items():
            value = node["widgets_values"][names.index(widget)]
            if not value.startswith("[diffusers] "):
                found.append((node, folder, value))
    return found


@pytest.mark.parametrize("name", NAMES)
def test_every_expected_file_is_named_in_the_note_the_readme_and_the_missing_model_list(infos, name):
    from goan_core.models import ALTERNATIVE_FILES, USUAL_FILES

    workflow = load(name)
    note = "\n".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "MarkdownNote")
    readme = (WORKFLOWS / "README.md").read_text(encoding="utf-8")
    known = {(f.folder, f.name): f for f in ALTERNATIVE_FILES + USUAL_FILES}  # the usual file wins a shared name
    for node, folder, file_name in file_widgets(workflow, infos):
        assert f"models/{folder}/{file_name}" in note, (name, file_name)
        assert f"models/{folder}/{file_name}" in readme, file_name
        usual = known[(folder, file_name)]
        assert usual.url in readme
        entries = {entry["name"]: entry for entry in node["properties"].get("models", [])}
        # ComfyUI's frontend: an entry whose name is a widget value, a huggingface.co .safetensors URL
        assert entries[file_name] == {"name": file_name, "url": usual.url, "directory": folder}, node["type"]
        assert usual.url.startswith("https://huggingface.co/") and usual.url.endswith(".safetensors")
    for folder in ("FramePackI2V_HY", "HunyuanVideo", "flux_redux_bfl"):
        if name == "goan_diffusers_folders.json":
            assert f"models/diffusers/{folder}/" in note and f"models/diffusers/{folder}/" in readme


def test_the_usual_files_are_the_ones_the_issue_names():
    from goan_core.models import USUAL_FILES

    assert {(f.folder, f.name) for f in USUAL_FILES} == {
        ("diffusion_models", "FramePackI2V_HY_fp8_e4m3fn.safetensors"), ("text_encoders", "clip_l.safetensors"),
        ("text_encoders", "llava_llama3_fp16.safetensors"), ("vae", "hunyuan_video_vae_bf16.safetensors"),
        ("clip_vision", "sigclip_vision_patch14_384.safetensors")}


def test_sampler_widgets_follow_the_contract(infos):
    names = widget_names(infos["GoanSegmentSampler"])
    assert names == ["prompt", "negative_prompt", "seed", None, "seconds", "steps", "cfg", "gs", "rs", "lws", "mode",
                     "resolution", "sampler", "autosave_every", "keep_last", "gpu_memory_preservation",
                     "teacache", "teacache_threshold", "attention", "compile", "accept_lora_difference",
                     "end_strength", "end_embeds"]


@pytest.mark.parametrize("damage, phrase", [
    (lambda w: w["nodes"].append({"id": 99, "type": "NoSuchNode", "inputs": [], "outputs": []}), "unknown type"),
    (lambda w: _node(w, "GoanSegmentSampler")["widgets_values"].__delitem__(slice(5, None)), "widget values"),
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
    """One Load Resume, three samplers with three prompts (continuing: no added length), each with its own
    gate, video and Save Resume; the loaders are the default workflow's (checked above)."""
    flow = to_api(load("goan_compare_branches.json"), infos)
    loaders = [k for k, v in flow.items() if v["class_type"] == "GoanLoadResume"]
    samplers = [k for k, v in flow.items() if v["class_type"] == "GoanSegmentSampler"]
    assert len(loaders) == 1 and len(samplers) == 3
    assert len({flow[s]["inputs"]["prompt"] for s in samplers}) == 3
    ends = set()
    for sampler in samplers:
        inputs = flow[sampler]["inputs"]
        assert inputs["resume_state"] == [loaders[0], 0] and "image" not in inputs and inputs["seconds"] == 0.0
        gate = next(k for k, v in flow.items() if v["class_type"] == "GoanPauseGate"
                    and v["inputs"]["state"] == [sampler, 0])
        video = next(k for k, v in flow.items() if v["class_type"] == "CreateVideo"
                     and v["inputs"]["images"] == [gate, 0])
        ends |= {next(k for k, v in flow.items() if v["class_type"] == "GoanSaveResume"
                      and v["inputs"]["state"] == [gate, 2]),
                 next(k for k, v in flow.items() if v["class_type"] == "SaveVideo"
                      and v["inputs"]["video"] == [video, 0])}
    assert len(ends) == 6
