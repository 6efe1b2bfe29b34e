"""Model identity: what a resume file records about the models that made it, and the warning when they change."""

from __future__ import annotations

import hashlib
import json
from typing import Any


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
