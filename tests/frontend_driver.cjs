// Drives ComfyUI's real web front end in headless Chromium (playwright-core) for tests/frontend_harness.py.
//
//   node tests/frontend_driver.cjs < job.json > result.json
//
// job: {playwright: <path of the playwright-core package>, chromium: <browser binary>, url: <ComfyUI server>,
//       viewport: [w, h], tasks: [task, ...]}
// task: {name, build: <graph spec>}   build the graph with LiteGraph, lay it out, serialize, then load that back
//       {name, load: <UI workflow>}   load a saved workflow as a drag-and-drop would
//       both take screenshot: <png path> (optional) and report what the page showed.
// result: {ok, setup: {dismissed: [...]}, tasks: [{name, workflow, prompt, widgets: {node id: {name: value}},
//          problems: {...}, ...}], error?}
//
// A graph spec: {nodes: [{key, type, title?, width?, height?, column?, widgets: {name: value}}],
//                links: [[from_key, output_name, to_key, input_name], ...]}
// The page does all the building with the front end's own classes, so the saved JSON is exactly what the front end
// itself writes (app.graph.serialize()), with every field its schema wants.
"use strict";

const fs = require("fs");

const LAYOUT = {margin: 40, columnGap: 80, rowGap: 50};

async function main() {
  const job = JSON.parse(fs.readFileSync(0, "utf8"));
  const {chromium} = require(job.playwright);
  const browser = await chromium.launch({
    executablePath: job.chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
           "--no-first-run", "--disable-extensions"],
  });
  const consoleLines = [];
  const result = {ok: false, setup: {}, tasks: []};
  try {
    const context = await browser.newContext({viewport: {width: job.viewport[0], height: job.viewport[1]}});
    // nothing leaves the machine: the page asks api.comfy.org for release notes and the like; those are refused
    const serverHost = new URL(job.url).host;
    result.blocked = [];
    await context.route("**/*", (route) => {
      const url = new URL(route.request().url());
      if (url.host === serverHost || url.protocol === "data:" || url.protocol === "blob:") return route.continue();
      result.blocked.push(url.origin + url.pathname);
      return route.abort();
    });
    const page = await context.newPage();
    page.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`));
    page.on("pageerror", (err) => consoleLines.push(`pageerror: ${err.message}`));
    page.on("dialog", async (dialog) => {  // window.alert & co. would block the page: record and dismiss
      consoleLines.push(`dialog: ${dialog.message()}`);
      await dialog.dismiss();
    });
    result.setup = await openApp(page, job.url);
    for (const task of job.tasks) {
      consoleLines.length = 0;
      const out = {name: task.name};
      let workflow = task.load;
      if (task.build) {
        await page.evaluate(createGraph, task.build);
        await page.waitForTimeout(1500);  // Load Image previews arrive and resize their nodes
        out.built = await page.evaluate(layOutGraph, {spec: task.build, layout: LAYOUT});
        workflow = out.built.workflow;
      }
      Object.assign(out, await loadAndInspect(page, workflow, task.name));
      if (task.screenshot) {
        await page.screenshot({path: task.screenshot});
      }
      out.console = consoleLines.slice();
      result.tasks.push(out);
    }
    result.ok = true;
  } catch (err) {
    result.error = String(err && err.stack || err);
    result.console = consoleLines.slice();
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result));
}

// Open the page, wait for the app, and close what a first visit pops up (the template browser).
async function openApp(page, url) {
  // as a returning user who closed the "Nodes 2.0" banner (a screenshot is about the workflow, not the banner)
  await page.addInitScript(() => window.localStorage.setItem("vueNodesBannerDismissed", "true"));
  // a user who never finished the tutorial gets the template browser, a moment after start-up
  const seen = await page.request.get(`${url}/settings/Comfy.TutorialCompleted`);
  const firstVisit = !(await seen.json());
  await page.goto(url, {waitUntil: "domcontentloaded"});
  await page.waitForFunction(() => window.app && window.app.graph && window.app.canvas && window.LiteGraph
                             && Object.keys(window.LiteGraph.registered_node_types).length > 100,
                             null, {timeout: 120000});
  if (firstVisit) await page.waitForSelector(".p-dialog", {timeout: 30000}).catch(() => null);
  await page.waitForTimeout(500);
  const dismissed = await closeDialogs(page);
  await page.evaluate(async () => {
    const settings = window.app.extensionManager.setting;
    await settings.set("Comfy.Minimap.Visible", false);
    // the FPS counter and the zoom menu's lagging percentage would make every screenshot differ
    await settings.set("Comfy.Graph.CanvasInfo", false);
    await settings.set("Comfy.Graph.CanvasMenu", false);
    // the canvas drops all text below 50 % zoom by default; a whole-graph screenshot needs it
    await settings.set("LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.2);
  });
  await page.mouse.move(600, 700);  // no hover tooltip in the screenshots
  return {firstVisit, dismissed, frontendVersion: await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ || null)};
}

async function visibleDialogs(page) {
  return page.evaluate(() => [...document.querySelectorAll(".p-dialog")]
    .filter((d) => d.offsetParent !== null || d.getClientRects().length > 0)
    .map((d) => d.innerText.trim().slice(0, 400)));
}

async function closeDialogs(page) {
  const closed = [];
  for (let i = 0; i < 5; i++) {
    const open = await visibleDialogs(page);
    if (!open.length) break;
    closed.push(...open);
    // PrimeVue's own close button, else the dialog's "x" icon button (the template browser draws its own)
    const button = page.locator(".p-dialog .p-dialog-close-button:visible, .p-dialog button:visible:has(.pi-times)")
      .first();
    if (await button.count()) {
      await button.click();
    } else {
      await page.keyboard.press("Escape");
    }
    await page.waitForTimeout(400);
  }
  return closed;
}

async function toastTexts(page) {
  return page.evaluate(() => [...document.querySelectorAll(".p-toast-message")].map((t) => t.innerText.trim()));
}

async function closeToasts(page) {
  await page.evaluate(() => document.querySelectorAll(".p-toast-message .p-toast-close-button")
    .forEach((b) => b.click()));
  await page.waitForTimeout(300);
}

// Load a UI workflow the way a dropped file is loaded, then report what a person would see.
async function loadAndInspect(page, workflow, name) {
  await closeToasts(page);
  await page.evaluate(async ([wf, name]) => {
    await window.app.loadGraphData(wf, true, true, name);
  }, [workflow, name]);
  await page.waitForTimeout(1500);  // toasts and dialogs come on the next ticks, Load Image previews a bit later
  const toasts = await toastTexts(page);
  const dialogs = await visibleDialogs(page);
  const state = await page.evaluate(inspectGraph);
  await closeDialogs(page);
  await closeToasts(page);
  await page.evaluate((rects) => {  // the whole graph, as large as the canvas allows
    const x0 = Math.min(...rects.map((r) => r.rect[0])), y0 = Math.min(...rects.map((r) => r.rect[1]));
    const x1 = Math.max(...rects.map((r) => r.rect[0] + r.rect[2]));
    const y1 = Math.max(...rects.map((r) => r.rect[1] + r.rect[3]));
    const ds = window.app.canvas.ds;
    ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], {zoom: 0.92});
    // again with room (in screen pixels) for the side bar on the left, the floating Run toolbar above and the
    // view controls below, which the page draws over the canvas
    const [left, right, top, bottom] = [80, 20, 110, 60].map((px) => px / ds.scale);
    ds.fitToBounds([x0 - left, y0 - top, x1 - x0 + left + right, y1 - y0 + top + bottom], {zoom: 0.97});
    window.app.canvas.setDirty(true, true);
  }, state.rects);
  await page.waitForTimeout(500);
  return {toasts, dialogs, ...state};
}

// In the page: what the loaded graph looks like to the front end.
async function inspectGraph() {
  const {app, LiteGraph} = window;
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const rects = app.graph.nodes.map((n) => ({id: n.id, type: n.type,
                                             rect: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]}));
  const overlaps = [];
  for (let i = 0; i < rects.length; i++) {
    for (let j = i + 1; j < rects.length; j++) {
      const [a, b] = [rects[i].rect, rects[j].rect];
      const w = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
      const h = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
      if (w > 0 && h > 0) overlaps.push([rects[i].id, rects[j].id, w, h]);
    }
  }
  const missing = app.graph.nodes.filter((n) => !(n.type in LiteGraph.registered_node_types) || n.has_errors)
    .map((n) => n.type);
  // each node's widgets by name, as the front end holds them (what a saved value landed on)
  const widgets = Object.fromEntries(app.graph.nodes.map(
    (n) => [n.id, Object.fromEntries((n.widgets || []).map((w) => [w.name, w.value]))]));
  const prompt = await app.graphToPrompt();
  return {rects, overlaps, missing, widgets, workflowAfterLoad: app.graph.serialize(), prompt: prompt.output};
}

// In the page: create a spec's nodes with the front end's own node classes, set their widgets, connect them.
function createGraph(spec) {
  const {app, LiteGraph} = window;
  app.graph.clear();
  const byKey = {};
  for (const item of spec.nodes) {
    const node = LiteGraph.createNode(item.type);
    if (!node) throw new Error(`the front end has no node type ${item.type}`);
    if (item.title) node.title = item.title;
    app.graph.add(node);
    for (const [name, value] of Object.entries(item.widgets || {})) {
      const widget = (node.widgets || []).find((w) => w.name === name);
      if (!widget) throw new Error(`${item.type} has no widget ${name} (has ${node.widgets.map((w) => w.name)})`);
      widget.value = value;
    }
    byKey[item.key] = node;
  }
  for (const [fromKey, outName, toKey, inName] of spec.links) {
    const src = byKey[fromKey], dst = byKey[toKey];
    const out = src.findOutputSlot(outName), inp = dst.findInputSlot(inName);
    if (out < 0 || inp < 0) throw new Error(`no slot for link ${fromKey}.${outName} -> ${toKey}.${inName}`);
    if (!src.connect(out, dst, inp)) {
      throw new Error(`the front end refused ${fromKey}.${outName} -> ${toKey}.${inName}`);
    }
  }
  window.__fireredKeys = Object.fromEntries(Object.entries(byKey).map(([k, n]) => [k, n.id]));
}

// In the page: size every node (at least its computed size), place them in columns, serialize the graph.
// Columns: the spec's `column`, else the depth (longest chain of links from a node without inputs); nodes stack
// top-down in spec order, each column as wide as its widest node.
function layOutGraph({spec, layout}) {
  const {app, LiteGraph} = window;
  const {margin, columnGap, rowGap} = layout;
  const titleHeight = LiteGraph.NODE_TITLE_HEIGHT;
  const nodeOf = (key) => app.graph.getNodeById(window.__fireredKeys[key]);
  const parents = {};
  for (const [from, , to] of spec.links) (parents[to] = parents[to] || []).push(from);
  const depth = {};
  const depthOf = (key) => depth[key] ?? (depth[key] = Math.max(-1, ...(parents[key] || []).map(depthOf)) + 1);
  const columns = [];
  for (const item of spec.nodes) {
    const node = nodeOf(item.key);
    const size = node.computeSize();
    node.setSize([Math.max(size[0], node.size[0], item.width || 0),
                  Math.max(size[1], node.size[1], item.height || 0)]);
    const c = item.column ?? depthOf(item.key);
    (columns[c] = columns[c] || []).push(node);
  }
  let x = margin;
  for (const column of columns.filter(Boolean)) {
    let y = margin + titleHeight;
    for (const node of column) {
      node.pos = [x, y];
      y += node.size[1] + titleHeight + rowGap;
    }
    x += Math.max(...column.map((n) => n.size[0])) + columnGap;
  }
  app.graph.setDirtyCanvas(true, true);
  return {workflow: app.graph.serialize()};
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ok: false, error: String(err && err.stack || err)}));
});
