"""GoanLora: adds a HunyuanVideo/FramePack LoRA from ComfyUI's `loras` folder to a goan transformer.

Chainable: it takes a transformer and returns a NEW handle on the same model with one more LoRA
(`Transformer.with_lora`); the transformer ComfyUI cached upstream is never changed, and the LoRA
only acts while a sampler runs with that handle (goan_core.models.lora).
"""

from __future__ import annotations

from ..goan_core.errors import InputError
from ..goan_core.models import Transformer, read_lora
from ..goan_core.params import LORA_STRENGTH
from .loaders import _or_none, find_file, list_files
from .types import CATEGORY, TRANSFORMER

FOLDER = "loras"


def lora_choices() -> list[str]:
    """The .safetensors files below ComfyUI's loras folders, '/'-separated names relative to their folder."""
    return list_files(FOLDER)


class GoanLora:
    DESCRIPTION = ("Adds a HunyuanVideo/FramePack LoRA (diffusers/PEFT, musubi-tuner or kohya .safetensors from "
                   "models/loras) to a goan transformer. Chain several; strength 0 is no LoRA. Works with fp8 "
                   "weights and block swapping; resume files record each LoRA (name, sha256, strength).")
    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = (TRANSFORMER,)
    RETURN_NAMES = ("transformer",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "transformer": (TRANSFORMER,),
            "lora_name": (_or_none(lora_choices()), {"tooltip": "a .safetensors LoRA in models/loras"}),
            "strength": ("FLOAT", {"default": 1.0, "min": LORA_STRENGTH[0], "max": LORA_STRENGTH[1], "step": 0.01}),
        }}

    def execute(self, transformer, lora_name, strength=1.0):
        if not isinstance(transformer, Transformer):
            raise InputError("transformer: connect goan's Transformer Loader (or another goan LoRA node)")
        lora = read_lora(find_file(FOLDER, lora_name, "LoRA"), transformer.model, transformer.dtype,
                         pin=transformer.device.type == "cuda")
        return (transformer.with_lora(lora, float(strength)),)
