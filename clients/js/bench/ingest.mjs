#!/usr/bin/env node
// Ingest client throughput and emit() latency (docs/BENCHMARKS.md).
//
//   node bench/ingest.mjs [--events N] [--url URL] [--data-bytes B] [--in-flight K]
//
// Without --url it starts target/release/sidewire with its defaults (SQLite,
// persist.ack = "durable": a 202 only after the commit) on a free loopback
// port with a fresh data dir. One Node process emits N events as fast as the
// client takes them (yielding to the event loop so its sender can run, and
// holding back while more than 50,000 wait), then flushes; the rate is N
// over the time from the first emit to the flush, checked against the
// server's eventsTotal. Then emit() is timed one call at a time with the
// server gone.
import { readFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { Client } from "../dist/ingest.js";
import { startServer, freePort } from "../test/helpers/server.mjs";

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const N = Number(arg("events", 500_000));
const dataBytes = Number(arg("data-bytes", 0));
const maxInFlight = Number(arg("in-flight", 1));
let srv = null;
let url = arg("url", null);
if (!url) {
  srv = await startServer();
  url = srv.base;
}
const pad = dataBytes ? "x".repeat(dataBytes) : undefined;
const data = (i) => (pad ? { file: `report-${i}.pdf`, nodesCreated: i % 50, pad } : { file: `report-${i}.pdf`, nodesCreated: i % 50, durationMs: 840 });
const before = (await (await fetch(`${url}/api/v1/stats`)).json()).eventsTotal;

const client = new Client({ url, source: "bench", maxQueue: 100_000, maxInFlight, log: (m) => console.error(m) });
// CPU seconds of a process from /proc (Linux): user + system.
const ticks = (pid) => {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
};
const loadBefore = loadavg()[0];
const cpu0 = process.cpuUsage();
const srvCpu0 = srv ? ticks(srv.proc.pid) : NaN;
const t0 = performance.now();
for (let i = 0; i < N; ) {
  while (client.stats.queued > 50_000) await new Promise((r) => setTimeout(r, 1));
  const end = Math.min(N, i + 2000);
  for (; i < end; i++) client.emit("ingestion_complete", data(i));
  await new Promise((r) => setImmediate(r));
}
const ok = await client.flush(120_000);
const secs = (performance.now() - t0) / 1000;
const after = (await (await fetch(`${url}/api/v1/stats`)).json()).eventsTotal;
const st = client.stats;
const cpu = process.cpuUsage(cpu0);
const clientUs = ((cpu.user + cpu.system) / N).toFixed(2);
const serverUs = srv ? (((ticks(srv.proc.pid) - srvCpu0) * 1e6) / N).toFixed(2) : "?";
console.log(
  `ingest (maxInFlight ${maxInFlight}): ${N} events in ${secs.toFixed(2)} s = ${Math.round(N / secs)} events/s` +
    ` (flushed: ${ok}; server eventsTotal +${after - before}; sent ${st.sent}, dropped ${st.dropped}, retried ${st.retried});` +
    ` CPU per event: client ${clientUs} µs, server ${serverUs} µs; load average ${loadBefore.toFixed(1)} -> ${loadavg()[0].toFixed(1)} on ${cpus().length} CPUs`,
);
await client.close();
if (srv) await srv.cleanup();

// emit() latency with nothing listening.
const down = new Client({ url: `http://127.0.0.1:${await freePort()}`, log: () => {} });
const M = 500_000;
const times = new Float64Array(M);
const ev = { file: "report.pdf", nodesCreated: 12, durationMs: 840.5, tags: ["a", "b"] };
for (let i = 0; i < 50_000; i++) down.emit("ingestion_complete", ev);
for (let i = 0; i < M; i++) {
  const a = process.hrtime.bigint();
  down.emit("ingestion_complete", ev);
  times[i] = Number(process.hrtime.bigint() - a) / 1000;
  if ((i & 4095) === 0) await new Promise((r) => setImmediate(r));
}
times.sort();
const q = (p) => times[Math.min(M - 1, Math.floor(p * M))].toFixed(2);
console.log(`emit() with the server down: p50 ${q(0.5)} µs, p99 ${q(0.99)} µs, p99.9 ${q(0.999)} µs, max ${q(1)} µs over ${M} calls (queue full: oldest dropped)`);
await down.close(0);
