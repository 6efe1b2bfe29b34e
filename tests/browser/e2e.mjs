// Browser end-to-end test of the goan frontend against a real ComfyUI (driven by
// tests/test_browser_e2e.py, which starts and restarts the server between phases).
//
//   node tests/browser/e2e.mjs CONFIG.json
//
// CONFIG: {url, phase: "pause" | "resume", artifacts, tag, chromium, workflow (phase pause: path to
// a UI-format workflow JSON), widgets ({NodeType: {widget: value}}), download_dir (phase pause),
// resume_file (phase resume), bad_file (phase resume), timeout_s, vue_nodes (the frontend draws
// nodes with Vue, Comfy.VueNodes.Enabled: node buttons are DOM buttons and are clicked as such),
// subgraph (phase pause: also run and pause a sampler moved into a subgraph)}
// Prints one line "RESULT <json>" at the end; exits 1 with "FAIL <message>" on a failed check.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join, basename } from "node:path";
import { chromium } from "playwright-core";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const TIMEOUT = (cfg.timeout_s || 300) * 1000;
const ART = cfg.artifacts;
mkdirSync(ART, { recursive: true });
const result = { phase: cfg.phase, tag: cfg.tag, console_errors: [], checks: {} };
let shot = 0;

function fail(msg) {
  throw new Error(msg);
}
function check(name, ok, detail) {
  result.checks[name] = { ok: !!ok, detail };
  if (!ok) fail(`${name}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
}

async function snap(page, name) {
  const path = join(ART, `${cfg.tag}-${cfg.phase}-${String(++shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path });
  return path;
}

async function waitFor(fn, what, timeout = TIMEOUT, every = 250) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, every));
  }
  fail(`timed out waiting for ${what} (last: ${last && last.message ? last.message : JSON.stringify(last)})`);
}

async function openUi(page) {
  await page.goto(cfg.url, { waitUntil: "domcontentloaded" });
  await waitFor(() => page.evaluate(() => !!(window.__goan && window.__goan.ready && window.comfyAPI && (window.comfyAPI.app.app.rootGraph || window.comfyAPI.app.app.graph))), "the goan extension to load", 90000);
  await page.waitForTimeout(1500); // let the first-run workflow settle
}

/** Dispatch a real DataTransfer drop of a file on the canvas, as a user's drag and drop would. */
async function dropFile(page, name, bytes, mime = "") {
  await page.evaluate(async ({ name, b64, mime }) => {
    const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const file = new File([bin], name, { type: mime });
    const dt = new DataTransfer();
    dt.items.add(file);
    const target = document.querySelector("#graph-canvas") || document.querySelector("canvas");
    const r = target.getBoundingClientRect();
    const at = { clientX: r.left + r.width / 2, clientY: r.top + r.height / 2, bubbles: true, cancelable: true, dataTransfer: dt };
    target.dispatchEvent(new DragEvent("dragenter", at));
    target.dispatchEvent(new DragEvent("dragover", at));
    target.dispatchEvent(new DragEvent("drop", at));
  }, { name, b64: Buffer.from(bytes).toString("base64"), mime });
}

/** Toasts seen by goan (its own trace) and the text of the toast DOM. */
async function toasts(page) {
  return page.evaluate(() => ({
    goan: (window.__goanToasts || []).map((t) => `${t.severity}|${t.summary}|${t.detail || ""}`),
    dom: Array.from(document.querySelectorAll(".p-toast-message, [data-sonner-toast], [role='status'], [role='alert'], li[data-type]"))
      .map((e) => e.textContent.trim()).filter(Boolean),
  }));
}

/** Set widgets: {NodeType: {widget: value}}; every combo offering a value containing `prefer` takes it. */
async function setWidgets(page, widgets, prefer) {
  return page.evaluate(({ widgets, prefer }) => {
    const app = window.comfyAPI.app.app;
    const graph = app.rootGraph || app.graph;
    const set = [];
    for (const node of graph.nodes || graph._nodes) {
      for (const w of node.widgets || []) {
        if (w.name === "control_after_generate" || (w.name && w.name.endsWith("control_after_generate"))) w.value = "fixed";
        const vals = w.options && w.options.values;
        const list = typeof vals === "function" ? vals(w, node) : vals;
        if (prefer && Array.isArray(list)) {
          const hit = list.find((v) => typeof v === "string" && v.includes(prefer));
          if (hit !== undefined) {
            w.value = hit;
            set.push(`${node.type}.${w.name}=${hit}`);
          }
        }
        const want = widgets[node.type] || {};
        if (Object.prototype.hasOwnProperty.call(want, w.name)) {
          if (Array.isArray(list) && !list.includes(want[w.name])) list.push(want[w.name]);
          w.value = want[w.name];
          set.push(`${node.type}.${w.name}=${want[w.name]}`);
        }
      }
    }
    graph.setDirtyCanvas(true, true);
    return set;
  }, { widgets: widgets || {}, prefer: prefer || null });
}

/** Save the finished frames as PNGs (SaveImage on GoanPauseGate's images), so runs compare exactly. */
async function addFrameSaver(page, prefix) {
  return page.evaluate((prefix) => {
    const app = window.comfyAPI.app.app;
    const LiteGraph = window.LiteGraph || window.comfyAPI.litegraph.LiteGraph;
    const graph = app.rootGraph || app.graph;
    const nodes = graph.nodes || graph._nodes;
    const gate = nodes.find((n) => n.type === "GoanPauseGate");
    if (!gate) return "no GoanPauseGate";
    let saver = nodes.find((n) => n.type === "SaveImage" && n.title === "goan e2e frames");
    if (!saver) {
      saver = LiteGraph.createNode("SaveImage");
      saver.title = "goan e2e frames";
      saver.pos = [gate.pos[0] + 40, gate.pos[1] + 420];
      graph.add(saver);
      const oi = gate.outputs.findIndex((o) => o.name === "images" || o.type === "IMAGE");
      gate.connect(oi, saver, 0);
    }
    saver.widgets.find((w) => w.name === "filename_prefix").value = prefix;
    graph.setDirtyCanvas(true, true);
    return `SaveImage ${saver.id} <- GoanPauseGate ${gate.id}`;
  }, prefix);
}

async function graphSummary(page) {
  return page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    const graph = app.rootGraph || app.graph;
    return (graph.nodes || graph._nodes).map((n) => ({
      id: n.id,
      type: n.type,
      widgets: (n.widgets || []).map((w) => ({ name: w.name, label: w.label || null, value: typeof w.value === "object" ? null : w.value, disabled: !!w.disabled })),
    }));
  });
}

/** Bring a node of `type` to the middle of the canvas, for the screenshots. */
async function centerOn(page, type) {
  await page.evaluate((type) => {
    const app = window.comfyAPI.app.app;
    const graph = app.rootGraph || app.graph;
    const n = (graph.nodes || graph._nodes).find((x) => x.type === type);
    if (n && app.canvas.centerOnNode) {
      app.canvas.centerOnNode(n);
      graph.setDirtyCanvas(true, true);
    }
  }, type);
  await page.waitForTimeout(200);
}

async function knownPromptIds(page) {
  return page.evaluate(async () => {
    const api = window.comfyAPI.api.api;
    const q = await (await api.fetchApi("/queue")).json();
    const h = await (await api.fetchApi("/history?max_items=1000")).json();
    return [...q.queue_running, ...q.queue_pending].map((i) => i[1]).concat(Object.keys(h));
  });
}

async function queueAndGetId(page) {
  const before = new Set(await knownPromptIds(page));
  await page.evaluate(() => window.comfyAPI.app.app.queuePrompt(0, 1));
  return waitFor(async () => (await knownPromptIds(page)).find((id) => !before.has(id)), "the queued prompt", 30000);
}

async function history(page, id) {
  return page.evaluate(async (id) => {
    const api = window.comfyAPI.api.api;
    const h = await (await api.fetchApi(`/history/${id}`)).json();
    return h[id] || null;
  }, id);
}

async function waitDone(page, id, timeout = TIMEOUT) {
  const h = await waitFor(async () => {
    const e = await history(page, id);
    return e && e.status && e.status.completed !== undefined && (e.status.status_str === "success" || e.status.status_str === "error") ? e : null;
  }, `prompt ${id} to finish`, timeout, 500);
  return h;
}

async function openGoanTab(page) {
  if (await page.locator("[data-goan-panel]").isVisible()) return; // open already: a click would close it
  const sel = ".goan-tab-button, [data-testid='goan-tab-button']";
  await page.locator(sel).first().click();
  await page.locator("[data-goan-panel]").waitFor({ state: "visible", timeout: 15000 });
}

async function phasePause(page, context) {
  await openUi(page);
  await snap(page, "ui-loaded");

  // A workflow JSON dropped on the canvas keeps ComfyUI's own behaviour: it loads the graph.
  const wfBytes = readFileSync(cfg.workflow);
  await dropFile(page, basename(cfg.workflow), wfBytes, "application/json");
  const want = JSON.parse(wfBytes.toString()).nodes.length;
  await waitFor(async () => (await graphSummary(page)).length === want && (await graphSummary(page)).some((n) => n.type === "GoanSegmentSampler"), "the dropped workflow to load", 20000);
  result.widgets_set = await setWidgets(page, cfg.widgets, cfg.prefer);
  result.frame_saver = await addFrameSaver(page, `goan_e2e_${cfg.tag}_paused`);
  await page.waitForTimeout(300);
  const g0 = await graphSummary(page);
  const sampler = g0.find((n) => n.type === "GoanSegmentSampler");
  const secs = sampler.widgets.find((w) => w.name === "seconds");
  check("fresh label", !secs.label || secs.label === "Video Length (s)", secs);
  // Display names on the widgets, on every frontend (the pinned one ignores display_name).
  result.sampler_labels = Object.fromEntries(["gs", "rs", "lws"].map((n) => [n, (sampler.widgets.find((w) => w.name === n) || {}).label || null]));
  check("sampler widgets show their display names", result.sampler_labels.gs === "Distilled CFG" && result.sampler_labels.rs === "CFG Rescale" && result.sampler_labels.lws === "Latent Window Size", result.sampler_labels);
  const pw = sampler.widgets.find((w) => w.name === "goan_pause");
  check("node pause button disabled while idle", pw && pw.disabled, pw);
  result.vue_nodes = await page.evaluate(() => {
    const m = window.comfyAPI.app.app.extensionManager;
    return !!(m && m.setting && typeof m.setting.get === "function" && m.setting.get("Comfy.VueNodes.Enabled"));
  });
  check("Vue nodes as configured", result.vue_nodes === !!cfg.vue_nodes, result.vue_nodes);
  // With Vue nodes the node's pause button is a DOM button inside the node's element.
  const domPause = page.locator(`[data-node-id="${sampler.id}"] [data-widget-name="goan_pause"] button`);
  if (cfg.vue_nodes) check("node pause DOM button, disabled while idle", (await domPause.count()) === 1 && !(await domPause.isEnabled()), await domPause.count());
  // The action-bar button is found by the class goan registers it with (current frontends keep it).
  result.has_action_bar_button = await page.locator("button.goan-action-pause").count() > 0;
  await centerOn(page, "GoanSegmentSampler");
  await snap(page, "workflow-loaded");

  // The run we pause from the goan tab.
  await addFrameSaver(page, `goan_e2e_${cfg.tag}_paused`);
  await openGoanTab(page);
  await page.evaluate(() => {
    window.__goanProgressEvents = 0;
    window.comfyAPI.api.api.addEventListener("progress", () => { window.__goanProgressEvents++; });
  });
  const runId = await queueAndGetId(page);
  result.paused_prompt_id = runId;
  const pauseBtn = page.locator(`.goan-job[data-prompt-id="${runId}"] button[data-goan-action="pause"]`);
  await waitFor(async () => (await pauseBtn.count()) && (await pauseBtn.isEnabled()), "the pause button of the running job", 120000, 100);
  // wait for at least one sampler step so the pause lands mid-job
  await waitFor(() => page.evaluate((id) => { const j = window.__goan.jobOf(id); return j && j.status === "running" && ((j.progress && j.progress.value >= 1) || j.step >= 1); }, runId), "a first step", 120000, 50);
  const g1 = await graphSummary(page);
  const runPw = g1.find((n) => n.type === "GoanSegmentSampler").widgets.find((w) => w.name === "goan_pause");
  result.node_pause_enabled_while_running = !runPw.disabled;
  result.jobs_api = await page.evaluate(() => window.__goan.jobsApi());
  await centerOn(page, "GoanSegmentSampler");
  await snap(page, "running-goan-tab");
  const downloadP = page.waitForEvent("download", { timeout: TIMEOUT });
  if (cfg.vue_nodes) {
    // Vue nodes: pause with the node's own DOM button, which turns enabled, then reads "Pausing task...".
    await waitFor(async () => domPause.isEnabled(), "the node's DOM pause button to be enabled", 30000, 50);
    result.node_pause_dom_enabled_while_running = true;
    await domPause.click();
    result.node_pause_dom_label = await waitFor(async () => {
      const t = (await domPause.textContent()).trim();
      return t.startsWith("Pausing") ? t : null;
    }, "the node's DOM button to read Pausing task...", 10000, 20).catch(() => null); // brief when a step is short
  } else {
    await pressPauseInTab(page, pauseBtn);
  }
  await waitFor(async () => (await toasts(page)).goan.some((t) => t.includes("Pausing task...")), "the Pausing task... toast", 10000, 50);
  await snap(page, "pausing");
  await afterPause(page, context, runId, downloadP);
  if (cfg.subgraph) result.subgraph = await pauseInSubgraph(page);
}

/**
 * Press and release the goan tab's pause button while the row updates many times a second (issue 12
 * item 16: a row rebuilt on every progress event lost a click whose press and release hit different
 * buttons).
 */
async function pressPauseInTab(page, pauseBtn) {
  await pauseBtn.scrollIntoViewIfNeeded();
  const btn = await pauseBtn.elementHandle();
  const bb = await btn.boundingBox();
  await page.mouse.move(bb.x + bb.width / 2, bb.y + bb.height / 2);
  const counters = () => page.evaluate(() => ({ progress: window.__goanProgressEvents || 0, draws: window.__goanPanelStats.draws, made: window.__goanPanelStats.rowsMade }));
  const c0 = await counters();
  await page.mouse.down();
  try {
    await waitFor(async () => (await counters()).progress >= c0.progress + 5, "progress events during the press", 10000, 20);
  } catch { /* checked below */ }
  const c1 = await counters();
  const sameButton = await btn.evaluate((b) => b.isConnected && !b.disabled);
  await page.mouse.up();
  result.press = { progress_events: c1.progress - c0.progress, panel_draws: c1.draws - c0.draws, rows_made: c1.made - c0.made, same_button: sameButton };
  check("progress during the press", result.press.progress_events >= 2 && result.press.panel_draws >= 2, result.press);
  check("the pause button stayed the same element during the press", sameButton && result.press.rows_made === 0, result.press);
}

/** From the pause on: the download, the paused row, the reference run, cancel, and Load to resume. */
async function afterPause(page, context, runId, downloadP) {
  // The download, or a clear failure when the job ended before the pause landed.
  const dl = await Promise.race([
    downloadP,
    waitDone(page, runId).then(async (h) => {
      await page.waitForTimeout(10000);
      fail(`the job ended (${h.status.status_str}) before the pause landed: make the job longer`);
    }),
  ]);
  const name = dl.suggestedFilename();
  check("download is a .goan_resume", name.endsWith(".goan_resume"), name);
  mkdirSync(cfg.download_dir, { recursive: true });
  const saved = join(cfg.download_dir, name);
  await dl.saveAs(saved);
  result.download = saved;
  await waitFor(async () => (await page.locator(`.goan-job[data-prompt-id="${runId}"] [data-goan-status="paused"]`).count()) > 0, "the job to show Paused", 30000);
  const row = page.locator(`.goan-job[data-prompt-id="${runId}"]`);
  result.paused_row_controls = await row.locator("button[data-goan-action]").evaluateAll((bs) => bs.map((b) => ({ action: b.dataset.goanAction, disabled: b.disabled })));
  check("paused row: pause disabled, download enabled", result.paused_row_controls.find((c) => c.action === "pause").disabled && !result.paused_row_controls.find((c) => c.action === "download").disabled, result.paused_row_controls);
  check("download again link", (await row.locator("a[data-goan-link='download']").count()) === 1, "missing");
  // The narrow panel shows the whole state and ids (they wrap), each with a tooltip.
  result.row_clipping = await row.evaluate((r) => Array.from(r.querySelectorAll(".goan-status, .goan-sub:not([hidden])")).filter((e) => !e.querySelector("a")).map((e) => ({
    text: e.textContent, title: e.title, clipped: e.scrollWidth > e.clientWidth + 1, panel_width: r.clientWidth })));
  check("row text is not cut off", result.row_clipping.length >= 2 && result.row_clipping.every((x) => !x.clipped && (x.title || !x.text)), result.row_clipping);
  const againP = page.waitForEvent("download", { timeout: 30000 });
  await row.locator("a[data-goan-link='download']").click();
  const again = await againP;
  check("download again gives the same file", again.suggestedFilename() === name, again.suggestedFilename());
  const ph = await waitDone(page, runId);
  result.paused_run = { prompt_id: runId, status: ph.status.status_str, outputs: ph.outputs };
  await page.waitForTimeout(500);
  await snap(page, "paused-downloaded");

  // Reference: the same job, uninterrupted (after the paused one: a paused run makes ComfyUI run the
  // sampler again instead of reusing a cached result).
  await addFrameSaver(page, `goan_e2e_${cfg.tag}_reference`);
  const refId = await queueAndGetId(page);
  const refH = await waitDone(page, refId);
  check("reference run succeeded", refH.status.status_str === "success", refH.status);
  result.reference = { prompt_id: refId, outputs: refH.outputs };
  await page.waitForTimeout(500);
  await snap(page, "reference-finished");

  // Cancel from the goan tab: a queued job leaves the queue, a running one is interrupted (its
  // fail-safe file stays in the list, with no automatic download).
  await setWidgets(page, { GoanSegmentSampler: { seed: 4242 } }); // not the cached reference result
  await addFrameSaver(page, `goan_e2e_${cfg.tag}_cancelled`);
  let downloads = 0;
  const countDownloads = () => downloads++;
  page.on("download", countDownloads);
  const cancels = []; // the requests the two Cancel clicks send: ComfyUI's job API, or /queue and /interrupt
  const recordCancel = (r) => {
    const path = new URL(r.url()).pathname;
    if (r.method() === "POST" && /\/(cancel|interrupt|queue)$/.test(path)) cancels.push(path);
  };
  const runA = await queueAndGetId(page);
  const runB = await queueAndGetId(page);
  const cancelB = page.locator(`.goan-job[data-prompt-id="${runB}"] button[data-goan-action="cancel"]`);
  await waitFor(async () => (await cancelB.count()) && (await cancelB.isEnabled()), "the queued job's cancel button", 30000, 100);
  page.on("request", recordCancel);
  await cancelB.click();
  await waitFor(async () => (await page.locator(`.goan-job[data-prompt-id="${runB}"] [data-goan-status="cancelled"]`).count()) > 0, "the queued job to show Cancelled", 30000);
  await waitFor(() => page.evaluate((id) => { const j = window.__goan.jobOf(id); return j && j.status === "running" && ((j.progress && j.progress.value >= 1) || j.step >= 1); }, runA), "the first job to run", 120000, 50);
  await page.locator(`.goan-job[data-prompt-id="${runA}"] button[data-goan-action="cancel"]`).click();
  const endA = await waitFor(() => page.evaluate((id) => { const j = window.__goan.jobOf(id); return j && (j.status === "stopped" || j.status === "cancelled") && j.file ? j.status : null; }, runA), "the running job to stop with a fail-safe file", 60000);
  const hA = await waitDone(page, runA);
  page.off("request", recordCancel);
  result.cancel = { queued: "cancelled", running: endA, running_history: hA.status.status_str, downloads, requests: cancels,
    ids: [runB, runA] };
  check("cancel: no automatic download of the fail-safe file", downloads === 0, downloads);
  page.off("download", countDownloads);
  await page.waitForTimeout(500);
  await snap(page, "cancelled");

  // "Load to resume" in the job list brings the paused job's file back into the canvas.
  await page.locator(`.goan-job[data-prompt-id="${runId}"] button[data-goan-action="load"]`).click();
  await waitFor(async () => (await toasts(page)).goan.some((x) => x.includes("Resume state loaded. Add to queue to continue.")), "the resume-loaded toast (job list)", 60000);
  const g2 = await graphSummary(page);
  const l2 = g2.find((n) => n.type === "GoanSegmentSampler").widgets.find((w) => w.name === "seconds");
  check("job list load: Additional Video Length label", l2.label === "Additional Video Length (s)", l2);
  check("job list load: GoanLoadResume added", g2.some((n) => n.type === "GoanLoadResume"), g2.map((n) => n.type));
  await centerOn(page, "GoanSegmentSampler");
  await snap(page, "loaded-from-job-list");
}

/**
 * The workflow again with its sampler moved into a subgraph: ComfyUI runs it as "<subgraph node>:<sampler>";
 * the sampler's pause button, inside the subgraph, turns enabled and pauses the job.
 */
async function pauseInSubgraph(page) {
  const wf = JSON.parse(readFileSync(cfg.workflow, "utf8"));
  await page.evaluate(async (wf) => window.comfyAPI.app.app.loadGraphData(wf), wf);
  await page.waitForTimeout(1000);
  await setWidgets(page, { ...cfg.widgets, GoanSegmentSampler: { ...(cfg.widgets || {}).GoanSegmentSampler, seed: 5151 } }, cfg.prefer);
  const ids = await page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    const g = app.rootGraph || app.graph;
    const sampler = g.nodes.find((n) => n.type === "GoanSegmentSampler");
    const inner = String(sampler.id);
    const { node } = g.convertToSubgraph(new Set([sampler]));
    return { outer: String(node.id), inner, samplers: window.__goan.samplers() };
  });
  const executionId = `${ids.outer}:${ids.inner}`;
  check("the sampler inside the subgraph is found under its execution id", ids.samplers.some((x) => x.includes(executionId)), ids);
  await page.evaluate(() => {
    window.__e2eSubgraphPause = () => { // the pause widget of the sampler inside the subgraph
      const app = window.comfyAPI.app.app;
      const sg = (app.rootGraph || app.graph).nodes.find((n) => n.subgraph);
      const inner = sg && sg.subgraph.nodes.find((n) => n.type === "GoanSegmentSampler");
      return inner && inner.widgets.find((w) => w.name === "goan_pause");
    };
  });
  await openGoanTab(page);
  const runId = await queueAndGetId(page);
  const nodeId = await waitFor(() => page.evaluate((id) => {
    const j = window.__goan.jobOf(id);
    return j && j.status === "running" ? j.node_id : null;
  }, runId), "the subgraph's job to run", 120000, 100);
  check("the job runs the sampler inside the subgraph", String(nodeId) === executionId, { nodeId, executionId });
  await waitFor(() => page.evaluate(() => { const w = window.__e2eSubgraphPause(); return !!(w && !w.disabled); }),
    "the subgraph sampler's pause button to be enabled", 60000, 100);
  const downloadP = page.waitForEvent("download", { timeout: TIMEOUT });
  await page.evaluate(() => window.__e2eSubgraphPause().callback()); // as a click on it does
  const dl = await downloadP;
  const h = await waitDone(page, runId);
  await snap(page, "subgraph-paused");
  return { execution_id: executionId, node_id: nodeId, download: dl.suggestedFilename(), status: h.status.status_str };
}

async function phaseResume(page) {
  await openUi(page);
  await snap(page, "ui-after-restart");

  if (cfg.bad_file) {
    // A damaged file opened through the file menu's picker (app.handleFile): the server's message.
    const accept = await page.getAttribute("#comfy-file-input", "accept");
    check("file menu accepts .goan_resume", accept && accept.includes(".goan_resume"), accept);
    await page.setInputFiles("#comfy-file-input", { name: "broken.goan_resume", mimeType: "", buffer: readFileSync(cfg.bad_file) });
    const errCount = async () => (await toasts(page)).goan.filter((x) => x.startsWith("error|")).length;
    await waitFor(async () => (await errCount()) >= 1, "the bad-file error toast (file menu)", 20000);
    result.bad_file_toast = (await toasts(page)).goan.find((x) => x.startsWith("error|"));
    // The same file pasted on the canvas.
    await page.evaluate(async (b64) => {
      const bin = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const dt = new DataTransfer();
      dt.items.add(new File([bin], "pasted.goan_resume"));
      const ev = new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true });
      (document.querySelector("#graph-canvas") || document.body).dispatchEvent(ev);
    }, readFileSync(cfg.bad_file).toString("base64"));
    await waitFor(async () => (await toasts(page)).goan.some((x) => x.startsWith("error|") && x.includes("pasted.goan_resume")), "the bad-file error toast (paste)", 20000);
    await page.waitForTimeout(400);
    await snap(page, "bad-file-error");
  }

  const bytes = readFileSync(cfg.resume_file);
  await dropFile(page, basename(cfg.resume_file), bytes);
  const okToast = await waitFor(async () => (await toasts(page)).goan.find((x) => x.includes("Resume state loaded. Add to queue to continue.")), "the resume-loaded toast", 60000);
  result.resume_toast = okToast;
  // Every goan toast leaves after a finite lifetime.
  result.toast_lives = await page.evaluate(() => (window.__goanToasts || []).map((t) => t.life));
  check("every toast has a lifetime", result.toast_lives.length && result.toast_lives.every((l) => Number.isFinite(l) && l > 0 && l <= 15000), result.toast_lives);
  result.toast_dom = (await toasts(page)).dom;
  check("toast visible on the page", result.toast_dom.some((t) => t.includes("Resume state loaded. Add to queue to continue.")), result.toast_dom);
  await page.waitForTimeout(500);
  const g = await graphSummary(page);
  result.restored_graph = g;
  const loader = g.find((n) => n.type === "GoanLoadResume");
  check("GoanLoadResume present", !!loader, g.map((n) => n.type));
  const rf = loader.widgets.find((w) => w.name === "resume_file");
  check("resume_file points at the upload", typeof rf.value === "string" && rf.value.startsWith("goan_resume/") && rf.value.endsWith(".goan_resume"), rf);
  check("upload button on GoanLoadResume", loader.widgets.some((w) => w.name === "goan_upload"), loader.widgets);
  const sampler = g.find((n) => n.type === "GoanSegmentSampler");
  const secs = sampler.widgets.find((w) => w.name === "seconds");
  check("Additional Video Length label", secs.label === "Additional Video Length (s)", secs);
  check("Additional length is 0", Number(secs.value) === 0, secs);
  await centerOn(page, "GoanSegmentSampler");
  await snap(page, "resume-loaded");

  // GoanLoadResume's own upload button (its hidden file input): the combo takes the new name.
  const input = page.locator(`input[type=file][data-goan-upload="${loader.id}"]`);
  check("upload input accepts .goan_resume", (await input.getAttribute("accept")) === ".goan_resume", await input.getAttribute("accept"));
  const upload = { name: "uploaded-again.goan_resume", mimeType: "", buffer: bytes };
  if (cfg.vue_nodes) {
    // Vue nodes: the node's DOM button opens the file chooser (the node must be on screen to be drawn)
    await centerOn(page, "GoanLoadResume");
    const button = page.locator(`[data-node-id="${loader.id}"] [data-widget-name="goan_upload"] button`);
    const [chooser] = await Promise.all([page.waitForEvent("filechooser", { timeout: 30000 }), button.click({ timeout: 30000 })]);
    await chooser.setFiles(upload);
  } else {
    await input.setInputFiles(upload);
  }
  const uploaded = await waitFor(async () => {
    const v = (await graphSummary(page)).find((n) => n.id === loader.id).widgets.find((w) => w.name === "resume_file").value;
    return v !== rf.value && String(v).includes("uploaded-again") ? v : null;
  }, "the upload button to set the combo", 30000);
  result.node_upload_value = uploaded;

  result.frame_saver = await addFrameSaver(page, `goan_e2e_${cfg.tag}_resumed`);
  await openGoanTab(page);
  const id = await queueAndGetId(page);
  const h = await waitDone(page, id);
  check("resumed run succeeded", h.status.status_str === "success", h.status);
  result.resumed = { prompt_id: id, outputs: h.outputs };
  await page.waitForTimeout(500);
  await snap(page, "resumed-finished");

  // The example resume workflow: the label follows the GoanLoadResume link, with no file dropped.
  await page.evaluate(async () => {
    const app = window.comfyAPI.app.app;
    const wf = await (await window.comfyAPI.api.api.fetchApi("/goan/workflows/goan_resume.json")).json();
    await app.loadGraphData(wf);
  });
  await page.waitForTimeout(500);
  const ex = (await graphSummary(page)).find((n) => n.type === "GoanSegmentSampler").widgets.find((w) => w.name === "seconds");
  check("example resume workflow: Additional Video Length label", ex.label === "Additional Video Length (s)", ex);
  await centerOn(page, "GoanSegmentSampler");
  await snap(page, "example-resume-workflow");
}

const browser = await chromium.launch({
  executablePath: cfg.chromium || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
let code = 0;
const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1440, height: 900 } });
const page = await context.newPage();
page.on("console", (m) => { if (m.type() === "error") result.console_errors.push(m.text().slice(0, 500)); });
page.on("response", async (r) => {
  if (r.status() >= 400) result.console_errors.push(`HTTP ${r.status()} ${r.url()}`);
  if (r.url().includes("/goan/pause")) {
    let body = "";
    try { body = await r.text(); } catch { /* gone */ }
    (result.pause_requests ||= []).push(`${new Date().toISOString()} ${r.status()} ${body}`);
  }
});
page.on("pageerror", (e) => result.console_errors.push(`pageerror: ${String(e && e.stack ? e.stack : e).slice(0, 800)}`));
try {
  if (cfg.phase === "pause") await phasePause(page, context);
  else if (cfg.phase === "resume") await phaseResume(page);
  else fail(`unknown phase ${cfg.phase}`);
} catch (e) {
  code = 1;
  result.error = String(e && e.stack ? e.stack : e);
  try { await snap(page, "failure"); } catch { /* the page may be gone */ }
  console.log(`FAIL ${String(e && e.message ? e.message : e)}`);
} finally {
  await browser.close();
}
writeFileSync(join(ART, `${cfg.tag}-${cfg.phase}-result.json`), JSON.stringify(result, null, 1));
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(code);
