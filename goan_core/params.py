"""Creative settings of a job: one name per setting, shared by the CLI, the nodes and params.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .errors import InputError

MODES = ("backward", "f1")
SAMPLERS = ("unipc", "euler")
FPS = 30

# (lowest, highest) accepted values; a resume file outside these is refused as hostile or broken.
LIMITS = {
    "seed": (0, 2**63 - 1),
    "seconds": (1e-3, 3600.0),
    "lws": (1, 33),
    "steps": (1, 200),
    "cfg": (1.0, 32.0),
    "gs": (0.0, 32.0),
    "rs": (0.0, 1.0),
    "resolution": (64, 2048),
    "crf": (0, 51),
    "max_sections": (1, 10_000),
    "teacache_threshold": (0.0, 10.0),
    "end_strength": (0.0, 1.0),
    "end_embeds": (0.0, 1.0),
}
# The most sections one job may plan: checked when a job is created or extended and when a resume
# file is read (resumefile.check_job), with the same message, so goan never runs a job it cannot resume.
MAX_SECTIONS = LIMITS["max_sections"][1]


@dataclass
class JobParams:
    """Everything that decides the video, apart from the input image and the model weights.

    `seconds` is the requested length; `lws` (latent window size) is the number of latent frames
    each section samples. `cfg` is real classifier-free guidance (1 = off, negative pass skipped),
    `gs` the distilled guidance fed to the model, `rs` the guidance rescale. `teacache` skips the
    transformer blocks while their input barely changes (FramePack's TeaCache, on by default like
    there), up to an accumulated rescaled change of `teacache_threshold`. With an end image (backward
    mode), `end_strength` scales its latent in the first generated section's context and `end_embeds`
    blends its image embedding in, growing towards the video's end (see `sampling.endframe`).
    """

    prompt: str
    negative_prompt: str = ""
    seed: int = 31337
    seconds: float = 5.0
    lws: int = 9
    steps: int = 25
    cfg: float = 1.0
    gs: float = 10.0
    rs: float = 0.0
    mode: str = "backward"
    resolution: int = 640
    sampler: str = "unipc"
    crf: int = 16
    teacache: bool = True
    teacache_threshold: float = 0.15
    end_strength: float = 1.0
    end_embeds: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError naming the first setting that is out of range or of the wrong type."""
        for name in ("prompt", "negative_prompt", "mode", "sampler"):
            if not isinstance(getattr(self, name), str):
                raise InputError(f"{name} must be text, got {type(getattr(self, name)).__name__}")
        for name in ("seed", "lws", "steps", "resolution", "crf"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be a whole number, got {value!r}")
        if not isinstance(self.teacache, bool):
            raise InputError(f"teacache must be true or false, got {self.teacache!r}")
        for name in ("seconds", "cfg", "gs", "rs", "teacache_threshold", "end_strength", "end_embeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}")
        if self.seconds <= 0:
            raise InputError(f"seconds must be greater than 0, got {self.seconds}")
        if self.resolution % 16:
            raise InputError(f"resolution must be a multiple of 16, got {self.resolution}")
        for name, (low, high) in LIMITS.items():
            if hasattr(self, name) and not low <= getattr(self, name) <= high:
                raise InputError(f"{name} must be between {low} and {high}, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JobParams":
        """Build from params.json content; unknown keys are an error, missing ones take defaults."""
        if not isinstance(data, dict):
            raise InputError("params must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown settings: {', '.join(unknown)}")
        if "prompt" not in data:
            raise InputError("the setting 'prompt' is missing")
        return cls(**data)
