// The dashboard client against the real release binary (loopback only):
// exactly-once, in-order delivery across kill -9 and graceful restarts while
// events keep coming; `truncated` after retention; a bad token that does not
// loop; the message types match what the server documents.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { connect } from "../dist/dashboard.js";
import { startServer, haveBinary, need, BIN, ingest, until, sleep } from "./helpers/server.mjs";

const fast = { WebSocket, minDelayMs: 100, maxDelayMs: 1000 };

/** Collects what a client delivers and checks order on the way. */
function collect(client) {
  const seqs = [];
  const problems = [];
  client.on("event", (e) => {
    const prev = seqs[seqs.length - 1];
    if (prev !== undefined && e.seq <= prev) problems.push(`seq ${e.seq} after ${prev}`);
    seqs.push(e.seq);
  });
  return { seqs, problems };
}

/** Ingests `n` events (ids `${tag}-i`) in small batches, retrying while the server is away; returns accepted seqs. */
async function produce(base, tag, n, { batch = 5, pauseMs = 10 } = {}) {
  const seqs = [];
  for (let i = 0; i < n; i += batch) {
    const events = Array.from({ length: Math.min(batch, n - i) }, (_, k) => ({ type: "query_complete", id: `${tag}-${i + k}`, data: { i: i + k } }));
    for (;;) {
      try {
        seqs.push(...(await ingest(base, events)));
        break;
      } catch {
        await sleep(50); // down or restarting: the same ids again
      }
    }
    await sleep(pauseMs);
  }
  return seqs;
}

test("exactly once, in seq order, across kill -9 and graceful restarts under load", async (t) => {
  if (!need(t, "sidewire", haveBinary(), `build it: cargo build --release (${BIN})`)) return;
  const srv = await startServer();
  try {
    const client = connect({ url: srv.base, ...fast, afterSeq: 0 });
    const got = collect(client);
    let opens = 0;
    client.on("state", (s) => s === "open" && opens++);
    await until(() => client.state === "open", "first open");
    const producer = produce(srv.base, "load", 400);
    for (const how of ["kill", "stop", "kill"]) {
      await sleep(250);
      await (how === "kill" ? srv.kill() : srv.stop());
      await sleep(300);
      await srv.start();
      await until(() => client.state === "open", `open again after ${how}`);
    }
    const accepted = [...new Set(await producer)].sort((a, b) => a - b);
    await until(() => got.seqs.length >= accepted.length, `all ${accepted.length} events delivered (have ${got.seqs.length})`, 20000);
    await sleep(300); // nothing extra may follow
    client.close();
    assert.deepEqual(got.problems, []);
    assert.deepEqual(got.seqs, accepted, "every accepted event exactly once, in order");
    assert.ok(opens >= 4, `reconnected after each restart (${opens} opens)`);
  } finally {
    await srv.cleanup();
  }
});

test("a resume from before what retention kept says truncated, then delivers what is kept", async (t) => {
  if (!need(t, "sidewire", haveBinary(), `build it: cargo build --release (${BIN})`)) return;
  const srv = await startServer({ persist: "retention_max_events = 10" });
  try {
    const first = await produce(srv.base, "old", 5, { pauseMs: 0 });
    const seen = first[first.length - 1];
    const later = await produce(srv.base, "new", 60, { batch: 20, pauseMs: 0 });
    // Wait for retention to remove the events right after `seen`.
    await until(async () => {
      const r = await (await fetch(`${srv.base}/api/v1/activity/recent?limit=500`)).json();
      return r.items.length <= 10;
    }, "retention applied", 20000);
    const client = connect({ url: srv.base, ...fast, afterSeq: seen });
    const got = collect(client);
    const resumes = [];
    client.on("resume", (r) => resumes.push(r));
    await until(() => resumes.length, "resume_complete");
    await sleep(200);
    client.close();
    assert.equal(resumes[0].truncated, true, JSON.stringify(resumes[0]));
    assert.equal(got.seqs.length, resumes[0].replayed);
    assert.deepEqual(got.seqs, later.slice(-got.seqs.length), "the newest kept events, in order");
    assert.ok(got.seqs.length <= 10 && got.seqs.length > 0);
  } finally {
    await srv.cleanup();
  }
});

test("a bad token: one unauthorized error, closed, no retry loop; a good one connects", async (t) => {
  if (!need(t, "sidewire", haveBinary(), `build it: cargo build --release (${BIN})`)) return;
  const srv = await startServer({ toml: '[auth]\ndashboard_tokens = ["good-token"]' });
  const rejected = async () => {
    const text = await (await fetch(`${srv.base}/metrics`)).text();
    const m = /sidewire_ws_rejected_connections_total\{reason="unauthorized"\} (\d+)/.exec(text);
    return Number(m?.[1] ?? 0);
  };
  try {
    const errors = [];
    const bad = connect({ url: srv.base, ...fast, minDelayMs: 10, token: "bad-token" });
    bad.on("error", (e) => errors.push(e));
    await until(() => bad.state === "closed", "closed after 401");
    const after = await rejected();
    await sleep(2000);
    assert.equal(await rejected(), after, "no further attempts");
    assert.ok(after <= 2, `${after} refused attempts`);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, "unauthorized");
    assert.equal(errors[0].status, 401);

    let calls = 0;
    const good = connect({ url: srv.base, ...fast, getToken: async () => (calls++, "good-token") });
    await until(() => good.state === "open", "open with getToken");
    good.close();
    assert.equal(calls, 1);
  } finally {
    await srv.cleanup();
  }
});

test("subscribe filters types, and the filter survives a reconnect", async (t) => {
  if (!need(t, "sidewire", haveBinary(), `build it: cargo build --release (${BIN})`)) return;
  const srv = await startServer();
  try {
    const client = connect({ url: srv.base, ...fast, types: ["error"] });
    const got = [];
    client.on("event", (e) => got.push(e.type));
    await until(() => client.state === "open", "open");
    await ingest(srv.base, [{ type: "query_complete" }, { type: "error", data: { message: "a" } }]);
    await srv.stop();
    await ingest(srv.base, []).catch(() => {});
    await srv.start();
    await ingest(srv.base, [{ type: "ingestion_complete" }, { type: "error", data: { message: "b" } }]);
    await until(() => got.length >= 2, "two errors");
    await sleep(200);
    client.close();
    assert.deepEqual(got, ["error", "error"]);
  } finally {
    await srv.cleanup();
  }
});
