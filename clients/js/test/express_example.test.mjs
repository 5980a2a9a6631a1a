// examples/express_app against the release binary: its requests arrive as
// `http_request` events with route templates, its own work as
// ingestion_complete / query_complete / error / gauge events, and what is
// queued is sent when it gets SIGTERM (handleExit).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startServer, haveBinary, need, BIN, freePort, until } from "./helpers/server.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const appDir = path.join(root, "examples/express_app");

test("the Express example reports requests by route template and flushes on SIGTERM", { timeout: 60_000 }, async (t) => {
  if (!need(t, "sidewire", haveBinary(), `build it: cargo build --release (${BIN})`)) return;
  if (!need(t, "express_app", existsSync(path.join(appDir, "node_modules/express")), "npm ci in examples/express_app")) return;
  const srv = await startServer();
  const port = await freePort();
  const app = spawn(process.execPath, ["app.js"], {
    cwd: appDir,
    env: { ...process.env, SIDEWIRE_URL: srv.base, SIDEWIRE_SOURCE: "express-test", PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  app.stdout.on("data", (d) => (out += d));
  app.stderr.on("data", (d) => (out += d));
  const exited = new Promise((r) => app.once("exit", (code, signal) => r({ code, signal })));
  try {
    const base = `http://127.0.0.1:${port}`;
    await until(async () => fetch(`${base}/nope`).then(() => true, () => false), `app up: ${out}`);
    const calls = [
      ["POST", "/api/docs", { file: "a.pdf" }],
      ["GET", "/api/docs/42"],
      ["GET", "/api/search?q=top-secret"],
      ["GET", "/api/fail"],
      ["GET", "/healthz"],
    ];
    for (const [method, p, body] of calls) {
      await (await fetch(base + p, { method, headers: { "Content-Type": "application/json" }, body: body && JSON.stringify(body) })).text();
    }
    app.kill("SIGTERM");
    const { code, signal } = await exited;
    assert.ok(code === 0 || signal === "SIGTERM", `exit ${code} ${signal}: ${out}`);
    const recent = await (await fetch(`${srv.base}/api/v1/activity/recent?limit=100`)).json();
    const byType = (ty) => recent.items.filter((e) => e.type === ty).reverse();
    const routes = byType("http_request").map((e) => `${e.data.method} ${e.data.route} ${e.data.status}`);
    assert.deepEqual(routes, [
      "GET <unmatched> 404",
      "POST /api/docs 201",
      "GET /api/docs/:docId 200",
      "GET /api/search 200",
      "GET /api/fail 500",
    ]);
    assert.ok(!JSON.stringify(byType("http_request")).includes("top-secret"), "no query strings");
    assert.equal(byType("ingestion_complete")[0].data.file, "a.pdf");
    assert.equal(byType("query_complete")[0].data.query, "top-secret");
    assert.equal(byType("error")[0].data.message, "index unavailable");
    assert.ok(recent.items.every((e) => e.source === "express-test"));
    const stats = await (await fetch(`${srv.base}/api/v1/stats`)).json();
    assert.ok(stats.totalNodes > 0, "the gauge arrived");
  } finally {
    if (app.exitCode === null && !app.signalCode) app.kill("SIGKILL");
    await srv.cleanup();
  }
});
