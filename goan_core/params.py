"""Creative settings of a job: one name per setting, shared by the CLI, the nodes and params.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .errors import InputError

MODES = ("backward", "f1")
# Where the prompt embeddings came from: "text", the prompt and negative prompt recorded here (goan's
# text encoders or ComfyUI's CLIP encoded them), or "native": ComfyUI CONDITIONING made elsewhere in
# the graph, whose text goan never sees (the texts are then recorded empty, and the embeddings in the
# resume file are the only record of what conditioned the video).
PROMPT_SOURCES = ("text", "native")
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
# The longest prompt or negative prompt a new job or a branch may have (a timed prompt's parts
# together), in characters: its resume files keep it in params.json, and a branch's lineage keeps the
# old and the new text (resumefile.check_prompts). Llama reads 256 tokens of each part.
MAX_PROMPT_CHARS = 64 * 1024


@dataclass
class JobParams:
    """Everything that decides the video, apart from the input image and the model weights.

    `seconds` is the requested length; `lws` (latent window size) is the number of latent frames
    each section samples. `cfg` is real classifier-free guidance (1 = off, negative pass skipped),
    `gs` the distilled guidance fed to the model, `rs` the guidance rescale. `teacache` skips the
    transformer blocks while their input barely changes (FramePack's TeaCache, on by default like
    there), up to an accumulated rescaled change of `teacache_threshold`. `prompt_source` says
    whether `prompt` and `negative_prompt` are the texts that were encoded (`PROMPT_SOURCES`). With
    an end image (backward mode), `end_strength` scales its latent in the first generated section's
    context and `end_embeds` blends its image embedding in, growing towards the video's end (see
    `sampling.endframe`).
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
    prompt_source: str = "text"
    end_strength: float = 1.0
    end_embeds: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError naming the first setting that is out of range or of the wrong type."""
        for name in ("prompt", "negative_prompt", "mode", "sampler", "prompt_source"):
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
        if self.prompt_source not in PROMPT_SOURCES:
            raise InputError(f"unknown prompt_source {self.prompt_source!r}: use one of {', '.join(PROMPT_SOURCES)}")
        if self.prompt_source == "native" and (self.prompt or self.negative_prompt):
            raise InputError("prompt_source 'native' records no prompt text: the texts must be empty")
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


# -- LoRAs a job was made with -----------------------------------------------------------------------

MAX_LORAS = 16  # per job: more is refused when chaining and when reading a resume file
MAX_LORA_NAME = 255  # characters of a LoRA's file name (a file name, not a path)
LORA_STRENGTH = (-100.0, 100.0)  # ComfyUI's LoraLoader range
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class LoraUse:
    """One LoRA as a job records it: its file name (no folders), the file's sha256 and the strength used.

    The sha256 identifies the weights; the name is what messages show a user who must find the file again.
    """

    name: str
    sha256: str
    strength: float

    def __post_init__(self) -> None:
        name, digest, strength = self.name, self.sha256, self.strength
        if not isinstance(name, str) or not 0 < len(name) <= MAX_LORA_NAME or any(
                c in "/\\\x00" or not c.isprintable() for c in name) or name in (".", ".."):
            raise InputError(f"a LoRA name must be a file name of 1 to {MAX_LORA_NAME} printable characters without "
                             f"folders, got {str(name)[:80]!r}")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise InputError(f"LoRA {name!r}: sha256 must be 64 lowercase hex digits, got {str(digest)[:80]!r}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
                or not LORA_STRENGTH[0] <= strength <= LORA_STRENGTH[1]:
            raise InputError(f"LoRA {name!r}: strength must be a finite number between {LORA_STRENGTH[0]:g} and "
                             f"{LORA_STRENGTH[1]:g}, got {str(strength)[:40]!r}")
        object.__setattr__(self, "strength", float(strength))

    def describe(self) -> str:
        """e.g. "'style.safetensors' (sha256 0123abcd..., strength 0.8)"."""
        return f"{self.name!r} (sha256 {self.sha256[:12]}..., strength {self.strength:g})"

    def to_dict(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "strength": self.strength}

    @classmethod
    def from_dict(cls, data) -> "LoraUse":
        """From a resume file's entry: exactly the fields name, sha256 and strength (InputError otherwise)."""
        if not isinstance(data, dict) or sorted(data) != ["name", "sha256", "strength"]:
            raise InputError("a LoRA entry must have exactly the fields name, sha256 and strength")
        return cls(data["name"], data["sha256"], data["strength"])


def canonical_loras(uses) -> tuple[LoraUse, ...]:
    """The LoRAs that change a job (strength 0 is the same as none) in the order goan applies them.

    The order is by sha256 then strength, whatever order they were chained in, so that the same set
    always sums its deltas in the same order (exact resume).
    """
    return tuple(sorted((use for use in uses if use.strength != 0), key=lambda u: (u.sha256, u.strength, u.name)))
