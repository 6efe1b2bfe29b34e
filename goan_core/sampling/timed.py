"""Timed prompts: `[0s] a cat sits [2.5s] the cat jumps` gives each section the prompt of its time.

Syntax: a timestamp `[<seconds>s]` starts a prompt that lasts until the next one. Text before the
first timestamp starts at 0 s; without it the first timestamp must be `[0s]`; timestamps must
increase. A prompt without timestamps is one prompt for the whole video, used exactly as written.

A section uses the prompt that covers the time its first frame has in the finished video
(`section_seconds`): in f1 mode section k starts at k windows, in backward mode (generated from the
end) section k of n, in generation order, starts at n - 1 - k windows; a window is lws * 4 frames at
30 fps. Prompt i of a job's Conditioning holds the embeddings of segment i.
"""

from __future__ import annotations

import re

from ..errors import InputError
from ..params import FPS
from .plan import TEMPORAL_SCALE, SectionPlan

TIMESTAMP = re.compile(r"\[\s*(\d+(?:\.\d+)?)\s*s\s*\]")
MAX_PROMPTS = 64
TOLERANCE = 1e-3  # seconds: written timestamps are rounded to 4 decimals

Segments = list[tuple[float, str]]


def parse_timed_prompt(text: str) -> Segments:
    """[(start seconds, prompt)] in time order; one segment (the text as it is) when it has no timestamp."""
    parts = TIMESTAMP.split(text)
    if len(parts) == 1:
        return [(0.0, text)]
    segments = [(0.0, parts[0].strip())] if parts[0].strip() else []
    segments += [(float(start), body.strip()) for start, body in zip(parts[1::2], parts[2::2])]
    if segments[0][0] > TOLERANCE:
        raise InputError(f"timed prompt: nothing covers 0s to {segments[0][0]:g}s; begin with [0s] (or with text "
                         "before the first timestamp)")
    for (before, _), (start, _) in zip(segments, segments[1:]):
        if start <= before + TOLERANCE:
            raise InputError(f"timed prompt: timestamps must increase, but [{start:g}s] follows [{before:g}s]")
    if len(segments) > MAX_PROMPTS:
        raise InputError(f"timed prompt: {len(segments)} prompts, more than the {MAX_PROMPTS} a job may have")
    return segments


def format_timed_prompt(segments: Segments) -> str:
    """The prompt text of `segments`: the plain text when there is one, else `[0s] ... [2.5s] ...`."""
    if len(segments) == 1:
        return segments[0][1]
    return " ".join(f"[{round(start, 4):g}s] {body}" for start, body in segments)


def section_seconds(plan: SectionPlan, section: int) -> float:
    """When `section` (generation order) begins in the finished video, in seconds."""
    window = plan.lws * TEMPORAL_SCALE / FPS
    in_video = section if plan.mode == "f1" else plan.total_sections - 1 - section
    return in_video * window


def prompt_index(segments: Segments, seconds: float) -> int:
    """The index of the segment that covers `seconds`."""
    return max(i for i, (start, _) in enumerate(segments) if start <= seconds + TOLERANCE)


def section_prompt(prompt: str, plan: SectionPlan, section: int) -> int:
    """Which of the job's prompts `section` uses."""
    return prompt_index(parse_timed_prompt(prompt), section_seconds(plan, section))


def _clipped(segments: Segments, low: float, high: float) -> Segments:
    """The segments covering [low, high), the first one moved to start at `low`."""
    if high <= low + TOLERANCE:
        return []
    inside = [(start, body) for start, body in segments if low + TOLERANCE < start < high - TOLERANCE]
    return [(low, segments[prompt_index(segments, low)][1])] + inside


def splice_prompt(old: str, new: str, plan: SectionPlan, section: int) -> str:
    """The prompt of a job that used `old` before `section` (generation order) and `new` from it on.

    In f1 mode the sections to come lie after the branch point in time, in backward mode before it
    (they are the video's beginning). Neighbouring equal prompts merge, so splicing in what the
    remaining sections use already gives back `old`.
    """
    before, after = parse_timed_prompt(old), parse_timed_prompt(new)
    forever = float("inf")
    if plan.mode == "f1":
        point = section_seconds(plan, section)
        merged = _clipped(before, 0.0, point) + _clipped(after, point, forever)
    elif section == 0:
        merged = after
    else:
        point = section_seconds(plan, section - 1)  # where the sections done begin
        merged = _clipped(after, 0.0, point) + _clipped(before, point, forever)
    joined = [merged[0]]
    for start, body in merged[1:]:
        if body.strip() != joined[-1][1].strip():
            joined.append((start, body))
    if len(joined) == 1 and len(before) == 1 and joined[0][1] == before[0][1]:
        return old
    return format_timed_prompt(joined)
