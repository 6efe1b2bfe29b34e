"""Model identity: what a resume file records about the models that made it, and the warning when they change."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..params import canonical_loras


def public_config(model: Any) -> dict:
    """The model's diffusers/transformers config without private (`_`-prefixed) entries."""
    config = model.config if isinstance(model.config, dict) else model.config.to_dict()
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def canonical_json(data: dict) -> str:
    """Sorted-key, compact JSON: the same config always gives the same text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def model_identity(transformer: Any) -> dict:
    """{"transformer_class", "config_sha256"}: lets a resume file notice a different model."""
    digest = hashlib.sha256(canonical_json(public_config(transformer)).encode("utf-8")).hexdigest()
    return {"transformer_class": type(transformer).__name__, "config_sha256": digest}


def identity_mismatch(saved: dict, loaded: dict) -> str | None:
    """A warning when the models `loaded` now differ from the `saved` identity of a job, else None.

    Only names present on both sides are compared: an unknown identity is no evidence of a change.
    """
    changed = [f"{key}: file {saved[key]!r}, loaded {loaded[key]!r}"
               for key in sorted(saved) if key in loaded and loaded[key] != saved[key]]
    if not changed:
        return None
    return ("This resume file was made with other models than the ones loaded now (" + "; ".join(changed)
            + "). It can continue, but the result will not match an uninterrupted run with the original models.")


def lora_difference(saved, loaded) -> str | None:
    """How the LoRAs loaded now differ from those a job was made with (LoraUse tuples), or None when the same.

    Compared as sets of (sha256, strength), names aside (a renamed file is the same LoRA); each missing
    LoRA is named with the strength it needs, so the user knows which file to load.
    """
    saved, loaded = canonical_loras(saved), canonical_loras(loaded)
    remaining = [(u.sha256, u.strength) for u in loaded]
    missing = []
    for use in saved:
        if (use.sha256, use.strength) in remaining:
            remaining.remove((use.sha256, use.strength))
        else:
            missing.append(use)
    extra = []
    for use in loaded:  # the loaded ones no saved one matched
        if (use.sha256, use.strength) in remaining:
            remaining.remove((use.sha256, use.strength))
            extra.append(use)
    if not missing and not extra:
        return None
    parts = []
    for use in missing:
        now = [u for u in extra if u.sha256 == use.sha256]
        parts.append(f"it was made with LoRA {use.describe()}, loaded now at strength {now[0].strength:g}" if now
                     else f"it was made with LoRA {use.describe()}, which is not loaded now")
    changed = {u.sha256 for u in missing}
    parts += [f"LoRA {use.describe()} is loaded now but the job was made without it"
              for use in extra if use.sha256 not in changed]
    return "; ".join(parts)
