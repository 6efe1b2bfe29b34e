// Plain logic for files: routing a dropped/opened/pasted file, chunking uploads, download names.
// No DOM and no ComfyUI here, so `node --test tests/js/` can exercise all of it.

export const RESUME_EXT = ".goan_resume";
export const MAX_CHUNK = 16 * 1024 * 1024; // the server accepts at most 16 MiB per request body
export const UPLOAD_ID_RE = /^[A-Za-z0-9_-]{8,64}$/;

const IMAGE_EXT = /\.(png|jpe?g|webp|avif|gif|bmp|svg)$/i;
const WORKFLOW_EXT = /\.(json|latent|safetensors)$/i;

/** True when a file name is a goan resume file (case-insensitive, whitespace around ignored). */
export function isResumeName(name) {
  return typeof name === "string" && name.trim().toLowerCase().endsWith(RESUME_EXT);
}

/**
 * Where a file given to ComfyUI (drop, file menu, paste) should go.
 * Returns "goan_resume" (ours), or "image" / "workflow" / "other" (ComfyUI's default behaviour).
 * Only the name decides "goan_resume": browsers report no MIME type for it (or octet-stream / zip).
 */
export function routeFile(name, mime = "") {
  if (isResumeName(name)) return "goan_resume";
  const type = String(mime || "").toLowerCase();
  const n = String(name || "");
  if (type.startsWith("image/") || IMAGE_EXT.test(n)) return "image";
  if (type === "application/json" || WORKFLOW_EXT.test(n)) return "workflow";
  return "other";
}

/** The first goan resume file in a list of File-like objects ({name}), or null. */
export function findResumeFile(files) {
  if (!files) return null;
  for (const f of Array.from(files)) {
    if (f && isResumeName(f.name)) return f;
  }
  return null;
}

/**
 * Split `size` bytes into pieces of at most `chunkSize` bytes: [{index, offset, end, length}].
 * An empty file still gets one (empty) piece so the server sees a final request and can answer.
 */
export function planChunks(size, chunkSize = MAX_CHUNK) {
  if (!Number.isInteger(size) || size < 0) throw new RangeError(`bad file size: ${size}`);
  if (!Number.isInteger(chunkSize) || chunkSize <= 0 || chunkSize > MAX_CHUNK) {
    throw new RangeError(`chunk size must be 1..${MAX_CHUNK} bytes, got ${chunkSize}`);
  }
  const pieces = [];
  let offset = 0;
  do {
    const end = Math.min(size, offset + chunkSize);
    pieces.push({ index: pieces.length, offset, end, length: end - offset });
    offset = end;
  } while (offset < size);
  return pieces;
}

/** The request path for one piece: /goan/upload/{id}?offset=N&total=T&filename=NAME */
export function chunkUrl(uploadId, piece, total, filename) {
  if (!UPLOAD_ID_RE.test(uploadId)) throw new Error(`bad upload id: ${uploadId}`);
  const q = new URLSearchParams({ offset: String(piece.offset), total: String(total), filename });
  return `/goan/upload/${uploadId}?${q.toString()}`;
}

/** A fresh upload id matching ^[A-Za-z0-9_-]{8,64}$. `rand` returns an integer 0..2^32-1. */
export function makeUploadId(rand = () => Math.floor(Math.random() * 2 ** 32)) {
  let id = "goan_";
  while (id.length < 29) id += rand().toString(36).padStart(7, "0").slice(-7);
  return id.slice(0, 29);
}

/** Last path component, whatever the separator. */
export function baseName(path) {
  return String(path || "").split(/[\\/]/).pop();
}

/**
 * The name the browser saves a resume file under: the server's file name without folders and
 * without the leading dots of a hidden file (autosaves are hidden inside ComfyUI), characters that
 * file systems reject replaced by "_", always ending in ".goan_resume".
 */
export function downloadName(file) {
  const raw = baseName(file && file.filename) || "goan";
  let name = raw.replace(/[<>:"|?*\u0000-\u001f]/g, "_").trim().replace(/^\.+(?=[^.])/, "");
  if (!name || name === "." || name === "..") name = "goan";
  if (!isResumeName(name)) name += RESUME_EXT;
  return name;
}

/** The /view query for a file record {filename, subfolder, type}. */
export function viewUrl(file) {
  const q = new URLSearchParams({
    filename: file.filename,
    subfolder: file.subfolder || "",
    type: file.type || "output",
  });
  return `/view?${q.toString()}`;
}

/** File name without its extension (used as the workflow name after a drop). */
export function stem(name) {
  const b = baseName(name);
  const i = b.lastIndexOf(".");
  return i > 0 ? b.slice(0, i) : b;
}

/**
 * Upload a Blob/File in order, one piece of at most `chunkSize` bytes per request, through
 * `post(url, body)` which resolves to {ok, status, json}. The server's `received` count is
 * authoritative: when it kept less than was sent (or answers 409 with its count), the next piece
 * starts there. Returns the final answer ({done, name, ...}); throws an Error carrying the
 * server's message on a refusal. `onProgress(sentBytes, total)` after each accepted piece.
 */
export async function uploadInChunks(file, { post, uploadId = makeUploadId(), chunkSize = MAX_CHUNK, onProgress } = {}) {
  const total = file.size;
  planChunks(total, chunkSize); // validates the sizes
  let offset = 0;
  let stalls = 0;
  for (;;) {
    const end = Math.min(total, offset + chunkSize);
    const body = file.slice(offset, end);
    const res = await post(chunkUrl(uploadId, { offset }, total, file.name), body);
    const json = res.json || {};
    if (json.done) {
      if (!json.name) throw new Error("upload did not complete: the server sent no file name");
      if (onProgress) onProgress(total, total);
      return json;
    }
    const received = typeof json.received === "number" ? json.received : null;
    if (!res.ok && !(res.status === 409 && received !== null)) {
      throw new Error(json.error || `upload failed (HTTP ${res.status})`);
    }
    if (received === null) throw new Error(`upload failed: unexpected answer (HTTP ${res.status})`);
    if (received > total || received < 0) throw new Error(`upload out of step: server has ${received} of ${total} bytes`);
    if (received >= total) throw new Error("upload did not complete: the server sent no file name");
    stalls = received > offset ? 0 : stalls + 1;
    if (stalls > 3) throw new Error(`upload stalled at byte ${received} of ${total}`);
    offset = received;
    if (onProgress) onProgress(offset, total);
  }
}
