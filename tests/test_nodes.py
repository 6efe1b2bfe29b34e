"""Every goan node called directly, through the adapter's plain host, with the tiny models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from nodes_helpers import *  # noqa: F401,F403  (fixtures)
from nodes_helpers import JOB, PROMPT_ID, pause_when, run_sampler, sampler_args


def N(name):
    from goan_pack.nodes import NODE_CLASS_MAPPINGS

    return NODE_CLASS_MAPPINGS[name]()


def events(host, name):
    return [data for event, data in host.events if event == name]


# -- registration -----------------------------------------------------------------------------------

def test_mappings_follow_comfyui_conventions(pack):
    from goan_pack.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    assert pack.WEB_DIRECTORY == "./js"
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS)
    assert {"GoanSegmentSampler", "GoanLoadResume", "GoanSaveResume", "GoanPauseGate"} <= set(NODE_CLASS_MAPPINGS)
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "goan" and cls.FUNCTION == "execute", name
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}, name
        assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES), name
    sampler = NODE_CLASS_MAPPINGS["GoanSegmentSampler"].INPUT_TYPES()
    assert sampler["required"]["seconds"][1]["display_name"] == "Video Length (s)"
    assert NODE_CLASS_MAPPINGS["GoanSaveResume"].OUTPUT_NODE is True


# -- loaders ----------------------------------------------------------------------------------------

def test_loaders_list_comfyui_model_folders(host):
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as M

    choices = M["GoanTransformerLoader"].INPUT_TYPES()["required"]["model"][0]
    assert choices == ["FramePackI2V_tiny.safetensors", "[diffusers] goan_tiny"]
    for name in ("GoanVAELoader", "GoanTextEncoderLoader", "GoanImageEncoderLoader"):
        assert M[name].INPUT_TYPES()["required"]["folder"][0] == ["goan_tiny"], name


def test_loaders_load_file_and_folder(host, loaded):
    from goan_pack.goan_core.models import Transformer

    transformer, vae, text, image = loaded
    assert isinstance(transformer, Transformer) and transformer.dtype == torch.float32
    assert "config_sha256" in transformer.identity()
    (from_folder,) = N("GoanTransformerLoader").execute("[diffusers] goan_tiny", "float32", "off")
    assert from_folder.identity()["config_sha256"] == transformer.identity()["config_sha256"]
    assert vae.model is not None and text.models.tokenizer is not None and image.models.feature_extractor is not None


def test_vae_loader_reads_the_single_file_in_models_vae(host, tmp_path):
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as M
    from goan_pack.nodes import adapter

    from goan_core.models.tiny import build_tiny_models
    from goan_core.models.tiny_files import write_vae_file
    from goan_core.models.vae_file import load_vae_file

    write_vae_file(build_tiny_models().vae, tmp_path / "models" / "vae" / "hunyuan_video_vae_bf16.safetensors")
    adapter.configure(models_dir=tmp_path / "models")
    assert M["GoanVAELoader"].INPUT_TYPES()["required"]["folder"][0] == ["hunyuan_video_vae_bf16.safetensors"]
    (vae,) = N("GoanVAELoader").execute("hunyuan_video_vae_bf16.safetensors", "float32")
    direct = load_vae_file(tmp_path / "models" / "vae" / "hunyuan_video_vae_bf16.safetensors")
    latents = torch.randn(1, 16, 1, 4, 4)
    with torch.no_grad():  # goan's VAE takes scaled latents
        assert torch.equal(vae.decode(latents), direct.decode(latents / direct.config.scaling_factor).sample)


@pytest.mark.parametrize("name", ["missing.safetensors", "../diffusers/goan_tiny/FramePackI2V_tiny.safetensors",
                                  "/etc/passwd", "[diffusers] ../diffusers/goan_tiny", "[diffusers] nothing"])
def test_loader_refuses_unknown_or_escaping_names(host, name):
    from goan_pack.goan_core.errors import ModelFolderError

    with pytest.raises(ModelFolderError, match="no such"):
        N("GoanTransformerLoader").execute(name, "float32", "off")


def test_empty_model_folders_show_a_placeholder(host, tmp_path):
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as M
    from goan_pack.nodes import adapter

    adapter.configure(models_dir=tmp_path / "no_models")
    assert M["GoanVAELoader"].INPUT_TYPES()["required"]["folder"][0] == ["(none found)"]


# -- the sampler: what a new job needs ----------------------------------------------------------------

def test_new_job_needs_an_image_and_a_length(host, loaded):
    from goan_pack.goan_core.errors import InputError

    with pytest.raises(InputError, match="connect an image"):
        run_sampler(loaded)
    with pytest.raises(InputError, match="Video Length"):
        run_sampler(loaded, torch.zeros(1, 64, 64, 3), seconds=0.0)
    with pytest.raises(InputError, match="needs a VAE"):
        run_sampler(loaded, torch.zeros(1, 64, 64, 3), goan_vae=None)
    with pytest.raises(InputError, match="needs a VAE"):
        run_sampler(loaded, None, resume_state=object(), goan_vae=None)
    with pytest.raises(InputError, match="text encoders"):
        run_sampler(loaded, torch.zeros(1, 64, 64, 3), text_encoders=None)


def test_an_attention_kernel_that_cannot_run_here_is_refused_before_any_work(host, loaded, image):
    from goan_pack.goan_core.errors import InputError
    from goan_pack.nodes.jobs import REGISTRY

    before = REGISTRY.generation, len(REGISTRY.jobs())
    with pytest.raises(InputError, match="attention 'sage' cannot run here: sageattention runs on NVIDIA GPUs only"):
        run_sampler(loaded, image, attention="sage")
    assert (REGISTRY.generation, len(REGISTRY.jobs())) == before


# -- pause, save, load, resume: identical frames -------------------------------------------------------

def test_pause_save_load_resume_gives_identical_frames(host, loaded, image):
    from goan_pack.goan_core.resumefile import read_resume_file
    from goan_pack.nodes.adapter import PlainBlocker
    from goan_pack.nodes.jobs import REGISTRY

    reference, ref_images, fps = run_sampler(loaded, image)
    assert reference.status == "finished" and fps == 30.0
    assert ref_images.dtype == torch.float32 and ref_images.shape[1:] == (48, 64, 3)
    assert ref_images.shape[0] == reference.state.plan.total_pixel_frames
    bars = [b for b in host.progress_bars if b.total == 6]
    assert [u[0] for u in bars[0].updates] == list(range(0, 7))  # steps x sections
    assert len(events(host, "goan.autosaved")) == 1  # after section 1 (none after the last)
    host.events.clear()

    pause_when(host, 4)  # mid-section: section 2, step 1
    paused, placeholder, _ = run_sampler(loaded, image)
    assert paused.status == "paused" and (paused.state.section, paused.state.step_in_section) == (1, 1)
    assert placeholder.shape == (1, 48, 64, 3)
    # the autosave is written on a background thread, so it may be reported before or after the
    # pause request; the pause file is written only after it (the runner waits for the writer)
    sent = [e for e, _ in host.events]
    assert sorted(sent[:2]) == ["goan.autosaved", "goan.pausing"] and sent[2:] == ["goan.paused"]
    note = events(host, "goan.paused")[0]
    assert note == {"prompt_id": PROMPT_ID, "job_id": paused.state.job_id, "node_id": "7", "kind": "pause",
                    "filename": paused.path.name, "subfolder": f"goan_resume/{paused.state.job_id}",
                    "type": "output"}
    assert REGISTRY.jobs()[0]["status"] == "paused" and REGISTRY.jobs()[0]["file"]["filename"] == paused.path.name
    # autosaves are hidden files, out of ComfyUI's asset scan; the pause file (an output of Save Resume) is not
    (autosave,) = events(host, "goan.autosaved")
    assert autosave["filename"].startswith(".") and autosave["subfolder"] == note["subfolder"]
    assert (host.directory("output") / autosave["subfolder"] / autosave["filename"]).is_file()

    # the gate routes the paused state to the save branch and blocks the video branch
    gate_images, gate_fps, gate_state = N("GoanPauseGate").execute(paused, placeholder, 30.0)
    assert isinstance(gate_images, PlainBlocker) and isinstance(gate_fps, PlainBlocker) and gate_state is paused
    saved = N("GoanSaveResume").execute(gate_state, unique_id="9", extra_pnginfo={"workflow": {"nodes": []}})
    assert saved["ui"]["goan_resume"] == [{"filename": paused.path.name, "subfolder": f"goan_resume/{paused.state.job_id}",
                                           "type": "output", "job_id": paused.state.job_id}]
    assert saved["result"] == ()
    assert read_resume_file(paused.path).workflow == {"nodes": [], "links": [], "version": 0.4}

    # carried to "another machine": the input folder, loaded by name, continued with 0 additional seconds
    uploads = host.directory("input") / "goan_resume"
    uploads.mkdir()
    shutil.copy(paused.path, uploads / "carried.goan_resume")
    assert "goan_resume/carried.goan_resume" in N("GoanLoadResume").INPUT_TYPES()["required"]["resume_file"][0]
    state, source, params = N("GoanLoadResume").execute("goan_resume/carried.goan_resume")
    assert state.status == "loaded" and source.shape == (1, 48, 64, 3)
    assert json.loads(params)["seed"] == JOB["seed"]
    host.events.clear()
    resumed, images, _ = run_sampler(loaded, None, resume_state=state, seconds=0.0)
    assert resumed.status == "finished"
    assert events(host, "goan.resumed") == [{"prompt_id": PROMPT_ID, "node_id": "7", "job_id": paused.state.job_id,
                                             "section": 1, "step": 1}]
    assert torch.equal(resumed.state.history_latents, reference.state.history_latents)
    assert torch.equal(images, ref_images)
    # the loaded state was not advanced in place (ComfyUI may hand the cached output out again)
    assert (state.state.section, state.state.step_in_section) == (1, 1)
    gate = N("GoanPauseGate").execute(resumed, images, 30.0)
    assert gate[0] is images and gate[1] == 30.0 and isinstance(gate[2], PlainBlocker)


def test_pause_requested_before_the_sampler_starts(host, loaded, image):
    from goan_pack.nodes.jobs import REGISTRY

    host.running[PROMPT_ID] = {"3": {"class_type": "LoadImage", "inputs": {}},
                               "7": {"class_type": "GoanSegmentSampler", "inputs": {}}}
    entry = REGISTRY.request_pause(PROMPT_ID)
    assert entry is not None and entry.status == "pausing" and entry.node_id == "7"
    generation = N("GoanSegmentSampler").IS_CHANGED()
    job, _, _ = run_sampler(loaded, image)
    assert job.status == "paused" and (job.state.section, job.state.step_in_section) == (0, 0)
    assert job.path.name.endswith("_s0000_t000.goan_resume")
    assert N("GoanSegmentSampler").IS_CHANGED() != generation  # queued again, it runs again
    assert [j["status"] for j in REGISTRY.jobs()] == ["paused"]


def test_cancel_writes_a_failsafe_file_then_propagates(host, loaded, image):
    from goan_pack.goan_core.resumefile import read_resume_file
    from goan_pack.nodes.adapter import PlainInterrupt
    from goan_pack.nodes.jobs import REGISTRY

    def cancel(bar):
        if bar.current == 2 and bar.total == 6:
            host.request_interrupt()  # ComfyUI's Cancel: the next check raises

    host.on_progress = cancel
    with pytest.raises(PlainInterrupt) as caught:
        run_sampler(loaded, image, autosave_every=0)
    assert any("progress saved to" in note for note in getattr(caught.value, "__notes__", []))
    (note,) = events(host, "goan.paused")
    assert note["kind"] == "failsafe"
    path = host.directory("output") / note["subfolder"] / note["filename"]
    data = read_resume_file(path)
    assert (data.state.section, data.state.step_in_section) == (0, 2)
    (job,) = REGISTRY.jobs()
    assert job["status"] == "stopped" and job["file"]["filename"] == note["filename"]


def test_out_of_memory_saves_fail_safe_and_releases(host, loaded, image, monkeypatch):
    from goan_pack.goan_core.sampling import engine as engine_module
    from goan_pack.nodes.jobs import REGISTRY

    real_step = engine_module.Engine.step
    calls = {"step": 0, "release": 0}

    def step(self, state):
        calls["step"] += 1
        if calls["step"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self, state)

    monkeypatch.setattr(engine_module.Engine, "step", step)
    monkeypatch.setattr(host, "release_memory", lambda: calls.__setitem__("release", calls["release"] + 1))
    with pytest.raises(torch.OutOfMemoryError):
        run_sampler(loaded, image, autosave_every=0)
    (job,) = REGISTRY.jobs()
    assert job["status"] == "failed" and "out of memory" in job["error"] and job["file"] is not None
    assert events(host, "goan.paused")[0]["kind"] == "failsafe"
    assert calls["release"] == 1


def test_forward_jobs_extend_backward_jobs_explain(host, loaded, image):
    from goan_pack.goan_core.errors import InputError

    pause_when(host, 1)
    forward, _, _ = run_sampler(loaded, image, mode="f1", autosave_every=0)
    host.on_progress = None
    sections = forward.state.plan.total_sections
    longer, images, _ = run_sampler(loaded, None, resume_state=forward, seconds=0.3, autosave_every=0, mode="f1")
    assert longer.state.plan.total_sections == sections + 1 and longer.status == "finished"
    assert images.shape[0] == longer.state.plan.total_pixel_frames
    pause_when(host, 1)
    backward, _, _ = run_sampler(loaded, image, autosave_every=0)
    with pytest.raises(InputError, match="Additional Video Length.*backward"):
        run_sampler(loaded, None, resume_state=backward, seconds=1.0)


def test_previews_go_with_progress(host, loaded, image):
    host.previews = True
    pause_when(host, 2)
    run_sampler(loaded, image, autosave_every=0)
    updates = [u for b in host.progress_bars if b.total == 6 for u in b.updates]
    assert [u[2] for u in updates[1:]] == [("JPEG", None, 512)] * 2


# -- load / save resume --------------------------------------------------------------------------------

def test_load_resume_lists_validates_and_explains(host, loaded, image):
    from goan_pack.goan_core.errors import ResumeFileError
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as M

    loader = M["GoanLoadResume"]
    inputs = host.directory("input")
    (inputs / "top.goan_resume").write_bytes(b"not a zip")
    (inputs / "picture.png").write_bytes(b"")
    assert loader.INPUT_TYPES()["required"]["resume_file"][0] == ["top.goan_resume"]
    assert loader.INPUT_TYPES()["required"]["resume_file"][1]["goan_resume_upload"] is True
    assert loader.VALIDATE_INPUTS("top.goan_resume") is True
    for bad in ("../x.goan_resume", "/etc/passwd", "other/x.goan_resume", "goan_resume/../../x.goan_resume",
                "picture.png", "", "goan_resume\\x.goan_resume"):
        assert isinstance(loader.VALIDATE_INPUTS(bad), str), bad
    assert "not found" in loader.VALIDATE_INPUTS("missing.goan_resume")
    assert isinstance(loader.IS_CHANGED("top.goan_resume"), str)
    with pytest.raises(ResumeFileError, match="not a goan resume file"):
        loader().execute("top.goan_resume")


def test_save_resume_writes_when_no_file_holds_the_state(host, loaded, image):
    from goan_pack.goan_core.resumefile import read_resume_file

    pause_when(host, 2)
    job, _, _ = run_sampler(loaded, image, autosave_every=0)
    job.path.unlink()  # e.g. deleted by hand: the node writes the state again, with this workflow
    result = N("GoanSaveResume").execute(job, extra_pnginfo={"workflow": {"id": "w"}})
    (file,) = result["ui"]["goan_resume"]
    path = host.directory("output") / file["subfolder"] / file["filename"]
    data = read_resume_file(path)
    assert data.workflow == {"id": "w"} and data.job_info["kind"] == "pause"
    assert (data.state.section, data.state.step_in_section) == (0, 2)


def test_sampler_rejects_foreign_inputs(host, loaded, image):
    from goan_pack.goan_core.errors import InputError

    with pytest.raises(InputError, match="resume_state"):
        run_sampler(loaded, None, resume_state={"not": "a state"})
    with pytest.raises(InputError, match="transformer"):
        N("GoanSegmentSampler").execute(**sampler_args(loaded, image, transformer=object()))


def test_lazy_inputs_are_asked_for_only_when_needed(host, loaded, image):
    from goan_pack.nodes.types import GoanJob

    sampler = N("GoanSegmentSampler")
    linked = dict(image=None, text_encoders=None, image_encoder=None)  # linked, not evaluated yet
    assert sampler.check_lazy_status(cfg=1.0, **linked) == ["image", "text_encoders", "image_encoder"]
    assert sampler.check_lazy_status(cfg=1.0, image=image, text_encoders=loaded[2], image_encoder=None) == [
        "image_encoder"]
    native = dict(image=None, positive=None, negative=None, clip_vision_output=None, text_encoders=None)
    assert sampler.check_lazy_status(cfg=1.0, **native) == ["image", "positive", "clip_vision_output"]
    assert sampler.check_lazy_status(cfg=3.0, **native) == ["image", "positive", "negative", "clip_vision_output"]
    assert sampler.check_lazy_status(cfg=3.0, image=None) == ["image"]  # nothing else linked

    pause_when(host, 1)
    paused, _, _ = run_sampler(loaded, image, autosave_every=0)
    assert sampler.check_lazy_status(resume_state=paused, cfg=1.0, **linked) == []  # embeddings travel along
    bare = GoanJob(state=paused.state.snapshot(), source_image=paused.source_image, status="loaded")
    bare.state.conditioning = None  # a file saved without embeddings
    assert sampler.check_lazy_status(resume_state=bare, cfg=1.0, **linked) == ["text_encoders", "image_encoder"]


def test_changed_widgets_branch_a_loaded_job(host, loaded, image):
    """After Load Resume, a sampler whose widgets differ from the file's settings continues a new job with
    them; the shape of the job cannot change; lazily, the text encoders are asked for only for a new prompt."""
    from goan_pack.goan_core.errors import InputError
    from goan_pack.goan_core.resumefile import read_resume_file

    pause_when(host, 1)
    paused, _, _ = run_sampler(loaded, image, autosave_every=0)
    host.on_progress = None
    sampler = N("GoanSegmentSampler")
    linked = dict(text_encoders=None, image_encoder=None)
    assert sampler.check_lazy_status(resume_state=paused, **JOB, **linked) == []
    assert sampler.check_lazy_status(resume_state=paused, **{**JOB, "prompt": "a storm"}, **linked) == ["text_encoders"]
    with pytest.raises(InputError, match="cannot change resolution"):
        run_sampler(loaded, None, resume_state=paused, seconds=0.0, resolution=128)
    same, same_images, _ = run_sampler(loaded, None, resume_state=paused, seconds=0.0)
    assert same.state.job_id == paused.state.job_id and same.state.lineage is None
    branched, images, _ = run_sampler(loaded, None, resume_state=paused, seconds=0.0, prompt="a storm", seed=5)
    assert branched.status == "finished" and branched.state.job_id != paused.state.job_id
    lineage = branched.state.lineage
    assert lineage["parent"] == paused.state.job_id and lineage["changes"]["seed"] == [JOB["seed"], 5]
    assert read_resume_file(branched.path).job_info["lineage"] == lineage
    from goan_pack.nodes.jobs import REGISTRY

    entry = next(j for j in REGISTRY.jobs() if j["job_id"] == branched.state.job_id)
    assert entry["parent"] == entry["root"] == paused.state.job_id  # the sidebar lists branches with their job
    assert events(host, "goan.resumed")[-1]["parent"] == paused.state.job_id
    assert images.shape == same_images.shape and not torch.equal(images, same_images)


def test_an_end_image_goes_into_the_job_and_its_file(host, loaded, image):
    import zipfile

    pause_when(host, 1)
    paused, _, _ = run_sampler(loaded, image, autosave_every=0, end_image=image.flip(2), end_strength=0.8)
    host.on_progress = None
    assert paused.state.end_latent is not None and paused.state.params.end_strength == 0.8
    with zipfile.ZipFile(paused.path) as archive:
        assert "end_image.png" in archive.namelist()
    # continuing it: blending the end image in (end_embeds) now asks for the image encoder, lazily
    sampler = N("GoanSegmentSampler")
    widgets = {**JOB, "end_strength": 0.8}
    assert sampler.check_lazy_status(resume_state=paused, **widgets, text_encoders=None, image_encoder=None) == []
    assert sampler.check_lazy_status(resume_state=paused, **{**widgets, "end_embeds": 0.5}, text_encoders=None,
                                     image_encoder=None) == ["image_encoder"]


def test_a_bad_branch_is_refused_before_any_encoder_is_asked_for(host, loaded, image):
    """check_lazy_status plans a branch before ComfyUI evaluates any encoder input: a bad widget fails there
    with a new job's message. Once the first generated section is done, another end image or end_strength is
    refused with the reason; the job's own end image just resumes it."""
    from goan_pack.goan_core.errors import InputError
    from goan_pack.goan_core.params import MAX_PROMPT_CHARS
    from goan_pack.nodes.types import GoanJob

    pause_when(host, 4)  # section 2 of 2, step 1
    paused, _, _ = run_sampler(loaded, image, autosave_every=0, end_image=image.flip(2))
    host.on_progress = None
    assert paused.state.section == 1
    sampler = N("GoanSegmentSampler")
    linked = dict(text_encoders=None, image_encoder=None)
    with pytest.raises(InputError, match="timed prompt: timestamps must increase"):
        sampler.check_lazy_status(resume_state=paused, **{**JOB, "prompt": "[0s] a [2s] b [1s] c"}, **linked)
    with pytest.raises(InputError, match=f"negative prompt is .* more than the {MAX_PROMPT_CHARS:,} a job may have"):
        sampler.check_lazy_status(resume_state=paused, **{**JOB, "negative_prompt": "n" * (MAX_PROMPT_CHARS + 1)},
                                  **linked)
    with pytest.raises(InputError, match="the end image only conditions the first generated section"):
        sampler.check_lazy_status(resume_state=paused, **JOB, end_image=image, **linked)
    assert sampler.check_lazy_status(resume_state=paused, **JOB, end_image=image.flip(2), **linked) == []
    bare = GoanJob(state=paused.state.snapshot(), source_image=paused.source_image, status="loaded")
    bare.state.conditioning = None  # a file saved without embeddings: checked before its encoders are asked for
    with pytest.raises(InputError, match="steps must be between 1 and 200"):
        sampler.check_lazy_status(resume_state=bare, **{**JOB, "steps": 0}, **linked)
    with pytest.raises(InputError, match="end_strength only conditions the first generated section"):
        run_sampler(loaded, None, resume_state=paused, seconds=0.0, end_strength=0.5)
    same, _, _ = run_sampler(loaded, None, resume_state=paused, seconds=0.0, end_image=image.flip(2))
    assert same.status == "finished" and same.state.job_id == paused.state.job_id and same.state.lineage is None
