// Two replicas of the release binary on the machine's PostgreSQL (a database
// of our own, dropped after) and Redis (a key prefix of our own), behind a
// TCP proxy standing in for a load balancer. The dashboard follows the proxy;
// the replica it is on is killed (-9) and the proxy sends it to the other
// one, twice, while both replicas take events. Every accepted event arrives
// exactly once, in seq order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import net from "node:net";
import WebSocket from "ws";
import { connect } from "../dist/dashboard.js";
import { startServer, haveBinary, need, BIN, ingest, until, sleep } from "./helpers/server.mjs";

const PSQL = ["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qAt", "-c"];
const psql = (sql) => execFileSync("psql", [...PSQL, sql], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

function services() {
  try {
    psql("SELECT 1");
  } catch {
    return "PostgreSQL at 127.0.0.1:5432 (user postgres, database test) with psql";
  }
  return new Promise((resolve) => {
    const s = net.connect(6379, "127.0.0.1", () => {
      s.end();
      resolve(null);
    });
    s.on("error", () => resolve("Redis at 127.0.0.1:6379"));
  });
}

/** A TCP proxy whose target can be switched (like a load balancer taking a dead replica out). */
async function proxy(targetPort) {
  const state = { target: targetPort, socks: new Set() };
  const srv = net.createServer((c) => {
    const up = net.connect(state.target, "127.0.0.1");
    state.socks.add(c).add(up);
    const end = () => {
      c.destroy();
      up.destroy();
      state.socks.delete(c);
      state.socks.delete(up);
    };
    c.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
    c.pipe(up).pipe(c);
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  return {
    base: `http://127.0.0.1:${srv.address().port}`,
    to: (port) => (state.target = port),
    close: () => {
      for (const s of state.socks) s.destroy();
      return new Promise((r) => srv.close(r));
    },
  };
}

test("exactly once, in seq order, across a switch between two replicas", { timeout: 120_000 }, async (t) => {
  if (!need(t, "sidewire", haveBinary(), `build it: cargo build --release (${BIN})`)) return;
  const missing = await services();
  if (!need(t, missing?.startsWith("Redis") ? "redis" : "postgres", !missing, missing ?? "")) return;
  const tag = `js${process.pid}x${Date.now().toString(36)}`;
  const db = `sw_js_${tag}`;
  psql(`CREATE DATABASE ${db}`);
  const replica = (name) =>
    startServer({
      plugin: "postgres",
      server: `replica_name = "${name}"`,
      persist: `postgres_url = "postgres://postgres@127.0.0.1:5432/${db}"\npostgres_pool_size = 4`,
      toml: `[broadcast]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:6379/0"\nprefix = "${tag}"\n`,
    });
  let a, b, lb, client;
  try {
    a = await replica("js-a");
    b = await replica("js-b");
    lb = await proxy(a.port);
    client = connect({ url: lb.base, WebSocket, minDelayMs: 100, maxDelayMs: 1000, afterSeq: 0 });
    const seqs = [];
    const problems = [];
    client.on("event", (e) => {
      if (seqs.length && e.seq <= seqs[seqs.length - 1]) problems.push(`${e.seq} after ${seqs[seqs.length - 1]}`);
      seqs.push(e.seq);
    });
    await until(() => client.state === "open", "open through the proxy");

    // Both replicas take events; a dead one is skipped (its events are retried on the other, same ids).
    let live = [a, b];
    const accepted = [];
    let stop = false;
    const producer = (async () => {
      for (let i = 0; !stop; i++) {
        const events = [0, 1, 2].map((k) => ({ type: "query_complete", id: `${tag}-${i}-${k}`, data: { i } }));
        for (let tries = 0; ; tries++) {
          const srv = live[(i + tries) % live.length];
          try {
            accepted.push(...(await ingest(srv.base, events)));
            break;
          } catch {
            await sleep(20);
          }
        }
        await sleep(5);
      }
    })();
    await sleep(500);
    // Switch 1: A dies, the balancer sends the dashboard to B.
    lb.to(b.port);
    live = [b];
    await a.kill();
    await sleep(700);
    await a.start();
    live = [a, b];
    await sleep(300);
    // Switch 2: B dies, back to A.
    lb.to(a.port);
    live = [a];
    await b.kill();
    await sleep(700);
    stop = true;
    await producer;
    const want = [...new Set(accepted)].sort((x, y) => x - y);
    await until(() => seqs.length >= want.length, `all ${want.length} delivered (have ${seqs.length})`, 20000);
    await sleep(300);
    assert.deepEqual(problems, []);
    assert.deepEqual(seqs, want, "every accepted event exactly once, in order");
    t.diagnostic(`${want.length} events over two replica switches`);
  } finally {
    client?.close();
    await lb?.close();
    await a?.cleanup();
    await b?.cleanup();
    try {
      psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    } catch (e) {
      console.error(`could not drop ${db}: ${e}`);
    }
  }
});
