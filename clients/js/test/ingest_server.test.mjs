// The ingest client against the real release binary (durable SQLite):
// kill -9 and graceful restarts while events are emitted lose nothing and
// double nothing; emit() stays fast with the server down.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../dist/ingest.js";
import { startServer, haveBinary, need, BIN, sleep, freePort } from "./helpers/server.mjs";

const stats = async (base) => (await fetch(`${base}/api/v1/stats`)).json();

test("restarts and kill -9 of the server lose nothing and double nothing", { timeout: 90_000 }, async (t) => {
  if (!need(t, "sidewire", haveBinary(), `build it: cargo build --release (${BIN})`)) return;
  const srv = await startServer();
  const client = new Client({ url: srv.base, source: "js-test", backoffBaseMs: 50, backoffMaxMs: 500, maxQueue: 100_000, log: () => {} });
  try {
    const N = 30_000;
    let emitted = 0;
    // A steady producer: 300 events every 10 ms (~30,000/s) on the event loop.
    const producer = (async () => {
      while (emitted < N) {
        for (let k = 0; k < 300 && emitted < N; k++) {
          assert.equal(client.emit("query_complete", { n: emitted, latencyMs: 3 }), true);
          emitted++;
        }
        await sleep(10);
      }
    })();
    for (const how of ["kill", "stop", "kill"]) {
      await sleep(200);
      await (how === "kill" ? srv.kill() : srv.stop());
      await sleep(300);
      await srv.start();
    }
    await producer;
    assert.equal(await client.flush(30_000), true, JSON.stringify(client.stats));
    const s = await stats(srv.base);
    const cs = client.stats;
    t.diagnostic(`client: ${JSON.stringify(cs)}; server eventsTotal ${s.eventsTotal}`);
    assert.equal(cs.dropped, 0, JSON.stringify(cs.droppedByReason));
    assert.equal(cs.sent, N);
    assert.ok(cs.retried > 0, "the restarts were noticed");
    // eventsTotal counts each id once: N means none lost and none doubled.
    assert.equal(s.eventsTotal, N);
    assert.equal(s.eventsByType.query_complete, N);
  } finally {
    await client.close(1000);
    await srv.cleanup();
  }
});

test("emit() p99 < 20 µs with the server down", async () => {
  const port = await freePort(); // nothing listens there
  const client = new Client({ url: `http://127.0.0.1:${port}`, log: () => {} });
  const data = { file: "report.pdf", nodesCreated: 12, durationMs: 840.5, tags: ["a", "b"] };
  const N = 200_000;
  const times = new Float64Array(N);
  for (let i = 0; i < 20_000; i++) client.emit("ingestion_complete", data); // warm-up (JIT)
  for (let i = 0; i < N; i++) {
    const t0 = process.hrtime.bigint();
    client.emit("ingestion_complete", data);
    times[i] = Number(process.hrtime.bigint() - t0) / 1000;
    if ((i & 4095) === 0) await new Promise((r) => setImmediate(r)); // let the sender run and fail
  }
  times.sort();
  const p50 = times[N >> 1];
  const p99 = times[Math.floor(N * 0.99)];
  const p999 = times[Math.floor(N * 0.999)];
  const line = `emit() with the server down: p50 ${p50.toFixed(2)} µs, p99 ${p99.toFixed(2)} µs, p99.9 ${p999.toFixed(2)} µs over ${N} calls; ${JSON.stringify(client.stats.droppedByReason)}`;
  console.log(`# ${line}`);
  assert.ok(client.stats.droppedByReason.queue_full > 0, "the queue bound was reached");
  assert.ok(p99 < 20, line);
  await client.close(0);
});
