"""The `.goan_resume` file, format v1: writing it crash-safely, reading it defensively, keeping the newest K.

Layers, lowest first: `format` (names and limits), `atomic` (crash-safe writes), `checks` (what
writer and reader both verify), `archive` (a zip nobody vouches for), `writer`, `legacy` (files of
the original goan app), `reader`, `retention`.
"""

from .archive import json_too_deep
from .atomic import FREE_SPACE_MARGIN, atomic_write_bytes, format_size
from .checks import check_job, check_prompts
from .format import FORMAT_VERSION, MAX_JSON_DEPTH, MAX_TOTAL_BYTES, RESUME_SUFFIX, ResumeData, ResumeSummary
from .reader import inspect_resume_file, read_resume_file, read_resume_summary, summary_of
from .retention import RETENTION_DIR, RetentionFolder, newest_complete, retained_files
from .writer import write_resume_file

__all__ = ["FORMAT_VERSION", "FREE_SPACE_MARGIN", "MAX_JSON_DEPTH", "MAX_TOTAL_BYTES", "RESUME_SUFFIX", "RETENTION_DIR", "ResumeData", "ResumeSummary",
           "RetentionFolder", "atomic_write_bytes", "check_job", "check_prompts", "format_size", "inspect_resume_file", "json_too_deep", "newest_complete",
           "read_resume_file", "read_resume_summary", "retained_files", "summary_of", "write_resume_file"]
