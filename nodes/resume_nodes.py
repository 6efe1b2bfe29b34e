"""GoanLoadResume, GoanSaveResume and GoanPauseGate."""

from __future__ import annotations

import json
import logging

from ..goan_core.errors import InputError
from ..goan_core.resumefile import RetentionFolder
from ..goan_core.vocabulary import FileKind, Status
from . import types as T
from .adapter import HOST, output_relative
from .files import VALIDATED, list_input_resume_files, resolve_input_name
from .types import CATEGORY, GoanJob, uint8_to_image

log = logging.getLogger("goan")


class GoanLoadResume:
    DESCRIPTION = ("Loads a .goan_resume file from the input folder (drop one on the canvas or upload it): the job "
                   "state, its source image and its settings. A damaged or foreign file fails with a clear message.")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = (T.STATE, "IMAGE", "STRING")
    RETURN_NAMES = ("state", "source_image", "params")
    OUTPUT_TOOLTIPS = ("the saved job, ready for the sampler's resume_state", "the job's (cropped) start image",
                       "the job's settings as JSON")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"resume_file": (list_input_resume_files(), {
            "goan_resume_upload": True,
            "tooltip": "a .goan_resume file in the input folder (uploads go to input/goan_resume/)"})}}

    @classmethod
    def VALIDATE_INPUTS(cls, resume_file):
        try:
            path = resolve_input_name(resume_file)
        except InputError as error:
            return str(error)
        if not path.is_file():
            return f"resume file not found in the input folder: {resume_file}"
        return True

    @classmethod
    def IS_CHANGED(cls, resume_file):
        try:
            stat = resolve_input_name(resume_file).stat()
        except (InputError, OSError):
            return float("nan")
        return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"  # any write changes ctime

    def execute(self, resume_file):
        path = resolve_input_name(resume_file)
        data = VALIDATED.read(path)  # an upload or resume_info of this very file has usually validated it already
        for note in data.notes:
            log.warning("goan: %s: %s", resume_file, note)
        subfolder, _, filename = resume_file.rpartition("/")
        job = GoanJob(state=data.state, source_image=data.source_image, status=Status.LOADED,
                      file={"filename": filename, "subfolder": subfolder, "type": "input"}, path=path,
                      workflow=data.workflow, needs_start_latent=data.needs_start_latent,
                      job_info=data.job_info, notes=list(data.notes))
        params = json.dumps(data.state.params.to_dict(), indent=2)
        return (job, uint8_to_image(data.source_image), params)


class GoanSaveResume:
    DESCRIPTION = ("Saves the job as a .goan_resume file in output/goan_resume/<job>/ (with this workflow inside) "
                   "and names it to the browser, which offers it for download.")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"state": (T.STATE,)},
                "hidden": {"unique_id": "UNIQUE_ID", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def execute(self, state, unique_id=None, extra_pnginfo=None):
        if not isinstance(state, GoanJob):
            raise InputError(f"state: expected a goan state, got {type(state).__name__}")
        output = HOST.directory("output")
        path = state.path
        in_output = path is not None and state.file is not None and state.file.get("type") == "output"
        if not (in_output and path.is_file()):
            workflow = extra_pnginfo.get("workflow") if isinstance(extra_pnginfo, dict) else None
            workflow = workflow if isinstance(workflow, dict) else state.workflow
            kind = {Status.FINISHED: FileKind.FINISHED, Status.STOPPED: FileKind.STOP}.get(state.status, FileKind.PAUSE)
            if state.state.done:
                kind = FileKind.FINISHED
            folder = RetentionFolder(output, state.state.job_id, state.keep_last)
            path = folder.save(state.state.snapshot(), source_image=state.source_image,
                               workflow=workflow, kind=kind)
        # the job id tells the job list which sampler's row the file belongs to (a prompt may hold several)
        file = {**output_relative(path), "job_id": state.state.job_id}
        return {"ui": {"goan_resume": [file]}, "result": ()}


class GoanPauseGate:
    DESCRIPTION = ("Routes a finished job's frames to the video branch and a paused job's state to the save branch; "
                   "the branch that does not apply is skipped.")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "FLOAT", T.STATE)
    RETURN_NAMES = ("images", "fps", "paused_state")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"state": (T.STATE,), "images": ("IMAGE",),
                             "fps": ("FLOAT", {"forceInput": True})}}

    def execute(self, state, images, fps):
        if not isinstance(state, GoanJob):
            raise InputError(f"state: expected a goan state, got {type(state).__name__}")
        if state.status is Status.FINISHED or state.state.done:
            return (images, fps, HOST.blocker())
        return (HOST.blocker(), HOST.blocker(), state)
