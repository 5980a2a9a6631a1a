/**
 * The ingest client for Node backends: a non-blocking `emit()` in front of
 * one batching sender (CONTRACT §1–2), the JavaScript take on
 * `clients/python`.
 *
 * - `emit()` runs on the application's request path: it checks the event
 *   against the contract, serializes it once and appends the line to a
 *   bounded queue. No I/O, no await, never throws.
 * - One sender sends NDJSON batches over a kept-alive connection (`fetch`),
 *   one batch in flight at a time, so events keep their order and memory is
 *   bounded by the queue plus one batch.
 * - The queue is bounded by count and by bytes; when full the *oldest* event
 *   is dropped and counted.
 * - Failures that may pass (no connection, timeout, 408/425/429, 5xx) keep
 *   the batch and retry it with exponential backoff and jitter, never sooner
 *   than `Retry-After`, with the same ids (ingest is idempotent by `id`, so
 *   nothing is doubled). Answers a retry cannot change never loop: 400 with
 *   `index` drops that one event, 413 splits the batch, 401/403/415/… drop
 *   the batch; each logged at most once per `logIntervalMs` per kind.
 */

export { expressMiddleware, fastifyPlugin, type RequestEventOptions } from "./http_event.js";

const DEFAULT_URL = "http://127.0.0.1:8790";
const TYPE_RE = /^[a-z][a-z0-9_.:-]{0,63}$/;
const RESERVED = new Set(["connection_ack", "pong", "resume_complete"]);
const STAT_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;
const ASCII_RE = /^[\x21-\x7e]+$/;
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const MAX_DATA_BYTES = 64 * 1024;
const MAX_DEPTH = 32;
const RETRYABLE = new Set([408, 425, 429]);

/** Why events were dropped (keys of `stats.droppedByReason`). */
export type DropReason = "invalid" | "closed" | "queue_full" | "rejected" | "too_large" | "unauthorized" | "refused" | "shutdown";

export interface ClientOptions {
  /** The sidecar's base URL; default `$SIDEWIRE_URL`, else `http://127.0.0.1:8790`. */
  url?: string;
  /** An ingest token (`Authorization: Bearer`); default `$SIDEWIRE_TOKEN`. */
  token?: string;
  /** This backend instance's name, put in every event; default `$SIDEWIRE_SOURCE`. */
  source?: string;
  /** Send as soon as this many events wait (default 500). */
  flushAt?: number;
  /** … or when the oldest has waited this long, in ms (default 200). */
  flushIntervalMs?: number;
  /** At most this many events per request (default 1000, the server's `ingest.max_batch`). */
  maxBatch?: number;
  /** At most this many bytes per request (default 1 MiB, the server's `ingest.max_body_bytes`). */
  maxBatchBytes?: number;
  /** At most this many events wait (default 10,000); beyond, the oldest is dropped. */
  maxQueue?: number;
  /** At most this many bytes wait (default 16 MiB); beyond, the oldest is dropped. */
  maxQueueBytes?: number;
  /** One request's timeout in ms (default 10,000). */
  timeoutMs?: number;
  /**
   * Batches on the wire at once (default 1: events reach the server in the
   * order they were emitted). 2 or more hide the request latency (more
   * throughput), but a batch may then be accepted before an earlier one, so
   * seq order can differ from emit order across batches.
   */
  maxInFlight?: number;
  /** First retry delay ceiling in ms (default 200), doubling up to `backoffMaxMs` (default 30,000). */
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** A `Retry-After` longer than this (ms, default 300,000) is capped. */
  maxRetryAfterMs?: number;
  /** Flush on `beforeExit` and on SIGTERM/SIGINT (then exit) within `exitTimeoutMs` (default 2000). Default false. */
  handleExit?: boolean;
  exitTimeoutMs?: number;
  /** Returns the current W3C `traceparent` (e.g. from OpenTelemetry); a batch is sent with its first event's. */
  traceparent?: () => string | undefined;
  /** Where warnings go (default `console.warn`); each kind at most once per `logIntervalMs` (default 60,000). */
  log?: (message: string) => void;
  logIntervalMs?: number;
  /** The `fetch` to use (default the global one). */
  fetch?: typeof fetch;
}

/** What `emit()` accepts as a timestamp: a `Date`, epoch milliseconds, or RFC 3339 text. */
export type Timestamp = Date | number | string;

export interface EmitOptions {
  /** The idempotency key (1–128 printable ASCII chars); default a unique one. */
  id?: string;
  timestamp?: Timestamp;
}

/** What the client did with the events it was given; each emitted event is in `sent`, `dropped` or `queued`. */
export interface ClientStats {
  queued: number;
  sent: number;
  duplicates: number;
  dropped: number;
  retried: number;
  droppedByReason: Record<DropReason, number>;
}

/** The parts of an ingest answer the sender reads (202 or the error body). */
interface AnswerBody {
  duplicates?: unknown;
  error?: { code?: string; message?: string; index?: unknown };
}

interface Item {
  line: string;
  bytes: number;
  tp: string | undefined;
}

/** An event that breaks a rule of the contract (never thrown out of `emit()`). */
export class InvalidEventError extends Error {}

const env = (k: string): string | undefined => (typeof process !== "undefined" ? process.env[k] : undefined) || undefined;

function depth(v: unknown, level: number): number {
  if (v === null || typeof v !== "object") return 0;
  if (level > MAX_DEPTH) return level;
  let d = level;
  for (const c of Array.isArray(v) ? v : Object.values(v)) d = Math.max(d, depth(c, level + 1));
  return d;
}

/** The server's timestamp form: UTC, milliseconds, `Z`. */
export function formatTimestamp(t: Timestamp): string {
  let ms: number;
  if (t instanceof Date) ms = t.getTime();
  else if (typeof t === "number") ms = t;
  else if (typeof t === "string" && RFC3339.test(t)) ms = Date.parse(t.replace(" ", "T"));
  else throw new InvalidEventError(`field \`timestamp\`: ${JSON.stringify(t)} is not a Date, epoch ms or RFC 3339`);
  if (!Number.isFinite(ms)) throw new InvalidEventError("field `timestamp`: not a valid date-time");
  return new Date(ms).toISOString();
}

/** Sends events to a sidewire sidecar without ever blocking or throwing in the caller. */
export class Client {
  readonly url: string;
  readonly source: string | undefined;
  private readonly endpoint: string;
  private readonly headers: Record<string, string>;
  private readonly sourceJson: string;
  private readonly opt: Required<Omit<ClientOptions, "url" | "token" | "source" | "traceparent" | "fetch">> & Pick<ClientOptions, "traceparent">;
  private readonly fetch: typeof fetch;
  private readonly idPrefix = "sw-" + Math.random().toString(36).slice(2, 10) + Date.now().toString(36) + "-";
  private idCounter = 0;
  private readonly knownTypes = new Set<string>();
  private stampMs = -1;
  private stamp = "";
  // The queue: items[head..] wait; compacted now and then (no O(n) shift).
  private items: Item[] = [];
  private head = 0;
  private queueBytes = 0;
  private oldestAt = 0;
  private inflight = 0;
  private enqueued = 0;
  private batchLimit: number;
  private closed = false;
  private closeDeadline = 0;
  private running = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private sleeping = new Set<() => void>();
  private waiters: { target: number; resolve: (ok: boolean) => void }[] = [];
  private counts = { sent: 0, duplicates: 0, retried: 0 };
  private drops: Record<DropReason, number> = { invalid: 0, closed: 0, queue_full: 0, rejected: 0, too_large: 0, unauthorized: 0, refused: 0, shutdown: 0 };
  private logged = new Map<string, { at: number; held: number }>();
  private exitHooks: (() => void) | null = null;

  constructor(options: ClientOptions = {}) {
    const url = options.url ?? env("SIDEWIRE_URL") ?? DEFAULT_URL;
    const token = options.token ?? env("SIDEWIRE_TOKEN");
    const source = options.source ?? env("SIDEWIRE_SOURCE");
    this.url = url;
    this.endpoint = new URL("/api/v1/ingest", url.replace(/\/+$/, "") + "/").toString();
    if (source !== undefined && !(source.length <= 64 && ASCII_RE.test(source))) throw new TypeError("sidewire: source must be 1-64 printable ASCII characters");
    if (token !== undefined && /[\r\n]/.test(token)) throw new TypeError("sidewire: token must not contain line breaks");
    this.source = source;
    this.sourceJson = source === undefined ? "" : `,"source":${JSON.stringify(source)}`;
    this.headers = { "Content-Type": "application/x-ndjson", ...(token ? { Authorization: `Bearer ${token}` } : {}) };
    this.opt = {
      flushAt: options.flushAt ?? 500,
      flushIntervalMs: options.flushIntervalMs ?? 200,
      maxBatch: options.maxBatch ?? 1000,
      maxBatchBytes: options.maxBatchBytes ?? 1024 * 1024,
      maxQueue: options.maxQueue ?? 10_000,
      maxQueueBytes: options.maxQueueBytes ?? 16 * 1024 * 1024,
      timeoutMs: options.timeoutMs ?? 10_000,
      maxInFlight: options.maxInFlight ?? 1,
      backoffBaseMs: options.backoffBaseMs ?? 200,
      backoffMaxMs: options.backoffMaxMs ?? 30_000,
      maxRetryAfterMs: options.maxRetryAfterMs ?? 300_000,
      handleExit: options.handleExit ?? false,
      exitTimeoutMs: options.exitTimeoutMs ?? 2000,
      traceparent: options.traceparent,
      log: options.log ?? ((m: string) => console.warn(m)),
      logIntervalMs: options.logIntervalMs ?? 60_000,
    };
    const o = this.opt;
    if (!(o.flushAt >= 1 && o.maxBatch >= 1 && o.maxQueue >= 1 && o.maxInFlight >= 1 && o.flushIntervalMs > 0 && o.timeoutMs > 0 && o.backoffBaseMs > 0 && o.backoffMaxMs >= o.backoffBaseMs))
      throw new RangeError("sidewire: flushAt, maxBatch, maxQueue, maxInFlight >= 1; flushIntervalMs, timeoutMs, backoffBaseMs > 0; backoffMaxMs >= backoffBaseMs");
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new TypeError("sidewire: no fetch here (Node >= 18), pass { fetch }");
    this.fetch = f;
    this.batchLimit = o.maxBatch;
    if (o.handleExit) this.installExitHooks();
  }

  // ------------------------------------------------------------------ emit

  /** Queues one event; true when queued, false when dropped (and counted). Never throws, never blocks. */
  emit(type: string, data?: Record<string, unknown> | null, options?: EmitOptions): boolean {
    if (this.closed) {
      this.drops.closed++;
      return false;
    }
    let line: string;
    let tp: string | undefined;
    try {
      line = this.serialize(type, data, options);
      tp = this.opt.traceparent?.();
    } catch (e) {
      this.drops.invalid++;
      this.warn("invalid", `sidewire: event dropped, ${e instanceof Error ? e.message : String(e)}`);
      return false;
    }
    const bytes = byteLength(line);
    if (this.head === this.items.length) this.oldestAt = Date.now();
    this.items.push({ line, bytes, tp });
    this.queueBytes += bytes;
    this.enqueued++;
    if (this.items.length - this.head > this.opt.maxQueue || this.queueBytes > this.opt.maxQueueBytes) this.dropOldest();
    this.schedule();
    return true;
  }

  private serialize(type: string, data: Record<string, unknown> | null | undefined, options: EmitOptions | undefined): string {
    if (!this.knownTypes.has(type)) {
      if (typeof type !== "string" || !TYPE_RE.test(type)) throw new InvalidEventError(`field \`type\`: ${JSON.stringify(type)} must match ^[a-z][a-z0-9_.:-]{0,63}$`);
      if (RESERVED.has(type)) throw new InvalidEventError(`field \`type\`: "${type}" is sent by the server only`);
      if (this.knownTypes.size < 1024) this.knownTypes.add(type);
    }
    let dataJson = "{}";
    if (data != null) {
      if (typeof data !== "object" || Array.isArray(data)) throw new InvalidEventError("field `data`: must be an object");
      let text: string | undefined;
      try {
        text = JSON.stringify(data);
      } catch (e) {
        throw new InvalidEventError(`field \`data\`: not serializable as JSON (${e instanceof Error ? e.message : String(e)})`);
      }
      if (text === undefined || text[0] !== "{") throw new InvalidEventError("field `data`: must be an object");
      const size = text.length * 3 <= MAX_DATA_BYTES ? text.length : byteLength(text);
      if (size > MAX_DATA_BYTES) throw new InvalidEventError(`field \`data\`: ${size} bytes serialized, at most ${MAX_DATA_BYTES}`);
      // Each level needs an opening bracket: few brackets prove the depth is fine.
      if (text.length > MAX_DEPTH * 2 && countBrackets(text) > MAX_DEPTH) {
        const d = depth(JSON.parse(text), 1);
        if (d > MAX_DEPTH) throw new InvalidEventError(`field \`data\`: nested ${d} levels deep, at most ${MAX_DEPTH}`);
      }
      if (type === "stats_update") {
        for (const [k, v] of Object.entries(data)) {
          if (typeof v === "number" && !STAT_RE.test(k)) throw new InvalidEventError(`gauge \`${k}\` in \`data\` must match ^[A-Za-z][A-Za-z0-9_]{0,63}$`);
        }
      }
      dataJson = text;
    }
    let id: string;
    if (options?.id === undefined) id = `"${this.idPrefix}${++this.idCounter}"`;
    else if (typeof options.id === "string" && options.id.length <= 128 && ASCII_RE.test(options.id)) id = JSON.stringify(options.id);
    else throw new InvalidEventError("field `id`: must be 1-128 printable ASCII characters (0x21-0x7E)");
    const stamp = options?.timestamp === undefined ? this.now() : formatTimestamp(options.timestamp);
    return `{"type":"${type}","data":${dataJson},"timestamp":"${stamp}","id":${id}${this.sourceJson}}`;
  }

  /** Now as the server writes it; formatted once per millisecond at most. */
  private now(): string {
    const ms = Date.now();
    if (ms !== this.stampMs) {
      this.stampMs = ms;
      this.stamp = new Date(ms).toISOString();
    }
    return this.stamp;
  }

  private dropOldest(): void {
    let n = 0;
    while (this.items.length - this.head > 1 && (this.items.length - this.head > this.opt.maxQueue || this.queueBytes > this.opt.maxQueueBytes)) {
      this.queueBytes -= this.items[this.head++]!.bytes;
      n++;
    }
    this.compact();
    this.drops.queue_full += n;
    this.warn("queue_full", `sidewire: queue full (${this.opt.maxQueue} events / ${this.opt.maxQueueBytes} bytes), dropped the oldest events`);
    this.settle();
  }

  private compact(): void {
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }

  // --------------------------------------------------------------- helpers

  /** A file finished processing (counted in `filesProcessed` by the default config). */
  ingestionComplete(file?: string, data: { nodesCreated?: number; durationMs?: number; [k: string]: unknown } = {}, options?: EmitOptions): boolean {
    return this.emit("ingestion_complete", file === undefined ? data : { file, ...data }, options);
  }

  /** A chat/search query finished (counted in `queriesCompleted`). */
  queryComplete(query?: string, data: { latencyMs?: number; [k: string]: unknown } = {}, options?: EmitOptions): boolean {
    return this.emit("query_complete", query === undefined ? data : { query, ...data }, options);
  }

  /** A system error worth showing on a dashboard (counted in `errors`); an `Error` gives its message and name. */
  error(message: string | Error, data: { component?: string; code?: string; [k: string]: unknown } = {}, options?: EmitOptions): boolean {
    const fields = message instanceof Error ? { message: message.message, error: message.name } : { message };
    return this.emit("error", { ...fields, ...data }, options);
  }

  /** Sets gauges (a `stats_update` event): `client.gauge({ totalNodes: 45 })`. */
  gauge(values: Record<string, number>): boolean {
    return this.emit("stats_update", values);
  }

  // ------------------------------------------------------- flush and close

  get stats(): ClientStats {
    const dropped = Object.values(this.drops).reduce((a, b) => a + b, 0);
    return { queued: this.items.length - this.head + this.inflight, ...this.counts, dropped, droppedByReason: { ...this.drops } };
  }

  /**
   * Resolves true once every event emitted before the call has left the
   * client (sent, or dropped for a reason `stats` shows); false after
   * `timeoutMs` (e.g. the server is down: the events stay queued). Does not
   * cut a retry backoff short.
   */
  flush(timeoutMs = 5000): Promise<boolean> {
    const target = this.enqueued;
    if (this.done() >= target) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = { target, resolve: (ok: boolean) => (clearTimeout(t), resolve(ok)) };
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(false);
      }, timeoutMs);
      this.waiters.push(w);
      this.kick();
    });
  }

  /**
   * Stops accepting events and sends what is queued within `timeoutMs`: one
   * immediate attempt even during a backoff; what is left at the deadline is
   * dropped (`shutdown`). True when nothing was left behind.
   */
  async close(timeoutMs = 5000): Promise<boolean> {
    const before = this.drops.shutdown;
    if (!this.closed) {
      this.closed = true;
      this.closeDeadline = Date.now() + timeoutMs;
      this.removeExitHooks();
    }
    this.wakeUp();
    this.kick();
    const ok = await this.flush(Math.max(0, this.closeDeadline - Date.now()) + 100);
    if (!ok) this.abandon();
    return ok && this.drops.shutdown === before;
  }

  private done(): number {
    return this.enqueued - (this.items.length - this.head) - this.inflight;
  }

  private settle(): void {
    if (!this.waiters.length) return;
    const done = this.done();
    this.waiters = this.waiters.filter((w) => (w.target <= done ? (w.resolve(true), false) : true));
  }

  private abandon(): void {
    const left = this.items.length - this.head;
    this.drops.shutdown += left;
    this.items = [];
    this.head = 0;
    this.queueBytes = 0;
    this.settle();
  }

  private installExitHooks(): void {
    if (typeof process === "undefined" || typeof process.on !== "function") return;
    let exiting = false;
    let gaveUp = false; // one try per exit: a server that is down must not keep the process alive
    const onBeforeExit = () => {
      if (this.items.length - this.head + this.inflight > 0 && !exiting && !gaveUp) {
        void this.flush(this.opt.exitTimeoutMs).then((ok) => (gaveUp = !ok));
      }
    };
    const onSignal = (sig: NodeJS.Signals) => {
      if (exiting) return;
      exiting = true;
      void this.close(this.opt.exitTimeoutMs).finally(() => {
        // Only exit when nobody else handles the signal (the default would have).
        if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
      });
      this.removeExitHooks();
    };
    process.on("beforeExit", onBeforeExit);
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    this.exitHooks = () => {
      process.off("beforeExit", onBeforeExit);
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
    };
  }

  private removeExitHooks(): void {
    this.exitHooks?.();
    this.exitHooks = null;
  }

  // ---------------------------------------------------------------- sender

  /** After an emit: start a batch now, or make sure one starts within flushIntervalMs. */
  private schedule(): void {
    if (this.running) return;
    if (this.items.length - this.head >= this.opt.flushAt) return this.kick();
    if (!this.timer) {
      const wait = Math.max(0, this.oldestAt + this.opt.flushIntervalMs - Date.now());
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.kick();
      }, wait);
      // Queued events alone do not keep a process alive (handleExit flushes them).
      (this.timer as { unref?: () => void }).unref?.();
    }
  }

  private kick(): void {
    if (this.running) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.running = true;
    void this.run().finally(() => {
      this.running = false;
      if (this.items.length > this.head) this.schedule();
    });
  }

  /**
   * The sender: up to `maxInFlight` batches on the wire (default one, which
   * keeps events in order). After the first batch, the next one goes when
   * `flushAt` events wait (or at once while closing or flushing); otherwise
   * the flush timer starts it.
   */
  private async run(): Promise<void> {
    const active = new Set<Promise<void>>();
    let first = true;
    for (;;) {
      while (active.size < this.opt.maxInFlight && this.items.length > this.head) {
        if (this.closed && Date.now() >= this.closeDeadline) {
          this.abandon();
          break;
        }
        if (!(first || this.closed || this.waiters.length || this.items.length - this.head >= this.opt.flushAt)) break;
        first = false;
        const batch = this.takeBatch();
        this.inflight += batch.length;
        const p: Promise<void> = this.deliver(batch).finally(() => active.delete(p));
        active.add(p);
      }
      if (!active.size) return;
      await Promise.race(active);
      this.settle();
    }
  }

  private takeBatch(): Item[] {
    const limit = this.batchLimit;
    const byteLimit = this.opt.maxBatchBytes;
    let end = this.head;
    let size = 0;
    while (end < this.items.length && end - this.head < limit) {
      const b = this.items[end]!.bytes + 1;
      // The first event goes even alone over the limit: the server decides (413).
      if (end > this.head && size + b > byteLimit) break;
      size += b;
      end++;
    }
    const batch = this.items.slice(this.head, end);
    this.head = end;
    this.queueBytes -= size - batch.length;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else this.compact();
    if (this.items.length > this.head) this.oldestAt = Date.now();
    return batch;
  }

  private finish(n: number, reason?: DropReason, sent = 0, duplicates = 0): void {
    this.inflight = Math.max(0, this.inflight - n);
    this.counts.sent += sent;
    this.counts.duplicates += duplicates;
    if (reason) this.drops[reason] += n;
    this.settle();
  }

  /** One batch until each of its events is delivered or dropped for good; never rejects. */
  private async deliver(batch: Item[]): Promise<void> {
    const pending: Item[][] = [batch];
    try {
      await this.deliverParts(pending);
    } catch (e) {
      // A bug here must not strand the queue: what is left of this batch is dropped and said.
      this.warn("bug", `sidewire: unexpected error while sending a batch, dropped: ${String(e)}`);
      this.finish(pending.reduce((a, p) => a + p.length, 0), "refused");
    }
  }

  private async deliverParts(pending: Item[][]): Promise<void> {
    let failures = 0;
    while (pending.length) {
      const part = pending[0]!;
      let timeout = this.opt.timeoutMs;
      if (this.closed) {
        const left = this.closeDeadline - Date.now();
        if (left <= 0) {
          this.finish(pending.reduce((a, p) => a + p.length, 0), "shutdown");
          return;
        }
        timeout = Math.max(50, Math.min(timeout, left));
      }
      let status = 0;
      let body = null as AnswerBody | null;
      let retryAfter: string | null = null;
      let problem: string;
      try {
        const headers = part[0]!.tp ? { ...this.headers, traceparent: part[0]!.tp } : this.headers;
        const res = await this.fetch(this.endpoint, {
          method: "POST",
          headers,
          body: part.map((i) => i.line).join("\n"),
          signal: AbortSignal.timeout(timeout),
        });
        status = res.status;
        retryAfter = res.headers.get("retry-after");
        body = (await res.json().catch(() => null)) as AnswerBody | null;
        problem = `HTTP ${status}${body?.error?.code ? ` ${body.error.code}` : ""}`;
      } catch (e) {
        problem = e instanceof Error ? `${e.name}: ${e.message}${e.cause ? ` (${String((e.cause as Error).message ?? e.cause)})` : ""}` : String(e);
      }
      if (status >= 200 && status < 300) {
        const dup = typeof body?.duplicates === "number" ? body.duplicates : 0;
        this.finish(part.length, undefined, part.length, dup);
        pending.shift();
        failures = 0;
        continue;
      }
      if (status && status < 500 && !RETRYABLE.has(status)) {
        this.refused(pending, status, body?.error ?? {});
        failures = 0;
        continue;
      }
      failures++;
      this.counts.retried++;
      const delay = this.backoff(failures, retryAfter);
      this.warn("retry", `sidewire: ingest at ${this.url} failed (${problem}); ${pending.reduce((a, p) => a + p.length, 0)} events kept, retrying in ${(delay / 1000).toFixed(2)} s`);
      await this.sleep(delay);
    }
  }

  private refused(pending: Item[][], status: number, err: { code?: string; message?: string; index?: unknown }): void {
    const part = pending[0]!;
    const index = err.index;
    if (status === 400 && typeof index === "number" && index >= 0 && index < part.length) {
      // All or nothing: nothing was stored. Drop the one event to blame, send the rest again.
      this.warn(`rejected:${err.code}`, `sidewire: server refused an event (${err.code}): ${err.message}; dropped it`);
      part.splice(index, 1);
      if (!part.length) pending.shift();
      this.finish(1, "rejected");
    } else if (status === 413 && part.length > 1) {
      const half = part.length >> 1;
      if (half < this.batchLimit) this.batchLimit = half;
      pending.splice(0, 1, part.slice(0, half), part.slice(half));
    } else {
      pending.shift();
      const reason: DropReason = status === 413 ? "too_large" : status === 400 ? "rejected" : status === 401 || status === 403 ? "unauthorized" : "refused";
      this.warn(`refused:${status}`, `sidewire: ingest at ${this.url} answered ${status} (${err.code}): ${err.message}; dropped ${part.length} events`);
      this.finish(part.length, reason);
    }
  }

  /** Exponential backoff, jitter in the upper half; `Retry-After` is the floor. */
  private backoff(failures: number, retryAfter: string | null): number {
    const ceiling = Math.min(this.opt.backoffMaxMs, this.opt.backoffBaseMs * 2 ** Math.min(failures - 1, 30));
    let delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    if (retryAfter) {
      const secs = Number(retryAfter);
      const ms = Number.isFinite(secs) ? secs * 1000 : Date.parse(retryAfter) - Date.now();
      if (ms > 0) delay = Math.max(delay, Math.min(ms, this.opt.maxRetryAfterMs));
    }
    return delay;
  }

  /** Waits out a backoff; `close()` cuts it short (one last try), bounded by its deadline. */
  private sleep(ms: number): Promise<void> {
    if (this.closed) ms = Math.min(ms, Math.max(0, this.closeDeadline - Date.now()));
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.sleeping.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      // A retry alone does not keep the process alive (flush() and close() do, up to their timeout).
      (timer as { unref?: () => void }).unref?.();
      this.sleeping.add(wake);
    });
  }

  private wakeUp(): void {
    for (const wake of [...this.sleeping]) wake();
  }

  private warn(kind: string, message: string): void {
    const now = Date.now();
    const seen = this.logged.get(kind);
    if (seen && now - seen.at < this.opt.logIntervalMs) {
      seen.held++;
      return;
    }
    if (this.logged.size > 256) this.logged.clear();
    this.logged.set(kind, { at: now, held: 0 });
    const held = seen?.held ? ` (${seen.held} more like this in the last ${this.opt.logIntervalMs / 1000} s)` : "";
    try {
      this.opt.log(message + held);
    } catch {
      /* a logger that throws: still nothing for the caller */
    }
  }
}

/** UTF-8 size (Node, Deno and Bun have `Buffer`; it beats a regex test for ASCII). */
const encoder = typeof Buffer === "undefined" ? new TextEncoder() : null;
function byteLength(s: string): number {
  return encoder ? encoder.encode(s).length : Buffer.byteLength(s);
}

function countBrackets(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 123 || c === 91) n++;
  }
  return n;
}
