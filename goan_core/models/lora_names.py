"""Where each key of a LoRA file points in diffusers' FramePack transformer: key syntax and module names.

A LoRA key is `<prefix><module><suffix>`. goan reads these spellings (all seen in shared HunyuanVideo
and FramePack LoRAs):

- diffusers / PEFT: `transformer.<module>.lora_A.weight`, `.lora_B.weight` (prefix `transformer.`,
  `diffusion_model.`, `base_model.model.` or none; `lora_down`/`lora_up` also accepted with dotted
  names), optional `<module>.alpha`;
- musubi-tuner and kohya: `lora_unet_<module with "." replaced by "_">.lora_down.weight`,
  `.lora_up.weight`, `.alpha`; musubi's split form `lora_down.<i>.weight` / `lora_up.<i>.weight`
  (one pair per slice of the output, `split_qkv`) too.

`<module>` is either a module of diffusers' `HunyuanVideoFramepackTransformer3DModel` (what FramePack
itself and musubi-tuner's FramePack training use: `transformer_blocks.0.attn.to_q`), or a module of
the ORIGINAL HunyuanVideo model (what musubi-tuner's HunyuanVideo training and ComfyUI files use:
`double_blocks.0.img_attn_qkv`). The original model fuses some layers that diffusers keeps apart;
a LoRA on a fused layer is one `down` [rank, in] and one `up` [out, rank], and its output rows are
split among the diffusers layers (the `down` is shared). The mapping (facts from diffusers'
`_convert_hunyuan_video_lora_to_diffusers` and the two models' definitions):

    double_blocks.N.img_attn_qkv        transformer_blocks.N.attn.to_q | to_k | to_v       (rows split in 3)
    double_blocks.N.txt_attn_qkv        transformer_blocks.N.attn.add_q_proj | add_k_proj | add_v_proj
    double_blocks.N.img_attn_proj       transformer_blocks.N.attn.to_out.0
    double_blocks.N.txt_attn_proj       transformer_blocks.N.attn.to_add_out
    double_blocks.N.img_mlp.fc1 / fc2   transformer_blocks.N.ff.net.0.proj / ff.net.2   (txt_: ff_context)
    double_blocks.N.img_mod.linear      transformer_blocks.N.norm1.linear                (txt_: norm1_context)
    single_blocks.N.linear1             single_transformer_blocks.N.attn.to_q | to_k | to_v | proj_mlp
    single_blocks.N.linear2             single_transformer_blocks.N.proj_out
    single_blocks.N.modulation.linear   single_transformer_blocks.N.norm.linear
    txt_in.individual_token_refiner.blocks.N.{self_attn_qkv, self_attn_proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}
                                        context_embedder.token_refiner.refiner_blocks.N.{attn.to_q|to_k|to_v,
                                        attn.to_out.0, ff.net.0.proj, ff.net.2, norm_out.linear}
    txt_in.input_embedder, txt_in.t_embedder.mlp.0/2, txt_in.c_embedder.linear_1/2
                                        context_embedder.proj_in, .time_text_embed.timestep_embedder.linear_1/2,
                                        .time_text_embed.text_embedder.linear_1/2
    time_in.mlp.0/2, guidance_in.mlp.0/2, vector_in.in_layer/out_layer
                                        time_text_embed.{timestep,guidance,text}_embedder.linear_1/2
    final_layer.linear                  proj_out
    final_layer.adaLN_modulation.1      norm_out.linear, its two halves swapped (shift, scale -> scale, shift)

Only Linear layers take a LoRA; the Conv3d patch embeds (`img_in`, `x_embedder`) are refused by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

DOTTED_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.")
FLAT_PREFIXES = ("lora_unet_", "lora_transformer_")
_WEIGHT = re.compile(r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<part>\d{1,3}))?\.weight$")
_ROLE = {"lora_A": "down", "lora_down": "down", "lora_B": "up", "lora_up": "up"}


@dataclass(frozen=True)
class Piece:
    """One diffusers Linear layer fed by a LoRA'd module: its name and the module's output rows it takes.

    `rows` are (start, stop) ranges of the module's output, concatenated in order to make the layer's.
    """

    target: str
    rows: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Source:
    """A module a LoRA may name: the diffusers layers its output rows go to, and how many rows it has."""

    pieces: tuple[Piece, ...]
    out_features: int
    in_features: int


@dataclass(frozen=True)
class LoraKey:
    """One parsed key: the module it names (as written, prefix removed), its role, and its slice index."""

    key: str
    module: str
    flat: bool  # musubi/kohya spelling: "." replaced by "_"
    role: str  # "down", "up" or "alpha"
    part: int | None = None  # musubi's split form: lora_down.<part>.weight
    spelling: str = ""  # lora_A/lora_B or lora_down/lora_up


def parse_key(key: str) -> LoraKey | None:
    """The parsed key, or None when it is not a LoRA weight or alpha goan reads."""
    for prefix in FLAT_PREFIXES:
        if key.startswith(prefix):
            rest, flat = key[len(prefix):], True
            break
    else:
        rest, flat = key, False
        for prefix in DOTTED_PREFIXES:
            if rest.startswith(prefix):
                rest = rest[len(prefix):]
                break
    if rest.endswith(".alpha"):
        return LoraKey(key, rest[:-len(".alpha")], flat, "alpha")
    match = _WEIGHT.match(rest)
    if match is None or (flat and match["kind"] in ("lora_A", "lora_B")):
        return None
    part = None if match["part"] is None else int(match["part"])
    return LoraKey(key, match["module"], flat, _ROLE[match["kind"]], part, match["kind"])


# -- the original HunyuanVideo names -------------------------------------------------------------------

# (original name under a scope, diffusers names under the mapped scope, in the order of the output rows)
_DOUBLE = (
    ("img_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn_qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("img_attn_proj", ("attn.to_out.0",)),
    ("txt_attn_proj", ("attn.to_add_out",)),
    ("img_mlp.fc1", ("ff.net.0.proj",)),
    ("img_mlp.fc2", ("ff.net.2",)),
    ("txt_mlp.fc1", ("ff_context.net.0.proj",)),
    ("txt_mlp.fc2", ("ff_context.net.2",)),
    ("img_mod.linear", ("norm1.linear",)),
    ("txt_mod.linear", ("norm1_context.linear",)),
)
_SINGLE = (
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ("linear2", ("proj_out",)),
    ("modulation.linear", ("norm.linear",)),
)
_REFINER = (
    ("self_attn_qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("self_attn_proj", ("attn.to_out.0",)),
    ("mlp.fc1", ("ff.net.0.proj",)),
    ("mlp.fc2", ("ff.net.2",)),
    ("adaLN_modulation.1", ("norm_out.linear",)),
)
_TOP = (
    ("txt_in.input_embedder", ("context_embedder.proj_in",)),
    ("txt_in.t_embedder.mlp.0", ("context_embedder.time_text_embed.timestep_embedder.linear_1",)),
    ("txt_in.t_embedder.mlp.2", ("context_embedder.time_text_embed.timestep_embedder.linear_2",)),
    ("txt_in.c_embedder.linear_1", ("context_embedder.time_text_embed.text_embedder.linear_1",)),
    ("txt_in.c_embedder.linear_2", ("context_embedder.time_text_embed.text_embedder.linear_2",)),
    ("time_in.mlp.0", ("time_text_embed.timestep_embedder.linear_1",)),
    ("time_in.mlp.2", ("time_text_embed.timestep_embedder.linear_2",)),
    ("guidance_in.mlp.0", ("time_text_embed.guidance_embedder.linear_1",)),
    ("guidance_in.mlp.2", ("time_text_embed.guidance_embedder.linear_2",)),
    ("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",)),
    ("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",)),
    ("final_layer.linear", ("proj_out",)),
)
_SWAPPED_HALVES = ("final_layer.adaLN_modulation.1", "norm_out.linear")
_CONVS = {"img_in.proj": "x_embedder.proj"}


def _concatenated(original: str, targets: tuple[str, ...], linears: dict[str, nn.Linear]) -> Source | None:
    """The Source of an original module whose output is `targets`' outputs one after the other."""
    if not all(t in linears for t in targets):
        return None
    pieces, start = [], 0
    for target in targets:
        rows = linears[target].out_features
        pieces.append(Piece(target, ((start, start + rows),)))
        start += rows
    inputs = {linears[t].in_features for t in targets}
    return Source(tuple(pieces), start, inputs.pop()) if len(inputs) == 1 else None


def _original_sources(model: nn.Module, linears: dict[str, nn.Linear]) -> dict[str, Source]:
    scopes = [(f"double_blocks.{i}.", f"transformer_blocks.{i}.", _DOUBLE)
              for i in range(len(getattr(model, "transformer_blocks", ())))]
    scopes += [(f"single_blocks.{i}.", f"single_transformer_blocks.{i}.", _SINGLE)
               for i in range(len(getattr(model, "single_transformer_blocks", ())))]
    refiner = getattr(getattr(getattr(model, "context_embedder", None), "token_refiner", None), "refiner_blocks", ())
    scopes += [(f"txt_in.individual_token_refiner.blocks.{i}.", f"context_embedder.token_refiner.refiner_blocks.{i}.",
                _REFINER) for i in range(len(refiner))]
    scopes.append(("", "", _TOP))
    sources = {}
    for original_scope, scope, table in scopes:
        for original, targets in table:
            source = _concatenated(original, tuple(scope + t for t in targets), linears)
            if source is not None:
                sources[original_scope + original] = source
    original, target = _SWAPPED_HALVES
    if target in linears and linears[target].out_features % 2 == 0:
        rows, half = linears[target].out_features, linears[target].out_features // 2
        sources[original] = Source((Piece(target, ((half, rows), (0, half))),), rows, linears[target].in_features)
    return sources


class ModuleIndex:
    """Every module name a LoRA may use for `model`, dotted and flattened ("." -> "_"), to its Source.

    Diffusers names map to their own Linear layer; original HunyuanVideo names map as the module
    docstring's table says. A flattened name that two modules share is ambiguous and resolves to nothing.
    """

    def __init__(self, model: nn.Module):
        linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        self.linears = set(linears)
        self.sources = {name: Source((Piece(name, ((0, m.out_features),)),), m.out_features, m.in_features)
                        for name, m in linears.items()}
        for name, source in _original_sources(model, linears).items():
            self.sources.setdefault(name, source)
        others = {name for name, m in model.named_modules() if name and name not in linears}
        self.not_linear = others | {name for name, target in _CONVS.items() if target in others}
        self.flat: dict[str, str | None] = {}
        for name in list(self.sources) + sorted(self.not_linear):
            flat = name.replace(".", "_")
            self.flat[flat] = name if self.flat.get(flat, name) == name else None

    def dotted(self, parsed: LoraKey) -> str | None:
        """The dotted module name a parsed key means (None when the flattened name is unknown or ambiguous)."""
        return self.flat.get(parsed.module) if parsed.flat else parsed.module

    def source(self, name: str | None) -> Source | None:
        return self.sources.get(name) if name is not None else None


# -- naming what a file is when it is not one goan reads -------------------------------------------------

_OTHER_KINDS = (  # (pattern searched in each key, what a file with such keys is)
    (r"hada_w", "a LyCORIS LoHa"),
    (r"lokr_w", "a LyCORIS LoKr"),
    (r"dora_scale|lora_magnitude_vector", "a DoRA (its magnitude vectors)"),
    (r"\.diff(_b)?$", "a full weight difference (.diff), not a LoRA"),
    (r"^lora_te|^text_encoder", "a text-encoder LoRA"),
    (r"\.lora_(B|up)\.bias$", "a LoRA with biases"),
)


def other_kind(keys) -> str | None:
    """What a file is when some key shows a kind goan does not apply (LyCORIS, DoRA, text encoder...), else None."""
    for pattern, kind in _OTHER_KINDS:
        if any(re.search(pattern, key) for key in keys):
            return kind
    return None


def guess_kind(keys: list[str]) -> str:
    """A short guess of what a file with these (unreadable) keys is, for the refusal message."""
    if other_kind(keys):
        return other_kind(keys)
    if any(key.endswith((".weight", ".bias")) and "lora" not in key for key in keys):
        return "a full model or checkpoint, not a LoRA"
    return "keys of no LoRA format goan knows"
