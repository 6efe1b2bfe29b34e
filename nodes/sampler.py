"""GoanSegmentSampler: starts a FramePack job or continues one, pause-aware, with progress and previews."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from ..goan_core.atomic import RetentionFolder
from ..goan_core.encoders import encode_image_embeds, encode_prompt, encode_start_latent
from ..goan_core.engine import Engine
from ..goan_core.errors import InputError
from ..goan_core.job import decode_frames as job_frames
from ..goan_core.job import extend_job, render_frames, start_job
from ..goan_core.models import on_device
from ..goan_core.params import FPS, LIMITS, MODES, SAMPLERS, JobParams
from ..goan_core.resume_file import model_identity_mismatch
from ..goan_core.runner import FINISHED, PAUSED, AutosavePolicy, JobSaver, RunResult, run_job
from ..goan_core.state import Conditioning, JobState
from . import types as T
from .adapter import HOST, output_relative
from .jobs import FAILED, REGISTRY, STOPPED
from .native import ComfyVAE, image_embeds_from_clip_vision, prompt_from_conditioning
from .types import CATEGORY, GoanJob, image_to_uint8, uint8_to_image

log = logging.getLogger("goan")

SEED_MAX = 2**53 - 1  # the largest integer a browser keeps exact
LENGTH_LABEL = "Video Length (s)"


class RecordingSaver:
    """A Saver that remembers the last pause/stop/failsafe/finished file it wrote (autosaves aside)."""

    def __init__(self, saver: JobSaver):
        self.saver = saver
        self.last: Path | None = None
        self.kind: str | None = None
        self._lock = threading.Lock()

    def save(self, snapshot, kind):
        path = self.saver.save(snapshot, kind)
        if kind != "autosave":
            with self._lock:
                self.last, self.kind = path, kind
        return path


def _decoder(goan_vae, vae):
    if goan_vae is not None:
        if not isinstance(goan_vae, T.GoanVAE):
            raise InputError(f"goan_vae: expected the output of goan's VAE loader, got {type(goan_vae).__name__}")
        return goan_vae
    if vae is not None:
        return ComfyVAE(vae)
    return None


def _need_decoder(decoder, why: str):
    if decoder is None:
        raise InputError(f"{why} needs a VAE: connect goan_vae (goan VAE Loader) or vae (ComfyUI's VAELoader)")
    return decoder


def encode_start(decoder, source) -> torch.Tensor:
    decoder = _need_decoder(decoder, "encoding the start image")
    if isinstance(decoder, T.GoanVAE):
        return encode_start_latent(decoder.model, source, decoder.device, decoder.dtype)
    return decoder.encode_start_latent(source)


def decode_frames(decoder, state: JobState, progress=None) -> torch.Tensor:
    """(F,H,W,3) uint8 frames of the job's finished sections."""
    decoder = _need_decoder(decoder, "decoding the video")
    if isinstance(decoder, T.GoanVAE):
        return render_frames(decoder.model, state, device=decoder.device, dtype=decoder.dtype, progress=progress)
    return job_frames(state, decoder.decode, progress)


def build_conditioning(params: JobParams, source, *, text_encoders=None, image_encoder=None, positive=None,
                       negative=None, clip_vision_output=None) -> Conditioning:
    """Prompt and image embeddings from goan's encoders or from ComfyUI's CONDITIONING/CLIP_VISION_OUTPUT."""
    def prompt_triple(text: str, native, which: str):
        if native is not None:
            return prompt_from_conditioning(native, which)
        if text_encoders is None:
            raise InputError(f"the {which} prompt needs text encoders: connect text_encoders (goan Text Encoder "
                             f"Loader) or {which} (ComfyUI CONDITIONING from DualCLIPLoader hunyuan_video)")
        return encode_prompt(text_encoders.models, text, text_encoders.device, text_encoders.dtype)

    embeds, mask, pooled = prompt_triple(params.prompt, positive, "positive")
    negative_triple = (None, None, None)
    if params.cfg != 1:
        negative_triple = prompt_triple(params.negative_prompt, negative, "negative")
    if clip_vision_output is not None:
        image_embeds = image_embeds_from_clip_vision(clip_vision_output)
    elif image_encoder is not None:
        image_embeds = encode_image_embeds(image_encoder.models, source, image_encoder.device, image_encoder.dtype)
    else:
        raise InputError("the start image needs an image encoder: connect image_encoder (goan Image Encoder "
                         "Loader) or clip_vision_output (ComfyUI CLIPVisionEncode with SigLIP)")
    return Conditioning(embeds, mask, pooled, image_embeds, *negative_triple)


def new_state(transformer, params: JobParams, picture, conditioning_inputs: dict, decoder):
    """A fresh job at section 0 (goan_core.job.start_job) and its cropped source image."""
    def encode(source):
        return build_conditioning(params, source, **conditioning_inputs), encode_start(decoder, source)

    return start_job(params, picture, encode, model_identity=transformer.identity())


class GoanSegmentSampler:
    DESCRIPTION = ("Runs a FramePack image-to-video job, or continues one from a resume state. Pause it from the "
                   "queue (the state then goes to Save Resume); Cancel saves a fail-safe resume file. When continuing, "
                   "the creative widgets come from the state and the length is ADDITIONAL seconds (0 = just finish).")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = (T.STATE, "IMAGE", "FLOAT")
    RETURN_NAMES = ("state", "images", "fps")
    OUTPUT_TOOLTIPS = ("the job: finished, or paused (connect to Pause Gate)",
                       "the video frames when finished (the source image while paused)", "frames per second")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "transformer": (T.TRANSFORMER,),
                "prompt": ("STRING", {"multiline": True, "default": "", "dynamicPrompts": False}),
                "negative_prompt": ("STRING", {"multiline": True, "default": "", "dynamicPrompts": False,
                                               "tooltip": "used only when cfg > 1"}),
                "seed": ("INT", {"default": 31337, "min": 0, "max": SEED_MAX, "control_after_generate": True}),
                "seconds": ("FLOAT", {"default": 5.0, "min": 0.0, "max": 120.0, "step": 0.1,
                                      "display_name": LENGTH_LABEL,
                                      "tooltip": "length of a new video; when continuing a resume state: seconds "
                                                 "to ADD (0 = just finish; only f1 jobs can grow)"}),
                "steps": ("INT", {"default": 25, "min": 1, "max": LIMITS["steps"][1]}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 32.0, "step": 0.1,
                                  "tooltip": "real CFG; 1 = off (twice as fast)"}),
                "gs": ("FLOAT", {"default": 10.0, "min": 0.0, "max": 32.0, "step": 0.1,
                                 "display_name": "Distilled CFG"}),
                "rs": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "display_name": "CFG Rescale"}),
                "lws": ("INT", {"default": 9, "min": 1, "max": LIMITS["lws"][1], "display_name": "Latent Window Size"}),
                "mode": (list(MODES), {"default": "backward",
                                       "tooltip": "backward: original FramePack; f1: forward, can be extended later"}),
                "resolution": ("INT", {"default": 640, "min": 64, "max": 2048, "step": 16}),
                "sampler": (list(SAMPLERS), {"default": "unipc"}),
                "autosave_every": ("INT", {"default": 1, "min": 0, "max": 1000,
                                           "tooltip": "save a resume file every N finished sections (0 = off)"}),
                "keep_last": ("INT", {"default": 3, "min": 1, "max": 100,
                                      "tooltip": "resume files kept per job in output/goan_resume/<job>/"}),
            },
            # Lazy inputs are evaluated only when needed (check_lazy_status): continuing a job whose
            # resume file carries its embeddings loads no text or image encoder.
            "optional": {
                "image": ("IMAGE", {"lazy": True, "tooltip": "start image of a new job"}),
                "resume_state": (T.STATE, {"tooltip": "continue this job instead of starting one"}),
                "text_encoders": (T.TEXT_ENCODERS, {"lazy": True}),
                "image_encoder": (T.IMAGE_ENCODER, {"lazy": True}),
                "goan_vae": (T.VAE,),
                "vae": ("VAE", {"tooltip": "ComfyUI's HunyuanVideo VAE (alternative to goan_vae)"}),
                "positive": ("CONDITIONING", {"lazy": True, "tooltip": "DualCLIPLoader(hunyuan_video) + "
                                                                       "CLIPTextEncode (alternative to text_encoders)"}),
                "negative": ("CONDITIONING", {"lazy": True, "tooltip": "used when cfg > 1"}),
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {"lazy": True, "tooltip": "CLIPVisionEncode with "
                                                              "SigLIP (alternative to image_encoder)"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def check_lazy_status(self, **inputs):
        """The lazy inputs this run needs and ComfyUI has not evaluated yet (linked ones arrive as None).

        A new job needs the image and its encoders; a continued job needs encoders only when its
        state lacks embeddings. ComfyUI's own CONDITIONING/CLIP_VISION_OUTPUT win over goan's encoders
        when both are connected, as in build_conditioning.
        """
        needed = []

        def want(name):
            if name in inputs and inputs[name] is None and name not in needed:
                needed.append(name)

        job = inputs.get("resume_state")
        if job is None:
            want("image")
            cfg = inputs.get("cfg", 1.0)
        elif isinstance(job, GoanJob) and job.state.conditioning is None:
            cfg = job.state.params.cfg
        else:
            return needed
        want("positive" if "positive" in inputs else "text_encoders")
        if cfg != 1:
            want("negative" if "negative" in inputs else "text_encoders")
        want("clip_vision_output" if "clip_vision_output" in inputs else "image_encoder")
        return needed

    @classmethod
    def IS_CHANGED(cls, **_):
        # Same inputs, same video: ComfyUI may reuse a finished result. A paused or cancelled run
        # must run again when queued again, so every unfinished end changes this value.
        return REGISTRY.generation

    def execute(self, transformer, prompt, negative_prompt, seed, seconds, steps, cfg, gs, rs, lws, mode,
                resolution, sampler, autosave_every, keep_last, image=None, resume_state=None, text_encoders=None,
                image_encoder=None, goan_vae=None, vae=None, positive=None, negative=None, clip_vision_output=None,
                unique_id=None, extra_pnginfo=None):
        if not isinstance(transformer, T.GoanTransformer):
            raise InputError("transformer: connect goan's Transformer Loader")
        if autosave_every < 0 or keep_last < 1:
            raise InputError("autosave_every must be 0 or more and keep_last at least 1")
        workflow = extra_pnginfo.get("workflow") if isinstance(extra_pnginfo, dict) else None
        workflow = workflow if isinstance(workflow, dict) else None
        decoder = _need_decoder(_decoder(goan_vae, vae), "the job")  # checked before any work is done
        encoders = dict(text_encoders=text_encoders, image_encoder=image_encoder, positive=positive,
                        negative=negative, clip_vision_output=clip_vision_output)
        if resume_state is not None:
            state, source, resumed_from = self._continue(resume_state, transformer, float(seconds), encoders, decoder)
            workflow = workflow or resume_state.workflow
        else:
            if image is None:
                raise InputError("connect an image (e.g. Load Image) to start a new job, or a resume_state to "
                                 "continue one")
            if seconds <= 0:
                raise InputError(f"{LENGTH_LABEL} must be more than 0 for a new job")
            params = JobParams(prompt=prompt, negative_prompt=negative_prompt, seed=int(seed), seconds=float(seconds),
                               lws=int(lws), steps=int(steps), cfg=float(cfg), gs=float(gs), rs=float(rs), mode=mode,
                               resolution=int(resolution), sampler=sampler)
            state, source = new_state(transformer, params, image_to_uint8(image), encoders, decoder)
            resumed_from = None
        return self._run(transformer, state, source, decoder, workflow, int(autosave_every), int(keep_last),
                         unique_id, resumed_from)

    def _continue(self, job, transformer, seconds, encoders, decoder):
        if not isinstance(job, GoanJob):
            raise InputError(f"resume_state: expected a goan state (Load Resume or a sampler), got {type(job).__name__}")
        state = job.state.snapshot()  # the input may be cached by ComfyUI: never advance it in place
        position = (state.section, state.step_in_section)
        if seconds > 0:
            try:
                extend_job(state, seconds)
            except InputError as error:
                raise InputError(f"Additional {LENGTH_LABEL} must be 0 for this job: {error}") from error
        if state.conditioning is None:
            state.conditioning = build_conditioning(state.params, job.source_image, **encoders)
        if job.needs_start_latent:
            state.start_latent = encode_start(decoder, job.source_image)
        warning = model_identity_mismatch({"model_identity": state.model_identity}, transformer.identity())
        if warning:
            log.warning("goan: %s", warning)
        state.model_identity = transformer.identity()
        return state, job.source_image, position

    def _run(self, transformer, state, source, decoder, workflow, autosave_every, keep_last, unique_id, resumed_from):
        prompt_id = HOST.current_prompt_id() or "local"
        node_id = None if unique_id is None else str(unique_id)
        saver = RecordingSaver(JobSaver(RetentionFolder(HOST.directory("output"), state.job_id, keep_last),
                                        source, workflow))
        entry = REGISTRY.start(prompt_id, node_id, state.job_id, section=state.section, step=state.step_in_section,
                               total_sections=state.plan.total_sections, steps=state.params.steps)
        if resumed_from is not None:
            HOST.send("goan.resumed", {"prompt_id": prompt_id, "job_id": state.job_id,
                                       "section": resumed_from[0], "step": resumed_from[1]})
        job_ids = {"prompt_id": prompt_id, "job_id": state.job_id}
        try:
            HOST.unload_other_models()
            result = self._sample(transformer, state, saver, entry, autosave_every, node_id, job_ids)
            if result.status == FINISHED:
                bar = HOST.progress_bar(max(state.plan.total_sections, 1), node_id)
                frames = decode_frames(decoder, result.state, lambda k, n: bar.update_absolute(k, n))
                images = uint8_to_image(frames)
            else:
                images = uint8_to_image(source)
        except BaseException as error:
            file = output_relative(saver.last) if saver.last is not None else None
            interrupted = HOST.is_interrupt(error)
            status = STOPPED if interrupted else FAILED
            message = "cancelled" if interrupted else f"{type(error).__name__}: {error}"
            if HOST.is_oom(error):
                message = f"out of memory: {error}"
            REGISTRY.end(entry, status, file=file, error=message)
            if saver.kind == "failsafe" and file is not None:
                HOST.send("goan.paused", {**job_ids, "node_id": node_id, **file, "kind": "failsafe"})
            raise
        finally:
            HOST.release_memory()
        file = output_relative(result.resume_file) if result.resume_file is not None else None
        status = {FINISHED: T.FINISHED, PAUSED: T.PAUSED}.get(result.status, T.STOPPED)
        REGISTRY.end(entry, status, file=file)
        if status != T.FINISHED:
            HOST.send("goan.paused", {**job_ids, "node_id": node_id, **file,
                                      "kind": "pause" if status == T.PAUSED else "stop"})
        job = GoanJob(state=result.state, source_image=source, status=status, file=file, path=result.resume_file,
                      workflow=workflow, keep_last=keep_last)
        return (job, images, float(FPS))

    def _sample(self, transformer, state, saver, entry, autosave_every, node_id, job_ids) -> RunResult:
        if state.done:  # a finished job continued with 0 additional seconds: nothing left to sample
            return RunResult(state, FINISHED)
        bar = HOST.progress_bar(state.total_steps, node_id)
        bar.update_absolute(state.steps_done, state.total_steps)
        preview = HOST.previewer()

        def on_step(event):
            REGISTRY.progress(entry, event.section, event.step, event.total_sections)
            bar.update_absolute(event.steps_done, event.total_steps,
                                preview(event.denoised) if preview is not None else None)
            HOST.check_interrupt()

        def on_autosaved(path):
            file = output_relative(path)
            REGISTRY.set_file(entry, file)
            HOST.send("goan.autosaved", {**job_ids, **file})

        policy = AutosavePolicy(autosave_every, 0.0) if autosave_every > 0 else None
        engine = Engine(transformer.model, transformer.device, transformer.dtype)
        with on_device(transformer.model, transformer.device):
            return run_job(engine, state, saver, control=entry.control, autosave=policy, callback=on_step,
                           save_finished=True, on_autosaved=on_autosaved)
