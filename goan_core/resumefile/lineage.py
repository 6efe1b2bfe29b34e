"""job_info's optional "lineage": where a branched job came from (`jobs.branch`), checked on write and read."""

from __future__ import annotations

import math
from dataclasses import fields

from ..params import MAX_SECTIONS, JobParams
from .checks import Where
from .format import MAX_LINEAGE_TEXT, SAFE_NAME

LINEAGE_KEYS = ("changes", "parent", "root", "section", "step")
# What a branch may change besides the settings: the end image, recorded as [old, new] sha256 hex digests
# of its cropped pixels ("" for none; see jobs.branch).
OTHER_CHANGES = ("end_image",)


def check_lineage(lineage, where: Where) -> None:
    """job_info's optional "lineage" of a branched job: parent and root job ids (safe names), the section
    and step it branched at, and `changes` mapping setting names (or `OTHER_CHANGES`) to [old, new] JSON
    scalars (text bounded).
    """
    fail = where.fail
    if not isinstance(lineage, dict) or sorted(lineage) != sorted(LINEAGE_KEYS):
        fail(f"lineage must be an object with exactly the fields {', '.join(LINEAGE_KEYS)}")
    for key in ("parent", "root"):
        if not isinstance(lineage[key], str) or not SAFE_NAME.fullmatch(lineage[key]):
            fail(f"lineage.{key} {str(lineage[key])[:80]!r} is not a job id")
    for key, high in (("section", MAX_SECTIONS), ("step", 10_000)):
        value = lineage[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
            fail(f"lineage.{key} must be a whole number between 0 and {high}, got {str(value)[:40]!r}")
    changes, settings = lineage["changes"], {f.name for f in fields(JobParams)} | set(OTHER_CHANGES)
    if not isinstance(changes, dict) or not 1 <= len(changes) <= len(settings):
        fail("lineage.changes must map at least one setting to its [old, new] values")
    for name, pair in changes.items():
        if name not in settings:
            fail(f"lineage.changes names {str(name)[:40]!r}, which is no setting")
        if not isinstance(pair, list) or len(pair) != 2 or not all(_lineage_value(v) for v in pair):
            fail(f"lineage.changes.{name} must be [old, new], each text of at most {MAX_LINEAGE_TEXT} characters, "
                 "a finite number or true/false")


def _lineage_value(value) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_LINEAGE_TEXT
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (bool, int)) and abs(value) < 2**63
