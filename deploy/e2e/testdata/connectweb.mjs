// Drives Connect-Web in Chromium against a Loom gateway; run by the Go suite (deploy/e2e) as
//   NODE_PATH=web/node_modules LOOM_GATEWAY=http://127.0.0.1:PORT LOOM_KEY=... node connectweb.mjs
// It bundles connectweb.ts with esbuild, serves it from a page on its own loopback origin (so every call is a
// cross-origin Connect-Web call with CORS), runs it in headless Chromium and prints the results as JSON.

import { createRequire } from "node:module";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

// ES module imports ignore NODE_PATH; require honours it.
const require = createRequire(import.meta.url);
const { build } = require("esbuild");
const { chromium } = require("playwright-core");

const here = dirname(fileURLToPath(import.meta.url));
const { LOOM_GATEWAY: gateway, LOOM_KEY: key, CHROMIUM: executablePath = "/usr/bin/chromium", LOOM_PROFILE: profile } = process.env;
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

const bundle = await build({
  entryPoints: [join(here, "connectweb.ts")],
  bundle: true,
  write: false,
  format: "iife",
  platform: "browser",
  target: "es2022",
  nodePaths: (process.env.NODE_PATH ?? "").split(":").filter(Boolean),
  logLevel: "warning",
});
const js = bundle.outputFiles[0].text;

const server = createServer((req, res) => {
  if (req.url === "/app.js") {
    res.writeHead(200, { "Content-Type": "text/javascript" }).end(js);
  } else {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end('<!doctype html><title>e2e</title><script src="/app.js"></script>');
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launchPersistentContext(profile, { executablePath, headless: true, args: CHROMIUM_ARGS });
try {
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // Chromium reports why a fetch failed (a CORS refusal, say) only on the console; "Failed to fetch" says nothing.
  // The deliberate call without a key logs its 401 there too, so these only explain a failure.
  const consoleErrors = [];
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  await page.goto(origin);
  await page.waitForFunction(() => typeof window.loomE2E === "function", null, { timeout: 10_000 });
  let result;
  try {
    result = await page.evaluate(([base, k]) => window.loomE2E(base, k), [gateway, key]);
  } catch (e) {
    throw new Error(`${e.message}\nbrowser console:\n  ${consoleErrors.join("\n  ")}`);
  }
  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join("; ")}`);
  process.stdout.write(JSON.stringify(result) + "\n");
} finally {
  await browser.close();
  server.close();
}
