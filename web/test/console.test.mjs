// Browser tests of the console in real Chromium against a real `loom serve`.
//
// The suite builds the loom binary (go build ./cmd/loom; set LOOM_BIN to use a prebuilt one), serves it on free
// loopback ports with fresh data directories — one server on the embedded defaults (--auth local), and a gateway
// in front of a backend, both with --auth required, API keys made with `loom keys create` and an OIDC issuer whose
// key set is a file the suite writes — and drives the embedded console at /console/ through playwright-core with
// the system's Chromium (/usr/bin/chromium, or CHROMIUM). It never builds web/dist: run `npm run build` first
// when src/ changed.
//
// Every view is checked with axe-core (no serious or critical violations), screenshotted at 1400x900 and 390x844
// into test-output/screenshots (or LOOM_SCREENSHOTS), and checked for content that leaves the viewport
// horizontally and for controls that overlap. Every wait is bounded by a timeout and waits for a condition,
// never for a fixed time.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(here, "..", "..");
const shots = process.env.LOOM_SCREENSHOTS ?? join(here, "..", "test-output", "screenshots");
const axeSource = await readFile(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
const TIMEOUT = 15_000;
const run = promisify(execFile);

/** freePort asks the kernel for an unused loopback port. */
async function freePort() {
  const srv = createServer();
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

/** startLoom starts `loom serve` and resolves once /readyz answers 200. */
async function startLoom(bin, dataDir, extra = [], env = {}) {
  const port = await freePort();
  const proc = spawn(bin, ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir, ...extra], {
    cwd: dirname(dataDir),
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...env },
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
  return { proc, base, addr: `127.0.0.1:${port}`, log: () => log };
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

/** rpc makes a Connect unary call with JSON, for setting up what a test does not click through. */
async function rpc(base, method, body, key) {
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  const res = await fetch(`${base}/${method}`, { method: "POST", headers, body: JSON.stringify(body) });
  const out = await res.json();
  if (!res.ok) throw new Error(`${method}: ${res.status} ${JSON.stringify(out)}`);
  return out;
}

/** settled waits until a status line has left "busy" and returns its state and text. */
async function settled(page, testId, timeout = TIMEOUT) {
  await page.waitForFunction(
    (id) => {
      const el = document.querySelector(`[data-testid="${id}"]`);
      return el && el.dataset.state && el.dataset.state !== "busy";
    },
    testId,
    { timeout },
  );
  const el = page.getByTestId(testId);
  return { state: await el.getAttribute("data-state"), text: await el.textContent() };
}

/** assertOk checks that a status line reports success. */
function assertOk(status, what) {
  assert.equal(status.state, "ok", `${what}: ${status.text}`);
}

/**
 * checkView runs axe-core on the page (no serious or critical violations), then screenshots it at 1400x900 and
 * 390x844 and checks that nothing leaves the viewport horizontally at either width.
 */
async function checkView(page, name) {
  await page.setViewportSize({ width: 1400, height: 900 });
  await page.evaluate(() => document.activeElement?.blur?.()); // a focused skip link overlays the header by design
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
  });
  assert.deepEqual(result, [], `axe on ${name}`);
  await mkdir(shots, { recursive: true });
  for (const [w, hgt] of [[1400, 900], [390, 844]]) {
    await page.setViewportSize({ width: w, height: hgt });
    await page.screenshot({ path: join(shots, `${name}-${w}.png`), fullPage: true });
    const overflow = await page.evaluate(() => {
      const vw = document.documentElement.clientWidth;
      const out = [];
      for (const el of document.querySelectorAll("body *")) {
        const r = el.getBoundingClientRect();
        if (!r.width || !r.height || !el.checkVisibility({ visibilityProperty: true })) continue;
        // Content inside a horizontally scrolling box (tables, code, the graph) may be wider than the screen.
        let p = el.parentElement, scrolled = false;
        for (; p && p !== document.body; p = p.parentElement) {
          const ox = getComputedStyle(p).overflowX;
          if (ox === "auto" || ox === "scroll" || ox === "hidden") { scrolled = true; break; }
        }
        if (!scrolled && (r.right > vw + 1 || r.left < -1) && getComputedStyle(el).position !== "absolute") {
          out.push(`${el.tagName.toLowerCase()}${el.dataset.testid ? `[${el.dataset.testid}]` : ""} ${Math.round(r.left)}..${Math.round(r.right)}`);
        }
      }
      return { vw, scroll: document.documentElement.scrollWidth, out: out.slice(0, 5) };
    });
    assert.ok(overflow.scroll <= overflow.vw + 1 && overflow.out.length === 0, `${name} at ${w}px leaves the viewport: ${JSON.stringify(overflow)}`);
    // No two controls (or headings) overlap: neither contains the other, yet their boxes intersect.
    const overlaps = await page.evaluate(() => {
      const els = [...document.querySelectorAll("button, input, select, textarea, a, h2, h3, h4, label, output, svg.canvas")]
        .filter((e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0 && e.checkVisibility({ visibilityProperty: true }); });
      const boxes = els.map((e) => e.getBoundingClientRect());
      const out = [];
      for (let i = 0; i < els.length; i++) {
        for (let j = i + 1; j < els.length; j++) {
          if (els[i].contains(els[j]) || els[j].contains(els[i])) continue;
          const a = boxes[i], b = boxes[j];
          const x = Math.min(a.right, b.right) - Math.max(a.left, b.left);
          const y = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
          if (x > 1 && y > 1) {
            const d = (e) => `${e.tagName.toLowerCase()}${e.dataset.testid ? `[${e.dataset.testid}]` : ""}"${(e.textContent ?? "").trim().slice(0, 20)}"`;
            out.push(`${d(els[i])} × ${d(els[j])}`);
          }
        }
      }
      return out.slice(0, 5);
    });
    assert.deepEqual(overlaps, [], `${name} at ${w}px: overlapping elements`);
  }
  await page.setViewportSize({ width: 1400, height: 900 });
}

/** startRun submits the start form and returns the new run's id, or fails with what the form says. */
async function startRun(page) {
  await page.getByTestId("start-run").click();
  const outcome = await Promise.race([
    page.waitForURL(/#\/runs\/[^/]+$/).then(() => null),
    settled(page, "start-status").then((x) => (x.state === "error" ? `StartRun: ${x.text}` : null)),
  ]);
  assert.equal(outcome, null);
  await page.waitForURL(/#\/runs\/[^/]+$/);
  return decodeURIComponent(page.url().split("/").pop());
}

let bin, tmp;
before(async () => {
  tmp = await mkdtemp(join(tmpdir(), "loom-console-"));
  bin = process.env.LOOM_BIN;
  if (!bin) {
    bin = join(tmp, "loom");
    await run("go", ["build", "-o", bin, "./cmd/loom"], { cwd: repoRoot });
  }
});
after(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

/** newBrowser launches Chromium with a fresh profile. */
async function newBrowser(profile) {
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1400, height: 900 },
  });
  context.setDefaultTimeout(TIMEOUT);
  return context;
}

describe("console on the embedded defaults (--auth local)", () => {
  let loom, context, crossOrigin;

  before(async () => {
    loom = await startLoom(bin, join(tmp, "local-data"), ["--prices", "sim/*=1:2"]);
    const consolePage = await fetch(`${loom.base}/console/`);
    if (consolePage.status !== 200) {
      throw new Error(`GET /console/: ${consolePage.status}; loom serve must set rpcserver.Config.Console = web.Handler()`);
    }
    context = await newBrowser(join(tmp, "chromium-local"));
  });

  after(async () => {
    await context?.close();
    await stop(loom?.proc);
    await new Promise((r) => (crossOrigin ? crossOrigin.close(r) : r()));
  });

  /** open loads the console at a route in a new tab and collects uncaught page errors. */
  async function open(hash = "", url = `${loom.base}/`) {
    const page = await context.newPage();
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e));
    await page.goto(url + hash);
    await page.getByTestId("app-ready").waitFor({ state: "attached" });
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    return { page, pageErrors };
  }

  it("serves the console at /console/, says it is local, and lists blueprints", async () => {
    const { page, pageErrors } = await open();
    assert.equal(new URL(page.url()).pathname, "/console/");
    assert.match(await page.title(), /Loom console/);
    const who = page.getByTestId("whoami");
    assert.equal(await who.getAttribute("data-kind"), "local");
    assert.equal(await who.getAttribute("data-tenant"), "local");
    assert.equal(await who.getAttribute("data-roles"), "admin");
    assert.ok(await page.getByTestId("local-mode").isVisible());
    assertOk(await settled(page, "bp-list-status"), "ListBlueprints");
    assert.ok(await page.getByTestId("bp-empty").isVisible(), "an empty list says what to do next");
    // Keyboard: the skip link is the first stop, then the sections.
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement?.className), "skip");
    await checkView(page, "blueprints-empty");
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("creates a namespace, upserts records with metadata and finds them with a filter", async () => {
    const { page, pageErrors } = await open("#/memory");
    await page.getByTestId("ns-name").fill("notes");
    await page.getByTestId("ns-dimension").fill("64");
    await page.getByTestId("ns-metric").selectOption("1");
    await page.getByTestId("ns-create").click();
    await page.getByTestId("ns-title").filter({ hasText: "notes" }).waitFor();
    assert.equal(await page.getByTestId("ns-item").filter({ hasText: "notes" }).count(), 1);

    await page.getByTestId("rec-format").selectOption("json");
    await page.getByTestId("rec-text").fill(JSON.stringify([
      { id: "fox-1", text: "the quick brown fox jumps over the lazy dog", metadata: { kind: "animal", year: 2024 } },
      { id: "fox-2", text: "a quick brown fox naps in the sun", metadata: { kind: "animal", year: 2019 } },
      { id: "bread", text: "quick bread with brown sugar", metadata: { kind: "recipe", year: 2024 } },
    ]));
    await page.getByTestId("rec-upsert").click();
    const upserted = await settled(page, "rec-status");
    assertOk(upserted, "Upsert");
    assert.match(upserted.text, /fox-1, fox-2, bread/);

    await page.getByTestId("search-text").fill("quick brown fox");
    await page.getByTestId("search-topk").fill("5");
    // Filter: kind = animal AND year >= 2020.
    await page.getByTestId("filter-add").click();
    await page.getByTestId("filter-add").click();
    const rows = page.getByTestId("filter-row");
    await rows.nth(0).getByTestId("filter-key").fill("kind");
    await rows.nth(0).getByTestId("filter-value").fill("animal");
    await rows.nth(1).getByTestId("filter-key").fill("year");
    await rows.nth(1).getByTestId("filter-op").selectOption("gte");
    await rows.nth(1).getByTestId("filter-value").fill("2020");
    await page.getByTestId("search-run").click();
    assertOk(await settled(page, "search-status"), "Search");
    const hits = page.getByTestId("search-hit");
    assert.deepEqual(await hits.evaluateAll((els) => els.map((e) => e.dataset.id)), ["fox-1"]);
    const score = Number(await hits.first().getByTestId("search-hit-score").textContent());
    assert.ok(Number.isFinite(score) && score > 0, `score ${score}`);
    await hits.first().getByTestId("hit-detail").click();
    assert.match(await page.getByTestId("record-detail").textContent(), /"kind": "\\"animal\\""|animal/);

    // Delete a record from the hits.
    page.once("dialog", (d) => d.accept());
    await hits.first().getByTestId("hit-delete").click();
    await page.locator('[data-testid="search-hit"][data-id="fox-1"]').waitFor({ state: "detached" });
    assert.match(await page.getByTestId("search-status").textContent(), /deleted fox-1/);

    // Hybrid on, no filter: the other fox and the bread come back.
    await rows.nth(0).getByRole("button", { name: "remove condition" }).click();
    await page.getByTestId("filter-row").first().getByRole("button", { name: "remove condition" }).click();
    await page.getByTestId("search-hybrid").check();
    await page.getByTestId("search-run").click();
    assertOk(await settled(page, "search-status"), "hybrid Search");
    assert.deepEqual((await page.getByTestId("search-hit").evaluateAll((els) => els.map((e) => e.dataset.id))).sort(), ["bread", "fox-2"]);
    // Hybrid scores are rank fusion, which a minimum score does not apply to: the field is off meanwhile.
    assert.ok(await page.getByTestId("search-minscore").isDisabled());
    await page.getByTestId("search-hybrid").uncheck();
    await page.getByTestId("search-run").click();
    assertOk(await settled(page, "search-status"), "vector Search");
    // A minimum score above every hit's: nothing comes back, and the list says what to try.
    const best = Math.max(...(await page.getByTestId("search-hit-score").allTextContents()).map(Number));
    assert.ok(best > 0, `best score ${best}`);
    await page.getByTestId("search-minscore").fill(String(best + 0.001));
    await page.getByTestId("search-run").click();
    assertOk(await settled(page, "search-status"), "Search with min score");
    assert.equal(await page.getByTestId("search-hit").count(), 0);
    assert.match(await page.getByTestId("search-empty").textContent(), /lower the minimum score/);
    await checkView(page, "memory");

    // A record by id: its detail, then delete it; a missing id says so.
    assert.ok(await page.getByTestId("lookup-delete").isHidden(), "no delete before a record is shown");
    await page.getByTestId("lookup-id").fill("fox-2");
    await page.getByTestId("lookup-run").click();
    assertOk(await settled(page, "lookup-status"), "Get fox-2");
    const detail = JSON.parse(await page.getByTestId("record-detail").textContent());
    assert.equal(detail.id, "fox-2");
    assert.equal(detail.metadata.year, "2019");
    page.once("dialog", (d) => d.accept());
    await page.getByTestId("lookup-delete").click();
    await page.getByTestId("lookup-status").filter({ hasText: "deleted fox-2" }).waitFor();
    await page.getByTestId("lookup-run").click();
    assert.equal((await settled(page, "lookup-status")).state, "error");
    assert.ok(await page.getByTestId("record-missing").isVisible());
    assert.ok(await page.getByTestId("lookup-delete").isHidden());

    // Delete the namespace: it leaves the list, and the empty list says what to do next.
    page.once("dialog", (d) => d.accept());
    await page.getByTestId("ns-delete").click();
    await page.waitForURL(/#\/memory$/);
    await page.getByTestId("ns-empty").waitFor();
    assert.match(await page.getByTestId("ns-empty").textContent(), /Create one/);
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("shows an InvalidArgument field violation next to the field", async () => {
    const { page } = await open("#/memory");
    await page.getByTestId("ns-name").fill("Bad Name");
    await page.getByTestId("ns-create").click();
    const status = await settled(page, "ns-create-status");
    assert.equal(status.state, "error", status.text);
    assert.match(status.text, /^invalid_argument: /);
    assert.match(status.text, /namespace\.name/);
    const msg = page.locator('[data-testid="field-error"][data-field="namespace.name"]');
    assert.equal(await msg.count(), 1);
    assert.equal(await page.getByTestId("ns-name").getAttribute("aria-invalid"), "true");
    const describedBy = await page.getByTestId("ns-name").getAttribute("aria-describedby");
    assert.equal(await msg.getAttribute("id"), describedBy);
    await page.close();
  });

  it("creates an agent, edits it into a new version and streams a run in the playground", async () => {
    const { page, pageErrors } = await open("#/agents");
    assert.ok(await page.getByTestId("agent-empty").isVisible());
    assert.match(await page.getByTestId("agent-empty").textContent(), /New agent/);
    await page.getByTestId("agent-new").click();
    await page.getByTestId("agent-create-form").waitFor();
    await checkView(page, "agent-new");
    await page.getByTestId("agent-name").fill("echo");
    await page.getByTestId("agent-instructions").fill("Repeat what you are told.");
    await page.getByTestId("agent-create").click();
    await page.getByTestId("agent-title").waitFor();
    assert.match(await page.getByTestId("agent-title").textContent(), /echo v1/);
    assert.equal(await page.getByTestId("agent-item").filter({ hasText: "echo" }).count(), 1);

    await page.getByTestId("agent-displayName").fill("Echo");
    await page.getByTestId("agent-save").click();
    await page.getByTestId("agent-title").filter({ hasText: "v2" }).waitFor();

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
    assert.match(await page.getByTestId("run-usage").textContent(), /usage: [1-9]\d* input, [1-9]\d* output tokens · cost 0\.\d+ USD/);
    await page.getByTestId("agent-run-cost").first().filter({ hasText: /USD/ }).waitFor();
    await page.getByTestId("agent-run-row").first().waitFor();

    // Speech: SynthesizeSpeech streamed into a blob the page can play (the page's CSP allows blob: media).
    await page.getByTestId("speak").click();
    const spoke = await settled(page, "run-status");
    assert.equal(spoke.state, "ok", spoke.text);
    const duration = await page.getByTestId("speech-audio").evaluate((a) =>
      new Promise((resolve, reject) => {
        if (a.readyState >= 1) return resolve(a.duration);
        a.addEventListener("loadedmetadata", () => resolve(a.duration));
        a.addEventListener("error", () => reject(new Error(`audio error ${a.error?.code}`)));
      }));
    assert.ok(duration > 0, `speech duration ${duration}`);
    await checkView(page, "agent-playground");
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("shows a playground run's tool calls, tool results and memory hits", async () => {
    await rpc(loom.base, "loom.memory.v1.MemoryService/CreateNamespace", { namespace: { name: "kb", dimension: 64 } });
    await rpc(loom.base, "loom.memory.v1.MemoryService/Upsert", { namespace: "kb", records: [{ id: "moon", text: "the moon pulls the ocean twice a day" }] });
    // The simulated model searches memory for the question, then answers from the tool's result.
    await rpc(loom.base, "loom.agent.v1.AgentService/CreateAgent", { agent: {
      name: "librarian", instructions: "Answer from memory.",
      memory: { namespace: "kb", topK: 2 },
      tools: [{ memorySearch: {} }],
      model: { provider: "PROVIDER_SIM", sim: { turns: [
        { whenContains: "ocean", reply: "The moon's pull makes the tides." },
        { whenContains: "tides", toolCalls: [{ id: "c1", name: "memory_search", arguments: { query: "tides" } }] },
      ] } },
    } });
    const { page, pageErrors } = await open("#/agents/librarian");
    await page.getByTestId("run-input").fill("what makes the tides?");
    await page.getByTestId("run-start").click();
    assertOk(await settled(page, "run-status"), "RunStream");
    assert.equal(await page.getByTestId("run-output").textContent(), "The moon's pull makes the tides.");
    const events = await page.getByTestId("run-event").evaluateAll((els) => els.map((e) => [e.dataset.kind, e.textContent]));
    const of = (kind) => events.filter(([k]) => k === kind).map(([, text]) => text);
    assert.match(of("memory").join(), /moon \(\d\.\d{3}\): the moon pulls the ocean/, JSON.stringify(events));
    assert.match(of("tool call").join(), /memory_search\(\{\s*"query": "tides"\s*\}\)/, JSON.stringify(events));
    assert.match(of("tool result").join(), /memory_search: .*the moon pulls the ocean/s, JSON.stringify(events));
    assert.match(await page.getByTestId("run-usage").textContent(), /usage: [1-9]\d* input/);
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("edits every agent field, keeps what the form does not show, and deletes an agent", async () => {
    // Made through the API with what the form has no simple control for: a delegate's description and a webhook
    // tool whose signing secret is write-only.
    await rpc(loom.base, "loom.agent.v1.AgentService/CreateAgent", { agent: {
      name: "clerk", instructions: "File things.",
      tools: [
        { delegate: { agent: "echo", description: "repeats things" } },
        { webhook: { name: "lookup", description: "finds a file", url: "http://127.0.0.1:9/hook", signingSecret: "0123456789abcdef0123" } },
      ],
    } });
    const { page, pageErrors } = await open("#/agents/clerk");
    await page.getByTestId("agent-edit-form").waitFor();
    assert.equal(await page.getByTestId("agent-delegates").inputValue(), "echo");
    const ext = JSON.parse(await page.getByTestId("agent-ext-tools").inputValue());
    assert.equal(ext.length, 1);
    assert.equal(ext[0].webhook.name, "lookup");
    assert.equal(ext[0].webhook.signingSecretSet, true);
    assert.equal(ext[0].webhook.signingSecret, undefined, "the signing secret is never shown");

    // Mistakes in the JSON fields and the cost are named at their controls, and nothing is sent.
    await page.getByTestId("agent-chaos").fill("{not json");
    await page.getByTestId("agent-maxCost").fill("1.5.0");
    await page.getByTestId("agent-save").click();
    const bad = await settled(page, "agent-save-status");
    assert.equal(bad.state, "error");
    assert.match(bad.text, /agent\.chaos: not valid JSON/);
    assert.match(bad.text, /agent\.budgets\.max_cost: must be an amount/);
    assert.equal(await page.getByTestId("agent-chaos").getAttribute("aria-invalid"), "true");
    assert.equal(await page.getByTestId("agent-maxCost").getAttribute("aria-invalid"), "true");
    assert.match(await page.getByTestId("agent-title").textContent(), /v1/);
    // A mistake only the server finds (its own rule, not protovalidate) is also put at the control that holds it.
    const original = await page.getByTestId("agent-ext-tools").inputValue();
    await page.getByTestId("agent-chaos").fill("");
    await page.getByTestId("agent-maxCost").fill("");
    await page.getByTestId("agent-ext-tools").fill(original.replace("http://127.0.0.1:9/hook", "ftp://127.0.0.1/hook"));
    await page.getByTestId("agent-save").click();
    const refused = await settled(page, "agent-save-status");
    assert.equal(refused.state, "error");
    assert.match(refused.text, /^invalid_argument: agent\.tools\[\d\]\.webhook\.url: /);
    assert.equal(await page.getByTestId("agent-ext-tools").getAttribute("aria-invalid"), "true");
    assert.match(await page.locator('[data-testid="field-error"][data-field^="agent.tools["]').textContent(), /webhook\.url/);
    await page.getByTestId("agent-ext-tools").fill(original);

    // Every other field, saved as v2.
    await page.getByTestId("agent-provider").selectOption({ label: "Gemini" });
    await page.getByTestId("agent-model").fill("gemini-2.5-flash");
    await page.getByTestId("agent-temperature").fill("0.3");
    await page.getByTestId("agent-memNamespace").fill("clerk-notes");
    await page.getByTestId("agent-memTopK").fill("4");
    await page.getByTestId("agent-maxSteps").fill("5");
    await page.getByTestId("agent-maxTokens").fill("2000");
    await page.getByTestId("agent-maxDuration").fill("60");
    await page.getByTestId("agent-maxCost").fill("0.25");
    await page.getByTestId("agent-voiceId").fill("en-gb");
    await page.getByTestId("agent-chaos").fill('{"failureRate": 0.1, "seed": "7"}');
    await page.getByTestId("agent-save").click();
    await page.getByTestId("agent-title").filter({ hasText: "v2" }).waitFor();
    const { agent } = await rpc(loom.base, "loom.agent.v1.AgentService/GetAgent", { name: "clerk" });
    assert.equal(agent.model.provider, "PROVIDER_GEMINI");
    assert.equal(agent.model.name, "gemini-2.5-flash");
    assert.equal(agent.memory.namespace, "clerk-notes");
    assert.equal(agent.memory.topK, 4);
    assert.deepEqual(agent.budgets, { maxSteps: 5, maxTokens: "2000", maxDuration: "60s", maxCost: { currencyCode: "USD", nanos: 250000000 } });
    assert.equal(agent.voice.voiceId, "en-gb");
    assert.equal(agent.chaos.seed, "7");
    assert.deepEqual(agent.tools.find((t) => t.delegate)?.delegate, { agent: "echo", description: "repeats things" }, "the delegate's description is kept");
    const hook = agent.tools.find((t) => t.webhook)?.webhook;
    assert.equal(hook?.url, "http://127.0.0.1:9/hook");
    assert.equal(hook?.signingSecretSet, true, "the stored signing secret is kept");
    // The form shows what was saved.
    assert.equal(await page.getByTestId("agent-maxCost").inputValue(), "0.25");
    assert.equal(await page.getByTestId("agent-provider").inputValue(), "2");

    page.once("dialog", (d) => d.accept());
    await page.getByTestId("agent-delete").click();
    await page.waitForURL(/#\/agents$/);
    await page.getByTestId("agent-list-status").filter({ hasText: "agent(s)" }).waitFor();
    assert.equal(await page.locator('[data-testid="agent-item"][data-name="clerk"]').count(), 0);
    await checkView(page, "agents");
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("validates a blueprint and shows each error at its line and column", async () => {
    const { page } = await open("#/blueprints");
    await page.getByTestId("bp-yaml").fill("name: Not A Valid Name\nsteps: 7\n");
    await page.getByTestId("bp-validate").click();
    const status = await settled(page, "bp-status");
    assert.equal(status.state, "error", status.text);
    const nameError = page.locator('[data-testid="bp-error"][data-path="name"]');
    assert.equal(await nameError.count(), 1, await page.getByTestId("bp-errors").textContent());
    assert.equal(await nameError.getAttribute("data-line"), "1");
    const col = Number(await nameError.getAttribute("data-column"));
    assert.ok(col >= 1);
    // Choosing the error puts the caret there.
    await nameError.getByRole("button").click();
    const caret = await page.getByTestId("bp-yaml").evaluate((ta) => ta.selectionStart);
    assert.equal(caret, col - 1);
    await page.close();
  });

  it("draws parallel groups and branch labels on the canvas", async () => {
    const { page } = await open("#/blueprints");
    await page.getByTestId("bp-yaml").fill([
      "name: fanout",
      "steps:",
      "  - {id: start, delay: {duration: 0s}}",
      "  - {id: both, depends_on: [start], parallel: {steps: [left, right]}}",
      "  - {id: left, delay: {duration: 0s}}",
      "  - {id: right, delay: {duration: 0s}}",
      "  - {id: pick, depends_on: [both], branch: {condition: 'true', then_steps: [yes], else_steps: [no]}}",
      "  - {id: \"yes\", delay: {duration: 0s}}",
      "  - {id: \"no\", delay: {duration: 0s}}",
      "",
    ].join("\n"));
    await page.getByTestId("bp-save").click();
    // Saving navigates to the stored blueprint; a refusal stays on the form with its errors.
    const saved = await Promise.race([
      page.getByTestId("bp-title").filter({ hasText: "fanout v1" }).waitFor().then(() => null),
      settled(page, "bp-status").then(async (x) => (x.state === "error" ? `${x.text} ${await page.getByTestId("bp-errors").textContent().catch(() => "")}` : null)),
    ]);
    assert.equal(saved, null);
    await page.getByTestId("canvas").waitFor();
    assert.ok(await page.locator('[data-testid="canvas-group"][data-id="both"]').count() === 1, "the parallel block is a group");
    const labels = await page.locator('[data-testid="canvas-edge"] text').allTextContents();
    assert.ok(labels.includes("then") && labels.includes("else"), `branch edge labels: ${labels}`);
    // Drag a node: it moves, and its edges follow.
    const node = page.locator('[data-testid="canvas-node"][data-id="start"]');
    const edge = page.locator('[data-testid="canvas-edge"][data-from="start"] polyline');
    const [t0, e0] = [await node.getAttribute("transform"), await edge.getAttribute("points")];
    const box = await node.boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width / 2 + 10, box.y + box.height / 2 + 60, { steps: 5 });
    await page.mouse.up();
    const t1 = await node.getAttribute("transform");
    assert.notEqual(t1, t0);
    assert.notEqual(await edge.getAttribute("points"), e0);
    // Save the layout: a new version, whose canvas draws the node where it was dropped.
    await page.getByTestId("canvas-save").click();
    await page.getByTestId("bp-title").filter({ hasText: "fanout v2" }).waitFor();
    await page.locator('[data-testid="canvas-node"][data-id="start"]').waitFor();
    const xy = (t) => t.match(/translate\(([-\d.]+),([-\d.]+)\)/).slice(1).map(Number);
    const [x1, y1] = xy(t1);
    const [x2, y2] = xy(await page.locator('[data-testid="canvas-node"][data-id="start"]').getAttribute("transform"));
    assert.ok(Math.abs(x2 - x1) <= 1 && Math.abs(y2 - y1) <= 1, `saved at (${x2}, ${y2}), dropped at (${x1}, ${y1})`);
    assert.ok((await page.getByTestId("bp-yaml").inputValue()).includes("layout:"), "the new version's YAML holds the layout");
    await page.close();
  });

  it("runs examples/research.yaml: graph drawn, watched live through a reconnect, approved in the inbox", async () => {
    await rpc(loom.base, "loom.memory.v1.MemoryService/CreateNamespace", { namespace: { name: "research", dimension: 256 } });
    for (const [name, instructions] of [["researcher", "Find facts."], ["writer", "Summarise."]]) {
      await rpc(loom.base, "loom.agent.v1.AgentService/CreateAgent", { agent: { name, instructions } });
    }
    const yaml = await readFile(join(repoRoot, "examples", "research.yaml"), "utf8");
    const { page, pageErrors } = await open("#/blueprints");
    await page.getByTestId("bp-yaml").fill(yaml);
    await page.getByTestId("bp-save").click();
    await page.getByTestId("bp-title").filter({ hasText: "research v1" }).waitFor();

    // The canvas: one node per step, one edge per dependency, kinds marked.
    await page.getByTestId("canvas").waitFor();
    const nodes = await page.getByTestId("canvas-node").evaluateAll((els) => els.map((e) => `${e.dataset.id}:${e.dataset.kind}`));
    assert.deepEqual(nodes.sort(), ["remember:memory_upsert", "research:agent", "review:approval", "summarise:agent"]);
    assert.equal(await page.getByTestId("canvas-edge").count(), 3);
    assert.ok(await page.locator('[data-testid="yaml-view"] .tk-key').count() > 5, "YAML is highlighted");
    assert.match(await page.getByTestId("yaml-view").textContent(), /run_deadline: 2h\b/);
    // Keyboard: a node takes focus and Enter shows its step.
    await page.locator('[data-testid="canvas-node"][data-id="review"]').focus();
    await page.keyboard.press("Enter");
    assert.match(await page.getByTestId("step-info").textContent(), /Step review[\s\S]*approval/);
    await checkView(page, "blueprint");

    // Save a new version: v2 appears in the history, v1 stays reachable.
    const edited = (await page.getByTestId("bp-yaml").inputValue()).replace(/^description: .*$/m, "description: Research, summarise, approve, remember.");
    await page.getByTestId("bp-yaml").fill(edited);
    await page.getByTestId("bp-save").click();
    await page.getByTestId("bp-title").filter({ hasText: "research v2" }).waitFor();
    assert.deepEqual(await page.getByTestId("bp-versions").locator("li").evaluateAll((els) => els.map((e) => e.dataset.version)), ["2", "1"]);

    // Start a run from the form generated from the input schema.
    await page.getByTestId("bp-start-run").click();
    await page.getByTestId("start-input-topic").fill("");
    await page.getByTestId("start-run").click();
    assert.equal(await page.locator('[data-testid="field-error"][data-field="input.topic"]').count(), 1, "a required input is refused in the page");
    await page.getByTestId("start-input-topic").fill("octopus cognition");
    // EstimateRun before starting: this version has no history yet, so the estimate says so.
    await page.getByTestId("start-estimate").filter({ hasText: /Estimate: no history for v2/ }).waitFor();
    const runId = await startRun(page);

    // Watched live: the agent steps turn green, the approval step waits.
    const nodeState = (id) => page.locator(`[data-testid="canvas-node"][data-id="${id}"]`).getAttribute("data-state");
    await page.locator('[data-testid="canvas-node"][data-id="review"][data-state="waiting"]').waitFor({ timeout: 30_000 });
    assert.equal(await nodeState("research"), "succeeded");
    assert.equal(await nodeState("summarise"), "succeeded");
    // AgentTextDelta is live only: a step that finished before the view subscribed streamed nothing to it, and the
    // view says so instead of showing an empty box.
    assert.ok((await page.getByTestId("run-agent-text").count()) >= 1 || (await page.getByTestId("run-text-empty").isVisible()));
    await page.getByTestId("approval").waitFor(); // listed once the view has seen the step wait
    assert.equal(await page.getByTestId("approval").count(), 1);
    await checkView(page, "run-graph");

    // Cut the stream as a dropped connection would; the view resumes after the last event it showed.
    const before = await page.getByTestId("event").count();
    await page.evaluate(() => window.__loomWatch.drop());
    await page.waitForFunction(() => window.__loomWatch.reconnects >= 1);

    // Approve in the inbox, in another tab.
    const inbox = await open("#/approvals");
    await inbox.page.locator(`[data-testid="approval"][data-run="${runId}"]`).waitFor();
    await checkView(inbox.page, "approvals");
    await inbox.page.getByTestId("approval-payload-note").fill("looks right");
    await inbox.page.getByTestId("approve").click();
    await inbox.page.getByTestId("inbox-empty").waitFor();
    await inbox.page.close();

    await page.locator('[data-testid="run-state"]', { hasText: "succeeded" }).waitFor({ timeout: 30_000 });
    for (const id of ["research", "summarise", "review", "remember"]) {
      await page.locator(`[data-testid="canvas-node"][data-id="${id}"][data-state="succeeded"]`).waitFor();
    }
    const seqs = await page.getByTestId("event").evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    assert.ok(seqs.length > before, `events after the reconnect: ${seqs.length} <= ${before}`);
    assert.equal(new Set(seqs).size, seqs.length, `an event shown twice: ${seqs}`);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    assert.ok(await page.getByTestId("run-output").isVisible());
    assert.equal(await page.locator('[data-testid="step-row"][data-step="review"]').getAttribute("data-state"), "succeeded");
    // Cost where usage is shown: the run's, each agent step's, and the completion event's, priced by --prices.
    await page.getByTestId("wf-run-usage").filter({ hasText: /cost 0\.\d+ USD/ }).waitFor();
    assert.match(await page.locator('[data-testid="step-row"][data-step="research"] [data-testid="step-cost"]').textContent(), /^0\.\d+ USD$/);
    // Each step's input (as its definition gives it), attempts, duration and tokens.
    const research = page.locator('[data-testid="step-row"][data-step="research"]');
    assert.match(await research.getByTestId("step-input").textContent(), /agent researcher: 'Research this topic/);
    assert.equal(await research.getByTestId("step-attempts").textContent(), "1");
    assert.match(await research.getByTestId("step-duration").textContent(), /^\d+(\.\d+)? m?s$/);
    assert.match(await research.getByTestId("step-tokens").textContent(), /^[1-9]\d* in \/ [1-9]\d* out$/);
    assert.match(await page.locator('[data-testid="step-row"][data-step="remember"] [data-testid="step-input"]').textContent(), /memory_upsert: input\.topic/);
    assert.match(await page.locator('[data-testid="event"][data-kind="runCompleted"]').textContent(), /cost 0\.\d+ USD/);

    // The runs list, filtered by blueprint and state.
    await page.goto(`${loom.base}/console/#/runs`);
    await page.getByTestId("runs-blueprint").selectOption("research");
    await page.getByTestId("runs-state").selectOption({ label: "succeeded" });
    await page.getByRole("button", { name: "Filter" }).click();
    await page.locator(`[data-testid="run-row"][data-id="${runId}"]`).waitFor();
    await page.getByTestId("runs-state").selectOption({ label: "failed" });
    await page.getByRole("button", { name: "Filter" }).click();
    await page.getByTestId("runs-empty").waitFor();
    await checkView(page, "runs");
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("cancels a waiting run, then deletes it", async () => {
    // Uses the research blueprint, agents and namespace of the test before.
    const { page, pageErrors } = await open("#/runs/new/research");
    await page.getByTestId("start-input-topic").fill("tidal locking");
    const key = await page.getByTestId("start-key").inputValue();
    assert.match(key, /^[0-9a-f-]{36}$/, "the form proposes a fresh idempotency key");
    const runId = await startRun(page);
    // Starting again with the same key returns the same run instead of a second one.
    await page.goto(`${loom.base}/console/#/runs/new/research`);
    await page.getByTestId("start-input-topic").fill("tidal locking");
    assert.notEqual(await page.getByTestId("start-key").inputValue(), key);
    await page.getByTestId("start-key").fill(key);
    assert.equal(await startRun(page), runId);
    await page.locator('[data-testid="canvas-node"][data-id="review"][data-state="waiting"]').waitFor({ timeout: 30_000 });
    page.once("dialog", (d) => d.accept("not needed any more"));
    await page.getByTestId("run-cancel").click();
    await page.locator('[data-testid="run-state"]', { hasText: "cancelled" }).waitFor();
    await page.locator('[data-testid="event"][data-kind="runCancelled"]').waitFor();
    assert.match(await page.locator('[data-testid="event"][data-kind="runCancelled"]').textContent(), /not needed any more/);
    page.once("dialog", (d) => d.accept());
    await page.getByTestId("run-delete").click();
    await page.waitForURL(/#\/runs$/);
    await page.getByTestId("runs-status").filter({ hasText: "run(s)" }).waitFor();
    assert.equal(await page.locator(`[data-testid="run-row"][data-id="${runId}"]`).count(), 0);
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("rejects an approval from the run view: the run fails", async () => {
    const { page, pageErrors } = await open("#/runs/new/research");
    await page.getByTestId("start-input-topic").fill("perpetual motion");
    await startRun(page);
    const card = page.getByTestId("approval");
    await card.waitFor({ timeout: 30_000 });
    await card.getByTestId("approval-comment").fill("not accurate");
    await card.getByTestId("reject").click();
    await page.locator('[data-testid="run-state"]', { hasText: "failed" }).waitFor({ timeout: 30_000 });
    assert.equal(await page.locator('[data-testid="step-row"][data-step="review"]').getAttribute("data-state"), "failed");
    assert.equal(await page.locator('[data-testid="canvas-node"][data-id="review"]').getAttribute("data-state"), "failed");
    assert.ok(await page.getByTestId("run-error").isVisible());
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("pages through a long runs list, and is driven from the keyboard", async () => {
    await rpc(loom.base, "loom.orchestrator.v1.OrchestratorService/CreateBlueprint", { source: { yaml: "name: tick\nsteps:\n  - {id: wait, delay: {duration: 0s}}\n" } });
    for (let i = 0; i < 23; i++) {
      await rpc(loom.base, "loom.orchestrator.v1.OrchestratorService/StartRun", { blueprint: "tick", input: {}, idempotencyKey: `tick-${i}` });
    }
    const { page, pageErrors } = await open("#/blueprints");
    // Keyboard only: Tab from the top to the Runs link, Enter, and focus lands on the view's heading.
    let found = false;
    for (let i = 0; i < 15 && !found; i++) {
      await page.keyboard.press("Tab");
      found = await page.evaluate(() => document.activeElement?.dataset.testid === "nav-runs");
    }
    assert.ok(found, "the Runs link is reachable with Tab");
    await page.keyboard.press("Enter");
    await page.waitForURL(/#\/runs$/);
    await page.waitForFunction(() => document.activeElement?.id === "runs-h");
    await page.getByTestId("runs-blueprint").selectOption("tick");
    await page.getByTestId("runs-blueprint").press("Enter"); // submits the filter form
    await page.getByTestId("runs-status").filter({ hasText: "20 run(s)" }).waitFor();
    const first = await page.getByTestId("run-row").evaluateAll((els) => els.map((e) => e.dataset.id));
    await page.getByTestId("runs-more").focus();
    await page.keyboard.press("Enter");
    await page.getByTestId("runs-status").filter({ hasText: "3 run(s)" }).waitFor();
    const second = await page.getByTestId("run-row").evaluateAll((els) => els.map((e) => e.dataset.id));
    assert.equal(new Set([...first, ...second]).size, 23, "every run once across the pages");
    assert.equal(await page.getByTestId("runs-more").count(), 0, "no next page after the last");
    await page.getByRole("button", { name: "Previous page" }).click();
    await page.getByTestId("runs-status").filter({ hasText: "20 run(s)" }).waitFor();
    assert.deepEqual(await page.getByTestId("run-row").evaluateAll((els) => els.map((e) => e.dataset.id)), first);
    assert.deepEqual(pageErrors, []);
    await page.close();
  });

  it("checks an approval's payload against the step's schema before it is sent", async () => {
    await rpc(loom.base, "loom.orchestrator.v1.OrchestratorService/CreateBlueprint", { source: { yaml: [
      "name: gate",
      "description: One approval with a scored reason.",
      "steps:",
      "  - id: decide",
      "    approval:",
      "      prompt: Ship it?",
      "      payload_schema:",
      "        type: object",
      "        required: [reason]",
      "        properties:",
      "          reason: {type: string, minLength: 3, description: Why.}",
      "          score: {type: integer, minimum: 1, maximum: 5}",
      "",
    ].join("\n") } });
    const { page, pageErrors } = await open("#/runs/new/gate");
    // No input schema: the input is a JSON object, checked in the page.
    await page.getByTestId("start-input-json").fill("[1, 2]");
    await page.getByTestId("start-run").click();
    assert.match(await page.locator('[data-testid="field-error"][data-field="input"]').textContent(), /must be a JSON object/);
    await page.getByTestId("start-input-json").fill("{}");
    await checkView(page, "run-start");
    const runId = await startRun(page);
    await page.locator('[data-testid="canvas-node"][data-id="decide"][data-state="waiting"]').waitFor({ timeout: 30_000 });

    const inbox = await open("#/approvals");
    const card = inbox.page.locator(`[data-testid="approval"][data-run="${runId}"]`);
    await card.waitFor();
    const fieldError = (f) => card.locator(`[data-testid="field-error"][data-field="payload.${f}"]`);
    await card.getByTestId("approve").click();
    assert.match(await fieldError("reason").textContent(), /is required/);
    await card.getByTestId("approval-payload-reason").fill("ok");
    await card.getByTestId("approval-payload-score").fill("9");
    await card.getByTestId("approve").click();
    assert.match(await fieldError("reason").textContent(), /at least 3 characters/);
    assert.match(await fieldError("score").textContent(), /at most 5/);
    assert.equal(await card.getByTestId("approval-payload-score").getAttribute("aria-invalid"), "true");
    // Nothing was sent: the run still waits.
    const waiting = await rpc(loom.base, "loom.orchestrator.v1.OrchestratorService/GetRun", { id: runId });
    assert.equal(waiting.run.state, "RUN_STATE_WAITING");
    await card.getByTestId("approval-payload-reason").fill("all checks green");
    await card.getByTestId("approval-payload-score").fill("4");
    await card.getByTestId("approve").click();
    await inbox.page.locator(`[data-testid="approval"][data-run="${runId}"]`).waitFor({ state: "detached" });
    await inbox.page.close();
    await page.locator('[data-testid="run-state"]', { hasText: "succeeded" }).waitFor({ timeout: 30_000 });
    const done = await rpc(loom.base, "loom.orchestrator.v1.OrchestratorService/GetRun", { id: runId });
    assert.deepEqual(done.run.steps[0].output, { reason: "all checks green", score: 4 });
    assert.deepEqual(pageErrors, []);
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
    await page.goto(`${origin}/#/memory`);
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    // A blocked call would surface as a network error ("unknown: Failed to fetch"), never as ok.
    assertOk(await settled(page, "ns-list-status"), "cross-origin ListNamespaces");
    assert.ok(allowed.length >= 1, "no RPC responses seen");
    for (const a of allowed) assert.ok(a === "*" || a === origin, `Access-Control-Allow-Origin: ${a}`);

    // A server-side error also crosses origins intact.
    await page.getByTestId("ns-name").fill("Bad Name");
    await page.getByTestId("ns-create").click();
    assert.match((await settled(page, "ns-create-status")).text, /^invalid_argument: .*namespace\.name/s);
    await page.close();
  });
});

/** oidcProvider makes an ES256 key, its JWKS file, and a function that signs ID tokens with it. */
async function oidcProvider(dir) {
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const jwks = join(dir, "jwks.json");
  await writeFile(jwks, JSON.stringify({ keys: [{ ...publicKey.export({ format: "jwk" }), kid: "console-test", alg: "ES256", use: "sig" }] }));
  const b64 = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
  const issuer = "https://idp.console.test";
  return {
    issuer, audience: "loom", jwks,
    token(claims) {
      const now = Math.floor(Date.now() / 1000);
      const head = b64({ alg: "ES256", typ: "JWT", kid: "console-test" });
      const body = b64({ iss: issuer, aud: "loom", iat: now, exp: now + 600, ...claims });
      const sig = sign("sha256", Buffer.from(`${head}.${body}`), { key: privateKey, dsaEncoding: "ieee-p1363" });
      return `${head}.${body}.${sig.toString("base64url")}`;
    },
  };
}

describe("console through the gateway with --auth required and API keys", () => {
  let backend, loom, context, idp;
  const keys = {};

  before(async () => {
    const data = join(tmp, "auth-data");
    for (const role of ["reader", "writer", "admin"]) {
      const { stdout } = await run(bin, ["keys", "create", "--tenant", "acme", "--name", `console-${role}`, "--roles", role, "--data-dir", data], { cwd: tmp });
      const m = /loom_[A-Za-z0-9]+_[A-Za-z0-9_-]+/.exec(stdout);
      assert.ok(m, `no key in: ${stdout}`);
      keys[role] = m[0];
    }
    // The split deployment in miniature: a backend with every service, and a gateway in front that serves the
    // console and forwards the RPCs; both require credentials and share the service-token key and key database.
    idp = await oidcProvider(tmp);
    const env = {
      LOOM_SERVICE_TOKEN_KEY: randomBytes(32).toString("base64"),
      LOOM_MASTER_KEY: randomBytes(32).toString("base64"), // seals the tenants' provider keys
      LOOM_OIDC_ISSUER: idp.issuer, LOOM_OIDC_AUDIENCE: idp.audience, LOOM_OIDC_JWKS_FILE: idp.jwks,
    };
    backend = await startLoom(bin, data, ["--auth", "required"], env);
    loom = await startLoom(bin, data, ["--auth", "required", "--services", "gateway",
      "--gateway-memory", backend.addr, "--gateway-agent", backend.addr, "--gateway-orchestrator", backend.addr, "--gateway-admin", backend.addr], env);
    context = await newBrowser(join(tmp, "chromium-auth"));
  });

  after(async () => {
    await context?.close();
    await stop(loom?.proc);
    await stop(backend?.proc);
  });

  async function signIn(page, key) {
    await page.goto(`${loom.base}/console/#/memory`);
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    await page.getByTestId("signin-needed").waitFor();
    await page.getByTestId("signin-credential").fill(key);
    await page.getByTestId("signin-submit").click();
    await page.waitForFunction(() => document.querySelector('[data-testid="whoami"]')?.dataset.kind === "key");
  }

  it("asks for a key, keeps it for the tab only, and shows the caller's roles", async () => {
    const page = await context.newPage();
    await page.goto(`${loom.base}/console/`);
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    assert.equal(await page.getByTestId("whoami").getAttribute("data-kind"), "none");
    assert.match(await page.getByTestId("signin-needed").textContent(), /--auth required/);
    await checkView(page, "sign-in");

    await page.getByTestId("signin-credential").fill("loom_nope_notakey");
    await page.getByTestId("signin-submit").click();
    await page.waitForFunction(() => /refused/.test(document.querySelector('[data-testid="whoami-note"]')?.textContent ?? ""));

    await signIn(page, keys.writer);
    // Tenant and roles are the ones the server's WhoAmI reports for the key (the key names no tenant itself).
    assert.equal(await page.getByTestId("whoami").getAttribute("data-tenant"), "acme");
    assert.equal(await page.getByTestId("whoami-tenant").textContent(), "acme");
    assert.equal(await page.getByTestId("whoami").getAttribute("data-roles"), "writer");
    assert.equal(await page.evaluate(() => localStorage.length), 0);
    assert.equal(await page.evaluate(() => document.cookie), "");
    assert.equal(await page.evaluate(() => sessionStorage.getItem("loom.credential")), keys.writer);
    // Write controls are there, and work with the key.
    await page.getByTestId("ns-name").fill("acme-notes");
    await page.getByTestId("ns-create").click();
    await page.getByTestId("ns-title").filter({ hasText: "acme-notes" }).waitFor();
    await page.getByTestId("rec-text").fill("the acme widget catalogue");
    await page.getByTestId("rec-upsert").click();
    assertOk(await settled(page, "rec-status"), "Upsert with a writer key");
    await page.getByTestId("search-text").fill("widget catalogue");
    await page.getByTestId("search-run").click();
    assertOk(await settled(page, "search-status"), "Search with a writer key");
    assert.equal(await page.getByTestId("search-hit").count(), 1);
    assert.equal(await page.getByTestId("nav-admin").count(), 0, "no Admin for a writer");

    // Reloading keeps the session; signing out forgets the key.
    await page.reload();
    await page.waitForFunction(() => document.querySelector('[data-testid="whoami"]')?.dataset.kind === "key");
    await page.locator("#session summary").click();
    await page.getByTestId("signout").click();
    await page.getByTestId("signin-needed").waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("loom.credential")), null);
    await page.close();
  });

  it("hides write controls from a reader key", async () => {
    const page = await context.newPage();
    await signIn(page, keys.reader);
    assert.equal(await page.getByTestId("whoami").getAttribute("data-tenant"), "acme");
    assert.equal(await page.getByTestId("whoami").getAttribute("data-roles"), "reader");
    await page.locator('[data-testid="ns-item"][data-name="acme-notes"] a').click();
    await page.getByTestId("ns-title").waitFor();
    assert.equal(await page.getByTestId("ns-create-form").count(), 0);
    assert.equal(await page.getByTestId("rec-form").count(), 0);
    assert.equal(await page.getByTestId("ns-delete").count(), 0);
    assert.ok(await page.getByTestId("readonly-note").first().isVisible());
    // Reading still works.
    await page.getByTestId("search-text").fill("widget");
    await page.getByTestId("search-run").click();
    assertOk(await settled(page, "search-status"), "Search with a reader key");
    await page.goto(`${loom.base}/console/#/agents`);
    await page.getByTestId("agent-list-status").waitFor();
    assert.equal(await page.getByTestId("agent-new").count(), 0);
    await page.goto(`${loom.base}/console/#/blueprints`);
    await page.getByTestId("bp-form").waitFor();
    assert.equal(await page.getByTestId("bp-save").count(), 0, "a reader may validate, not create");
    // Runs and approvals: listed and watched, never started, cancelled or decided. A writer starts one that waits.
    await page.goto(`${loom.base}/console/#/runs`);
    assertOk(await settled(page, "runs-status"), "ListRuns with a reader key");
    assert.match(await page.getByTestId("runs-empty").textContent(), /^No runs match\.$/, "no hint to start one");
    await rpc(loom.base, "loom.orchestrator.v1.OrchestratorService/CreateBlueprint", { source: { yaml:
      "name: signoff\nsteps:\n  - id: sign\n    approval:\n      prompt: Sign off\n" } }, keys.writer);
    const { run } = await rpc(loom.base, "loom.orchestrator.v1.OrchestratorService/StartRun", { blueprint: "signoff", input: {} }, keys.writer);
    await page.goto(`${loom.base}/console/#/blueprints/signoff`);
    await page.getByTestId("canvas").waitFor();
    assert.ok(await page.getByTestId("bp-start-run").isHidden());
    assert.equal(await page.getByTestId("bp-delete").count(), 0);
    assert.equal(await page.getByTestId("canvas-save").count(), 0);
    assert.equal(await page.getByTestId("bp-save").count(), 0);
    await page.goto(`${loom.base}/console/#/runs/${run.id}`);
    await page.locator('[data-testid="canvas-node"][data-id="sign"][data-state="waiting"]').waitFor({ timeout: 30_000 });
    await page.getByTestId("approval").waitFor();
    assert.equal(await page.getByTestId("run-cancel").count(), 0);
    assert.equal(await page.getByTestId("approve").count(), 0);
    assert.match(await page.getByTestId("approval").getByTestId("readonly-note").textContent(), /not decide them/);
    await page.goto(`${loom.base}/console/#/runs`);
    await page.locator(`[data-testid="run-row"][data-id="${run.id}"]`).waitFor();
    assert.equal(await page.getByTestId("run-new").count(), 0);
    await page.goto(`${loom.base}/console/#/runs/new`);
    assert.match(await page.getByTestId("readonly-note").textContent(), /not start them/);
    assert.equal(await page.getByTestId("start-form").count(), 0);
    await page.goto(`${loom.base}/console/#/approvals`);
    await page.locator(`[data-testid="approval"][data-run="${run.id}"]`).waitFor();
    assert.equal(await page.getByTestId("approve").count(), 0);
    await checkView(page, "reader-approvals");
    // Admin is not in the menu, and its address says who may use it instead of failing call by call.
    assert.equal(await page.getByTestId("nav-admin").count(), 0);
    await page.goto(`${loom.base}/console/#/admin`);
    assert.match(await page.getByTestId("readonly-note").textContent(), /Only admins/);
    // What the server refuses is said in plain words: the reader's WhoAmI works, a write does not.
    const refused = await fetch(`${loom.base}/loom.memory.v1.MemoryService/CreateNamespace`, {
      method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${keys.reader}` },
      body: JSON.stringify({ namespace: { name: "nope", dimension: 8 } }),
    });
    assert.equal(refused.status, 403);
    assert.equal((await refused.json()).code, "permission_denied");
    await page.close();
  });

  it("signs in with an OIDC token and shows its tenant and roles", async () => {
    const page = await context.newPage();
    await page.goto(`${loom.base}/console/#/memory`);
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    await page.getByTestId("signin-credential").fill(idp.token({ sub: "ada@example.com", loom_tenant: "acme", loom_roles: ["writer"] }));
    await page.getByTestId("signin-submit").click();
    await page.waitForFunction(() => document.querySelector('[data-testid="whoami"]')?.dataset.kind === "token");
    const who = page.getByTestId("whoami");
    assert.equal(await who.getAttribute("data-tenant"), "acme");
    assert.equal(await who.getAttribute("data-roles"), "writer");
    assert.doesNotMatch(await page.getByTestId("whoami-note").textContent(), /not confirmed/, "WhoAmI answered, not the claims fallback");
    // Same tenant as the API keys: the namespace the writer key made is there.
    await page.locator('[data-testid="ns-item"][data-name="acme-notes"]').waitFor();
    assert.equal(await page.getByTestId("ns-create-form").count(), 1);
    await page.close();
  });

  it("gives an admin key the admin view with its own key listed", async () => {
    const page = await context.newPage();
    await signIn(page, keys.admin);
    assert.equal(await page.getByTestId("whoami").getAttribute("data-roles"), "admin");
    assert.match(await page.getByTestId("whoami-note").textContent(), /console-admin/);
    await page.getByTestId("nav-admin").click();
    await page.getByTestId("key-row").first().waitFor();
    assert.equal(await page.getByTestId("key-row").count(), 3);
    const form = page.getByTestId("key-form");
    await form.getByLabel("Name").fill("ci-bot");
    await form.getByLabel("Role").selectOption("reader");
    await form.getByRole("button", { name: "Create key" }).click();
    assert.match(await page.getByTestId("key-secret").textContent(), /^loom_/);
    await page.getByTestId("key-row").nth(3).waitFor();
    const row = page.getByTestId("key-row").filter({ hasText: "ci-bot" });
    page.once("dialog", (d) => d.accept());
    await row.getByRole("button", { name: "Revoke" }).click();
    await page.getByTestId("key-row").filter({ hasText: "ci-bot" }).filter({ hasText: "revoked" }).waitFor();

    // Provider keys: set, listed by provider only (the key is never shown again), deleted.
    const providerSecret = `gm-${randomBytes(12).toString("hex")}`;
    await page.getByTestId("pk-provider").selectOption("gemini");
    await page.getByTestId("pk-key").fill(providerSecret);
    await page.getByTestId("pk-set").click();
    await page.locator('[data-testid="pk-row"][data-provider="gemini"]').waitFor();
    assert.equal(await page.getByTestId("pk-key").inputValue(), "", "the key field is cleared");
    assert.ok(!(await page.content()).includes(providerSecret), "the provider key is never shown");
    const listed = await rpc(loom.base, "loom.admin.v1.AdminService/ListProviderKeys", {}, keys.admin);
    assert.ok(!JSON.stringify(listed).includes(providerSecret), "nor returned");
    page.once("dialog", (d) => d.accept());
    await page.locator('[data-testid="pk-row"][data-provider="gemini"]').getByRole("button", { name: "Delete" }).click();
    await page.getByTestId("pk-empty").waitFor();

    // The audit trail, filtered: this admin's own calls to the admin service, then errors only.
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.ready === "true");
    assertOk(await settled(page, "audit-status"), "ListAuditEvents");
    const subjects = await page.getByTestId("audit-subject").locator("option").allTextContents();
    assert.ok(subjects.some((x) => x.startsWith("apikey:")), `subjects: ${subjects}`);
    await page.getByTestId("audit-service").selectOption("admin");
    const procs = await page.getByTestId("audit-row").evaluateAll((els) => els.map((e) => e.children[2].textContent));
    assert.ok(procs.length >= 4, `admin events: ${procs}`);
    assert.ok(procs.every((x) => x.startsWith("admin.v1.AdminService/")), `${procs}`);
    assert.ok(procs.some((x) => x.endsWith("/SetProviderKey")) && procs.some((x) => x.endsWith("/RevokeApiKey")), `${procs}`);
    await page.getByTestId("audit-service").selectOption("");
    await page.getByTestId("audit-result").selectOption("error");
    const results = await page.getByTestId("audit-row").evaluateAll((els) => els.map((e) => e.dataset.result));
    assert.ok(results.every((r) => r !== "ok"), `${results}`);
    await page.getByTestId("audit-text").fill("no-such-procedure-anywhere");
    assert.match(await page.getByTestId("audit-empty").textContent(), /clear a filter/);
    await page.getByTestId("audit-text").fill("");
    await page.getByTestId("audit-result").selectOption("");
    await checkView(page, "admin");
    await page.close();
  });
});
