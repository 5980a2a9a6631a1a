// The dashboard client's state machine against a scripted WebSocket, under
// fake timers: backoff timing (exponential, full jitter, capped, reset after a
// healthy connection), resume URLs, exactly-once delivery across replays,
// refusals (401 fatal, 429 with Retry-After), the type filter and the
// silence watchdog.
import { test, mock, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { connect, dashboardUrl } from "../dist/dashboard.js";

class FakeWs {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWs.all.push(this);
  }
  send(d) {
    this.sent.push(JSON.parse(d));
  }
  close() {
    this.readyState = 3;
  }
  // Scripting helpers.
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  msg(m) {
    this.onmessage?.({ data: JSON.stringify(m) });
  }
  ack(lastSeq = 0) {
    this.open();
    this.msg({ type: "connection_ack", data: { connectionId: "c", statsIntervalSecs: 5, lastSeq, serverVersion: "t" }, timestamp: "" });
  }
  ev(seq, type = "x") {
    this.msg({ type, data: {}, timestamp: "2025-01-01T00:00:00.000Z", seq });
  }
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  refuse(status) {
    this.onerror?.({ message: `Unexpected server response: ${status}` });
    this.drop(1006);
  }
}
const last = () => FakeWs.all[FakeWs.all.length - 1];

beforeEach(() => {
  FakeWs.all = [];
  mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_000_000 });
});
afterEach(() => {
  mock.timers.reset();
  mock.restoreAll();
});

const opts = (o = {}) => ({ url: "http://127.0.0.1:1", WebSocket: FakeWs, probe: false, ...o });

test("dashboardUrl takes a base or a full URL", () => {
  assert.equal(dashboardUrl("http://h:1"), "ws://h:1/api/v1/ws/dashboard");
  assert.equal(dashboardUrl("https://h/prefix/"), "wss://h/prefix/api/v1/ws/dashboard");
  assert.equal(dashboardUrl("ws://h:1/ws/dashboard?x=1"), "ws://h:1/ws/dashboard");
});

test("backoff: exponential ceilings with full jitter, capped, attempts counted", () => {
  mock.method(Math, "random", () => 1); // the top of each jitter range
  const c = connect(opts({ minDelayMs: 1000, maxDelayMs: 8000 }));
  const delays = [];
  c.on("state", (s, info) => s === "reconnecting" && delays.push(info.delayMs));
  for (let i = 0; i < 6; i++) {
    const before = FakeWs.all.length;
    last().drop();
    const d = delays[delays.length - 1];
    mock.timers.tick(d - 1);
    assert.equal(FakeWs.all.length, before, `no new attempt before ${d} ms`);
    mock.timers.tick(1);
    assert.equal(FakeWs.all.length, before + 1, `a new attempt at ${d} ms`);
  }
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 8000, 8000]);
  c.close();
});

test("backoff: the jitter spans the whole range (full jitter)", () => {
  let r = 0;
  mock.method(Math, "random", () => r);
  const c = connect(opts());
  const delays = [];
  c.on("state", (s, info) => s === "reconnecting" && delays.push(info.delayMs));
  r = 0;
  last().drop();
  assert.equal(delays[0], 0);
  mock.timers.tick(0);
  r = 0.25;
  last().drop();
  assert.equal(delays[1], 500); // ceiling 2000
  c.close();
});

test("backoff resets after a healthy connection, not after a short one", () => {
  mock.method(Math, "random", () => 1);
  const c = connect(opts({ healthyAfterMs: 5000 }));
  const delays = [];
  c.on("state", (s, info) => s === "reconnecting" && delays.push(info.delayMs));
  last().drop(); // 1000
  mock.timers.tick(1000);
  last().drop(); // 2000
  mock.timers.tick(2000);
  last().ack();
  mock.timers.tick(1000);
  last().drop(1001); // open 1 s only: not healthy -> 4000
  mock.timers.tick(4000);
  last().ack();
  mock.timers.tick(5000);
  last().drop(1001); // healthy -> back to the first ceiling
  assert.deepEqual(delays, [1000, 2000, 4000, 1000]);
  c.close();
});

test("resume: afterSeq is the last delivered seq; replay overlap is dropped; order kept", () => {
  mock.method(Math, "random", () => 0);
  const c = connect(opts({ types: undefined }));
  const got = [];
  c.on("event", (e) => got.push(e.seq));
  assert.ok(!last().url.includes("afterSeq"), "first connect: live from now");
  last().ack(10);
  assert.equal(c.lastSeq, 10);
  last().ev(11);
  last().ev(12);
  last().drop(1001, "shutdown");
  mock.timers.tick(0);
  assert.match(last().url, /afterSeq=12$/);
  last().ack(14);
  last().ev(12); // overlap
  last().ev(13);
  last().ev(14);
  last().msg({ type: "resume_complete", data: { replayed: 3, lastSeq: 14, truncated: false }, timestamp: "" });
  last().ev(14); // a live duplicate
  last().ev(15);
  assert.deepEqual(got, [11, 12, 13, 14, 15]);
  c.close();
});

test("afterSeq option resumes on the first connect; 0 asks for everything", () => {
  const c = connect(opts({ afterSeq: 0, token: "t k" }));
  assert.equal(last().url, "ws://127.0.0.1:1/api/v1/ws/dashboard?token=t+k&afterSeq=0");
  c.close();
});

test("truncated replays surface as a resume event", () => {
  const c = connect(opts({ afterSeq: 5 }));
  const seen = [];
  c.on("resume", (r) => seen.push(r));
  last().ack(100);
  last().msg({ type: "resume_complete", data: { replayed: 2, lastSeq: 100, truncated: true }, timestamp: "" });
  assert.deepEqual(seen, [{ replayed: 2, lastSeq: 100, truncated: true }]);
  c.close();
});

test("401 at the upgrade: one error with the contract's code, closed, no retry loop", () => {
  const c = connect(opts());
  const errors = [];
  const states = [];
  c.on("error", (e) => errors.push(e));
  c.on("state", (s) => states.push(s));
  last().refuse(401);
  assert.equal(c.state, "closed");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "unauthorized");
  assert.equal(errors[0].status, 401);
  assert.equal(errors[0].fatal, true);
  mock.timers.tick(120_000);
  assert.equal(FakeWs.all.length, 1, "never tried again");
  assert.deepEqual(states, ["closed"]);
});

test("403 is fatal too (forbidden_origin)", () => {
  const c = connect(opts());
  let err;
  c.on("error", (e) => (err = e));
  last().refuse(403);
  assert.equal(err.code, "forbidden_origin");
  assert.equal(c.state, "closed");
});

test("429 at the upgrade: the probe's Retry-After is the floor of the wait", async () => {
  mock.method(Math, "random", () => 0);
  const calls = [];
  mock.method(globalThis, "fetch", async (url) => {
    calls.push(url);
    return new Response(JSON.stringify({ error: { code: "too_many_connections", message: "slow down" } }), {
      status: 429,
      headers: { "Retry-After": "7" },
    });
  });
  const c = connect(opts({ probe: true, token: "abc" }));
  let err;
  let delay;
  c.on("error", (e) => (err = e));
  c.on("state", (s, info) => s === "reconnecting" && (delay = info.delayMs));
  last().drop(1006);
  for (let i = 0; i < 10 && delay === undefined; i++) await new Promise((r) => setImmediate(r));
  assert.equal(calls[0], "http://127.0.0.1:1/api/v1/ws/dashboard?token=abc");
  assert.equal(err.code, "too_many_connections");
  assert.equal(err.fatal, false);
  assert.equal(delay, 7000);
  c.close();
});

test("1008 slow consumer and 1001 shutdown reconnect", () => {
  mock.method(Math, "random", () => 0);
  const c = connect(opts());
  last().ack(0);
  last().drop(1008, "slow consumer");
  assert.equal(c.state, "reconnecting");
  mock.timers.tick(0);
  assert.equal(FakeWs.all.length, 2);
  last().ack(0);
  last().drop(1001);
  mock.timers.tick(0);
  assert.equal(FakeWs.all.length, 3);
  c.close();
});

test("types filter: subscribe is sent, other types are skipped but still advance lastSeq", () => {
  const c = connect(opts({ types: ["error"] }));
  const got = [];
  c.on("event", (e) => got.push(`${e.type}:${e.seq}`));
  last().ack(0);
  assert.deepEqual(last().sent[0], { type: "subscribe", types: ["error"] });
  last().ev(1, "query_complete");
  last().ev(2, "error");
  assert.deepEqual(got, ["error:2"]);
  assert.equal(c.lastSeq, 2);
  c.subscribe([]);
  assert.deepEqual(last().sent.at(-1), { type: "subscribe", types: [] });
  last().ev(3, "query_complete");
  assert.deepEqual(got, ["error:2", "query_complete:3"]);
  c.close();
});

test("stats: newest wins; a stored gauge report is no feed event", () => {
  const c = connect(opts());
  const stats = [];
  const events = [];
  c.on("stats", (s) => stats.push(s.lastSeq));
  c.on("event", (e) => events.push(e.seq));
  last().ack(0);
  last().msg({ type: "stats_update", data: { lastSeq: 3, generatedAt: "2025-01-01T00:00:02.000Z" }, timestamp: "" });
  last().msg({ type: "stats_update", data: { lastSeq: 2, generatedAt: "2025-01-01T00:00:01.000Z" }, timestamp: "" });
  last().msg({ type: "stats_update", data: {}, timestamp: "", seq: 4 });
  assert.deepEqual(stats, [3]);
  assert.deepEqual(events, []);
  assert.equal(c.lastSeq, 4);
  c.close();
});

test("a server whose history stays behind the client is taken as reset", () => {
  const c = connect(opts({ afterSeq: 50, resetAfterMs: 10_000 }));
  const resumes = [];
  const got = [];
  c.on("resume", (r) => resumes.push(r));
  c.on("event", (e) => got.push(e.seq));
  last().ack(3);
  const stats = (n, t) => last().msg({ type: "stats_update", data: { lastSeq: n, generatedAt: `2025-01-01T00:00:${t}.000Z` }, timestamp: "" });
  stats(3, 10);
  mock.timers.tick(5000);
  stats(3, 15);
  assert.equal(resumes.length, 0, "a lagging replica gets time to catch up");
  mock.timers.tick(5000);
  stats(4, 20);
  assert.deepEqual(resumes, [{ replayed: 0, lastSeq: 4, truncated: true, reset: true }]);
  last().ev(5);
  assert.deepEqual(got, [5]);
  c.close();
});

test("silence: a connection that says nothing is dropped and reopened", () => {
  mock.method(Math, "random", () => 0);
  const c = connect(opts({ silenceTimeoutMs: 20_000, pingIntervalMs: 0 }));
  last().ack(0);
  mock.timers.tick(19_000);
  assert.equal(c.state, "open");
  mock.timers.tick(3000);
  assert.equal(c.state, "connecting");
  assert.equal(FakeWs.all.length, 2);
  c.close();
});

test("getToken is called on every connect", async () => {
  mock.method(Math, "random", () => 0);
  let n = 0;
  const c = connect(opts({ getToken: async () => `tok${++n}` }));
  await new Promise((r) => setImmediate(r));
  assert.match(last().url, /token=tok1/);
  last().ack(0);
  last().drop(1001);
  mock.timers.tick(0);
  await new Promise((r) => setImmediate(r));
  assert.match(last().url, /token=tok2/);
  c.close();
});

test("async iteration yields events in order and ends at close()", async () => {
  const c = connect(opts());
  last().ack(0);
  const it = c.events();
  last().ev(1);
  last().ev(2);
  assert.equal((await it.next()).value.seq, 1);
  assert.equal((await it.next()).value.seq, 2);
  const pending = it.next();
  c.close();
  assert.equal((await pending).done, true);
});

test("the page becoming visible or the browser coming online reconnects at once", () => {
  mock.method(Math, "random", () => 1);
  const listeners = {};
  const doc = { visibilityState: "hidden", addEventListener: (t, f) => (listeners[t] = f), removeEventListener: (t) => delete listeners[t] };
  globalThis.document = doc;
  globalThis.addEventListener = (t, f) => (listeners[t] = f);
  globalThis.removeEventListener = (t) => delete listeners[t];
  try {
    const c = connect(opts());
    last().drop(); // reconnecting in 1000 ms
    mock.timers.tick(0);
    assert.equal(FakeWs.all.length, 1);
    listeners.visibilitychange(); // still hidden: nothing
    assert.equal(FakeWs.all.length, 1);
    doc.visibilityState = "visible";
    listeners.visibilitychange();
    assert.equal(FakeWs.all.length, 2, "visible: at once");
    last().drop();
    listeners.online();
    assert.equal(FakeWs.all.length, 3, "online: at once");
    last().ack(0);
    listeners.online(); // open: nothing to do
    assert.equal(FakeWs.all.length, 3);
    c.close();
    assert.deepEqual(Object.keys(listeners), [], "listeners removed at close()");
  } finally {
    delete globalThis.document;
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
});
