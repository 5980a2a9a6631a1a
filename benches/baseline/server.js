// A minimal Node `ws` broadcaster that speaks enough of sidewire's contract
// for sidewire-bench (ingest, fanout, e2e): POST /api/v1/ingest (object, array
// or NDJSON) answered 202 {accepted, duplicates, seqs}; the dashboard
// WebSocket at /api/v1/ws/dashboard with connection_ack, each event
// serialized once and sent to every client, `subscribe` by type.
// Memory only: no persistence, dedupe over the last 100,000 ids like
// sidewire's window for non-storing plugins. It is a baseline, not a product.
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

const port = Number(process.env.PORT || 8791);
const WINDOW = 100000;
let seq = 0;
const ids = new Map(); // id -> seq, insertion ordered
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

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/api/v1/ingest') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let events;
      try {
        events = parse(Buffer.concat(chunks).toString('utf8'), req.headers['content-type'] || '');
      } catch (e) {
        res.writeHead(400, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ error: { code: 'invalid_json', message: String(e) } }));
      }
      const seqs = [];
      let accepted = 0;
      let duplicates = 0;
      const now = new Date().toISOString();
      for (const e of events) {
        if (e.id !== undefined && ids.has(e.id)) {
          duplicates++;
          seqs.push(ids.get(e.id));
          continue;
        }
        const s = ++seq;
        if (e.id !== undefined) remember(e.id, s);
        const out = { type: e.type, data: e.data || {}, timestamp: e.timestamp || now, seq: s };
        if (e.id !== undefined) out.id = e.id;
        if (e.source !== undefined) out.source = e.source;
        const text = JSON.stringify(out); // once per event, not per client
        for (const c of wss.clients) {
          if (c.readyState === 1 && (!c.types || c.types.has(out.type))) c.send(text);
        }
        accepted++;
        seqs.push(s);
      }
      res.writeHead(202, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ accepted, duplicates, seqs }));
    });
    return;
  }
  if (req.method === 'GET' && req.url.startsWith('/api/v1/stats')) {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ lastSeq: seq, activeConnections: wss.clients.size }));
  }
  res.writeHead(404, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: { code: 'not_found', message: 'not found' } }));
});

server.on('upgrade', (req, socket, head) => {
  if (!req.url.startsWith('/api/v1/ws/dashboard')) return socket.destroy();
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.send(JSON.stringify({ type: 'connection_ack', data: { lastSeq: seq }, timestamp: new Date().toISOString() }));
    ws.on('message', (m) => {
      try {
        const v = JSON.parse(m);
        if (v.type === 'subscribe') {
          const t = (v.types || []).filter((x) => x !== '*');
          ws.types = t.length ? new Set(t) : null;
        } else if (v.type === 'ping') {
          ws.send(JSON.stringify({ type: 'pong', data: {}, timestamp: new Date().toISOString() }));
        }
      } catch (_) { /* ignored, like an invalid client message */ }
    });
  });
});

server.keepAliveTimeout = 10000;
server.listen(port, '127.0.0.1', () => console.log(`node-ws baseline on 127.0.0.1:${port}`));
