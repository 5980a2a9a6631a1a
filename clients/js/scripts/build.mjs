#!/usr/bin/env node
// Builds the package and the built-in page's script:
//   dist/            ESM + .d.ts from src/ (tsc)
//   ../../assets/dashboard/app.js   page/app.js + src/dashboard.ts, one
//                    minified IIFE (esbuild); the sidewire binary embeds it.
// and checks the dashboard entry's size (≤ 6 KB min+gzip, issue 21).
//   node scripts/build.mjs [--check]   --check: fail if the committed page bundle is stale
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync, rmSync } from "node:fs";
import { gzipSync } from "node:zlib";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const pageOut = path.resolve(here, "../../assets/dashboard/app.js");
const check = process.argv.includes("--check");
const LIMIT = 6 * 1024;

rmSync(path.join(here, "dist"), { recursive: true, force: true });
execFileSync(process.execPath, [path.join(here, "node_modules/typescript/bin/tsc"), "-p", path.join(here, "tsconfig.json")], { stdio: "inherit" });

const common = { bundle: true, minify: true, write: false, legalComments: "none", target: ["es2020"], charset: "utf8" };

// The dashboard entry as an app's bundler would ship it.
const entry = await esbuild.build({ ...common, entryPoints: [path.join(here, "src/dashboard.ts")], format: "esm" });
const min = entry.outputFiles[0].contents;
const gz = gzipSync(min, { level: 9 }).length;
console.log(`dashboard entry: ${min.length} bytes minified, ${gz} bytes min+gzip (limit ${LIMIT})`);
if (gz > LIMIT) {
  console.error(`the dashboard entry is over ${LIMIT} bytes min+gzip`);
  process.exit(1);
}

const page = await esbuild.build({
  ...common,
  entryPoints: [path.join(here, "page/app.js")],
  format: "iife",
  banner: { js: "// sidewire dashboard page: built from clients/js/page/app.js + src/dashboard.ts by `npm run build` (do not edit)" },
});
const text = page.outputFiles[0].text;
if (check) {
  if (readFileSync(pageOut, "utf8") !== text) {
    console.error("assets/dashboard/app.js is stale: run `npm run build` in clients/js and commit it");
    process.exit(1);
  }
  console.log("assets/dashboard/app.js is current");
} else {
  writeFileSync(pageOut, text);
}
console.log(`page script: ${text.length} bytes, ${gzipSync(text, { level: 9 }).length} gzip`);
