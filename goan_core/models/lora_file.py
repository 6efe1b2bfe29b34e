"""Reading a LoRA file for one transformer: its format, its keys mapped onto the model's layers, checked.

`read_lora(path, model, dtype)` returns a `lora.Lora` whose terms are keyed by the diffusers Linear
layer they change, or refuses the file with one ModelFolderError naming it and the first key at fault:
- a file that is not safetensors (no pickle is ever loaded);
- keys of no format goan reads (LyCORIS, DoRA, text-encoder LoRAs, full checkpoints...: the message
  says what was found and shows the first keys);
- a module the FramePack transformer does not have (a LoRA for another model), or one that is not a
  Linear layer;
- a `down` without its `up` (or the other way), a rank or shape that does not fit the layer, NaN/Inf.

The scale of each term is `alpha / rank` from the file's `<module>.alpha` (musubi/kohya: alpha 0
means rank, i.e. scale 1), else from diffusers' `lora_adapter_metadata` (`lora_alpha`,
`alpha_pattern`, `use_rslora`: alpha / sqrt(rank)), else 1. musubi's `use_rslora_flag` is honoured,
a `use_dora_flag` that is set is refused. Tensors are stored in the compute `dtype`, each layer's own
(a fused module's `down` is copied for each of its layers, so block swapping counts exactly what it moves).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import ModelFolderError
from .identity import model_identity
from .lora import Lora, LoraTerm
from .lora_names import LoraKey, ModuleIndex, Piece, Source, guess_kind, other_kind, parse_key

FLAG_KEYS = ("use_rslora_flag", "use_dora_flag")
METADATA_KEY = "lora_adapter_metadata"
MAX_METADATA = 1 << 20
SHOWN_KEYS = 3


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Refusal:
    """Builds the one error a file gets: it names the file and says what goan reads."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, problem: str) -> ModelFolderError:
        return ModelFolderError(f"LoRA {self.path}: {problem}")


def _shown(keys) -> str:
    keys = sorted(keys)
    more = f" (and {len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(repr(k[:120]) for k in keys[:SHOWN_KEYS]) + more


def _format_name(parsed: list[LoraKey], index: ModuleIndex) -> str:
    """e.g. "musubi-tuner/kohya (lora_unet_), HunyuanVideo module names", for logs and messages."""
    spellings = sorted({"musubi-tuner/kohya (lora_unet_)" if p.flat else
                        "dotted lora_down/lora_up" if p.spelling == "lora_down" else "diffusers/PEFT"
                        for p in parsed if p.role != "alpha"})
    original = any(index.dotted(p) not in index.linears for p in parsed)
    return " + ".join(spellings) + (", HunyuanVideo module names" if original else ", diffusers module names")


def _metadata_alpha(metadata: dict | None, refuse) -> dict:
    """diffusers' adapter metadata (lora_alpha, alpha_pattern, use_rslora, use_dora), "transformer." prefix or not."""
    raw = (metadata or {}).get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        data = json.loads(raw) if len(raw) <= MAX_METADATA else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise refuse(f"its {METADATA_KEY} is not a JSON object")
    found = {}
    for name in ("lora_alpha", "alpha_pattern", "use_rslora", "use_dora"):
        value = data.get(f"transformer.{name}", data.get(name))
        if value is not None:
            found[name] = value
    number = (int, float)
    if not (isinstance(found.get("lora_alpha", 0), number)
            and isinstance(found.get("alpha_pattern", {}), dict)
            and all(isinstance(v, number) for v in found.get("alpha_pattern", {}).values())):
        raise refuse(f"its {METADATA_KEY} has a lora_alpha or alpha_pattern that is not numbers")
    if found.get("use_dora"):
        raise refuse("it is a DoRA (use_dora in its adapter metadata); goan applies plain LoRAs only")
    return found


def _alpha_for(module: str, alphas: dict[str, float], metadata: dict, refuse) -> float | None:
    """The alpha of a module: its `.alpha` key, else the metadata's pattern or lora_alpha, else None (scale 1)."""
    if module in alphas:
        return alphas[module]
    for pattern, value in sorted((metadata.get("alpha_pattern") or {}).items()):
        try:
            if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
                return float(value)
        except re.error:
            raise refuse(f"its adapter metadata has an unusable alpha_pattern entry {str(pattern)[:80]!r}") from None
    value = metadata.get("lora_alpha")
    return None if value is None else float(value)


def _scale(alpha: float | None, rank: int, rslora: bool, key: str, refuse) -> float:
    if alpha is None or alpha == 0:  # musubi/kohya: alpha 0 (or none) means alpha = rank
        return 1.0
    if not math.isfinite(alpha) or alpha < 0:
        raise refuse(f"{key}: alpha {alpha} must be a finite positive number")
    return alpha / (math.sqrt(rank) if rslora else rank)


def _read_checked(handle, key: str, refuse) -> torch.Tensor:
    """A LoRA matrix: floating point, 2-D, finite."""
    tensor = handle.get_tensor(key)
    if not tensor.is_floating_point() or tensor.dim() != 2:
        conv = " (convolution LoRAs are not supported)" if tensor.dim() > 2 else ""
        raise refuse(f"{key} has dtype {str(tensor.dtype).removeprefix('torch.')} and shape {list(tensor.shape)}; "
                     f"expected a matrix of floats{conv}")
    if not bool(torch.isfinite(tensor).all()):
        raise refuse(f"{key} holds NaN or Inf values")
    return tensor


def _pairs(name: str, group: dict, refuse) -> list[tuple[str, str]]:
    """[(down key, up key)] of one module: one pair, or musubi's split pairs 0..n-1; every down has its up."""
    downs, ups = group["down"], group["up"]
    for mine, other, missing in ((downs, ups, "up"), (ups, downs, "down")):
        for part in mine:
            if part not in other:
                raise refuse(f"{mine[part]} has no matching {missing} weight")
    parts = list(downs)
    if len(parts) > 1 and sorted(parts, key=lambda p: -1 if p is None else p) != list(range(len(parts))):
        raise refuse(f"{downs[parts[0]]}: the split parts of {name} must be numbered 0, 1, 2... and stand alone")
    return [(downs[part], ups[part]) for part in sorted(parts, key=lambda p: -1 if p is None else p)]


def _read_alpha(handle, key: str, refuse) -> float:
    tensor = handle.get_tensor(key)
    if not tensor.is_floating_point() or tensor.numel() != 1:
        raise refuse(f"{key} must hold one number, got dtype {str(tensor.dtype).removeprefix('torch.')} and shape "
                     f"{list(tensor.shape)}")
    return float(tensor.float().reshape(()))


def _terms(source: Source, pairs: list[tuple[str, torch.Tensor, torch.Tensor]], scale: float, dtype, refuse
           ) -> dict[str, LoraTerm]:
    """Each diffusers layer's term from a module's (down key, down, up) pairs, which cover its output rows in order."""
    spans, start, rank = [], 0, pairs[0][1].shape[0]
    for key, down, up in pairs:
        if down.shape[0] != rank:
            raise refuse(f"{key} has rank {down.shape[0]}, but the first part of the same layer has rank {rank}")
        if down.shape[1] != source.in_features:
            raise refuse(f"{key} has shape {list(down.shape)}, but the layer takes {source.in_features} inputs")
        if up.shape[1] != down.shape[0]:
            raise refuse(f"{key}: its up weight has shape {list(up.shape)}, which does not fit rank {down.shape[0]}")
        spans.append((start, start + up.shape[0], down, up))
        start += up.shape[0]
    if start != source.out_features:
        raise refuse(f"{pairs[0][0]}: its up weight(s) give {start} outputs, but the layer has {source.out_features}")
    terms = {}
    for piece in source.pieces:
        terms[piece.target] = _piece_term(piece, spans, scale, dtype, pairs[0][0], refuse)
    return terms


def _piece_term(piece: Piece, spans, scale: float, dtype, key: str, refuse) -> LoraTerm:
    chosen, rows = None, []
    for start, stop in piece.rows:
        span = next((s for s in spans if s[0] <= start and stop <= s[1]), None)
        if span is None or (chosen is not None and span is not chosen):
            raise refuse(f"{key}: its split parts do not line up with the layers {piece.target} is made of")
        chosen = span
        rows.append(span[3][start - span[0]:stop - span[0]])
    up = torch.cat(rows) if len(rows) > 1 else rows[0]
    return LoraTerm(chosen[2].to(dtype=dtype, copy=True), up.to(dtype=dtype, copy=True).contiguous(), scale)


def read_lora(path: str | Path, model: nn.Module, dtype: torch.dtype, *, pin: bool = False) -> Lora:
    """The LoRA in `path` mapped onto `model`'s Linear layers, its tensors in `dtype` (pinned when `pin`)."""
    path = Path(path)
    refuse = _Refusal(path)
    if not path.is_file():
        raise ModelFolderError(f"LoRA {path}: no such file")
    try:
        opened = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as error:
        raise refuse(f"not a readable .safetensors file ({error}); goan reads LoRAs in safetensors only") from error
    with opened as handle:
        return _read(handle, path, model, dtype, pin, refuse)


def _read(handle, path: Path, model: nn.Module, dtype, pin: bool, refuse) -> Lora:
    keys = list(handle.keys())
    flags = {k: bool(handle.get_tensor(k).any()) for k in FLAG_KEYS if k in keys}
    if flags.get("use_dora_flag"):
        raise refuse("it is a DoRA (use_dora_flag); goan applies plain LoRAs only")
    parsed = {key: parse_key(key) for key in keys if key not in FLAG_KEYS}
    unknown = [key for key, p in parsed.items() if p is None]
    other = other_kind(parsed)
    if other or unknown or not parsed:
        found = other or (guess_kind(unknown) if unknown else "no tensors")
        raise refuse(f"not a HunyuanVideo/FramePack LoRA goan can read: found {found} (first keys: "
                     f"{_shown(unknown or list(parsed)) or 'none'}). goan reads diffusers/PEFT "
                     "(...lora_A.weight/lora_B.weight) and musubi-tuner/kohya (lora_unet_...lora_down.weight/"
                     "lora_up.weight) LoRAs")
    index = ModuleIndex(model)
    groups: dict[str, dict] = {}
    for key, p in sorted(parsed.items()):
        name = index.dotted(p)
        if index.source(name) is None:
            if name in index.not_linear:
                raise refuse(f"{key} targets {name}, which is not a Linear layer (goan applies LoRAs to Linear "
                             "layers only)")
            raise refuse(f"{key} names a module the FramePack transformer does not have ({p.module[:120]!r}): "
                         "is it a LoRA for another model?")
        group = groups.setdefault(name, {"down": {}, "up": {}, "alpha": None})
        slot = group["alpha"] if p.role == "alpha" else group[p.role].get(p.part)
        if slot is not None:
            raise refuse(f"{key} and {slot} are the same weight of {name}")
        if p.role == "alpha":
            group["alpha"] = key
        else:
            group[p.role][p.part] = key
    metadata = _metadata_alpha(handle.metadata(), refuse)
    rslora = flags.get("use_rslora_flag", False) or bool(metadata.get("use_rslora"))
    terms: dict[str, list[LoraTerm]] = {}
    for name, group in groups.items():
        if not group["down"] and not group["up"]:
            raise refuse(f"{group['alpha']} has no LoRA weights beside it")
        pairs = [(down_key, _read_checked(handle, down_key, refuse), _read_checked(handle, up_key, refuse))
                 for down_key, up_key in _pairs(name, group, refuse)]
        alphas = {} if group["alpha"] is None else {name: _read_alpha(handle, group["alpha"], refuse)}
        scale = _scale(_alpha_for(name, alphas, metadata, refuse), pairs[0][1].shape[0], rslora, pairs[0][0], refuse)
        for target, term in _terms(index.sources[name], pairs, scale, dtype, refuse).items():
            if pin:
                term = LoraTerm(term.down.pin_memory(), term.up.pin_memory(), term.scale)
            terms.setdefault(target, []).append(term)
    return Lora(path.name, file_sha256(path), _format_name(list(parsed.values()), index),
                {name: tuple(t) for name, t in terms.items()}, model_identity(model)["config_sha256"])
