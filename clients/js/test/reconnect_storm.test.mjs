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

    // The moment each client opens its socket again (the connection rate the
    // clients cause) and the moment the server acknowledges it.
    const attempted = new Array(N).fill(0);
    const reopened = new Array(N).fill(0);
    clients.forEach((c, i) =>
      c.on("state", (s) => {
        if (s === "connecting" && !attempted[i]) attempted[i] = Date.now();
        if (s === "open" && !reopened[i]) reopened[i] = Date.now();
      }),
    );
    const delivered = new Array(N).fill(0);
    clients.forEach((c, i) => c.on("event", (e) => e.id === "during" && delivered[i]++));

    const closedAt = Date.now();
    await srv.stop(); // every dashboard gets 1001
    const down = Date.now();
    await srv.start();
    const up = Date.now();
    const during = await ingest(srv.base, [{ type: "query_complete", id: "during" }]);
    await until(() => reopened.every(Boolean), `all ${N} back (${reopened.filter(Boolean).length})`, 60000);
    await until(() => delivered.every((n) => n === 1), "each got the event once");

    const describe = (stamps) => {
      const times = stamps.map((t) => t - closedAt).sort((a, b) => a - b);
      const windows = new Map();
      for (const t of times) windows.set(Math.floor(t / 100), (windows.get(Math.floor(t / 100)) ?? 0) + 1);
      const q = (p) => times[Math.min(N - 1, Math.floor(p * N))];
      return { peak: Math.max(...windows.values()), p10: q(0.1), p50: q(0.5), p90: q(0.9), last: times[N - 1] };
    };
    const a = describe(attempted);
    const o = describe(reopened);
    const report =
      `server down ${down - closedAt} ms, up again after ${up - closedAt} ms; ` +
      `first reconnect attempts: p10 ${a.p10} ms, p50 ${a.p50} ms, p90 ${a.p90} ms, last ${a.last} ms, busiest 100 ms: ${a.peak}; ` +
      `acknowledged: p10 ${o.p10} ms, p50 ${o.p50} ms, p90 ${o.p90} ms, last ${o.last} ms, busiest 100 ms: ${o.peak}`;
    console.log(`# ${report}`);
    t.diagnostic(report);
    // What the clients control: when they knock. Without jitter all 1,000
    // would knock within a few ms (100% in one window); uniform over 1 s is
    // ~10% per window, and a loaded machine runs timers in bursts, hence 35%.
    assert.ok(a.peak <= N * 0.35, `no thundering herd: at most 35% of the attempts in any 100 ms (${a.peak})`);
    assert.ok(a.p90 - a.p10 >= 500, "attempts spread over at least half a second");
    assert.ok(during[0] > before[0]);
  } finally {
    for (const c of clients) c.close();
    await srv.cleanup();
  }
});
