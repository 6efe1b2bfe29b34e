"""Reading a zip that nobody vouches for: structure checked before any byte of a member is read.

Also the strict decoders every reader uses: JSON, PNG and safetensors headers, each failing with
one ResumeFileError that names the file and the member.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import stat
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ResumeFileError
from .atomic import format_size
from .checks import Where
from .format import (CHUNK_BYTES, DTYPE_SIZES, MAX_HEADER_BYTES, MAX_IMAGE_SIDE, MAX_JSON_DEPTH, MAX_MEMBERS,
                     MAX_RATIO, MAX_TOTAL_BYTES, RATIO_FLOOR, STATE, TensorTable)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def parse_safetensors_header(data: bytes, member: str, path: Path) -> TensorTable:
    """Check a whole safetensors member (8-byte LE length + JSON + data); see `parse_header_table`."""
    fail = Where(path, f"{member}: the safetensors header is invalid: ").fail
    if len(data) < 8:
        fail("the member is shorter than its 8-byte header length")
    length = header_length(data[:8], len(data), member, path)
    return parse_header_table(data[8:8 + length], len(data) - 8 - length, member, path)


def header_length(prefix: bytes, member_size: int, member: str, path: Path) -> int:
    """The header length the first 8 bytes declare, refused beyond MAX_HEADER_BYTES or the member."""
    fail = Where(path, f"{member}: the safetensors header is invalid: ").fail
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES:
        fail(f"it claims {length} bytes of header (at most {MAX_HEADER_BYTES})")
    if 8 + length > member_size:
        fail(f"it claims {length} bytes of header but the member has only {member_size - 8} after the length")
    return length


def parse_header_table(header_bytes: bytes, buffer_len: int, member: str, path: Path) -> TensorTable:
    """Check a safetensors header (its JSON) before safetensors ever sees the bytes.

    Every entry must have a known dtype, a sane shape, and offsets that lie inside the data and
    hold exactly shape x dtype-size bytes; together the entries must tile the `buffer_len` bytes of
    data exactly, with no overlap, gap or trailing bytes.
    """
    fail = Where(path, f"{member}: the safetensors header is invalid: ").fail
    header = load_json(bytes(header_bytes), f"{member} header", path)
    if not isinstance(header, dict):
        fail("it is not a JSON object")
    table: TensorTable = {}
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                fail("__metadata__ must map text to text")
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            fail(f"entry {name[:80]!r} must have exactly dtype, shape and data_offsets")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in DTYPE_SIZES:
            fail(f"tensor {name[:80]!r} has an unsupported dtype {str(code)[:20]!r}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 2**31 for d in shape):
            fail(f"tensor {name[:80]!r} has an invalid shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets):
            fail(f"tensor {name[:80]!r} has invalid data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= buffer_len:
            fail(f"tensor {name[:80]!r} lies at bytes {begin}..{end}, outside the {buffer_len} bytes of data")
        if end - begin != math.prod(shape) * DTYPE_SIZES[code]:
            fail(f"tensor {name[:80]!r} spans {end - begin} bytes but {code} x {shape} needs "
                 f"{math.prod(shape) * DTYPE_SIZES[code]}")
        table[name] = (code, tuple(shape))
        spans.append((begin, end, name))
    cursor = 0
    for begin, end, name in sorted(spans):
        if begin != cursor:
            fail(f"tensor {name[:80]!r} " + ("overlaps another" if begin < cursor else "leaves a gap before it"))
        cursor = end
    if cursor != buffer_len:
        fail(f"the tensors cover {cursor} of the {buffer_len} data bytes")
    return table


def json_too_deep(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when `value` nests dicts and lists more than `limit` deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return False


def load_json(data: bytes, member: str, path: Path):
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, at most MAX_JSON_DEPTH levels deep."""
    def no_constants(name):
        raise ValueError(f"{name} is not allowed")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate key {next(k for k in keys if keys.count(k) > 1)[:40]!r}")
        return dict(pairs)

    try:
        value = json.loads(data.decode("utf-8"), parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except UnicodeDecodeError as exc:
        raise ResumeFileError(path, f"{member} is not valid UTF-8 text") from exc
    except RecursionError as exc:
        raise ResumeFileError(path, f"{member} is nested too deeply to be goan's JSON") from exc
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ResumeFileError(path, f"{member} is not valid JSON: {exc}") from exc
    if isinstance(value, (dict, list)) and json_too_deep(value):
        raise ResumeFileError(path, f"{member} is nested too deeply to be goan's JSON "
                                    f"(more than {MAX_JSON_DEPTH} levels)")
    return value


def decode_png(data: bytes, member: str, path: Path | None, fits=None) -> np.ndarray:
    """Decode a PNG (size-checked before pixels are decoded) into an np.uint8 HxWx3 array.

    `fits(width, height)`, when given, is called with the size the PNG declares before any pixel
    is decoded, and raises to refuse it (an image far larger than the job it belongs to).
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise ResumeFileError(path, f"{member} is not a PNG image")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            width, height = image.size
            if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
                raise ResumeFileError(path, f"{member} is {width}x{height} pixels: too large "
                                            f"(at most {MAX_IMAGE_SIDE} on a side)")
            if fits is not None:
                fits(width, height)
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as exc:
        raise ResumeFileError(path, f"{member} is too large to decode: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ResumeFileError(path, f"{member} is not a valid PNG image: {exc}") from exc


class SafeArchive:
    """A zip opened for reading with every structural check done before any member is read.

    Checks: a real, complete zip; a bounded number of members; names that are plain, unique
    member names (no path parts, '..', backslashes, drive letters, directories or symlinks);
    stored or deflated data only, unencrypted; declared sizes within the total cap; no member
    compressed beyond a plausible ratio. Members are read by name into memory, never extracted.
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            self._file = open(path, "rb")
        except FileNotFoundError as exc:
            raise ResumeFileError(path, "file not found") from exc
        except IsADirectoryError as exc:
            raise ResumeFileError(path, "is a folder, not a resume file") from exc
        except OSError as exc:
            raise ResumeFileError(path, f"cannot be opened: {exc.strerror or exc}") from exc
        try:
            self._zip = self._open_zip()
            self._infos = self._check_members()
        except BaseException:
            self._file.close()
            raise
        self.names = tuple(self._infos)
        self.is_legacy = "latent_history.pt" in self._infos and STATE not in self._infos

    def __enter__(self) -> "SafeArchive":
        return self

    def __exit__(self, *exc_info) -> None:
        self._zip.close()
        self._file.close()

    def sizes(self) -> dict[str, int]:
        return {name: info.file_size for name, info in self._infos.items()}

    def check_member_set(self, required, optional) -> None:
        for name in self.names:
            if name not in required and name not in optional:
                raise ResumeFileError(self.path, f"unexpected member {name!r} (this kind of resume file holds only "
                                                 f"{', '.join(required + optional)})")
        for name in required:
            if name not in self._infos:
                raise ResumeFileError(self.path, f"it is missing {name}; it is not a complete goan resume file")

    def read(self, name: str, limit: int, sha256: str | None = None) -> bytearray:
        """The bytes of member `name`, refused if it declares more than `limit` bytes.

        With `sha256`, the bytes are hashed on a second thread while zip reads them and checks
        its CRC-32, and must match. A stored member's declared size is backed by bytes in the file
        (checked on opening), so its buffer is allocated at once; a deflated member's buffer grows
        with the bytes it really inflates to, never from the size it declares.
        """
        with self.member(name, limit, sha256) as member:
            data = member.read(member.size) if member.stored else member.read_all()
            member.finish()
        return data

    def member(self, name: str, limit: int, sha256: str | None = None) -> "MemberReader":
        """A reader for member `name` in pieces (for `with`), refused if it declares more than `limit`."""
        info = self._infos[name]
        if info.file_size > limit:
            raise ResumeFileError(self.path, f"{name} is too large: {format_size(info.file_size)} "
                                             f"(at most {format_size(limit)} for this job)")
        return MemberReader(self, info, sha256)

    def read_checked(self, name: str, limit: int, job_info: dict) -> bytearray:
        """`read`, comparing with the SHA-256 listed in job_info.json."""
        return self.read(name, limit, job_info["sha256"][name])

    def _open_zip(self) -> zipfile.ZipFile:
        size = self._file.seek(0, io.SEEK_END)
        if size == 0:
            raise ResumeFileError(self.path, "the file is empty (an interrupted download or copy?)")
        if size > MAX_TOTAL_BYTES + 64 * 1024**2:
            raise ResumeFileError(self.path, f"the file is {format_size(size)}, larger than any goan resume file")
        self._file.seek(0)
        head = self._file.read(4)
        self._file.seek(0)
        try:
            return zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, EOFError, ValueError, OSError, NotImplementedError) as exc:
            if head == b"PK\x03\x04":
                raise ResumeFileError(self.path, "the file is truncated or damaged: its zip directory is missing "
                                                 "or broken (an incomplete download or copy?)") from exc
            raise ResumeFileError(self.path, "is not a goan resume file (not a zip archive)") from exc

    def _check_members(self) -> dict[str, zipfile.ZipInfo]:
        infos = self._zip.infolist()
        file_size = self._file.seek(0, io.SEEK_END)
        if len(infos) > MAX_MEMBERS:
            raise ResumeFileError(self.path, f"it has {len(infos)} members; a goan resume file has at most "
                                             f"{MAX_MEMBERS} (refusing to read it)")
        total = sum(info.file_size for info in infos)
        if total > MAX_TOTAL_BYTES:
            raise ResumeFileError(self.path, f"its members add up to {format_size(total)}, more than the "
                                             f"{format_size(MAX_TOTAL_BYTES)} allowed (a zip bomb?)")
        checked: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            if name in checked:
                raise ResumeFileError(self.path, f"the member name {name!r} appears twice (a tampered archive)")
            _check_member_name(name, self.path)
            if info.header_offset < 0 or info.header_offset + info.compress_size > file_size:
                raise ResumeFileError(self.path, f"the member {name!r} lies outside the file: it is damaged "
                                                 "or truncated")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ResumeFileError(self.path, f"the member {name!r} is a symbolic link; refusing it")
            if info.flag_bits & 0x1:
                raise ResumeFileError(self.path, f"the member {name!r} is encrypted; goan never encrypts")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ResumeFileError(self.path, f"the member {name!r} uses compression method "
                                                 f"{info.compress_type}; goan writes only stored or deflated data")
            if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
                raise ResumeFileError(self.path, f"the member {name!r} is stored uncompressed but declares "
                                                 f"{info.file_size} bytes for {info.compress_size} in the file: "
                                                 "it is damaged or was tampered with")
            if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise ResumeFileError(self.path, f"the member {name!r} expands {format_size(info.compress_size)} "
                                                 f"to {format_size(info.file_size)}: a compression ratio no goan file "
                                                 "has (a zip bomb?)")
            checked[name] = info
        return checked


class MemberReader:
    """One member read in pieces, each allocated only when the caller asks for a size it has checked.

    Every failure of zip or the file becomes one ResumeFileError naming the member; `finish` checks
    that nothing is left, the CRC-32 (zip) and the SHA-256 (hashed on a second thread meanwhile).
    """

    def __init__(self, archive: SafeArchive, info: zipfile.ZipInfo, sha256: str | None):
        self._archive, self._sha256, self.name = archive, sha256, info.filename
        self.size, self.stored, self.done = info.file_size, info.compress_type == zipfile.ZIP_STORED, 0
        self._digest = hashlib.sha256()
        self._pending = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="goan-sha256")
        self._stream = None
        self._stream = self._guard(archive._zip.open, info)

    def __enter__(self) -> "MemberReader":
        return self

    def __exit__(self, *exc_info) -> None:
        if self._stream is not None:
            self._stream.close()
        self._pool.shutdown(wait=True)

    def _guard(self, call, *args):
        path = self._archive.path
        try:
            return call(*args)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError) as exc:
            raise ResumeFileError(path, f"{self.name} is damaged: {exc}") from exc
        except OSError as exc:
            raise ResumeFileError(path, f"{self.name} cannot be read: {exc.strerror or exc}") from exc

    def _hash(self, view) -> None:
        if self._sha256 is None:
            return
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pool.submit(self._digest.update, view)

    def _short(self, got: int):
        raise ResumeFileError(self._archive.path, f"{self.name} is damaged: it ends after {got} bytes, its "
                                                  f"directory entry says {self.size}")

    def read(self, count: int) -> bytearray:
        """Exactly the next `count` bytes (the caller has checked `count` against what it needs)."""
        if count > self.size - self.done:
            self._short(self.done)
        data = bytearray(count)
        view = memoryview(data)
        got = 0
        while got < count:
            n = self._guard(self._stream.readinto, view[got:got + CHUNK_BYTES])
            if not n:
                self._short(self.done + got)
            self._hash(view[got:got + n])
            got += n
        self.done += count
        return data

    def read_all(self) -> bytearray:
        """The rest of the member, in a buffer that grows only with the bytes actually inflated."""
        data = bytearray()
        while self.done < self.size:
            piece = self._guard(self._stream.read, min(CHUNK_BYTES, self.size - self.done))
            if not piece:
                self._short(self.done)
            self._hash(piece)
            data += piece
            self.done += len(piece)
        return data

    def finish(self) -> None:
        """Nothing left beyond the declared size, and the checksums match."""
        extra = self._guard(self._stream.read, 1)  # also makes zip check the CRC-32
        if self._pending is not None:
            self._pending.result()
        if self.done != self.size or extra:
            raise ResumeFileError(self._archive.path, f"{self.name} is damaged: it holds {self.done + len(extra)} "
                                                      f"bytes or more, its directory entry says {self.size}")
        if self._sha256 is not None and self._digest.hexdigest() != self._sha256:
            raise ResumeFileError(self._archive.path, f"{self.name} fails its checksum: the file is damaged or "
                                                      "was edited")


def _check_member_name(name: str, path: Path) -> None:
    """Member names are plain file names: nothing that could mean a place on a file system."""
    unsafe = (not name or len(name) > 64 or name.startswith(("/", ".")) or "\\" in name or "/" in name
              or ":" in name or ".." in name or any(ord(c) < 32 for c in name))
    if unsafe:
        raise ResumeFileError(path, f"unsafe member name {name[:80]!r} (a path, not a plain name; a tampered archive?)")
