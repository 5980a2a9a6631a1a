// In Debian's Chromium (playwright-core drives the system browser; nothing is
// downloaded): the React example (examples/react_dashboard, built with Vite)
// and the built-in page (the bundle in assets/dashboard, served by the
// release binary) go live, show events, and survive a kill -9 + restart of
// the server without a gap or a duplicate. Screenshots land in target/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { startServer, haveBinary, need, BIN, ingest, until, sleep } from "./helpers/server.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const CHROMIUM = process.env.CHROMIUM || ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => existsSync(p));
const reactDist = path.join(root, "examples/react_dashboard/dist");
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function serveDir(dir) {
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml" };
  const srv = createServer((req, res) => {
    const p = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const file = path.join(dir, p === "/" ? "index.html" : p);
    if (!file.startsWith(dir) || !existsSync(file)) return res.writeHead(404).end();
    res.writeHead(200, { "Content-Type": types[path.extname(file)] ?? "application/octet-stream" }).end(readFileSync(file));
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return { base: `http://127.0.0.1:${srv.address().port}`, close: () => new Promise((r) => srv.close(r)) };
}

const batch = (tag, n) => Array.from({ length: n }, (_, i) => ({ type: ["ingestion_complete", "query_complete", "error"][i % 3], id: `${tag}-${i}`, data: { tag, i, message: "m" } }));

async function launch() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  return { browser, page, errors };
}

/** Waits until the feed shows exactly `want` (newest first), each once. */
async function feedIs(page, selector, want, what) {
  let have = [];
  await until(
    async () => {
      have = await page.$$eval(selector, (lis) => lis.map((li) => Number(li.dataset.seq)));
      return want.every((s) => have.filter((h) => h === s).length === 1);
    },
    `${what}: want ${JSON.stringify(want)}, have ${JSON.stringify(have)}`,
    20000,
  ).catch((e) => {
    throw new Error(`${e.message}; have ${JSON.stringify(have)}`);
  });
  const desc = [...want].sort((a, b) => b - a);
  assert.deepEqual(have.filter((s) => want.includes(s)), desc, `${what}: newest first, each once`);
  assert.equal(new Set(have).size, have.length, `${what}: no duplicate`);
}

test("the React example connects, shows events and survives a server restart", { timeout: 90_000 }, async (t) => {
  if (!need(t, "sidewire", haveBinary(), `build it: cargo build --release (${BIN})`)) return;
  if (!need(t, "chromium", !!CHROMIUM, "apt-get install chromium")) return;
  if (!need(t, "react_dashboard", existsSync(path.join(reactDist, "index.html")), "build it: npm ci && npm run build in examples/react_dashboard")) return;
  const srv = await startServer();
  const site = await serveDir(reactDist);
  const { browser, page, errors } = await launch();
  try {
    await page.goto(`${site.base}/?sidewire=${encodeURIComponent(srv.base)}`);
    await page.waitForSelector("#state[data-state=open]", { timeout: 15000 });
    const all = await ingest(srv.base, batch("a", 3));
    await feedIs(page, "#feed li", all, "live events");

    await srv.kill();
    await page.waitForSelector("#state:not([data-state=open])", { timeout: 15000 });
    await srv.start();
    all.push(...(await ingest(srv.base, batch("b", 4)))); // while the page reconnects: replayed
    await page.waitForSelector("#state[data-state=open]", { timeout: 30000 });
    all.push(...(await ingest(srv.base, batch("c", 2))));
    await feedIs(page, "#feed li", all, "after the restart");
    await until(async () => (await page.textContent('[data-stat="eventsTotal"] .value')) === String(all.length), "eventsTotal card");
    await page.screenshot({ path: path.join(root, "target/react-dashboard.png") });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await site.close();
    await srv.cleanup();
  }
});

test("the built-in page (bundled client) survives a kill -9 and restart without a gap", { timeout: 90_000 }, async (t) => {
  if (!need(t, "sidewire", haveBinary(), `build it: cargo build --release (${BIN})`)) return;
  if (!need(t, "chromium", !!CHROMIUM, "apt-get install chromium")) return;
  const srv = await startServer();
  const { browser, page, errors } = await launch();
  try {
    const all = await ingest(srv.base, batch("history", 2));
    await page.goto(`${srv.base}/`);
    await until(async () => (await page.textContent("#conn-state")) === "live", "#conn-state live");
    all.push(...(await ingest(srv.base, batch("live", 3))));
    await feedIs(page, "#feed li.item", all, "history + live");

    await srv.kill();
    await until(async () => (await page.getAttribute("#conn-state", "data-state")) !== "live", "page notices");
    await sleep(200);
    await srv.start();
    all.push(...(await ingest(srv.base, batch("missed", 4))));
    await until(async () => (await page.textContent("#conn-state")) === "live", "live again", 30000);
    all.push(...(await ingest(srv.base, batch("after", 2))));
    await feedIs(page, "#feed li.item", all, "after the restart");
    await page.screenshot({ path: path.join(root, "target/dashboard-js.png") });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    await srv.cleanup();
  }
});
