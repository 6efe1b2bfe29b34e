"""Synthetic job states, and the corpus of hostile or broken resume files built from them.

Nothing binary is committed: every file is made here from a valid one written by goan, then
damaged in one precise way. Each case names the error it must give and a phrase of its message.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from goan_core.errors import NewerFormatError, ResumeFileError
from goan_core.params import JobParams
from goan_core.sampling.plan import SectionPlan, section_count
from goan_core.resumefile import write_resume_file
from goan_core.resumefile.format import JOB_INFO, PARAMS, SOURCE_IMAGE, STATE, WORKFLOW
from goan_core.sampling.state import Conditioning, JobState, SamplerState

MARKER = "PWNED_MARKER"  # a hostile pickle would create this file next to the corpus
SECONDS, LWS, STEPS = 1.2, 3, 5
IDENTITY = {"transformer": "tiny-framepack sha256:abc123", "vae": "tiny-vae sha256:def456"}


def source_image(height: int = 40, width: int = 48, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_state(mode: str = "backward", section: int = 1, step: int = 0, outputs: int = 0, cfg: float = 1.0,
               in_section: bool | None = None, job_id: str = "job-1", seed: int = 0) -> JobState:
    """A consistent JobState of a small plan (lws 3, 64x64 px, 3 sections) with random tensors."""
    in_section = step > 0 if in_section is None else in_section
    params = JobParams(prompt="a cat on a boat", negative_prompt="blurry", seed=1234, seconds=SECONDS, lws=LWS,
                       steps=STEPS, cfg=cfg, mode=mode, resolution=64)
    plan = SectionPlan(mode, LWS, section_count(SECONDS, LWS), 64, 64)
    rng = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(shape, generator=rng)

    job_generator = torch.Generator().manual_seed(1)
    for _ in range(section + (1 if in_section else 0)):
        torch.randn(plan.noise_shape(), generator=job_generator)
    latent = (plan.latent_height, plan.latent_width)
    sampler = None
    if in_section:
        sampler = SamplerState(randn(*plan.noise_shape()), step, [randn(*plan.noise_shape()) for _ in range(outputs)])
    mask = torch.ones(1, 16, dtype=torch.bool)
    mask[:, 12:] = False
    negative = {}
    if cfg != 1.0:
        negative = {"negative_prompt_embeds": randn(1, 16, 32), "negative_prompt_mask": mask.clone(),
                    "negative_pooled": randn(1, 16)}
    conditioning = Conditioning(prompt_embeds=randn(1, 16, 32), prompt_mask=mask, pooled=randn(1, 16),
                                image_embeds=randn(1, 9, 24), **negative)
    return JobState(job_id=job_id, params=params, plan=plan, conditioning=conditioning,
                    start_latent=randn(1, 16, 1, *latent),
                    history_latents=randn(1, 16, plan.history_frames_after(section), *latent),
                    generator_state=job_generator.get_state(), section=section, sampler=sampler,
                    model_identity=dict(IDENTITY))


def write_valid(path: Path, **state_kw) -> Path:
    return write_resume_file(make_state(**state_kw), path, source_image=source_image(),
                             workflow={"last_node_id": 2, "nodes": [{"id": 1, "type": "GoanSegmentSampler"}]})


# -- raw zip surgery -------------------------------------------------------------------------------

Members = list[tuple[str, bytes]]


def read_members(path: Path) -> Members:
    """The members of one of our own valid files (trusted: we just wrote it)."""
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def write_zip(path: Path, members: Members, *, fix_checksums: bool = True,
              infos: dict[str, Callable[[zipfile.ZipInfo], None]] | None = None,
              compress: dict[str, int] | None = None) -> Path:
    """Zip `members`; by default job_info.json's checksums are made to match, so the damage under
    test is the only thing wrong. `infos` edits a member's ZipInfo; `compress` sets its method."""
    if fix_checksums:
        names = [name for name, _ in members]
        if JOB_INFO in names:
            info = json.loads(dict(members)[JOB_INFO])
            info["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in members if name != JOB_INFO}
            members = [(name, json.dumps(info).encode() if name == JOB_INFO else data) for name, data in members]
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # duplicate names are one of the damages under test
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2025, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            default = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
            info.compress_type = (compress or {}).get(name, default)
            (infos or {}).get(name, lambda _: None)(info)
            archive.writestr(info, data)
    return path


def patch_central(data: bytes, member: str, offset: int, fmt: str, *values) -> bytes:
    """Overwrite a field of `member`'s central directory record (what zip readers trust)."""
    name = member.encode()
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        name_len = struct.unpack_from("<H", data, start + 28)[0]
        if data[start + 46:start + 46 + name_len] == name:
            field = struct.pack(fmt, *values)
            return data[:start + offset] + field + data[start + offset + len(field):]
        start += 4
    raise AssertionError(f"{member} not found")


def patch_declared_size(data: bytes, member: str, size: int) -> bytes:
    """Make the central directory claim `size` bytes, compressed and uncompressed, for `member`."""
    return patch_central(data, member, 20, "<II", size, size)


def member_data_offset(path: Path, member: str) -> int:
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def safetensors_parts(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def safetensors_join(header: dict, buffer: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + buffer


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (its pixel data is a token: the size check comes first)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


class _Payload:
    """An object whose unpickling calls `func(*args)`: what a malicious .pt carries."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def malicious_pt(marker: Path, via: str = "open") -> bytes:
    """torch.save bytes whose pickle, if it were ever run, would create `marker`."""
    if via == "open":
        payload = _Payload(builtins.open, (str(marker), "w"))
    else:
        payload = _Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",))
    buffer = io.BytesIO()
    torch.save({"history": torch.zeros(1), "x": payload}, buffer)
    return buffer.getvalue()


def legacy_members(history: torch.Tensor | None = None, *, completed: int = 1, params: dict | None = None,
                   latents: bytes | None = None, image: np.ndarray | None = None) -> Members:
    """The members of a file of the original goan app (its own setting names, torch.save latents).

    The image is, as the original app saved it, the bucketed start image: the latents' frame size.
    """
    if latents is None:
        if history is None:
            history = torch.randn(1, 16, 19 + completed * LWS, 8, 8, generator=torch.Generator().manual_seed(5))
        buffer = io.BytesIO()
        torch.save(history, buffer)
        latents = buffer.getvalue()
    png = io.BytesIO()
    Image.fromarray(source_image(64, 64) if image is None else image).save(png, format="PNG")
    settings = params if params is not None else {
        "prompt": "a cat on a boat", "negative_prompt": "", "seed": 99, "video_length": 1.2, "steps": 5,
        "real_cfg": 1.0, "distilled_cfg_start": 10.0, "guidance_rescale": 0.0, "latent_window_size": LWS,
        "mp4_crf": 18, "use_teacache": True, "gpu_memory_preservation": 6, "fps": 30}
    return [("params.json", json.dumps(settings).encode()), ("source_image.png", png.getvalue()),
            ("latent_history.pt", latents),
            ("job_info.json", json.dumps({"job_id": "250101_120000_000_task1", "completed_segments": completed}).encode())]


def write_legacy(path: Path, members: Members) -> Path:
    return write_zip(path, members, fix_checksums=False)


# -- the corpus ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path]
    error: type
    phrase: str


CASES: list[Case] = []


def case(name: str, error: type = ResumeFileError, phrase: str = ""):
    def register(build):
        CASES.append(Case(name, build, error, phrase))
        return build
    return register


def edited(tmp: Path, name: str, *, base: dict | None = None, job_info=None, params=None, tensors=None,
           header=None, members=None, fix_checksums: bool = True, **zip_kw) -> Path:
    """A valid file with one edit: of job_info/params (dict -> None), of the state tensors, of the
    raw safetensors header, or of the member list; then re-zipped."""
    valid = write_valid(tmp / f"{name}.valid.goan_resume", **(base or {}))
    current = read_members(valid)
    valid.unlink()
    if job_info or params:
        fixed = []
        for member, data in current:
            edit = {JOB_INFO: job_info, PARAMS: params}.get(member)
            if edit:
                value = json.loads(data)
                edit(value)
                data = json.dumps(value).encode()
            fixed.append((member, data))
        current = fixed
    if tensors or header:
        fixed = []
        for member, data in current:
            if member == STATE and tensors:
                table = dict(load_safetensors(data))
                tensors(table)
                data = save_safetensors({k: v.contiguous() for k, v in table.items()})
            if member == STATE and header:
                data = header(data)
            fixed.append((member, data))
        current = fixed
    if members:
        current = members(current)
    return write_zip(tmp / f"{name}.goan_resume", current, fix_checksums=fix_checksums, **zip_kw)


def _set(key, value):
    def edit(data):
        data[key] = value
    return edit


def _drop(key):
    def edit(data):
        del data[key]
    return edit


def _without(member):
    return lambda current: [(n, d) for n, d in current if n != member]


def _replace(member, new):
    return lambda current: [(n, new if n == member else d) for n, d in current]


# files that are not (complete) zips
@case("empty_file", phrase="empty")
def _(tmp):
    (tmp / "empty.goan_resume").write_bytes(b"")
    return tmp / "empty.goan_resume"


@case("not_a_zip", phrase="not a zip")
def _(tmp):
    (tmp / "text.goan_resume").write_text("hello, I am a text file\n" * 10)
    return tmp / "text.goan_resume"


@case("truncated_half", phrase="truncated")
def _(tmp):
    raw = write_valid(tmp / "full.goan_resume").read_bytes()
    (tmp / "full.goan_resume").unlink()
    (tmp / "half.goan_resume").write_bytes(raw[:len(raw) // 2])
    return tmp / "half.goan_resume"


@case("truncated_directory", phrase="truncated")
def _(tmp):
    raw = write_valid(tmp / "full.goan_resume").read_bytes()
    (tmp / "full.goan_resume").unlink()
    (tmp / "cut.goan_resume").write_bytes(raw[:-30])
    return tmp / "cut.goan_resume"


@case("crc_mismatch", phrase="damaged")
def _(tmp):
    path = write_valid(tmp / "crc.goan_resume")
    raw = bytearray(path.read_bytes())
    raw[member_data_offset(path, SOURCE_IMAGE) + 40] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


# members
for _member in (JOB_INFO, PARAMS, SOURCE_IMAGE, STATE):
    case(f"missing_{_member}", phrase="lacks" if _member == JOB_INFO else f"missing {_member}")(
        lambda tmp, m=_member: edited(tmp, f"missing_{m}", members=_without(m)))


@case("extra_member", phrase="unexpected member 'notes.txt'")
def _(tmp):
    return edited(tmp, "extra", members=lambda c: c + [("notes.txt", b"hi")])


@case("too_many_members", phrase="members; a goan resume file has at most")
def _(tmp):
    return edited(tmp, "many", members=lambda c: c + [(f"x{i}.json", b"{}") for i in range(60)])


@case("dotdot_name", phrase="unsafe member name")
def _(tmp):
    return edited(tmp, "dotdot", members=lambda c: c + [("../../evil.sh", b"rm -rf ~")])


@case("absolute_name", phrase="unsafe member name")
def _(tmp):
    return edited(tmp, "absolute", members=lambda c: c + [("/etc/cron.d/evil", b"* * * * * root true")])


@case("backslash_name", phrase="unsafe member name")
def _(tmp):
    return edited(tmp, "backslash", members=lambda c: c + [("..\\..\\evil.bat", b"echo")])


@case("drive_name", phrase="unsafe member name")
def _(tmp):
    return edited(tmp, "drive", members=lambda c: c + [("C:evil.txt", b"x")])


@case("directory_entry", phrase="unsafe member name")
def _(tmp):
    return edited(tmp, "directory", members=lambda c: c + [("state/", b"")])


@case("duplicate_name", phrase="appears twice")
def _(tmp):
    return edited(tmp, "duplicate", members=lambda c: c + [(PARAMS, json.dumps({"prompt": "other"}).encode())])


@case("symlink_entry", phrase="symbolic link")
def _(tmp):
    def as_link(info):
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return edited(tmp, "symlink", members=_replace(SOURCE_IMAGE, b"/etc/passwd"), infos={SOURCE_IMAGE: as_link})


@case("encrypted_flag", phrase="encrypted")
def _(tmp):
    path = edited(tmp, "encrypted")
    path.write_bytes(patch_central(path.read_bytes(), SOURCE_IMAGE, 8, "<H", 0x1))
    return path


@case("bzip2_member", phrase="compression method")
def _(tmp):
    return edited(tmp, "bzip2", compress={STATE: zipfile.ZIP_BZIP2})


# zip bombs
@case("bomb_by_size", phrase="state.safetensors is too large: 3.0 MB (at most 1.1 MB for this job)")
def _(tmp):
    """Stored, so no ratio gives it away: only the cap derived from the plan does."""
    noise = np.random.default_rng(1).integers(0, 256, 3 * 1024**2, dtype=np.uint8).tobytes()
    return edited(tmp, "bomb_size", job_info=_set("has_embeddings", False), members=_replace(STATE, noise))


@case("declared_size_beyond_file", phrase="lies outside the file")
def _(tmp):
    path = edited(tmp, "declared_size")
    path.write_bytes(patch_declared_size(path.read_bytes(), STATE, 3 * 1024**3))
    return path


@case("bomb_total_size", phrase="add up to")
def _(tmp):
    path = edited(tmp, "bomb_total")
    raw = patch_declared_size(path.read_bytes(), STATE, 3 * 1024**3)
    path.write_bytes(patch_declared_size(raw, SOURCE_IMAGE, 3 * 1024**3))
    return path


@case("bomb_by_ratio", phrase="compression ratio")
def _(tmp):
    workflow = b'{"nodes": "' + b" " * (4 * 1024**2) + b'"}'
    return edited(tmp, "bomb_ratio", members=_replace(WORKFLOW, workflow))


@case("bomb_deflated_image", phrase="compression ratio")
def _(tmp):
    return edited(tmp, "bomb_image", members=_replace(SOURCE_IMAGE, bytes(48 * 1024**2)),
                  compress={SOURCE_IMAGE: zipfile.ZIP_DEFLATED})


@case("huge_json", phrase="too large")
def _(tmp):
    prompt = np.random.default_rng(0).integers(97, 123, 2 * 1024**2).astype(np.uint8).tobytes().decode()
    return edited(tmp, "huge_json", params=_set("prompt", prompt), compress={PARAMS: zipfile.ZIP_STORED})


# JSON
@case("invalid_json", phrase="not valid JSON")
def _(tmp):
    return edited(tmp, "invalid_json", members=_replace(PARAMS, b'{"prompt": "a cat", '))


@case("json_not_utf8", phrase="UTF-8")
def _(tmp):
    return edited(tmp, "not_utf8", members=_replace(PARAMS, b'{"prompt": "\xff\xfe"}'))


@case("json_nan_constant", phrase="NaN is not allowed")
def _(tmp):
    return edited(tmp, "nan_const", members=_replace(PARAMS, b'{"prompt": "a", "cfg": NaN}'))


@case("json_duplicate_key", phrase="duplicate key")
def _(tmp):
    return edited(tmp, "dup_key", members=_replace(PARAMS, b'{"prompt": "a", "prompt": "b"}'))


@case("json_deeply_nested", phrase="nested too deeply")
def _(tmp):
    return edited(tmp, "nested", members=_replace(WORKFLOW, b"[" * 200_000 + b"]" * 200_000))


@case("workflow_not_object", phrase="JSON object")
def _(tmp):
    return edited(tmp, "wf_list", members=_replace(WORKFLOW, b"[1, 2, 3]"))


# job_info.json
@case("newer_version", NewerFormatError, "made by a newer goan (format 2), please update goan")
def _(tmp):
    return edited(tmp, "newer", job_info=_set("format_version", 2))


@case("newer_version_new_member", NewerFormatError, "please update goan")
def _(tmp):
    return edited(tmp, "newer_member", job_info=_set("format_version", 7),
                  members=lambda c: c + [("audio.flac", b"fLaC")])


@case("wrong_format", phrase="not a goan resume file")
def _(tmp):
    return edited(tmp, "wrong_format", job_info=_set("format", "something_else"))


@case("version_as_text", phrase="format_version must be a whole number")
def _(tmp):
    return edited(tmp, "version_text", job_info=_set("format_version", "1"))


@case("checksum_mismatch", phrase="fails its checksum")
def _(tmp):
    return edited(tmp, "checksum", params=_set("prompt", "a dog"), fix_checksums=False)


@case("checksum_list_incomplete", phrase="checksum list does not match")
def _(tmp):
    path = edited(tmp, "checksum_list")
    current = read_members(path)
    info = json.loads(dict(current)[JOB_INFO])
    del info["sha256"][WORKFLOW]
    return write_zip(path, [(n, json.dumps(info).encode() if n == JOB_INFO else d) for n, d in current],
                     fix_checksums=False)


@case("field_wrong_type", phrase="next_section must be a whole number")
def _(tmp):
    return edited(tmp, "field_type", job_info=_set("next_section", "1"))


@case("flag_wrong_type", phrase="has_embeddings must be true or false")
def _(tmp):
    return edited(tmp, "flag_type", job_info=_set("has_embeddings", "yes"))


@case("field_missing", phrase="'producer' is missing")
def _(tmp):
    return edited(tmp, "field_missing", job_info=_drop("producer"))


@case("field_unknown", phrase="unknown field 'run_this'")
def _(tmp):
    return edited(tmp, "field_unknown", job_info=_set("run_this", "rm -rf /"))


@case("job_id_path", phrase="job_id")
def _(tmp):
    return edited(tmp, "job_id_path", job_info=_set("job_id", "../../etc"))


# a branched job's lineage (optional in job_info) and a timed prompt's embeddings
LINEAGE = {"parent": "job-0", "root": "job-0", "section": 1, "step": 0, "changes": {"seed": [1234, 5]}}


def _lineage(**change):
    return _set("lineage", {**LINEAGE, **change})


@case("lineage_not_object", phrase="lineage must be an object")
def _(tmp):
    return edited(tmp, "lineage_list", job_info=_set("lineage", ["job-0"]))


@case("lineage_extra_field", phrase="lineage must be an object with exactly the fields")
def _(tmp):
    return edited(tmp, "lineage_extra", job_info=_set("lineage", {**LINEAGE, "script": "x"}))


@case("lineage_parent_path", phrase="lineage.parent")
def _(tmp):
    return edited(tmp, "lineage_parent", job_info=_lineage(parent="../../etc/passwd"))


@case("lineage_section_negative", phrase="lineage.section must be a whole number")
def _(tmp):
    return edited(tmp, "lineage_section", job_info=_lineage(section=-1))


@case("lineage_step_bool", phrase="lineage.step must be a whole number")
def _(tmp):
    return edited(tmp, "lineage_step", job_info=_lineage(step=True))


@case("lineage_no_changes", phrase="lineage.changes must map at least one setting")
def _(tmp):
    return edited(tmp, "lineage_empty", job_info=_lineage(changes={}))


@case("lineage_unknown_setting", phrase="which is no setting")
def _(tmp):
    return edited(tmp, "lineage_setting", job_info=_lineage(changes={"__class__": [1, 2]}))


@case("lineage_change_not_pair", phrase="lineage.changes.seed must be [old, new]")
def _(tmp):
    return edited(tmp, "lineage_pair", job_info=_lineage(changes={"seed": [1, 2, 3]}))


@case("lineage_change_nested", phrase="lineage.changes.prompt must be [old, new]")
def _(tmp):
    return edited(tmp, "lineage_nested", job_info=_lineage(changes={"prompt": [{"a": 1}, "b"]}))


@case("lineage_change_huge_text", phrase="lineage.changes.prompt must be [old, new]")
def _(tmp):
    return edited(tmp, "lineage_huge", job_info=_lineage(changes={"prompt": ["a", "b" * 70_000]}))


@case("end_latent_without_end_image", phrase="an end frame needs both end_image.png and the tensor 'end_latent'")
def _(tmp):
    return edited(tmp, "end_latent_only", tensors=lambda t: t.update(end_latent=t["start_latent"].clone()))


@case("end_image_without_end_latent", phrase="an end frame needs both end_image.png")
def _(tmp):
    buffer = io.BytesIO()
    Image.fromarray(source_image()).save(buffer, format="PNG")
    return edited(tmp, "end_image_only", members=lambda c: c + [("end_image.png", buffer.getvalue())])


@case("end_latent_in_f1", phrase="'end_latent' must be")
def _(tmp):
    return edited(tmp, "end_f1", base={"mode": "f1"}, tensors=lambda t: t.update(end_latent=t["start_latent"].clone()))


@case("timed_prompt_without_its_embeddings", phrase="'cond.prompt_embeds.1' is missing")
def _(tmp):
    return edited(tmp, "timed_missing", params=_set("prompt", "[0s] a cat [0.5s] a dog"))


@case("timed_prompt_backwards", phrase="timestamps must increase")
def _(tmp):
    return edited(tmp, "timed_backwards", params=_set("prompt", "[0s] a cat [0.5s] a dog [0.2s] a cow"))


@case("extra_prompt_embeddings_for_a_plain_prompt", phrase="unknown embedding tensor 'cond.pooled.1'")
def _(tmp):
    def add(table):
        table.update({"cond.prompt_embeds.1": table["cond.prompt_embeds"].clone(),
                      "cond.prompt_mask.1": table["cond.prompt_mask"].clone(),
                      "cond.pooled.1": table["cond.pooled"].clone()})
    return edited(tmp, "extra_prompt", tensors=add)


@case("timed_prompt_embeddings_misshapen", phrase="timed prompt 1's embeddings differ in shape")
def _(tmp):
    def add(table):
        table.update({"cond.prompt_embeds.1": torch.zeros(1, 16, 8),
                      "cond.prompt_mask.1": table["cond.prompt_mask"].clone(), "cond.pooled.1": table["cond.pooled"].clone()})
    return edited(tmp, "timed_shape", params=_set("prompt", "[0s] a cat [0.5s] a dog"), tensors=add)


@case("model_identity_type", phrase="model_identity")
def _(tmp):
    return edited(tmp, "identity", job_info=_set("model_identity", {"transformer": 5}))


# job_info's optional "loras": name (a file name), sha256 and strength of each LoRA
LORA = {"name": "style.safetensors", "sha256": "ab" * 32, "strength": 0.8}


def _lora_case(name: str, phrase: str, loras) -> None:
    case(name, phrase=phrase)(lambda tmp: edited(tmp, name, job_info=_set("loras", loras)))


_lora_case("loras_not_a_list", "loras must be a list", LORA)
_lora_case("loras_empty", "loras must be a list of 1 to 16", [])
_lora_case("loras_too_many", "loras must be a list of 1 to 16", [dict(LORA, strength=0.1 * n) for n in range(1, 18)])
_lora_case("lora_name_too_long", "LoRA name must be a file name of 1 to 255", [dict(LORA, name="a" * 300)])
_lora_case("lora_name_is_a_path", "without folders", [dict(LORA, name="../../etc/passwd")])
_lora_case("lora_name_terminal_escape", "printable", [dict(LORA, name="x\x1b[2Jy.safetensors")])
_lora_case("lora_name_not_text", "LoRA name must be", [dict(LORA, name=["a"])])
_lora_case("lora_sha256_not_hex", "sha256 must be 64 lowercase hex", [dict(LORA, sha256="zz" * 32)])


@case("lora_strength_overflows_to_infinity", phrase="strength must be a finite number")
def _(tmp):  # JSON has no Infinity, but 1e999 parses as one (job_info.json is not under a checksum)
    path = edited(tmp, "lora_inf", job_info=_set("loras", [dict(LORA, strength=12345.5)]))
    current = [(n, d.replace(b"12345.5", b"1e999") if n == JOB_INFO else d) for n, d in read_members(path)]
    return write_zip(path, current, fix_checksums=False)


_lora_case("lora_strength_huge", "strength must be a finite number between -100 and 100", [dict(LORA, strength=1e9)])
_lora_case("lora_strength_text", "strength must be a finite number", [dict(LORA, strength="0.8")])
_lora_case("lora_strength_bool", "strength must be a finite number", [dict(LORA, strength=True)])
_lora_case("lora_strength_zero", "strength 0 is no LoRA", [dict(LORA, strength=0)])
_lora_case("lora_extra_field", "exactly the fields name, sha256 and strength", [dict(LORA, path="/etc/passwd")])
_lora_case("lora_entry_not_object", "exactly the fields name, sha256 and strength", ["style.safetensors"])


@case("created_at_garbage", phrase="ISO 8601")
def _(tmp):
    return edited(tmp, "created_at", job_info=_set("created_at", "yesterday"))


@case("plan_invalid", phrase="plan:")
def _(tmp):
    return edited(tmp, "plan", job_info=lambda info: info["plan"].update(lws=0))


@case("mode_disagrees", phrase="disagrees with the plan")
def _(tmp):
    return edited(tmp, "mode", job_info=_set("mode", "f1"))


@case("total_sections_disagrees", phrase="total_sections 4 disagrees")
def _(tmp):
    return edited(tmp, "total", job_info=_set("total_sections", 4))


# params.json
@case("params_out_of_range", phrase="cfg must be between")
def _(tmp):
    return edited(tmp, "cfg_range", params=_set("cfg", 100.0))


@case("params_unknown_mode", phrase="unknown mode 'sideways'")
def _(tmp):
    return edited(tmp, "params_mode", params=_set("mode", "sideways"))


@case("params_wrong_type", phrase="steps must be a whole number")
def _(tmp):
    return edited(tmp, "params_type", params=_set("steps", "25"))


@case("params_unknown_setting", phrase="unknown settings: exec")
def _(tmp):
    return edited(tmp, "params_unknown", params=_set("exec", "import os"))


@case("params_disagree_with_plan", phrase="disagree with the plan")
def _(tmp):
    return edited(tmp, "params_lws", params=_set("lws", 9))


# position
@case("step_not_below_steps", phrase=f"step_in_section {STEPS} must be below")
def _(tmp):
    return edited(tmp, "step_range", base={"step": 2, "outputs": 1}, job_info=_set("step_in_section", STEPS))


@case("next_section_beyond_total", phrase="next_section 4 is outside")
def _(tmp):
    return edited(tmp, "section_range", job_info=_set("next_section", 4))


@case("step_without_section", phrase="no section is marked in progress")
def _(tmp):
    return edited(tmp, "no_section", base={"step": 2, "outputs": 1}, job_info=_set("in_section", False))


@case("outputs_beyond_step", phrase="sampler_outputs 3 must be between")
def _(tmp):
    return edited(tmp, "outputs", base={"step": 2, "outputs": 2}, job_info=_set("sampler_outputs", 3))


@case("sampler_missing_mid_section", phrase="'sampler_x' is missing")
def _(tmp):
    def drop(table):
        del table["sampler_x"], table["sampler_outputs"]
    return edited(tmp, "no_sampler", base={"step": 2, "outputs": 1}, tensors=drop)


@case("sampler_at_boundary", phrase="unexpected tensor 'sampler_x'")
def _(tmp):
    return edited(tmp, "extra_sampler", tensors=lambda t: t.update(sampler_x=torch.zeros(1, 16, LWS, 8, 8)))


@case("sampler_outputs_count", phrase="'sampler_outputs' has shape [2,")
def _(tmp):
    return edited(tmp, "outputs_count", base={"step": 2, "outputs": 2}, job_info=_set("sampler_outputs", 1))


# tensors
@case("history_shape", phrase="'history_latents' has shape")
def _(tmp):
    return edited(tmp, "history_shape", tensors=lambda t: t.update(history_latents=t["history_latents"][:, :, 1:]))


@case("plan_size_disagrees", phrase="frame size 128x64 is not one of the resolution 64 buckets")
def _(tmp):
    return edited(tmp, "plan_size", job_info=lambda info: info["plan"].update(width=128))


@case("history_wrong_dtype", phrase="'history_latents' has dtype F16; expected F32")
def _(tmp):
    return edited(tmp, "history_dtype", tensors=lambda t: t.update(history_latents=t["history_latents"].half()))


@case("history_nan", phrase="'history_latents' contains NaN or Inf")
def _(tmp):
    def poison(table):
        table["history_latents"][0, 3, 5, 2, 2] = float("nan")
    return edited(tmp, "nan", tensors=poison)


@case("sampler_inf", phrase="'sampler_x' contains NaN or Inf")
def _(tmp):
    def poison(table):
        table["sampler_x"][0, 0, 0, 0, 0] = float("inf")
    return edited(tmp, "inf", base={"step": 2, "outputs": 1}, tensors=poison)


@case("embedding_nan", phrase="'cond.pooled' contains NaN or Inf")
def _(tmp):
    def poison(table):
        table["cond.pooled"][0, 0] = float("nan")
    return edited(tmp, "cond_nan", tensors=poison)


@case("extra_tensor", phrase="unexpected tensor 'payload'")
def _(tmp):
    return edited(tmp, "extra_tensor", tensors=lambda t: t.update(payload=torch.zeros(4)))


@case("generator_wrong_length", phrase="'generator_state' has shape [100]")
def _(tmp):
    return edited(tmp, "gen_len", tensors=lambda t: t.update(generator_state=torch.zeros(100, dtype=torch.uint8)))


@case("generator_wrong_dtype", phrase="'generator_state' has dtype I64")
def _(tmp):
    return edited(tmp, "gen_dtype", tensors=lambda t: t.update(generator_state=t["generator_state"].long()))


@case("generator_garbage", phrase="not a valid torch CPU generator state")
def _(tmp):
    return edited(tmp, "gen_garbage", tensors=lambda t: t.update(
        generator_state=torch.full((t["generator_state"].numel(),), 7, dtype=torch.uint8)))


@case("embedding_missing", phrase="'cond.pooled' is missing")
def _(tmp):
    return edited(tmp, "cond_missing", tensors=lambda t: t.pop("cond.pooled"))


@case("embeddings_unannounced", phrase="holds embeddings but job_info.json says it has none")
def _(tmp):
    return edited(tmp, "cond_unannounced", job_info=_set("has_embeddings", False))


@case("mask_values", phrase="holds values other than 0 and 1")
def _(tmp):
    return edited(tmp, "mask", tensors=lambda t: t.update(**{"cond.prompt_mask": torch.full((1, 16), 7, dtype=torch.uint8)}))


# lying safetensors headers
def _history_entry(edit):
    def header(data):
        table, buffer = safetensors_parts(data)
        edit(table, len(buffer))
        return safetensors_join(table, buffer)
    return header


@case("header_offset_beyond_data", phrase="outside the")
def _(tmp):
    def edit(table, size):
        table["history_latents"]["data_offsets"][1] = size + 4096
    return edited(tmp, "hdr_beyond", header=_history_entry(edit))


@case("header_length_beyond_file", phrase="bytes of header but the member has only")
def _(tmp):
    return edited(tmp, "hdr_len", header=lambda data: struct.pack("<Q", len(data)) + data[8:])


@case("header_length_huge", phrase="bytes of header (at most")
def _(tmp):
    return edited(tmp, "hdr_huge", header=lambda data: struct.pack("<Q", 2**62) + data[8:])


@case("header_overlap", phrase="overlaps another")
def _(tmp):
    def edit(table, size):
        entries = {k: v for k, v in table.items() if k != "__metadata__"}
        moved = min((k for k in entries if entries[k]["data_offsets"][0] != 0),
                    key=lambda k: entries[k]["data_offsets"][1] - entries[k]["data_offsets"][0])
        begin, end = entries[moved]["data_offsets"]
        entries[moved]["data_offsets"] = [0, end - begin]  # on top of the tensor stored first
    return edited(tmp, "hdr_overlap", header=_history_entry(edit))


@case("header_dtype_size_lies", phrase="bytes but F16")
def _(tmp):
    def edit(table, size):
        table["history_latents"]["dtype"] = "F16"
    return edited(tmp, "hdr_dtype", header=_history_entry(edit))


@case("header_unknown_dtype", phrase="unsupported dtype")
def _(tmp):
    def edit(table, size):
        table["history_latents"]["dtype"] = "PYOBJ"
    return edited(tmp, "hdr_pyobj", header=_history_entry(edit))


@case("header_not_json", phrase="not valid JSON")
def _(tmp):
    return edited(tmp, "hdr_json", header=lambda data: struct.pack("<Q", 4) + b"{{{{" + data[8:])


# images
@case("image_not_png", phrase="not a PNG image")
def _(tmp):
    return edited(tmp, "gif", members=_replace(SOURCE_IMAGE, b"GIF89a" + bytes(100)))


@case("image_truncated", phrase="not a valid PNG image")
def _(tmp):
    def cut(current):
        return [(n, d[:60] if n == SOURCE_IMAGE else d) for n, d in current]
    return edited(tmp, "png_cut", members=cut)


@case("image_huge_dimensions", phrase="too large")
def _(tmp):
    return edited(tmp, "png_huge", members=_replace(SOURCE_IMAGE, png_with_size(9000, 16)))


@case("image_decompression_bomb", phrase="too large")
def _(tmp):
    return edited(tmp, "png_bomb", members=_replace(SOURCE_IMAGE, png_with_size(100_000, 100_000)))


# files of the original goan app
@case("legacy_malicious_pickle_open", phrase="not plain tensor data")
def _(tmp):
    return write_legacy(tmp / "legacy_open.goan_resume",
                     legacy_members(latents=malicious_pt(tmp / MARKER, "open")))


@case("legacy_malicious_pickle_exec", phrase="not plain tensor data")
def _(tmp):
    return write_legacy(tmp / "legacy_exec.goan_resume",
                     legacy_members(latents=malicious_pt(tmp / MARKER, "exec")))


@case("legacy_not_a_tensor", phrase="holds a dict")
def _(tmp):
    buffer = io.BytesIO()
    torch.save({"history": torch.zeros(1, 16, 22, 8, 8)}, buffer)
    return write_legacy(tmp / "legacy_dict.goan_resume", legacy_members(latents=buffer.getvalue()))


@case("legacy_bad_shape", phrase="has shape [1, 4, 22, 8, 8]")
def _(tmp):
    return write_legacy(tmp / "legacy_shape.goan_resume", legacy_members(history=torch.zeros(1, 4, 22, 8, 8)))


@case("legacy_frames_do_not_fit", phrase="does not fit a FramePack history")
def _(tmp):
    return write_legacy(tmp / "legacy_frames.goan_resume", legacy_members(history=torch.zeros(1, 16, 21, 8, 8)))


@case("legacy_nan", phrase="NaN or Inf")
def _(tmp):
    history = torch.zeros(1, 16, 22, 8, 8)
    history[0, 0, 0, 0, 0] = float("nan")
    return write_legacy(tmp / "legacy_nan.goan_resume", legacy_members(history=history))


@case("legacy_garbage_pt", phrase="not plain tensor data")
def _(tmp):
    return write_legacy(tmp / "legacy_garbage.goan_resume", legacy_members(latents=b"\x80\x02garbage" * 10))


@case("legacy_compressed_records", phrase="compressed records")
def _(tmp):
    buffer = io.BytesIO()
    torch.save(torch.zeros(1, 16, 22, 8, 8), buffer)
    inner = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src, zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return write_legacy(tmp / "legacy_deflated.goan_resume", legacy_members(latents=inner.getvalue()))


@case("legacy_params_out_of_range", phrase="steps must be between")
def _(tmp):
    settings = {"prompt": "a", "seed": 1, "video_length": 1.2, "steps": 5000, "latent_window_size": LWS}
    return write_legacy(tmp / "legacy_params.goan_resume", legacy_members(params=settings))


@case("legacy_extra_member", phrase="unexpected member 'run.py'")
def _(tmp):
    return write_legacy(tmp / "legacy_extra.goan_resume", legacy_members() + [("run.py", b"import os")])


# -- issue 12: cases found by the independent attack -------------------------------------------------

def _deflated_padding(megabytes: int) -> bytes:
    """Bytes that deflate about 30x (below the ratio check): zeros with a random byte every 32."""
    raw = np.zeros(megabytes * 1024**2, dtype=np.uint8)
    raw[::32] = np.random.default_rng(7).integers(1, 256, raw[::32].size, dtype=np.uint8)
    return raw.tobytes()


@case("state_declares_more_than_its_header", phrase="the tensors cover")
def _(tmp):
    """A deflated state member whose valid header is followed by 24 MB of padding: refused from the
    header alone, before a buffer of the declared size exists (issue 12, item 2)."""
    def pad(current):
        return [(n, d + _deflated_padding(24) if n == STATE else d) for n, d in current]
    return edited(tmp, "state_padding", members=pad, compress={STATE: zipfile.ZIP_DEFLATED})


@case("stored_member_declares_more_than_it_holds", phrase="is stored uncompressed but declares")
def _(tmp):
    path = edited(tmp, "stored_lies")
    return _patch_file(path, lambda raw: patch_central(raw, STATE, 24, "<I", 2 * 1024**2))


def _patch_file(path: Path, patch) -> Path:
    path.write_bytes(patch(path.read_bytes()))
    return path


@case("image_far_larger_than_the_plan", phrase="far larger than the job's 64x64 frames")
def _(tmp):
    big = io.BytesIO()
    Image.new("RGB", (4096, 4096)).save(big, format="PNG")  # 50 MB once decoded, for a 64x64 job
    return edited(tmp, "image_large", members=_replace(SOURCE_IMAGE, big.getvalue()))


@case("plan_sections_without_seconds_backward", phrase="the plan has 10000 sections but 1.2 s at lws 3 make 3")
def _(tmp):
    return edited(tmp, "plan_10000", job_info=lambda info: (info["plan"].update(total_sections=10_000),
                                                            info.update(total_sections=10_000)))


@case("plan_sections_without_seconds_f1", phrase="between 2 and 7")
def _(tmp):
    return edited(tmp, "plan_f1_10000", base={"mode": "f1"},
                  job_info=lambda info: (info["plan"].update(total_sections=10_000), info.update(total_sections=10_000)))


@case("plan_too_few_sections_f1", phrase="the plan has 1 sections but")
def _(tmp):
    return edited(tmp, "plan_f1_short", base={"mode": "f1", "section": 1},
                  params=_set("seconds", 30.0),
                  job_info=lambda info: (info["plan"].update(total_sections=1), info.update(total_sections=1),
                                         info.update(next_section=1)))


@case("plan_not_a_bucket_of_the_resolution", phrase="is not one of the resolution 640 buckets")
def _(tmp):
    return edited(tmp, "not_bucket", params=_set("resolution", 640))


@case("latents_absurd_but_finite", phrase="'history_latents' holds values up to 3e+38")
def _(tmp):
    return edited(tmp, "latents_3e38", tensors=lambda t: t.update(history_latents=torch.full_like(t["history_latents"], 3e38)))


@case("sampler_output_beyond_bound", phrase="'sampler_outputs' holds values up to")
def _(tmp):
    def poison(table):
        table["sampler_outputs"][0, 0, 0, 0, 0] = -2e4
    return edited(tmp, "outputs_big", base={"step": 2, "outputs": 1}, tensors=poison)


@case("embedding_beyond_bound", phrase="'cond.prompt_embeds' holds values up to")
def _(tmp):
    def poison(table):
        table["cond.prompt_embeds"][0, 0, 0] = 1e7
    return edited(tmp, "cond_big", tensors=poison)


@case("workflow_nested_900_deep", phrase="nested too deeply")
def _(tmp):
    """Parses (under Python's recursion limit) but would break json.dumps on the next pause."""
    return edited(tmp, "wf_deep", members=_replace(WORKFLOW, b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}"))


@case("json_nested_beyond_limit", phrase="more than 64 levels")
def _(tmp):
    return edited(tmp, "wf_65", members=_replace(WORKFLOW, b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}"))


@case("legacy_image_and_latents_disagree", phrase="the image and the latents are not of the same job")
def _(tmp):
    return write_legacy(tmp / "legacy_sizes.goan_resume", legacy_members(image=source_image(40, 48)))


@case("legacy_latents_absurd", phrase="holds values up to")
def _(tmp):
    return write_legacy(tmp / "legacy_big.goan_resume", legacy_members(history=torch.full((1, 16, 22, 8, 8), 1e30)))
