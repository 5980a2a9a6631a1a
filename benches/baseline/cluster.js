// The Node baseline as a cluster: N copies of this process behind no load
// balancer, sharing one Redis, speaking the same ingest/dashboard protocol as
// server.js (and sidewire), so sidewire-bench drives it unchanged.
//
// Per ingest request: one `INCRBY <prefix>:seq <events in the request>` gives
// the request's seqs; the events are serialized once and sent with one
// `PUBLISH <prefix>:events` (one event per line); the 202 goes out as soon as
// INCRBY answered (the PUBLISH is not waited for). Every node, the sender
// included, serves its dashboards from its own subscription to that channel,
// so an event reaches every dashboard through Redis.
//
// What it does NOT do, unlike sidewire: keep anything durable (Redis runs
// without persistence here and the events live nowhere), dedupe across nodes
// (each node remembers the last 100,000 ids it accepted itself), keep one
// order (two nodes' PUBLISHes may arrive in either order; nothing is held
// back or filled), resume, or stats. It is a baseline, not a product.
//
//   PORT=8791 REDIS_URL=redis://127.0.0.1:6379 PREFIX=nodebench node cluster.js
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');
const { createClient } = require('@redis/client');

const port = Number(process.env.PORT || 8791);
const redisUrl = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const prefix = process.env.PREFIX || 'nodebench';
const SEQ_KEY = `${prefix}:seq`;
const CHANNEL = `${prefix}:events`;
const WINDOW = 100000;
const ids = new Map(); // id -> seq, insertion ordered (this node's own)
let lastSeq = 0; // highest seq this node has seen on the channel
let filtered = 0; // dashboards with a type filter (0: no event needs parsing)
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 64 * 1024 });

// Evicted in insertion order through a ring of the ids, not with
// `ids.delete(ids.keys().next().value)`: V8 leaves a deleted Map entry as a
// hole until the table is rebuilt, and `keys().next()` walks over every hole
// from the front, so that form cost 13-49 µs per event once the window was
// full and made this baseline slower the longer it ran (600,000 inserts: 16 s
// against 0.25 s with the ring, Node 20).
const ring = new Array(WINDOW);
let ringHead = 0;

function remember(id, s) {
  ids.set(id, s);
  const old = ring[ringHead];
  if (old !== undefined) ids.delete(old);
  ring[ringHead] = id;
  ringHead = (ringHead + 1) % WINDOW;
}

function parse(body, contentType) {
  if (contentType.startsWith('application/x-ndjson')) {
    return body.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  }
  const v = JSON.parse(body);
  return Array.isArray(v) ? v : [v];
}

function reply(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

// One line per event, serialized once; each node sends the same text to all
// of its dashboards.
function deliver(message) {
  const lines = message.split('\n');
  for (const text of lines) {
    let type = null;
    if (filtered > 0) type = JSON.parse(text).type;
    for (const c of wss.clients) {
      if (c.readyState === 1 && (!c.types || c.types.has(type))) c.send(text);
    }
  }
  const tail = lines[lines.length - 1];
  const m = /"seq":(\d+)/.exec(tail.slice(tail.lastIndexOf('"seq":')));
  if (m) lastSeq = Math.max(lastSeq, Number(m[1]));
}

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on('error', (e) => console.error('redis:', e.message));
  await pub.connect();
  await sub.connect();
  await sub.subscribe(CHANNEL, deliver);

  const server = http.createServer((req, res) => {
    if (req.method === 'POST' && req.url === '/api/v1/ingest') {
      const chunks = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', async () => {
        let events;
        try {
          events = parse(Buffer.concat(chunks).toString('utf8'), req.headers['content-type'] || '');
        } catch (e) {
          return reply(res, 400, { error: { code: 'invalid_json', message: String(e) } });
        }
        const fresh = events.filter((e) => e.id === undefined || !ids.has(e.id));
        let hi = 0;
        if (fresh.length > 0) {
          try {
            hi = await pub.incrBy(SEQ_KEY, fresh.length);
          } catch (e) {
            return reply(res, 503, { error: { code: 'persist_unavailable', message: String(e) } });
          }
        }
        let s = hi - fresh.length;
        const seqs = [];
        const lines = [];
        const now = new Date().toISOString();
        let duplicates = 0;
        for (const e of events) {
          if (e.id !== undefined && ids.has(e.id)) {
            duplicates++;
            seqs.push(ids.get(e.id));
            continue;
          }
          s++;
          if (e.id !== undefined) remember(e.id, s);
          const out = { type: e.type, data: e.data || {}, timestamp: e.timestamp || now, seq: s };
          if (e.id !== undefined) out.id = e.id;
          if (e.source !== undefined) out.source = e.source;
          lines.push(JSON.stringify(out));
          seqs.push(s);
        }
        if (lines.length > 0) pub.publish(CHANNEL, lines.join('\n')).catch((e) => console.error('publish:', e.message));
        reply(res, 202, { accepted: lines.length, duplicates, seqs });
      });
      return;
    }
    if (req.method === 'GET' && req.url.startsWith('/api/v1/stats')) {
      return reply(res, 200, { lastSeq, activeConnections: wss.clients.size });
    }
    if (req.method === 'GET' && (req.url === '/readyz' || req.url === '/healthz')) {
      return reply(res, 200, { status: 'ok' });
    }
    reply(res, 404, { error: { code: 'not_found', message: 'not found' } });
  });

  server.on('upgrade', (req, socket, head) => {
    if (!req.url.startsWith('/api/v1/ws/dashboard')) return socket.destroy();
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send(JSON.stringify({ type: 'connection_ack', data: { lastSeq }, timestamp: new Date().toISOString() }));
      ws.on('message', (m) => {
        try {
          const v = JSON.parse(m);
          if (v.type === 'subscribe') {
            const t = (v.types || []).filter((x) => x !== '*');
            if (ws.types) filtered--;
            ws.types = t.length ? new Set(t) : null;
            if (ws.types) filtered++;
          } else if (v.type === 'ping') {
            ws.send(JSON.stringify({ type: 'pong', data: {}, timestamp: new Date().toISOString() }));
          }
        } catch (_) { /* ignored, like an invalid client message */ }
      });
      ws.on('close', () => {
        if (ws.types) filtered--;
      });
    });
  });

  server.keepAliveTimeout = 10000;
  server.listen(port, '127.0.0.1', () => console.log(`node-ws cluster node on 127.0.0.1:${port}, redis ${redisUrl}, prefix ${prefix}`));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
