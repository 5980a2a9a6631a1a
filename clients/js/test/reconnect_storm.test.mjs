// 1,000 dashboards on one server (loopback), which restarts: they come back
// spread out over time (full jitter), not in one burst, and each resumes
// without a gap. The connection rate is measured on the client side (the
// moment each one is acknowledged) in 100 ms windows.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { connect } from "../dist/dashboard.js";
import { startServer, haveBinary, need, BIN, ingest, until } from "./helpers/server.mjs";

const N = 1000;

test(`${N} dashboards reconnecting after a restart are spread out`, { timeout: 120_000 }, async (t) => {
  if (!need(t, "sidewire", haveBinary(), `build it: cargo build --release (${BIN})`)) return;
  const srv = await startServer({
    toml: `[ws]\nmax_connections_per_ip = ${N * 2}\nconnect_rate_per_ip_per_min = ${N * 20}\n`,
  });
  const clients = [];
  try {
    // Open them in steps of 100 (this is set-up, not the thing measured).
    for (let i = 0; i < N; i += 100) {
      for (let k = 0; k < 100; k++) clients.push(connect({ url: srv.base, WebSocket, pingIntervalMs: 0 }));
      await until(() => clients.every((c) => c.state === "open"), "clients open", 30000);
    }
    const before = await ingest(srv.base, [{ type: "query_complete", id: "before" }]);
    await until(() => clients.every((c) => c.lastSeq === before[0]), "all saw the event");

    const reopened = new Array(N).fill(0);
    clients.forEach((c, i) => c.on("state", (s) => s === "open" && !reopened[i] && (reopened[i] = Date.now())));
    const delivered = new Array(N).fill(0);
    clients.forEach((c, i) => c.on("event", (e) => e.id === "during" && delivered[i]++));

    await srv.stop(); // every dashboard gets 1001
    const down = Date.now();
    await srv.start();
    const up = Date.now();
    const during = await ingest(srv.base, [{ type: "query_complete", id: "during" }]);
    await until(() => reopened.every(Boolean), `all ${N} back (${reopened.filter(Boolean).length})`, 60000);
    await until(() => delivered.every((n) => n === 1), "each got the event once");

    const times = reopened.map((t) => t - down).sort((a, b) => a - b);
    const windows = new Map();
    for (const t of times) windows.set(Math.floor(t / 100), (windows.get(Math.floor(t / 100)) ?? 0) + 1);
    const peak = Math.max(...windows.values());
    const p = (q) => times[Math.min(N - 1, Math.floor(q * N))];
    const report = `restart took ${up - down} ms; reconnects after the 1001: p10 ${p(0.1)} ms, p50 ${p(0.5)} ms, p90 ${p(0.9)} ms, last ${times[N - 1]} ms; busiest 100 ms window: ${peak} connections; ${(N / ((times[N - 1] - times[0]) / 1000)).toFixed(0)} connections/s on average`;
    console.log(`# ${report}`);
    t.diagnostic(report);
    assert.ok(peak <= N * 0.2, `no thundering herd: at most 20% in any 100 ms (${peak})`);
    assert.ok(p(0.9) - p(0.1) >= 500, "spread over at least half a second");
    assert.ok(during[0] > before[0]);
  } finally {
    for (const c of clients) c.close();
    await srv.cleanup();
  }
});
