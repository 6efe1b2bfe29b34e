"""The models a job uses: loading them from folders and files, devices and precision, identity, the tiny set.

`Transformer`, `VAE`, `TextEncoders` and `ImageEncoder` are loaded models bound to the device and
dtype they compute in; the job lifecycle works with those. `attention` and `compilation` decide how
the transformer's blocks compute during a run (the attention kernel, optional torch.compile).
"""

from .attention import (ATTENTION_CHOICES, SDPA, AttentionChoice, AttentionTarget, attention_applied, attention_for,
                        choose_attention, usable_backends)
from .compilation import COMPILE_BACKEND, check_compiler, compiled_blocks
from .devices import (ModelDtypes, dtype_name, is_on, is_out_of_memory, model_dtypes, resolve_device, resolve_dtype,
                      role_dtype)
from .encoders import PROMPT_EMBED_LENGTH, PROMPT_TOKENS, crop_or_pad
from .handles import VAE, ImageEncoder, TextEncoders, Transformer
from .identity import identity_mismatch, lora_difference, model_identity
from .lora import Lora, loras_applied
from .lora_file import read_lora
from .loading import IMAGE_PARTS, PARTS, TEXT_PARTS, ModelFiles, ModelSet, load_model_set, load_part, load_parts
from .offload import (DEFAULT_GPU_MEMORY_PRESERVATION, GIB, Accelerator, CountingAccelerator, SwapPlan, placed,
                      plan_swap, section_tokens)
from .precision import CONV_FP32_POLICIES, apply_fp32_output, configure_precision, fp32_output_applied
from .single_file import TRANSFORMER_CLASS_NAMES, load_transformer_file
from .storage import WEIGHT_DTYPE_CHOICES, apply_weight_dtype, resolve_weight_dtype, storage_bytes, weight_storage_name
from .usual_files import ALTERNATIVE_FILES, USUAL_FILES, UsualFile, usual_file
from .vae_file import load_vae_file
from .tiny import (FRAMEPACK_I2V_HY_CONFIG, TINY_TRANSFORMER_FILE, default_tiny_root, write_tiny_models,
                   write_transformer_file)

__all__ = ["ATTENTION_CHOICES", "SDPA", "AttentionChoice", "AttentionTarget", "attention_applied", "attention_for",
           "choose_attention", "usable_backends", "COMPILE_BACKEND", "check_compiler", "compiled_blocks",
           "DEFAULT_GPU_MEMORY_PRESERVATION", "GIB", "Accelerator", "CountingAccelerator", "SwapPlan", "placed", "plan_swap",
           "section_tokens", "CONV_FP32_POLICIES", "FRAMEPACK_I2V_HY_CONFIG", "IMAGE_PARTS", "PARTS", "PROMPT_EMBED_LENGTH", "PROMPT_TOKENS", "TEXT_PARTS", "TINY_TRANSFORMER_FILE",
           "TRANSFORMER_CLASS_NAMES", "USUAL_FILES", "ALTERNATIVE_FILES", "UsualFile", "usual_file", "ModelFiles",
           "load_vae_file", "VAE", "WEIGHT_DTYPE_CHOICES", "ImageEncoder", "ModelSet", "TextEncoders",
           "Transformer", "ModelDtypes", "model_dtypes", "role_dtype", "dtype_name", "apply_fp32_output",
           "fp32_output_applied", "apply_weight_dtype", "configure_precision", "crop_or_pad", "default_tiny_root", "identity_mismatch", "is_on", "is_out_of_memory",
           "Lora", "lora_difference", "loras_applied", "read_lora",
           "load_model_set", "load_part",
           "load_parts", "load_transformer_file", "model_identity", "resolve_device", "resolve_dtype",
           "resolve_weight_dtype", "storage_bytes", "weight_storage_name", "write_tiny_models", "write_transformer_file"]
