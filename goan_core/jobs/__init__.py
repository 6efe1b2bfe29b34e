"""A job's life: created or continued, run with pause/stop/autosave/fail-safe saves, rendered to frames.

`lifecycle` holds the stages every front end calls; `runner` the sampling loop with its saves,
`branch` continuing a job with other settings, `control` the pause and stop requests,
`conditioning` the encoders a front end provides.
"""

from .branch import BRANCHABLE, END_IMAGE, branch_changes, branch_encoders, branch_job
from .conditioning import Encoders, LatentCodec, build_conditioning, goan_encoders
from .control import JobControl, signal_pauses
from .lifecycle import (Job, RunSettings, continue_job, create_job, extend_job, new_job_id, render_frames,
                        run_attention, run_job)
from .runner import AutosavePolicy, JobSaver, RunResult, sample_job

__all__ = ["BRANCHABLE", "END_IMAGE", "AutosavePolicy", "Encoders", "Job", "JobControl", "JobSaver", "LatentCodec",
           "RunResult", "RunSettings", "branch_changes", "branch_encoders", "branch_job", "build_conditioning", "continue_job", "create_job", "extend_job",
           "goan_encoders", "new_job_id", "render_frames", "run_attention", "run_job", "sample_job", "signal_pauses"]
