"""GoanSegmentSampler: starts a FramePack job or continues one, pause-aware, with progress and previews.

A thin caller of goan_core's job lifecycle (create_job / continue_job, run_job, render_frames): what
it adds is ComfyUI's side, where the models and embeddings come from (goan's loaders or ComfyUI's
own CONDITIONING, CLIP_VISION_OUTPUT and VAE), and how the run is reported (progress bar, previews,
the job registry behind the pause button, websocket events, ComfyUI's memory and cancel).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from ..goan_core.errors import InputError
from ..goan_core.jobs import (END_IMAGE, AutosavePolicy, Encoders, Job, RunResult, RunSettings, branch_changes,
                              branch_encoders, continue_job, create_job, render_frames, run_attention, run_job)
from ..goan_core.models import (ATTENTION_CHOICES, VAE, ImageEncoder, SwapPlan, TextEncoders, Transformer, is_on,
                                plan_swap, section_tokens)
from ..goan_core.params import FPS, LIMITS, MODES, SAMPLERS, JobParams
from ..goan_core.vocabulary import FileKind, Status
from . import types as T
from .adapter import HOST, output_relative
from .jobs import REGISTRY, JobEntry
from .native import ComfyImageEncoder, ComfyTextEncoder, ComfyVAE, NativeImageEmbeds, NativePrompt
from .types import CATEGORY, GoanJob, image_to_uint8, uint8_to_image

log = logging.getLogger("goan")

SEED_MAX = 2**53 - 1  # the largest integer a browser keeps exact
LENGTH_LABEL = "Video Length (s)"

# How a user supplies each piece a job may lack, in the sampler's own words.
HINTS = {
    "prompt": "text encoders: connect clip (DualCLIPLoader with clip_l + llava_llama3, type hunyuan_video), "
              "text_encoders (goan Text Encoder Loader) or positive (CONDITIONING)",
    "negative_prompt": "text encoders: connect clip (DualCLIPLoader, type hunyuan_video), text_encoders (goan "
                       "Text Encoder Loader) or negative (CONDITIONING)",
    "image": "an image encoder: connect clip_vision (CLIPVisionLoader with sigclip_vision_patch14_384), "
             "image_encoder (goan Image Encoder Loader) or clip_vision_output",
    "vae": "a VAE: connect vae (VAELoader with hunyuan_video_vae_bf16) or goan_vae (goan VAE Loader)",
}
# Each piece's inputs, the first connected one wins: encodings made elsewhere, then ComfyUI's
# encoders (goan encodes with them), then goan's own loaders.
SOURCES = {"prompt": ("positive", "clip", "text_encoders"), "negative_prompt": ("negative", "clip", "text_encoders"),
           "image": ("clip_vision_output", "clip_vision", "image_encoder")}


# The widgets that ask a continued job for a setting (jobs.branch), and how each widget's value is read.
BRANCH_WIDGETS = {"prompt": None, "negative_prompt": None, "seed": int, "steps": int, "cfg": float, "gs": float,
                  "rs": float, "sampler": None, "teacache": bool, "teacache_threshold": float, "mode": None, "lws": int,
                  "resolution": int, "end_strength": float, "end_embeds": float}


def branch_request(inputs: dict, state) -> dict:
    """The settings the sampler's inputs ask of continued job `state` (`jobs.branch_changes`): its widgets, and
    a connected end_image (IMAGE) as the end image (then cropped to the job's frame).

    A natively conditioned job's prompts are its saved embeddings: its prompt widgets are left out (in such
    workflows they often hold text that never conditioned anything), with a warning when they hold text.
    """
    request = {name: inputs[name] if read is None else read(inputs[name]) for name, read in BRANCH_WIDGETS.items()
               if inputs.get(name) is not None}
    if state.params.prompt_source == "native":
        texts = [name for name in ("prompt", "negative_prompt") if str(request.pop(name, "")).strip()]
        if texts:
            log.warning("goan: this job was conditioned natively (CONDITIONING made elsewhere): its saved embeddings "
                        "condition the rest of it, not the %s widget text", " and ".join(texts))
    if inputs.get("end_image") is not None:
        request[END_IMAGE] = image_to_uint8(inputs["end_image"])
    return request


def _expect(value, kind: type, name: str, what: str):
    if value is not None and not isinstance(value, kind):
        raise InputError(f"{name}: expected the output of {what}, got {type(value).__name__}")
    return value


def _wrapped(value, wrap):
    return None if value is None else wrap(value)


def node_encoders(*, text_encoders=None, image_encoder=None, goan_vae=None, vae=None, positive=None, negative=None,
                  clip_vision_output=None, clip=None, clip_vision=None) -> Encoders:
    """The sampler's inputs as goan_core Encoders, each piece from its first connected input (`SOURCES`).

    goan's VAE wins over ComfyUI's when both are connected.
    """
    text = _expect(text_encoders, TextEncoders, "text_encoders", "goan's Text Encoder Loader")
    image = _expect(image_encoder, ImageEncoder, "image_encoder", "goan's Image Encoder Loader")
    codec = _expect(goan_vae, VAE, "goan_vae", "goan's VAE loader")
    comfy_text = _wrapped(clip, ComfyTextEncoder)

    def first(*candidates):
        return next((c for c in candidates if c is not None), None)

    return Encoders(
        prompt=first(_wrapped(positive, lambda c: NativePrompt(c, "positive")), comfy_text, text),
        negative_prompt=first(_wrapped(negative, lambda c: NativePrompt(c, "negative")), comfy_text, text),
        image=first(_wrapped(clip_vision_output, NativeImageEmbeds), _wrapped(clip_vision, ComfyImageEncoder), image),
        vae=codec if codec is not None else _wrapped(vae, ComfyVAE),
        hints=HINTS,
    )


class BudgetedAccelerator:
    """An Accelerator whose free memory reads at most `cap` bytes, everything else passed through.

    The runner's planner asks it for free memory; capped at what `claim_memory` planned for, it places
    exactly that plan (once the host freed the bytes), never more than the host was asked to free.
    """

    def __init__(self, accelerator, cap: int | None):
        self.accelerator, self.cap = accelerator, cap

    def free_bytes(self) -> int | None:
        free = self.accelerator.free_bytes()
        if self.cap is None:
            return free
        return self.cap if free is None else min(free, self.cap)

    def __getattr__(self, name):
        return getattr(self.accelerator, name)


def claim_memory(transformer: Transformer, state, settings: RunSettings) -> tuple[RunSettings, SwapPlan | None]:
    """Before the transformer goes to its device: the budget, the plan the runner will place, and its bytes freed.

    The budget is the host's (`HOST.memory_budget`: ComfyUI's --lowvram/--novram/--reserve-vram when
    given, the node's gpu_memory_preservation otherwise). The plan is `plan_swap`'s over the bytes the
    device could offer (free now plus what ComfyUI's own models hold there); the host is then asked to
    free the plan's `device_bytes`: its peak weights (resident blocks + streaming slots) plus the memory
    its activations use, the preservation or the activation reserve when that is larger (the activations
    live in the preserved memory, as in FramePack), so ComfyUI evicts only as much as the job needs.
    --lowvram / --novram cap the free bytes planned with at what streaming every block takes (weights of
    the non-block modules and two or one slots, plus that same activation memory). Returns the settings
    the runner must use (its preservation and a capped accelerator, so it places that same plan) and the
    plan (None: on the CPU nothing is placed and nothing is asked).
    """
    budget = HOST.memory_budget(settings.gpu_memory_preservation)
    settings = replace(settings, gpu_memory_preservation=budget.gpu_memory_preservation)
    device = torch.device(transformer.device)
    accelerator = settings.accelerator or HOST.accelerator_for(device)
    model = transformer.model
    if accelerator is None and (device.type == "cpu" or is_on(model, device)):
        return settings, None  # the runner moves nothing: on the CPU, or a model kept on the device already
    options = dict(compute_dtype=transformer.dtype,
                   tokens=section_tokens(state.plan, getattr(getattr(model, "config", None), "patch_size", 2)))
    free = HOST.obtainable_bytes(device, accelerator) if accelerator is not None else None
    if free is not None and budget.mode != "normal":  # every block streams (--lowvram: 2 slots, --novram: 1)
        sizes = plan_swap(model, None, budget.gpu_memory_preservation, **options)
        slots = sorted(sizes.block_bytes.values(), reverse=True)[:1 if budget.mode == "novram" else 2]
        free = min(free, sizes.fixed_bytes + sum(slots) + max(budget.preservation_bytes, sizes.reserve_bytes))
    plan = plan_swap(model, free, budget.gpu_memory_preservation, warn=False, **options)  # the runner warns
    needed = plan.device_bytes()
    log.info("goan: memory budget from %s (%s, %.2f GB kept free): %d of %d transformer blocks resident, "
             "asking for %.3f GB on %s", budget.source, budget.mode, budget.gpu_memory_preservation,
             len(plan.resident), len(plan.block_bytes), needed / 1024 ** 3, device)
    HOST.free_memory(needed, device)
    if accelerator is not None:
        settings = replace(settings, accelerator=BudgetedAccelerator(accelerator, free))
    return settings, plan


class GoanSegmentSampler:
    DESCRIPTION = ("Runs a FramePack image-to-video job, or continues one from a resume state. Pause it from the "
                   "queue (the state then goes to Save Resume); Cancel saves a fail-safe resume file. When continuing, "
                   "widgets that differ from the state's settings (prompt, seed, steps, cfg...) branch it into a new "
                   "job for the sections still to come, and the length is ADDITIONAL seconds (0 = just finish).")
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
                                           "tooltip": "save a resume file every N finished sections (0 = off); "
                                                      "autosaves are hidden files (.<job>_...), out of "
                                                      "ComfyUI's asset list"}),
                "keep_last": ("INT", {"default": 3, "min": 1, "max": 100,
                                      "tooltip": "resume files kept per job in output/goan_resume/<job>/"}),
                "gpu_memory_preservation": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 128.0, "step": 0.1,
                                                      "tooltip": "GB to keep free on the GPU (FramePack's setting); "
                                                                 "transformer blocks that do not fit stream in per "
                                                                 "step. Raise it if you run out of memory"}),
                "teacache": ("BOOLEAN", {"default": True, "tooltip": "FramePack's TeaCache: skip the transformer "
                                         "blocks while their input barely changes (faster, slightly different)"}),
                "teacache_threshold": ("FLOAT", {"default": 0.15, "min": 0.0, "max": LIMITS["teacache_threshold"][1],
                                                 "step": 0.01, "tooltip": "higher skips more (0.1: ~1.6x, "
                                                                          "0.15: ~2.1x faster in FramePack)"}),
                "attention": (list(ATTENTION_CHOICES), {
                    "default": "auto", "tooltip": "attention kernel: auto takes the fastest installed one that suits "
                    "the GPU (flash-attn, then sageattention, then xformers), else sdpa, which works everywhere"}),
                "compile": ("BOOLEAN", {"default": False, "tooltip": "torch.compile the transformer's blocks (needs "
                            "triton): faster steps after a slow first one for each new size or prompt length"}),
                # Last, so saved workflows keep their widget order (a missing value takes this default).
                "accept_lora_difference": ("BOOLEAN", {"default": False, "tooltip": "continue a resume state even "
                                           "though its LoRAs (goan LoRA nodes) differ from those connected now; "
                                           "the result then differs from an uninterrupted run"}),
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
                "positive": ("CONDITIONING", {"lazy": True, "tooltip": "a prompt encoded elsewhere (CLIPTextEncode "
                                              "with DualCLIPLoader hunyuan_video): wins over clip; goan then records "
                                              "native conditioning, no prompt text, in the resume file"}),
                "negative": ("CONDITIONING", {"lazy": True, "tooltip": "used when cfg > 1"}),
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {"lazy": True, "tooltip": "an image encoded elsewhere "
                                       "(CLIPVisionEncode): wins over clip_vision, but FramePack encodes the "
                                       "bucketed crop of the start image, which clip_vision does"}),
                # After the older inputs, so saved workflows keep their input slots.
                "clip": ("CLIP", {"lazy": True, "tooltip": "DualCLIPLoader (clip_l + llava_llama3, type hunyuan_video): "
                                  "goan encodes the prompt widgets with it"}),
                "clip_vision": ("CLIP_VISION", {"lazy": True, "tooltip": "CLIPVisionLoader "
                                                "(sigclip_vision_patch14_384): goan encodes the bucketed, cropped "
                                                "start image with it, as FramePack does"}),
                "end_image": ("IMAGE", {"tooltip": "backward mode: the video ends on this image; another image "
                                                   "branches a resumed job until its first generated section is "
                                                   "done (not connected: the job keeps its own)"}),
                "end_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                           "tooltip": "how strongly the end image conditions the video's end"}),
                "end_embeds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                         "tooltip": "blend the end image's embedding in, growing towards the "
                                                    "video's end (0 = off)"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def check_lazy_status(self, **inputs):
        """The lazy inputs this run needs and ComfyUI has not evaluated yet (linked ones arrive as None).

        A new job needs the image and its encoders; a continued job needs encoders only when its
        state lacks embeddings or its branch encodes something (`jobs.branch_encoders`); a bad branch
        is refused here, before any encoder input is evaluated. Of each piece's inputs only the first
        connected one is needed (`SOURCES`), as in node_encoders.
        """
        needed = []

        def want(name):
            if name in inputs and inputs[name] is None and name not in needed:
                needed.append(name)

        def want_source(piece):
            want(next((name for name in SOURCES[piece] if name in inputs), SOURCES[piece][-1]))

        job = inputs.get("resume_state")
        if job is None:
            want("image")
            cfg = inputs.get("cfg", 1.0)
        elif isinstance(job, GoanJob):  # a branch is checked here, before any encoder loads; it may need some
            changes = branch_changes(job.state, branch_request(inputs, job.state))
            if job.state.conditioning is not None:
                for piece in branch_encoders(job.state, changes):
                    want_source(piece)
                return needed
            cfg = changes["cfg"][1] if "cfg" in changes else job.state.params.cfg
        else:
            return needed
        want_source("prompt")
        if cfg != 1:
            want_source("negative_prompt")
        want_source("image")
        return needed

    @classmethod
    def IS_CHANGED(cls, **_):
        # Same inputs, same video: ComfyUI may reuse a finished result. A paused or cancelled run
        # must run again when queued again, so every unfinished end changes this value.
        return REGISTRY.generation

    def execute(self, transformer, prompt, negative_prompt, seed, seconds, steps, cfg, gs, rs, lws, mode,
                resolution, sampler, autosave_every, keep_last, gpu_memory_preservation=6.0, teacache=True,
                teacache_threshold=0.15, attention="auto", compile=False, accept_lora_difference=False, image=None,
                resume_state=None, text_encoders=None, image_encoder=None, goan_vae=None, vae=None, positive=None,
                negative=None, clip_vision_output=None, clip=None, clip_vision=None, end_image=None, end_strength=1.0,
                end_embeds=0.0, unique_id=None, extra_pnginfo=None):
        if not isinstance(transformer, Transformer):
            raise InputError("transformer: connect goan's Transformer Loader")
        if autosave_every < 0 or keep_last < 1:
            raise InputError("autosave_every must be 0 or more and keep_last at least 1")
        if gpu_memory_preservation < 0:
            raise InputError("gpu_memory_preservation must be 0 GB or more")
        workflow = extra_pnginfo.get("workflow") if isinstance(extra_pnginfo, dict) else None
        workflow = workflow if isinstance(workflow, dict) else None
        encoders = node_encoders(text_encoders=text_encoders, image_encoder=image_encoder, goan_vae=goan_vae, vae=vae,
                                 positive=positive, negative=negative, clip_vision_output=clip_vision_output,
                                 clip=clip, clip_vision=clip_vision)
        if positive is not None and (prompt.strip() or negative_prompt.strip()):
            log.warning("goan: the prompt widgets are not used: the positive/negative CONDITIONING inputs condition "
                        "the video (the resume file records native conditioning, no text)")
        encoders.require("vae", "the job")  # checked before any work is done
        settings = RunSettings(HOST.directory("output"), keep_last=int(keep_last),
                               autosave=AutosavePolicy(int(autosave_every), 0.0) if autosave_every > 0 else None,
                               gpu_memory_preservation=float(gpu_memory_preservation), attention=attention,
                               compile=bool(compile),
                               hide_autosaves=True)  # out of ComfyUI's asset catalogue (resumefile.retention)
        run_attention(transformer, settings)  # an attention kernel or compiler missing here: said before any work
        if resume_state is not None:
            if not isinstance(resume_state, GoanJob):
                raise InputError("resume_state: expected a goan state (Load Resume or a sampler), got "
                                 f"{type(resume_state).__name__}")
            changes = branch_request(dict(prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps,
                                          cfg=cfg, gs=gs, rs=rs, sampler=sampler, teacache=teacache,
                                          teacache_threshold=teacache_threshold, mode=mode, lws=lws,
                                          resolution=resolution, end_strength=end_strength, end_embeds=end_embeds,
                                          end_image=end_image), resume_state.state)
            job, resumed_from = self._continue(resume_state, transformer, float(seconds), encoders, workflow, changes,
                                               bool(accept_lora_difference))
        else:
            if image is None:
                raise InputError("connect an image (e.g. Load Image) to start a new job, or a resume_state to "
                                 "continue one")
            if seconds <= 0:
                raise InputError(f"{LENGTH_LABEL} must be more than 0 for a new job")
            params = JobParams(prompt=prompt, negative_prompt=negative_prompt, seed=int(seed), seconds=float(seconds),
                               lws=int(lws), steps=int(steps), cfg=float(cfg), gs=float(gs), rs=float(rs), mode=mode,
                               resolution=int(resolution), sampler=sampler, teacache=bool(teacache),
                               teacache_threshold=float(teacache_threshold), end_strength=float(end_strength),
                               end_embeds=float(end_embeds))
            job = create_job(params, image_to_uint8(image), encoders, identity=transformer.identity(),
                             loras=transformer.lora_uses(), workflow=workflow,
                             end_image=None if end_image is None else image_to_uint8(end_image))
            resumed_from = None
        return self._run(job, transformer, encoders, settings, unique_id, resumed_from)

    @staticmethod
    def _continue(saved, transformer: Transformer, seconds: float, encoders: Encoders, workflow, changes: dict,
                  accept_lora_difference: bool = False):
        """The saved job continued; widgets that differ from its settings branch it (`jobs.branch`)."""
        try:
            job, warnings = continue_job(saved.state, saved.source_image, encoders, identity=transformer.identity(),
                                         loras=transformer.lora_uses(), accept_lora_difference=accept_lora_difference,
                                         additional_seconds=seconds, needs_start_latent=saved.needs_start_latent,
                                         workflow=workflow or saved.workflow, changes=changes)
        except InputError as error:
            if seconds > 0 and saved.state.plan.mode != "f1":
                raise InputError(f"Additional {LENGTH_LABEL} must be 0 for this job: {error}") from error
            raise
        for warning in warnings:
            log.warning("goan: %s", warning)
        return job, (saved.state.section, saved.state.step_in_section)

    def _run(self, job: Job, transformer: Transformer, encoders: Encoders, settings: RunSettings, unique_id,
             resumed_from):
        state = job.state
        prompt_id = HOST.current_prompt_id() or "local"
        node_id = None if unique_id is None else str(unique_id)
        entry = REGISTRY.start(prompt_id, node_id, state.job_id, section=state.section, step=state.step_in_section,
                               total_sections=state.plan.total_sections, steps=state.params.steps,
                               lineage=state.lineage)
        ids = {"prompt_id": prompt_id, "node_id": node_id, "job_id": state.job_id}  # node: a prompt may hold several
        if resumed_from is not None:
            branch = {"parent": entry.parent, "root": entry.root} if entry.parent else {}
            HOST.send("goan.resumed", {**ids, "section": resumed_from[0], "step": resumed_from[1], **branch})
        failsafe: list[Path] = []

        def on_saved(path: Path, kind: FileKind):
            if kind is FileKind.AUTOSAVE:
                file = output_relative(path)
                REGISTRY.set_file(entry, file)
                HOST.send("goan.autosaved", {**ids, **file})
            elif kind is FileKind.FAILSAFE:
                failsafe.append(path)

        try:
            with transformer.applied():  # LoRA tensors count in the memory claim and move with their blocks
                if not state.done:  # ComfyUI frees what this job's transformer will take, no more
                    settings, _ = claim_memory(transformer, state, settings)
                result = run_job(job, transformer, settings, control=entry.control, on_saved=on_saved,
                                 on_step=self._progress(entry, state, node_id))
            if result.status is Status.FINISHED:
                bar = HOST.progress_bar(max(state.plan.total_sections, 1), node_id)
                frames = render_frames(result.state, encoders.require("vae", "decoding the video"),
                                       lambda k, n: bar.update_absolute(k, n))
                images = uint8_to_image(frames)
            else:
                images = uint8_to_image(job.source_image)
        except BaseException as error:
            self._failed(entry, error, failsafe[-1] if failsafe else None, ids)
            raise
        finally:
            HOST.release_memory()
        return self._ended(entry, result, job, settings, ids, images)

    @staticmethod
    def _progress(entry: JobEntry, state, node_id):
        """The step callback: registry, progress bar with a latent preview, and ComfyUI's cancel."""
        bar = HOST.progress_bar(state.total_steps, node_id)
        bar.update_absolute(state.steps_done, state.total_steps)
        preview = HOST.previewer()

        def on_step(event):
            REGISTRY.progress(entry, event.section, event.step, event.total_sections, event.skipped)
            bar.update_absolute(event.steps_done, event.total_steps,
                                preview(event.denoised) if preview is not None else None)
            HOST.check_interrupt()

        return on_step

    @staticmethod
    def _failed(entry: JobEntry, error: BaseException, failsafe: Path | None, ids: dict):
        """Report a run that ended by an exception (cancel, out of memory, a bug), and its fail-safe file."""
        file = output_relative(failsafe) if failsafe is not None else None
        interrupted = HOST.is_interrupt(error)
        message = "cancelled" if interrupted else f"{type(error).__name__}: {error}"
        if HOST.is_oom(error):
            message = f"out of memory: {error}"
        REGISTRY.end(entry, Status.STOPPED if interrupted else Status.FAILED, file=file, error=message)
        if file is not None:
            HOST.send("goan.paused", {**ids, **file, "kind": FileKind.FAILSAFE.value})

    @staticmethod
    def _ended(entry: JobEntry, result: RunResult, job: Job, settings: RunSettings, ids: dict, images):
        """Report a run that ended normally (finished, paused or stopped) and make the GOAN_STATE output."""
        file = output_relative(result.resume_file) if result.resume_file is not None else None
        REGISTRY.end(entry, result.status, file=file)
        if result.status is not Status.FINISHED:
            kind = FileKind.PAUSE if result.status is Status.PAUSED else FileKind.STOP
            HOST.send("goan.paused", {**ids, **file, "kind": kind.value})
        state = GoanJob(state=result.state, source_image=job.source_image, status=result.status, file=file,
                        path=result.resume_file, workflow=job.workflow, keep_last=settings.keep_last)
        return (state, images, float(FPS))
