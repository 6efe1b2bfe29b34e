"""HTTP routes under /goan/ on ComfyUI's PromptServer (also served with an /api prefix by ComfyUI).

POST /goan/pause                {prompt_id[, node_id]} -> 200 {status, prompt_id} | 404 {error}
                                                        (without node_id: the prompt's running sampler)
GET  /goan/jobs                                      -> {jobs: [...], queue: [{prompt_id, node_id, running}]}
                                                        (goan's jobs; each goan sampler of the prompts in
                                                        ComfyUI's queue)
POST /goan/upload/{upload_id}?offset=&total=&filename=  raw chunk bytes (<= 16 MiB)
                                                     -> {received} | {done, name, filename, subfolder, type}
                                                        | 507 {error} (no room: refused at the start, or the
                                                        disk filled up; the upload is dropped, start again)
GET  /goan/resume_info?name=goan_resume/NAME.goan_resume -> {workflow, job_info, params, exact, notes, validated}
GET  /goan/workflows                                 -> {workflows: [names]}
GET  /goan/workflows/{name}.json                     -> the example workflow
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..goan_core.errors import GoanError, ResumeFileError
from ..goan_core.resumefile import FREE_SPACE_MARGIN, MAX_JSON_DEPTH, MAX_TOTAL_BYTES, format_size, json_too_deep
from ..goan_core.vocabulary import Status
from .adapter import HOST
from .files import UPLOAD_SUBFOLDER, VALIDATED, reserve_upload_path, resolve_input_name, sanitise_upload_name
from .jobs import REGISTRY, queued_goan_prompts

log = logging.getLogger("goan")

UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_CHUNK = 16 * 1024 * 1024
MAX_JSON_BODY = 64 * 1024  # a request body goan parses as JSON ({prompt_id}) is tiny
MAX_UPLOAD = MAX_TOTAL_BYTES + 64 * 1024 * 1024  # the largest file the reader would even open
UPLOAD_TTL = 3600.0  # seconds an unfinished upload is kept without a new chunk
MAX_ACTIVE_UPLOADS = 32  # unfinished uploads at once (each holds a temp file and a lock)
WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "workflows"
WORKFLOW_NAMES = ("goan_image_to_video.json", "goan_resume.json", "goan_diffusers_folders.json",
                  "goan_compare_branches.json")
NO_SPACE = {errno.ENOSPC} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())


def _error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@dataclass
class Upload:
    path: Path
    total: int
    filename: str
    received: int = 0
    touched: float = 0.0


async def _in_thread(function, *args):
    """Run blocking file work (writes, renames, validation) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        log.warning("goan: could not remove the upload's temp file %s: %s", path, error)


class Uploads:
    """Unfinished chunked uploads, in the temp folder; one lock per upload id.

    A lock lives only while a request for its id is in flight or its upload is unfinished, so
    refused requests leave nothing behind; at most MAX_ACTIVE_UPLOADS uploads are unfinished at once.
    `active` is also the ledger of disk space: every unfinished upload has its announced size
    reserved (see `_short_of_space`) from its first chunk until it is finished or dropped.
    """

    def __init__(self):
        self.active: dict[str, Upload] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.users: dict[str, int] = {}  # requests holding or waiting for each lock

    def folder(self) -> Path:
        folder = HOST.directory("temp") / "goan_uploads"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @contextlib.asynccontextmanager
    async def holding(self, upload_id: str):
        """Hold the lock of `upload_id`; it is forgotten when no request uses it and no upload needs it."""
        lock = self.locks.setdefault(upload_id, asyncio.Lock())
        self.users[upload_id] = self.users.get(upload_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self.users[upload_id] -= 1
            if not self.users[upload_id]:
                del self.users[upload_id]
                if upload_id not in self.active:
                    self.locks.pop(upload_id, None)

    async def drop(self, upload_id: str) -> None:
        """Forget the upload (its reservation ends at once) and remove its temp file."""
        upload = self.active.pop(upload_id, None)
        if not self.users.get(upload_id):
            self.locks.pop(upload_id, None)
        if upload is not None:
            await _in_thread(_remove, upload.path)

    async def expire(self) -> None:
        now = time.monotonic()
        for upload_id, upload in list(self.active.items()):
            if now - upload.touched > UPLOAD_TTL and not self.users.get(upload_id):
                await self.drop(upload_id)


UPLOADS = Uploads()


def _same_device(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False  # count both: the cautious answer


def _short_of_space(total: int) -> str | None:
    """Why an upload of `total` bytes cannot fit beside the unfinished ones, or None.

    Free space must hold this upload, the bytes still to come of every other unfinished upload
    (`UPLOADS.active`: the reservation ledger), and FREE_SPACE_MARGIN. The temp copy and the stored
    file share the space when temp and input are on one file system (a finished upload is renamed);
    otherwise the input folder must also hold every unfinished upload's whole file.
    """
    others = list(UPLOADS.active.values())
    temp, inputs = UPLOADS.folder(), HOST.directory("input")
    needs = [(temp, sum(u.total - u.received for u in others))]
    if not _same_device(temp, inputs):
        needs.append((inputs, sum(u.total for u in others)))
    for folder, reserved in needs:
        free = shutil.disk_usage(folder).free
        if free < total + reserved + FREE_SPACE_MARGIN:
            held = (f", {format_size(reserved)} of it reserved for {len(others)} other upload"
                    f"{'s' if len(others) != 1 else ''} in progress" if reserved else "")
            return (f"not enough free disk space for this {format_size(total)} upload: {format_size(free)} free"
                    f"{held}; free some space (or let the other uploads finish) and upload again")
    return None


def _write_chunk(path: Path, offset: int, chunk: bytes) -> None:
    """Write `chunk` at `offset` of the temp file; if that fails, the file is cut back to `offset` bytes."""
    with open(path, "r+b", buffering=0) as fh:
        try:
            fh.seek(offset)
            view = memoryview(chunk)
            while view:
                written = fh.write(view)
                if not written:
                    raise OSError(errno.EIO, "the write made no progress")
                view = view[written:]
        except BaseException:
            with contextlib.suppress(OSError):
                fh.truncate(offset)
            raise


def _write_failed(error: OSError, current: Upload) -> web.Response:
    """The answer when writing an upload failed (the upload has been dropped)."""
    if error.errno in NO_SPACE:
        return _error(507, f"the disk filled up while receiving this {format_size(current.total)} upload "
                           f"({format_size(current.received)} received); free some space and upload again")
    log.warning("goan: writing an upload failed: %s", error)
    return _error(500, f"the upload could not be written ({error.strerror or type(error).__name__}); upload again")


def _int_param(request: web.Request, name: str) -> int:
    value = request.query.get(name)
    if value is None or not re.fullmatch(r"\d{1,15}", value):
        raise ValueError(f"query parameter {name!r} must be a whole number >= 0")
    return int(value)


async def _json_body(request: web.Request):
    """The request body as JSON, or raise ValueError: at most MAX_JSON_BODY bytes and MAX_JSON_DEPTH levels."""
    raw = await _read_body(request, MAX_JSON_BODY)
    if raw is None:
        raise ValueError(f"the body is larger than {MAX_JSON_BODY} bytes")
    try:
        value = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if isinstance(value, (dict, list)) and json_too_deep(value):
        raise ValueError(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


async def pause(request: web.Request) -> web.Response:
    try:
        body = await _json_body(request)
    except ValueError as error:
        return _error(400, f'send JSON {{"prompt_id": "..."}}: {error}')
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    if not isinstance(prompt_id, str) or not prompt_id:
        return _error(400, 'send JSON {"prompt_id": "..."}')
    node_id = body.get("node_id")
    if node_id is not None and not isinstance(node_id, (str, int)):
        return _error(400, 'node_id: send the sampler\'s node id as a string ("12" or "12:5" inside a subgraph)')
    node_id = None if node_id is None else str(node_id)
    entry = REGISTRY.request_pause(prompt_id, node_id)
    if entry is None:
        which = f"prompt {prompt_id}" + ("" if node_id is None else f", sampler {node_id}")
        return _error(404, f"{which} is not a running goan job")
    if entry.status is Status.RUNNING:
        return _error(409, "the job has finished sampling and is decoding its video; there is nothing left to pause")
    return web.json_response({"status": entry.status.value, "prompt_id": prompt_id})


async def jobs(request: web.Request) -> web.Response:
    return web.json_response({"jobs": REGISTRY.jobs(), "queue": queued_goan_prompts()})


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole request body, or None when it holds more than `limit` bytes.

    `StreamReader.read(n)` returns what has arrived so far, so read until the end of the body.
    """
    parts, size = [], 0
    while piece := await request.content.read(1024 * 1024):
        size += len(piece)
        if size > limit:
            return None
        parts.append(piece)
    return b"".join(parts)


async def upload(request: web.Request) -> web.Response:
    upload_id = request.match_info.get("upload_id", "")
    if not UPLOAD_ID.fullmatch(upload_id):
        return _error(400, "upload id must be 8-64 letters, digits, '_' or '-'")
    try:
        offset, total = _int_param(request, "offset"), _int_param(request, "total")
    except ValueError as error:
        return _error(400, str(error))
    if not 0 < total <= MAX_UPLOAD:
        return _error(400 if total == 0 else 413, f"total must be between 1 and {MAX_UPLOAD} bytes")
    if request.content_length is not None and request.content_length > MAX_CHUNK:
        return _error(413, f"a chunk may hold at most {MAX_CHUNK} bytes")
    await UPLOADS.expire()
    async with UPLOADS.holding(upload_id):
        chunk = await _read_body(request, MAX_CHUNK)
        if chunk is None:
            await UPLOADS.drop(upload_id)
            return _error(413, f"a chunk may hold at most {MAX_CHUNK} bytes")
        current = UPLOADS.active.get(upload_id)
        if offset == 0:
            if current is not None:
                await UPLOADS.drop(upload_id)
            if len(UPLOADS.active) >= MAX_ACTIVE_UPLOADS:
                return _error(429, f"{MAX_ACTIVE_UPLOADS} uploads are unfinished; finish or wait for one "
                                   f"(an abandoned upload is dropped after {UPLOAD_TTL / 60:g} minutes)")
            short = _short_of_space(total)
            if short:
                return _error(507, short)
            filename = request.query.get("filename", "")
            current = Upload(UPLOADS.folder() / f"{upload_id}.goan_resume", total, filename,
                             touched=time.monotonic())
            UPLOADS.active[upload_id] = current  # reserved before the next await: no other start can miss it
            try:
                await _in_thread(current.path.write_bytes, b"")
            except OSError as error:
                await UPLOADS.drop(upload_id)
                return _write_failed(error, current)
        elif current is None or offset != current.received:
            received = 0 if current is None else current.received
            return _error(409, f"chunk out of order: expected offset {received}, got {offset}", received=received)
        if total != current.total:
            await UPLOADS.drop(upload_id)
            return _error(400, f"total changed during the upload ({current.total} -> {total})")
        if offset + len(chunk) > total:
            await UPLOADS.drop(upload_id)
            return _error(400, f"the chunks add up to more than the announced {total} bytes")
        try:
            await _in_thread(_write_chunk, current.path, current.received, chunk)
        except OSError as error:
            await UPLOADS.drop(upload_id)
            return _write_failed(error, current)
        current.received += len(chunk)
        current.touched = time.monotonic()
        if current.received < total:
            return web.json_response({"received": current.received})
        try:
            return await _finish_upload(upload_id, current)
        finally:
            await UPLOADS.drop(upload_id)


def _store_upload(temp: Path, stem: str) -> Path:
    """Validate the finished temp file and move it to a new name in the input folder (blocking).

    The validated result is kept for the stored file (`VALIDATED`), so resume_info and Load Resume
    on the new file do not read it again.
    """
    data, version = VALIDATED.validate(temp)
    target = reserve_upload_path(stem)
    try:
        try:
            os.replace(temp, target)
        except OSError:  # the temp folder is on another file system
            shutil.copyfile(temp, target)
    except BaseException:
        _remove(target)
        raise
    VALIDATED.remember_moved(target, data, version)  # a copy is not the validated file: read again later
    return target


async def _finish_upload(upload_id: str, current: Upload) -> web.Response:
    stem = sanitise_upload_name(current.filename)
    shown = f"{stem}.goan_resume"
    try:
        target = await _in_thread(_store_upload, current.path, stem)
    except ResumeFileError as error:
        return _error(400, f"{shown}: {error.problem}")
    except GoanError as error:
        return _error(400, f"{shown}: {error}")
    except OSError as error:
        if error.errno in NO_SPACE:
            return _error(507, f"{shown}: not enough free disk space in the input folder to store this "
                               f"{format_size(current.total)} upload; free some space and upload again")
        raise
    log.info("goan: uploaded resume file stored as %s", target)
    return web.json_response({"done": True, "name": f"{UPLOAD_SUBFOLDER}/{target.name}", "filename": target.name,
                              "subfolder": UPLOAD_SUBFOLDER, "type": "input", "received": current.received})


async def resume_info(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    try:
        path = resolve_input_name(name)
    except GoanError as error:
        return _error(400, str(error))
    if not path.is_file():
        return _error(404, f"{name}: no such resume file in the input folder")
    try:
        summary = await _in_thread(VALIDATED.summary, path)  # the cached validation, or the small members only
    except ResumeFileError as error:
        return _error(400, f"{name}: {error.problem}")
    except GoanError as error:
        return _error(400, f"{name}: {error}")
    answer = {"workflow": summary.workflow, "job_info": summary.job_info, "params": summary.params,
              "exact": summary.exact, "notes": summary.notes, "validated": summary.validated}
    try:  # the reader depth-limits the workflow; this keeps any other surprise a 4xx, never a 500
        text = json.dumps(answer, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _error(422, f"{name}: its workflow cannot be sent back as JSON")
    return web.Response(text=text, content_type="application/json")


async def workflows(request: web.Request) -> web.Response:
    return web.json_response({"workflows": [n for n in WORKFLOW_NAMES if (WORKFLOWS_DIR / n).is_file()]})


async def workflow(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "")
    if name not in WORKFLOW_NAMES or not (WORKFLOWS_DIR / name).is_file():
        return _error(404, f"no example workflow named {name[:80]!r}")
    return web.json_response(json.loads((WORKFLOWS_DIR / name).read_text(encoding="utf-8")))


def add_routes(routes: web.RouteTableDef) -> None:
    routes.post("/goan/pause")(pause)
    routes.get("/goan/jobs")(jobs)
    routes.post("/goan/upload/{upload_id}")(upload)
    routes.get("/goan/resume_info")(resume_info)
    routes.get("/goan/workflows")(workflows)
    routes.get("/goan/workflows/{name}")(workflow)


def make_app() -> web.Application:
    """A stand-alone app with goan's routes (tests, or serving them outside ComfyUI)."""
    routes = web.RouteTableDef()
    add_routes(routes)
    app = web.Application(client_max_size=MAX_CHUNK + 1024 * 1024)
    app.add_routes(routes)
    return app
