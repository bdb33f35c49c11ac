// build.mjs bundles the console into dist/ (index.html, app.js, app.css). The output is deterministic: no
// source maps, no timestamps, no absolute paths, so `npm run check-dist` can compare it with the committed copy.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, "dist");

await mkdir(dist, { recursive: true });
await build({
  absWorkingDir: root,
  entryPoints: ["src/main.ts"],
  outfile: "dist/app.js",
  bundle: true,
  format: "iife",
  platform: "browser",
  target: "es2022",
  minify: true,
  legalComments: "none",
  charset: "utf8",
  sourcemap: false,
  // The generated code lives in ../gen/ts, outside this package: resolve its bare imports
  // (@bufbuild/protobuf) from our node_modules.
  nodePaths: [join(root, "node_modules")],
  logLevel: "warning",
});
await copyFile(join(root, "src/index.html"), join(dist, "index.html"));
await copyFile(join(root, "src/app.css"), join(dist, "app.css"));
