// The ingest client against a scripted HTTP server on loopback: NDJSON
// batches, what each answer does (400 with index, 413 split, 401 drop, 503 +
// Retry-After retried with the same ids), the bounded queue, validation in
// emit(), flush/close.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { Client, formatTimestamp } from "../dist/ingest.js";

/** A server whose answer to each request is `answer(lines, req)` → [status, body, headers]. */
async function stub(answer) {
  const requests = [];
  const srv = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const lines = body.split("\n").map((l) => JSON.parse(l));
      requests.push({ lines, headers: req.headers });
      const [status, json, headers = {}] = answer(lines, req, requests.length);
      res.writeHead(status, { "Content-Type": "application/json", ...headers });
      res.end(JSON.stringify(json));
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${srv.address().port}`;
  return { url, requests, close: () => new Promise((r) => srv.close(r)) };
}
const ok = (lines) => [202, { accepted: lines.length, duplicates: 0, seqs: lines.map((_, i) => i + 1) }];
const quiet = { log: () => {} };

test("batches as NDJSON with ids, timestamps, source and the token", async () => {
  const s = await stub(ok);
  const c = new Client({ url: s.url, token: "tok", source: "api-1", ...quiet });
  assert.equal(c.emit("query_complete", { latencyMs: 5 }), true);
  c.ingestionComplete("a.pdf", { nodesCreated: 2 });
  c.error(new TypeError("boom"), { component: "x" });
  c.gauge({ totalNodes: 4 });
  c.emit("custom.kind", null, { id: "my-id", timestamp: "2025-12-31T21:00:00+01:00" });
  assert.equal(await c.flush(), true);
  assert.equal(s.requests.length, 1);
  const { lines, headers } = s.requests[0];
  assert.equal(headers["content-type"], "application/x-ndjson");
  assert.equal(headers.authorization, "Bearer tok");
  assert.deepEqual(lines.map((l) => l.type), ["query_complete", "ingestion_complete", "error", "stats_update", "custom.kind"]);
  assert.deepEqual(lines[1].data, { file: "a.pdf", nodesCreated: 2 });
  assert.deepEqual(lines[2].data, { message: "boom", error: "TypeError", component: "x" });
  assert.equal(lines[4].id, "my-id");
  assert.equal(lines[4].timestamp, "2025-12-31T20:00:00.000Z");
  assert.ok(lines.every((l) => l.source === "api-1" && /Z$/.test(l.timestamp)));
  assert.equal(new Set(lines.map((l) => l.id)).size, 5, "unique ids");
  assert.deepEqual(c.stats.sent, 5);
  await c.close();
  await s.close();
});

test("emit() refuses what the server would, without throwing, and counts it", () => {
  const c = new Client({ url: "http://127.0.0.1:9", ...quiet });
  const bad = [
    () => c.emit("Bad-Type"),
    () => c.emit("connection_ack"),
    () => c.emit("x", [1, 2]),
    () => c.emit("x", { big: "y".repeat(70_000) }),
    () => c.emit("x", { n: 10n }),
    () => c.emit("x", (() => { const o = {}; o.self = o; return o; })()),
    () => c.emit("x", JSON.parse("[".repeat(0) + JSON.stringify(nest(40)))),
    () => c.emit("stats_update", { "bad name": 3 }),
    () => c.emit("x", {}, { id: "has space" }),
    () => c.emit("x", {}, { id: "é" }),
    () => c.emit("x", {}, { timestamp: "yesterday" }),
    () => c.emit(undefined),
  ];
  for (const f of bad) assert.equal(f(), false);
  assert.equal(c.stats.droppedByReason.invalid, bad.length);
  assert.equal(c.emit("x", nest(31)), true, "31 levels below data is fine");
  void c.close(0);
});

function nest(n) {
  let o = { leaf: 1 };
  for (let i = 1; i < n; i++) o = { o };
  return o;
}

test("formatTimestamp normalizes to UTC milliseconds", () => {
  assert.equal(formatTimestamp(0), "1970-01-01T00:00:00.000Z");
  assert.equal(formatTimestamp(new Date(Date.UTC(2025, 0, 2, 3, 4, 5, 6))), "2025-01-02T03:04:05.006Z");
  assert.equal(formatTimestamp("2025-06-01 12:00:00.123456-02:00"), "2025-06-01T14:00:00.123Z");
});

test("400 with index drops only that event; the rest is sent again", async () => {
  const s = await stub((lines) => {
    const i = lines.findIndex((l) => l.data.bad);
    return i >= 0 ? [400, { error: { code: "invalid_event", message: "no", index: i } }] : ok(lines);
  });
  const c = new Client({ url: s.url, ...quiet });
  c.emit("x", { n: 1 });
  c.emit("x", { n: 2, bad: true });
  c.emit("x", { n: 3 });
  assert.equal(await c.flush(), true);
  assert.deepEqual(s.requests.at(-1).lines.map((l) => l.data.n), [1, 3]);
  assert.equal(c.stats.sent, 2);
  assert.equal(c.stats.droppedByReason.rejected, 1);
  await c.close();
  await s.close();
});

test("413 splits the batch until it fits; later batches stay small", async () => {
  const s = await stub((lines) => (lines.length > 3 ? [413, { error: { code: "payload_too_large", message: "big" } }] : ok(lines)));
  const c = new Client({ url: s.url, flushAt: 10_000, ...quiet });
  for (let i = 0; i < 10; i++) c.emit("x", { i });
  assert.equal(await c.flush(), true);
  const sent = s.requests.filter((r) => r.lines.length <= 3).flatMap((r) => r.lines.map((l) => l.data.i));
  assert.deepEqual(sent, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "every event once, in order");
  assert.equal(c.stats.sent, 10);
  await c.close();
  await s.close();
});

test("401 drops the batch (a retry cannot help) and logs once", async () => {
  const s = await stub(() => [401, { error: { code: "unauthorized", message: "token" } }]);
  const logs = [];
  const c = new Client({ url: s.url, log: (m) => logs.push(m) });
  c.emit("x");
  assert.equal(await c.flush(), true);
  c.emit("x");
  assert.equal(await c.flush(), true);
  assert.equal(s.requests.length, 2);
  assert.equal(c.stats.droppedByReason.unauthorized, 2);
  assert.equal(logs.length, 1, "rate-limited log");
  await c.close();
  await s.close();
});

test("503 with Retry-After: retried no sooner, with the same ids", async () => {
  const times = [];
  const s = await stub((lines, _req, n) => {
    times.push(Date.now());
    return n === 1 ? [503, { error: { code: "persist_unavailable", message: "down" } }, { "Retry-After": "1" }] : ok(lines);
  });
  const c = new Client({ url: s.url, backoffBaseMs: 10, ...quiet });
  c.emit("x", { a: 1 });
  c.emit("x", { a: 2 });
  assert.equal(await c.flush(5000), true);
  assert.equal(s.requests.length, 2);
  assert.ok(times[1] - times[0] >= 990, `waited ${times[1] - times[0]} ms`);
  assert.deepEqual(s.requests[1].lines.map((l) => l.id), s.requests[0].lines.map((l) => l.id));
  assert.equal(c.stats.retried, 1);
  await c.close();
  await s.close();
});

test("a server that is down: emit keeps queueing, the oldest go past the bound, flush times out", async () => {
  const c = new Client({ url: "http://127.0.0.1:9", maxQueue: 100, backoffBaseMs: 50, ...quiet });
  for (let i = 0; i < 250; i++) assert.equal(c.emit("x", { i }), true);
  assert.ok(c.stats.queued <= 101, `queued ${c.stats.queued}`);
  assert.ok(c.stats.droppedByReason.queue_full >= 149);
  assert.equal(await c.flush(300), false);
  const t = Date.now();
  assert.equal(await c.close(300), false, "close gives up at its deadline");
  assert.ok(Date.now() - t < 2000);
  const st = c.stats;
  assert.equal(st.queued, 0);
  assert.equal(st.sent + st.dropped, 250, "every event accounted for");
  assert.equal(c.emit("x"), false, "closed");
});

test("queue bound by bytes too", () => {
  const c = new Client({ url: "http://127.0.0.1:9", maxQueueBytes: 10_000, flushAt: 1e6, ...quiet });
  for (let i = 0; i < 100; i++) c.emit("x", { pad: "p".repeat(500) });
  assert.ok(c.stats.queued <= 20, `queued ${c.stats.queued}`);
  void c.close(0);
});

test("environment variables are the fallback for url, token and source", async () => {
  const s = await stub(ok);
  process.env.SIDEWIRE_URL = s.url;
  process.env.SIDEWIRE_TOKEN = "envtok";
  process.env.SIDEWIRE_SOURCE = "env-src";
  try {
    const c = new Client(quiet);
    c.emit("x");
    await c.flush();
    assert.equal(s.requests[0].headers.authorization, "Bearer envtok");
    assert.equal(s.requests[0].lines[0].source, "env-src");
    await c.close();
  } finally {
    delete process.env.SIDEWIRE_URL;
    delete process.env.SIDEWIRE_TOKEN;
    delete process.env.SIDEWIRE_SOURCE;
    await s.close();
  }
});

test("traceparent of a batch's first event goes as the header", async () => {
  const s = await stub(ok);
  const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  const c = new Client({ url: s.url, traceparent: () => tp, ...quiet });
  c.emit("x");
  await c.flush();
  assert.equal(s.requests[0].headers.traceparent, tp);
  await c.close();
  await s.close();
});

test("bad options are refused at construction", () => {
  assert.throws(() => new Client({ source: "has space" }), TypeError);
  assert.throws(() => new Client({ token: "a\nb" }), TypeError);
  assert.throws(() => new Client({ maxBatch: 0 }), RangeError);
});

test("maxInFlight 2: two batches on the wire at once, every event delivered once", async () => {
  let open = 0;
  let peak = 0;
  const seen = [];
  const srv = createServer((req, res) => {
    open++;
    peak = Math.max(peak, open);
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () =>
      setTimeout(() => {
        const lines = body.split("\n").map((l) => JSON.parse(l));
        seen.push(...lines.map((l) => l.data.i));
        open--;
        res.writeHead(202, { "Content-Type": "application/json" }).end(JSON.stringify({ accepted: lines.length, duplicates: 0, seqs: [] }));
      }, 30),
    );
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const c = new Client({ url: `http://127.0.0.1:${srv.address().port}`, maxInFlight: 2, maxBatch: 100, flushAt: 100, ...quiet });
  for (let i = 0; i < 1000; i++) c.emit("x", { i });
  assert.equal(await c.flush(10_000), true);
  assert.equal(peak, 2);
  assert.deepEqual([...seen].sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i));
  assert.equal(c.stats.sent, 1000);
  await c.close();
  await new Promise((r) => srv.close(r));
});
