// Drop / open / paste a .goan_resume: upload it in chunks, load its workflow, point GoanLoadResume
// at it, relabel the sampler's length. Other files keep ComfyUI's own behaviour.
import { app, api, toast, toastError, request, expectOk, nodesOfType, redraw, workflowGraph } from "./goan_comfy.js";
import { findResumeFile, isResumeName, uploadInChunks, stem, viewUrl, downloadName, RESUME_EXT } from "./lib/files.js";
import { graphNodes as nodesIn } from "./lib/graph.js";
import { lengthLabel, LENGTH_WIDGET, LOAD_RESUME_TYPE } from "./lib/labels.js";
import { SAMPLER_TYPE } from "./lib/jobs.js";
import { widgetValuesFromParams } from "./lib/branches.js";

const RESUME_WIDGET = "resume_file";
let busy = false;

async function post(url, body) {
  return request(url, { method: "POST", body, headers: { "Content-Type": "application/octet-stream" } });
}

/** Upload a File in <=16 MiB pieces; resolves to the server's final answer ({name, ...}). */
export async function uploadResume(file, onProgress) {
  return uploadInChunks(file, { post, onProgress });
}

// ---- graph edits ---------------------------------------------------------------------------

function widget(node, name) {
  return (node.widgets || []).find((w) => w.name === name) || null;
}

/** Put `value` into a combo widget (adding it to the choices when missing) and fire its callback. */
export function setCombo(node, name, value) {
  const w = widget(node, name);
  if (!w) return false;
  const opts = (w.options ||= {});
  if (Array.isArray(opts.values)) {
    if (!opts.values.includes(value)) opts.values.push(value);
  } else if (typeof opts.values === "function") {
    const orig = opts.values;
    opts.values = (...a) => {
      const v = orig(...a) || [];
      return v.includes(value) ? v : [...v, value];
    };
  } else {
    opts.values = [value];
  }
  w.value = value;
  try {
    w.callback && w.callback(value, app.canvas, node);
  } catch (e) {
    console.warn("[goan] combo callback failed", e);
  }
  return true;
}

function upstreamTypes(node) {
  const types = [];
  (node.inputs || []).forEach((inp, i) => {
    if (inp.link == null) return;
    try {
      const src = node.getInputNode ? node.getInputNode(i) : null;
      if (src) types.push(src.type || src.comfyClass);
    } catch {
      /* a dangling link is not ours to fix */
    }
  });
  return types;
}

/** Set the sampler's `seconds` label from the rule in lib/labels.js. */
export function refreshLengthLabel(node) {
  const w = widget(node, LENGTH_WIDGET);
  if (!w) return;
  const label = lengthLabel({ restored: !!node.goanRestored, upstreamTypes: upstreamTypes(node) });
  if (w.label !== label) {
    w.label = label;
    const inp = (node.inputs || []).find((i) => i.widget && i.widget.name === LENGTH_WIDGET);
    if (inp) inp.label = label;
    redraw();
  }
}

export function refreshAllLabels() {
  for (const n of nodesOfType(SAMPLER_TYPE)) refreshLengthLabel(n);
}

/**
 * When the graph has no GoanLoadResume (a workflow saved by a fresh run), add one and wire it in:
 * its state into the sampler's resume_state, its source image into the sampler's image (so the
 * graph no longer needs the original picture, which another computer may not have).
 */
function ensureLoader(sampler) {
  const LiteGraph = window.LiteGraph || (window.comfyAPI && window.comfyAPI.litegraph && window.comfyAPI.litegraph.LiteGraph);
  const graph = sampler.graph || workflowGraph(); // the sampler's own (sub)graph
  if (!LiteGraph || !graph) return null;
  const loader = LiteGraph.createNode(LOAD_RESUME_TYPE);
  if (!loader) return null;
  const xs = nodesIn(graph).filter((n) => n !== loader).map((n) => n.pos[0]);
  const left = xs.length ? Math.min(...xs) : sampler.pos[0];
  loader.pos = [left - 380, sampler.pos[1]];
  graph.add(loader);
  (loader.outputs || []).forEach((out, oi) => {
    const inputs = sampler.inputs || [];
    // the source image goes into `image` only: end_image is IMAGE too, and an end image branches a job
    const ii = out.type === "IMAGE"
      ? inputs.findIndex((inp) => inp.name === "image" && inp.type === "IMAGE")
      : inputs.findIndex((inp) => inp.type === out.type && inp.link == null && !inp.widget);
    if (ii >= 0) loader.connect(oi, sampler, ii);
  });
  return loader;
}

/** Put the file's settings into a sampler's widgets, so that only widgets the user changes branch the job. */
function showSettings(sampler, params) {
  for (const [name, value] of Object.entries(widgetValuesFromParams(params))) {
    const w = widget(sampler, name);
    if (w) w.value = value;
  }
}

/** Point the loaded graph at the uploaded file: every GoanLoadResume, every sampler's settings and length. */
export function applyResumeToGraph(name, params) {
  let loaders = nodesOfType(LOAD_RESUME_TYPE);
  const samplers = nodesOfType(SAMPLER_TYPE);
  if (!loaders.length && samplers.length) {
    const l = ensureLoader(samplers[0]);
    if (l) loaders = [l];
  }
  for (const l of loaders) setCombo(l, RESUME_WIDGET, name);
  for (const s of samplers) {
    s.goanRestored = true;
    showSettings(s, params);
    const w = widget(s, LENGTH_WIDGET);
    if (w) {
      w.value = 0;
      try {
        w.callback && w.callback(0, app.canvas, s);
      } catch {
        /* value is set; callback is a nicety */
      }
    }
    refreshLengthLabel(s);
  }
  redraw();
  return { loaders: loaders.length, samplers: samplers.length };
}

// ---- the whole restore ---------------------------------------------------------------------

/** Upload a .goan_resume and restore its job in the canvas. */
export async function restoreFromFile(file) {
  if (busy) {
    toast("info", "A resume file is still loading", "Wait for it to finish, then try again.");
    return false;
  }
  busy = true;
  try {
    if (file.size > 32 * 1024 * 1024) toast("info", "Uploading resume file...", file.name, 3000);
    let up;
    try {
      up = await uploadResume(file);
    } catch (e) {
      toastError(`Could not load ${file.name}`, e);
      return false;
    }
    const infoRes = await request(`/goan/resume_info?name=${encodeURIComponent(up.name)}`);
    let info;
    try {
      info = expectOk(infoRes);
    } catch (e) {
      toastError(`Could not load ${file.name}`, e);
      return false;
    }
    let workflow = info && info.workflow;
    if (!workflow || typeof workflow !== "object") {
      workflow = expectOk(await request("/goan/workflows/goan_resume.json"), "The example resume workflow is missing");
    }
    await app.loadGraphData(workflow, true, true, stem(file.name));
    const applied = applyResumeToGraph(up.name, info && info.params);
    if (!applied.loaders) {
      toast("error", "No GoanLoadResume node in the workflow", `Uploaded as ${up.name}; add a GoanLoadResume node and select it.`, 10000);
      return false;
    }
    toast("success", "Resume state loaded. Add to queue to continue.", up.name, 8000);
    const notes = Array.isArray(info && info.notes) ? info.notes.filter(Boolean) : [];
    if (notes.length || (info && info.exact === false)) {
      toast("info", "About this resume file", notes.join(" ") || "It continues approximately, not bit-identically.", 12000);
    }
    return true;
  } catch (e) {
    toastError(`Could not load ${file.name}`, e);
    return false;
  } finally {
    busy = false;
  }
}

/** The job list's "load to resume": fetch the output file and restore it as if dropped. */
export async function restoreFromOutput(fileRecord) {
  try {
    const res = await api.fetchApi(viewUrl(fileRecord));
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const blob = await res.blob();
    return restoreFromFile(new File([blob], downloadName(fileRecord)));
  } catch (e) {
    toastError(`Could not load ${fileRecord.filename}`, e);
    return false;
  }
}

// ---- interception ---------------------------------------------------------------------------

/**
 * Catch .goan_resume drops and pastes before ComfyUI's document listeners (window, capture phase),
 * route app.handleFile (the file menu; also every other caller) the same way, and let the file
 * menu's picker offer .goan_resume. Anything else goes on to ComfyUI untouched.
 */
export function installInterceptors() {
  window.addEventListener("drop", (e) => {
    const f = findResumeFile(e.dataTransfer && e.dataTransfer.files);
    if (!f) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    restoreFromFile(f);
  }, true);
  window.addEventListener("paste", (e) => {
    const f = findResumeFile(e.clipboardData && e.clipboardData.files);
    if (!f) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    restoreFromFile(f);
  }, true);

  if (typeof app.handleFile === "function" && !app.handleFile.__goan) {
    const orig = app.handleFile;
    const wrapped = function (file, ...rest) {
      if (file && isResumeName(file.name)) return restoreFromFile(file);
      return orig.call(this, file, ...rest);
    };
    wrapped.__goan = true;
    app.handleFile = wrapped;
  }
  const addAccept = () => {
    const input = document.getElementById("comfy-file-input");
    if (input && input.accept && !input.accept.includes(RESUME_EXT)) input.accept += `,${RESUME_EXT}`;
  };
  addAccept();
  setTimeout(addAccept, 2000);
}

// ---- GoanLoadResume's choice fills the samplers it feeds -----------------------------------------

/** The samplers linked to `loader`'s state output. */
function fedSamplers(loader) {
  const links = (loader.outputs && loader.outputs[0] && loader.outputs[0].links) || [];
  const graph = loader.graph || app.graph;
  return links.map((id) => graph && graph.links && graph.links[id])
    .filter(Boolean)
    .map((link) => graph.getNodeById(link.target_id))
    .filter((n) => n && (n.comfyClass || n.type) === SAMPLER_TYPE);
}

/**
 * When the user picks a file in Load Resume, the samplers it feeds show that file's settings, so that
 * only widgets changed afterwards branch the job (a graph loaded from a workflow keeps its widgets).
 */
export function followResumeChoice(loader) {
  const w = widget(loader, RESUME_WIDGET);
  if (!w || w.__goanFollow) return;
  w.__goanFollow = true;
  const orig = w.callback;
  w.callback = function (value, ...rest) {
    const r = orig ? orig.call(this, value, ...rest) : undefined;
    if (value) {
      request(`/goan/resume_info?name=${encodeURIComponent(value)}`)
        .then((res) => expectOk(res))
        .then((info) => {
          for (const s of fedSamplers(loader)) showSettings(s, info && info.params);
          redraw();
        })
        .catch((e) => console.warn("[goan] could not read the settings of", value, e));
    }
    return r;
  };
}

// ---- GoanLoadResume's upload button ----------------------------------------------------------

export function addUploadButton(node) {
  if (widget(node, "goan_upload")) return;
  const input = document.createElement("input");
  input.type = "file";
  input.accept = RESUME_EXT;
  input.style.display = "none";
  // Tag the input with the node's id (for tests and tools); the id is final only once the node is
  // in a graph (added, or configured from a workflow).
  const syncId = () => {
    input.dataset.goanUpload = String(node.id);
  };
  syncId();
  for (const hook of ["onAdded", "onConfigure"]) {
    const orig = node[hook];
    node[hook] = function (...a) {
      const r = orig ? orig.apply(this, a) : undefined;
      syncId();
      return r;
    };
  }
  setTimeout(syncId, 0);
  document.body.append(input);
  const btn = node.addWidget("button", "goan_upload", null, () => {
    syncId();
    input.click();
  }, { serialize: false });
  btn.label = "choose .goan_resume to upload";
  btn.serialize = false;
  input.addEventListener("change", async () => {
    const file = input.files && input.files[0];
    input.value = "";
    if (!file) return;
    if (!isResumeName(file.name)) {
      toast("error", "Not a resume file", `${file.name} does not end in ${RESUME_EXT}`);
      return;
    }
    try {
      const up = await uploadResume(file, (sent, total) => {
        btn.label = `uploading ${Math.round((100 * sent) / Math.max(total, 1))}%`;
        redraw();
      });
      setCombo(node, RESUME_WIDGET, up.name);
      toast("success", "Resume file uploaded", up.name);
    } catch (e) {
      toastError(`Could not upload ${file.name}`, e);
    } finally {
      btn.label = "choose .goan_resume to upload";
      redraw();
    }
  });
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...a) {
    input.remove();
    return onRemoved && onRemoved.apply(this, a);
  };
}

