// Compiled (not run) by .ci/js.sh after the build: an application's view of
// the published types (dist/*.d.ts through the package's exports), with
// Express's and Fastify's own types, strict.
import express from "express";
import Fastify from "fastify";
import WebSocket from "ws";
import { Client, expressMiddleware, fastifyPlugin, type ClientStats } from "sidewire-client/ingest";
import { connect, SidewireError, type EventMessage, type Stats, type ConnectionState, type ResumeInfo } from "sidewire-client/dashboard";

const client = new Client({ source: "api-1", handleExit: true });
const app = express();
app.use(expressMiddleware(client, { sampleRate: 0.5, excludePaths: ["/static/"] }));
const fastify = Fastify();
await fastify.register(fastifyPlugin, { client, eventType: "http_request" });

const feed = connect({ url: "http://127.0.0.1:8790", WebSocket, types: ["error"], getToken: async () => "t" });
const off = feed.on("event", (e: EventMessage) => console.log(e.seq + 1, e.type, e.id ?? "", e.data));
feed.on("stats", (s: Stats) => console.log(s.eventsTotal, s.eventsByType, s.lastEventAt?.length));
feed.on("state", (s: ConnectionState, info) => console.log(s, info.delayMs));
feed.on("resume", (r: ResumeInfo) => r.truncated && r.reset);
feed.on("error", (e: SidewireError) => console.log(e.code, e.status, e.fatal));
off();
for await (const e of feed) console.log(e.seq);

const ok: boolean = client.emit("x", { a: 1 }, { id: "i", timestamp: new Date() });
const st: ClientStats = client.stats;
console.log(ok, st.droppedByReason.queue_full, await client.flush(100), await client.close());
