// Browser tests of the console in real Chromium against a real `loom serve`.
//
// The suite builds the loom binary (go build ./cmd/loom; set LOOM_BIN to use a prebuilt one), serves it on a
// free loopback port with a fresh data directory, and drives the embedded console at /console/ through
// playwright-core with the system's Chromium (/usr/bin/chromium, or CHROMIUM). It never builds web/dist: run
// `npm run build` first when src/ changed.
//

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const TIMEOUT = 10_000;

/** freePort asks the kernel for an unused loopback port. */
async function freePort() {
  const srv = createServer();
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

/** startLoom starts `loom serve` and resolves once /readyz answers 200. */
async function startLoom(bin, dataDir) {
  const port = await freePort();
  const proc = spawn(bin, ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir], {
    cwd: dirname(dataDir),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  proc.stdout.on("data", (b) => (log += b));
  proc.stderr.on("data", (b) => (log += b));
  let exited = null;
  proc.on("exit", (code, signal) => (exited = { code, signal }));
  proc.on("error", (err) => (exited = { error: err.message }));
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error(`loom serve exited (${JSON.stringify(exited)}) before ready:\n${log}`);
    if (Date.now() > deadline) throw new Error(`loom serve not ready after 30 s:\n${log}`);
    try {
      const res = await fetch(`${base}/readyz`);
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { proc, base, log: () => log };
}

/** stop ends a child process: SIGTERM, then SIGKILL after 5 s. */
async function stop(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const done = new Promise((r) => proc.once("exit", r));
  proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), 5_000);
  await done;
  clearTimeout(timer);
}

/** settled waits until a status line has left "busy" and returns its state and text. */
async function settled(page, testId) {
  await page.waitForFunction(
    (id) => {
      const el = document.querySelector(`[data-testid="${id}"]`);
      return el && el.dataset.state && el.dataset.state !== "busy";
    },
    testId,
    { timeout: TIMEOUT },
  );
  const el = page.getByTestId(testId);
  return { state: await el.getAttribute("data-state"), text: await el.textContent() };
}

/** assertOk checks that a status line reports success. */
function assertOk(status, what) {
  assert.equal(status.state, "ok", `${what}: ${status.text}`);
}

describe("console", () => {
  let tmp, loom, context, crossOrigin;

  before(async () => {
    tmp = await mkdtemp(join(tmpdir(), "loom-console-"));
    let bin = process.env.LOOM_BIN;
    if (!bin) {
      bin = join(tmp, "loom");
      await promisify(execFile)("go", ["build", "-o", bin, "./cmd/loom"], { cwd: repoRoot });
    }
    loom = await startLoom(bin, join(tmp, "data"));
    const consolePage = await fetch(`${loom.base}/console/`);
    if (consolePage.status !== 200) {
      throw new Error(`GET /console/: ${consolePage.status}; loom serve must set rpcserver.Config.Console = web.Handler()`);
    }
    context = await chromium.launchPersistentContext(join(tmp, "chromium-profile"), {
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      headless: true,
      args: CHROMIUM_ARGS,
    });
    context.setDefaultTimeout(TIMEOUT);
  });

  after(async () => {
    await context?.close();
    await stop(loom?.proc);
    await new Promise((r) => (crossOrigin ? crossOrigin.close(r) : r()));
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  /** open loads the console in a new tab and collects uncaught page errors. */
  async function open(url = `${loom.base}/`) {
    const page = await context.newPage();
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e));
    await page.goto(url);
    await page.getByTestId("app-ready").waitFor({ state: "visible" });
    return { page, pageErrors };
  }

  it("serves the console at /console/ and redirects / there", async () => {
    const { page, pageErrors } = await open();
    assert.equal(new URL(page.url()).pathname, "/console/");
    assert.equal(await page.title(), "Loom console");
    // The three panels list their resources on load.
    const memory = await settled(page, "ns-list-status");
    const agents = await settled(page, "agent-list-status");
    const blueprints = await settled(page, "bp-list-status");
    assertOk(memory, "ListNamespaces");
    assertOk(agents, "ListAgents");
    assertOk(blueprints, "ListBlueprints");
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("creates a namespace, upserts a record and finds it", async () => {
    const { page } = await open();
    await page.getByTestId("ns-name").fill("notes");
    await page.getByTestId("ns-dimension").fill("64");
    await page.getByTestId("ns-metric").selectOption("1");
    await page.getByTestId("ns-create").click();
    const created = await settled(page, "ns-create-status");
    assertOk(created, "CreateNamespace");

    assert.equal(await page.getByTestId("ns-item").filter({ hasText: "notes" }).count(), 1);
    // Creating selected the namespace for the record and search forms.
    assert.equal(await page.getByTestId("rec-namespace").inputValue(), "notes");

    await page.getByTestId("rec-id").fill("fox-1");
    await page.getByTestId("rec-text").fill("the quick brown fox jumps over the lazy dog");
    await page.getByTestId("rec-upsert").click();
    const upserted = await settled(page, "rec-status");
    assert.equal(upserted.state, "ok", upserted.text);
    assert.match(upserted.text, /fox-1/);

    await page.getByTestId("search-text").fill("quick brown fox");
    await page.getByTestId("search-topk").fill("3");
    await page.getByTestId("search-run").click();
    const searched = await settled(page, "search-status");
    assert.equal(searched.state, "ok", searched.text);
    const hit = page.getByTestId("search-hit").first();
    assert.equal(await hit.getAttribute("data-id"), "fox-1");
    assert.match(await hit.textContent(), /quick brown fox/);
    const score = Number(await hit.getByTestId("search-hit-score").textContent());
    assert.ok(Number.isFinite(score) && score > 0, `score ${score}`);
    await page.close();
  });

  it("shows InvalidArgument with the offending field", async () => {
    const { page } = await open();
    await page.getByTestId("ns-name").fill("Bad Name");
    await page.getByTestId("ns-create").click();
    const status = await settled(page, "ns-create-status");
    // Validation runs before any handler, so this holds whether or not the memory service is built.
    assert.equal(status.state, "error", status.text);
    assert.match(status.text, /^invalid_argument: /);
    assert.match(status.text, /namespace\.name/);
    await page.close();
  });

  it("creates an agent and streams a run", async () => {
    const { page } = await open();
    await page.getByTestId("agent-name").fill("echo");
    await page.getByTestId("agent-instructions").fill("Repeat what you are told.");
    await page.getByTestId("agent-create").click();
    const created = await settled(page, "agent-create-status");
    assertOk(created, "CreateAgent");
    assert.equal(await page.getByTestId("agent-item").filter({ hasText: "echo" }).count(), 1);
    assert.equal(await page.getByTestId("run-agent").inputValue(), "echo");

    // Count the text appended to the output: streamed deltas arrive as several separate appends.
    await page.evaluate(() => {
      window.__deltas = 0;
      new MutationObserver((records) => (window.__deltas += records.length)).observe(
        document.querySelector('[data-testid="run-output"]'),
        { childList: true, characterData: true, subtree: true },
      );
    });
    await page.getByTestId("run-input").fill("weave seven threads into cloth");
    await page.getByTestId("run-start").click();
    const run = await settled(page, "run-status");
    assert.equal(run.state, "ok", run.text);
    assert.match(await page.getByTestId("run-output").textContent(), /seven threads/);
    const deltas = await page.evaluate(() => window.__deltas);
    assert.ok(deltas >= 2, `want several streamed deltas, saw ${deltas} DOM appends`);
    assert.match(await page.getByTestId("run-usage").textContent(), /usage: [1-9]\d* input, [1-9]\d* output tokens/);
    await page.close();
  });

  it("validates a blueprint and shows each error's position", async () => {
    const { page } = await open();
    await page.getByTestId("bp-yaml").fill("name: Not A Valid Name\nsteps: 7\n");
    await page.getByTestId("bp-validate").click();
    const status = await settled(page, "bp-status");
    assert.equal(status.state, "error", status.text);
    // The invalid name sits on line 1, column 7 of the document.
    const nameError = page.locator('[data-testid="bp-error"][data-path="name"]');
    assert.equal(await nameError.count(), 1, await page.getByTestId("bp-errors").textContent());
    assert.equal(await nameError.getAttribute("data-line"), "1");
    assert.ok(Number(await nameError.getAttribute("data-column")) >= 1);
    assert.match(await nameError.textContent(), /^name \[1:\d+\]: /);
    await page.close();
  });

  it("calls the server from another origin (CORS)", async () => {
    // A second server on another port hosts a copy of the console page that names the loom server with
    // <meta name="loom-api"> and loads app.js from it: every RPC is then a cross-origin Connect-Web call.
    const page0 = await (await fetch(`${loom.base}/console/`)).text();
    const html = page0
      .replace("<head>", `<head>\n<meta name="loom-api" content="${loom.base}">`)
      .replace('href="app.css"', `href="${loom.base}/console/app.css"`)
      .replace('src="app.js"', `src="${loom.base}/console/app.js"`);
    crossOrigin = createServer((_, res) => res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end(html));
    await new Promise((r) => crossOrigin.listen(0, "127.0.0.1", r));
    const origin = `http://127.0.0.1:${crossOrigin.address().port}`;
    assert.notEqual(origin, loom.base);

    const page = await context.newPage();
    const allowed = [];
    page.on("response", (res) => {
      if (res.url().startsWith(`${loom.base}/loom.`)) allowed.push(res.headers()["access-control-allow-origin"]);
    });
    await page.goto(origin);
    await page.getByTestId("app-ready").waitFor({ state: "visible" });
    // A blocked call would surface as a network error ("unknown: Failed to fetch"), never as ok.
    assertOk(await settled(page, "ns-list-status"), "cross-origin ListNamespaces");
    assertOk(await settled(page, "agent-list-status"), "cross-origin ListAgents");
    assert.ok(allowed.length >= 1, "no RPC responses seen");
    for (const a of allowed) assert.ok(a === "*" || a === origin, `Access-Control-Allow-Origin: ${a}`);

    // A server-side error also crosses origins intact.
    await page.getByTestId("ns-name").fill("Bad Name");
    await page.getByTestId("ns-create").click();
    assert.match((await settled(page, "ns-create-status")).text, /^invalid_argument: .*namespace\.name/s);
    await page.close();
  });
});
