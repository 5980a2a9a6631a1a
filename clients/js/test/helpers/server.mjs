// Runs the real sidewire binary for tests: a config in a temp dir, a free
// loopback port, start / kill -9 / graceful stop / restart on the same port.
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
export const BIN = process.env.SIDEWIRE_BIN || path.join(root, "target/release/sidewire");

/** Whether a required program is missing: skip with a printed reason, or fail when SIDEWIRE_TEST_REQUIRE names it. */
export function need(t, what, present, hint) {
  if (present) return true;
  const required = (process.env.SIDEWIRE_TEST_REQUIRE ?? "").split(",").map((s) => s.trim());
  if (required.includes(what)) throw new Error(`${what} is required (SIDEWIRE_TEST_REQUIRE) but missing: ${hint}`);
  t.skip(`${what} missing: ${hint}`);
  console.log(`# SKIP ${t.name}: ${what} missing (${hint})`);
  return false;
}

export const haveBinary = () => existsSync(BIN);

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts sidewire. `toml` is appended to the generated config (sections of
 * your own must not repeat [server] or [persist] keys given here).
 */
export async function startServer({ plugin = "sqlite", port, dir, toml = "", env = {}, server = "", persist = "" } = {}) {
  dir ??= mkdtempSync(path.join(tmpdir(), "sidewire-js-"));
  port ??= await freePort();
  const cfg = path.join(dir, "sidewire.toml");
  const persistToml =
    plugin === "sqlite" ? `plugin = "sqlite"\nsqlite_path = "${path.join(dir, "sidewire.db")}"` : `plugin = "${plugin}"`;
  writeFileSync(
    cfg,
    `[server]\nlisten = "127.0.0.1:${port}"\n${server}\n[persist]\n${persistToml}\n${persist}\n[telemetry]\nlog_level = "warn"\n${toml}\n`,
  );
  const srv = {
    port,
    dir,
    base: `http://127.0.0.1:${port}`,
    proc: null,
    stderr: "",
    async start() {
      const p = spawn(BIN, ["serve", "--config", cfg], { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
      p.stderr.on("data", (d) => {
        srv.stderr = (srv.stderr + d).slice(-20000);
      });
      srv.proc = p;
      const deadline = Date.now() + 20000;
      for (;;) {
        if (p.exitCode !== null) throw new Error(`sidewire exited ${p.exitCode}: ${srv.stderr}`);
        try {
          const r = await fetch(`${srv.base}/healthz`);
          if (r.ok) return srv;
        } catch {
          /* not yet */
        }
        if (Date.now() > deadline) throw new Error(`sidewire did not start: ${srv.stderr}`);
        await sleep(25);
      }
    },
    /** kill -9: no 1001, no flush. */
    async kill() {
      const p = srv.proc;
      if (!p || p.exitCode !== null || p.signalCode) return;
      const gone = new Promise((r) => p.once("exit", r));
      p.kill("SIGKILL");
      await gone;
    },
    /** SIGTERM: graceful (1001 to every WebSocket). */
    async stop() {
      const p = srv.proc;
      if (!p || p.exitCode !== null || p.signalCode) return;
      const gone = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      const t = setTimeout(() => p.kill("SIGKILL"), 15000);
      await gone;
      clearTimeout(t);
    },
    async cleanup() {
      await srv.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return srv.start();
}

/** POSTs events (an array) as one JSON batch; returns the seqs. */
export async function ingest(base, events, headers = {}) {
  const r = await fetch(`${base}/api/v1/ingest`, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify(events),
  });
  const body = await r.json();
  if (r.status !== 202) throw new Error(`ingest: ${r.status} ${JSON.stringify(body)}`);
  return body.seqs;
}

/** Waits until `cond()` is truthy (polling), or fails with `what`. */
export async function until(cond, what, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(20);
  }
}
