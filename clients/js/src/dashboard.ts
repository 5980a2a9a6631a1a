/**
 * The dashboard client: one object per live feed of a sidewire sidecar
 * (`/api/v1/ws/dashboard`, CONTRACT §5), for browsers and Node.
 *
 * What it takes off an application's hands:
 * - a state machine (`connecting` → `open` → `reconnecting` … → `closed`)
 *   with capped exponential backoff and full jitter, reset once a
 *   connection stayed healthy, so a restart under many dashboards spreads
 *   their reconnects out instead of stampeding;
 * - resume: every reconnect asks for `?afterSeq=<last seq delivered>`, and
 *   events are handed over exactly once and in seq order (anything at or
 *   below the last delivered seq is a replay overlap and dropped);
 * - the contract's refusals: 401/403 at the upgrade end in an `error` and
 *   `closed` (no retry loop), 429/503 back off at least the server's
 *   `Retry-After`; close codes 1001 (shutdown) and 1008 (slow consumer,
 *   heartbeat) reconnect;
 * - `getToken()` on every connect, a prompt reconnect when the page becomes
 *   visible or the browser comes back online, a ping and a silence watchdog.
 *
 * Browsers hide the HTTP status of a refused upgrade, so after a connection
 * that never opened the client asks the same URL with a plain GET (the
 * server runs the same checks and answers 401/403/429/503 with the error
 * body, or 426). Cross-origin that answer is unreadable without CORS: the
 * client then just backs off.
 */

import type { AckData, EventMessage, ResumeCompleteData, ServerMessage, Stats } from "./messages.js";

export type * from "./messages.js";

/** Where a client is: `open` means acknowledged by the server and live. */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** The part of the standard `WebSocket` the client uses (browsers, Node ≥ 22, the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
/** A WebSocket class (the browser's, Node's, `ws`): typed loosely so each one's own handler types fit; used as {@link WebSocketLike}. */
export type WebSocketConstructor = new (url: string) => object;

export interface ConnectOptions {
  /** The sidecar's base URL (`http(s)://host:port`) or the full `ws(s)://…/api/v1/ws/dashboard`. Default in a browser: the page's origin. */
  url?: string;
  /** A dashboard token (sent as `?token=`). */
  token?: string;
  /** Called before every connect; its result wins over `token` (short-lived tokens). */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Resume after this seq on the first connect (`0`: all the server keeps, up to `ws.max_replay`). Default: live from now. */
  afterSeq?: number;
  /** Only these event types (`subscribe`); default all. */
  types?: readonly string[];
  /** A WebSocket constructor where there is no global one (Node < 22: the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /** First backoff ceiling in ms (default 1000); each failed attempt doubles it. */
  minDelayMs?: number;
  /** Backoff cap in ms (default 30000). */
  maxDelayMs?: number;
  /** A connection open this long (ms, default 5000) resets the backoff. */
  healthyAfterMs?: number;
  /** Send `ping` this often (ms, default 25000; 0: never). */
  pingIntervalMs?: number;
  /** Reconnect when nothing arrived for this long (ms; default max(20 s, 3 stats intervals); 0: never). */
  silenceTimeoutMs?: number;
  /** Ask the WS path over HTTP after a refused upgrade, to learn why (default true where `fetch` exists). */
  probe?: boolean;
  /** Declare the server's store reset when its stats stay below the client's seq this long (ms, default 15000). */
  resetAfterMs?: number;
}

/** An `error` from the client: a refused connect, a server `error` message, a failed `getToken`. */
export class SidewireError extends Error {
  /** The contract's error code (`unauthorized`, `forbidden_origin`, `too_many_connections`, `server_at_capacity`, …) or `server_error` / `token_error` / `connect_failed`. */
  readonly code: string;
  /** The HTTP status of a refused upgrade, when known. */
  readonly status: number | undefined;
  /** True when the client gave up (it is `closed` now). */
  readonly fatal: boolean;
  constructor(code: string, message: string, status?: number, fatal = false) {
    super(message);
    this.name = "SidewireError";
    this.code = code;
    this.status = status;
    this.fatal = fatal;
  }
}

/** What `on("resume")` gets: the server's `resume_complete` data, plus `reset` when the client decided the server's history started over. */
export interface ResumeInfo extends ResumeCompleteData {
  reset?: boolean;
}

/** What `on("state")` gets with the new state. */
export interface StateInfo {
  /** Failed attempts in a row (0 on the first connect and after a healthy connection). */
  attempt: number;
  /** `reconnecting`: the wait before the next attempt, in ms. */
  delayMs?: number;
  /** Why the last connection ended or failed (a close code, `refused: 429`, …). */
  reason?: string;
}

export interface Listeners {
  event: (event: EventMessage) => void;
  stats: (stats: Stats) => void;
  state: (state: ConnectionState, info: StateInfo) => void;
  error: (error: SidewireError) => void;
  resume: (info: ResumeInfo) => void;
  ack: (ack: AckData) => void;
  pong: (rttMs: number) => void;
}

const WS_PATH = "/api/v1/ws/dashboard";
const FATAL: Record<number, string> = { 401: "unauthorized", 403: "forbidden_origin" };
const BACKOFF: Record<number, string> = { 429: "too_many_connections", 503: "server_at_capacity" };

/** The WebSocket URL for a base or full URL (exported for tests and tools). */
export function dashboardUrl(url: string): string {
  const u = new URL(url);
  u.protocol = u.protocol.replace(/^http/, "ws");
  if (!/\/ws\/dashboard$/.test(u.pathname)) u.pathname = u.pathname.replace(/\/+$/, "") + WS_PATH;
  u.search = "";
  u.hash = "";
  return u.toString();
}

type Handlers = { [K in keyof Listeners]: Set<Listeners[K]> };
type G = typeof globalThis & {
  document?: { visibilityState: string; addEventListener(t: string, f: () => void): void; removeEventListener(t: string, f: () => void): void };
  location?: { origin: string };
  addEventListener?(t: string, f: () => void): void;
  removeEventListener?(t: string, f: () => void): void;
};

/** A live feed; see {@link connect}. */
export class DashboardClient implements AsyncIterable<EventMessage> {
  /** The seq of the last event delivered (or skipped by the type filter); `null` before the first `connection_ack`. */
  lastSeq: number | null;
  state: ConnectionState = "connecting";
  /** The newest stats (`stats_update` data). */
  stats: Stats | null = null;
  /** The last `connection_ack` data. */
  server: AckData | null = null;

  private readonly o: ConnectOptions;
  private readonly wsUrl: string;
  private readonly Ws: WebSocketConstructor;
  private readonly h: Handlers = { event: new Set(), stats: new Set(), state: new Set(), error: new Set(), resume: new Set(), ack: new Set(), pong: new Set() };
  private types: Set<string> | null;
  private ws: WebSocketLike | null = null;
  private attempt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private ticker: ReturnType<typeof setInterval> | undefined;
  private openedAt = 0;
  private lastMsgAt = 0;
  private pingAt = 0;
  private lastPingSent = 0;
  private behindSince = 0;
  private statsIntervalMs = 5000;
  private statsFloor = "";
  private readonly wake: () => void;

  constructor(options: ConnectOptions) {
    const g = globalThis as G;
    this.o = options;
    const url = options.url ?? g.location?.origin;
    if (!url) throw new TypeError("sidewire: connect() needs a url");
    this.wsUrl = dashboardUrl(url);
    const Ws: WebSocketConstructor | undefined = options.WebSocket ?? g.WebSocket;
    if (!Ws) throw new TypeError("sidewire: no WebSocket here; pass connect({ WebSocket }) (e.g. the `ws` package)");
    this.Ws = Ws;
    this.lastSeq = options.afterSeq ?? null;
    this.types = norm(options.types);
    this.wake = () => {
      if (this.state === "reconnecting" && (!g.document || g.document.visibilityState === "visible")) {
        this.attempt = 0;
        void this.open();
      }
    };
    g.document?.addEventListener("visibilitychange", this.wake);
    g.addEventListener?.("online", this.wake);
    this.ticker = setInterval(() => this.tick(), 1000);
    (this.ticker as { unref?: () => void }).unref?.();
    void this.open();
  }

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Listeners>(name: K, fn: Listeners[K]): () => void {
    const set = this.h[name] as Set<Listeners[K]>;
    set.add(fn);
    return () => set.delete(fn);
  }

  /** Only these event types from now on (`[]`: all). */
  subscribe(types: readonly string[]): void {
    this.types = norm(types);
    this.sendSubscribe();
  }

  /** Stops for good: no reconnect; the state becomes `closed`. */
  close(): void {
    if (this.state === "closed") return;
    const g = globalThis as G;
    g.document?.removeEventListener("visibilitychange", this.wake);
    g.removeEventListener?.("online", this.wake);
    clearTimeout(this.timer);
    clearInterval(this.ticker);
    this.drop(1000);
    this.setState("closed", { attempt: this.attempt });
  }

  /** `for await (const event of client)`: events until `close()`. Holds at most `limit` undelivered events; more ends the iteration with an error. */
  events(limit = 10_000): AsyncIterableIterator<EventMessage> {
    const buf: EventMessage[] = [];
    let wait: ((r: IteratorResult<EventMessage>) => void) | null = null;
    let failed: Error | null = null;
    const done = (): IteratorResult<EventMessage> => ({ value: undefined, done: true });
    const offEvent = this.on("event", (e) => {
      if (wait) {
        const w = wait;
        wait = null;
        w({ value: e, done: false });
      } else if (buf.length >= limit) {
        failed = new SidewireError("iterator_overflow", `sidewire: more than ${limit} events waiting in events()`);
        stop();
      } else buf.push(e);
    });
    const offState = this.on("state", (s) => {
      if (s === "closed") stop();
    });
    let stopped = false;
    const stop = () => {
      stopped = true;
      offEvent();
      offState();
      if (wait) wait(done());
      wait = null;
    };
    if (this.state === "closed") stop();
    return {
      next: () => {
        const e = buf.shift();
        if (e) return Promise.resolve({ value: e, done: false });
        if (failed) return Promise.reject(failed);
        if (stopped) return Promise.resolve(done());
        return new Promise((r) => (wait = r));
      },
      return: () => {
        stop();
        return Promise.resolve(done());
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  [Symbol.asyncIterator](): AsyncIterator<EventMessage> {
    return this.events();
  }

  // ---------------------------------------------------------------- inside

  private emit<K extends keyof Listeners>(name: K, ...args: Parameters<Listeners[K]>): void {
    for (const fn of this.h[name]) {
      try {
        (fn as (...a: unknown[]) => void)(...args);
      } catch (e) {
        // A listener's bug must not break the feed; report it the way an
        // uncaught error would be, without unwinding this call.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }

  private setState(s: ConnectionState, info: StateInfo): void {
    this.state = s;
    this.emit("state", s, info);
  }

  private async open(): Promise<void> {
    clearTimeout(this.timer);
    this.drop(1000);
    this.setState("connecting", { attempt: this.attempt });
    let token: string | null | undefined = this.o.token;
    if (this.o.getToken) {
      try {
        token = (await this.o.getToken()) ?? token;
      } catch (e) {
        this.emit("error", new SidewireError("token_error", `sidewire: getToken failed: ${String(e)}`));
        return this.retry("getToken failed");
      }
      if (this.state !== "connecting" || this.ws) return; // closed or reopened meanwhile
    }
    const q = new URLSearchParams();
    if (token) q.set("token", token);
    if (this.lastSeq !== null) q.set("afterSeq", String(this.lastSeq));
    const qs = q.toString();
    const url = this.wsUrl + (qs ? `?${qs}` : "");
    let ws: WebSocketLike;
    try {
      ws = new this.Ws(url) as WebSocketLike;
    } catch (e) {
      this.emit("error", new SidewireError("connect_failed", `sidewire: ${String(e)}`));
      return this.retry("connect failed");
    }
    this.ws = ws;
    let opened = false;
    let hint = "";
    ws.onopen = () => {
      opened = true;
      this.openedAt = this.lastMsgAt = Date.now();
    };
    ws.onerror = (ev) => {
      // The `ws` package says which status refused the upgrade.
      const m = /Unexpected server response: (\d{3})/.exec(String((ev as { message?: string })?.message ?? ""));
      if (m) hint = m[1]!;
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastMsgAt = Date.now();
      let msg: ServerMessage;
      try {
        msg = JSON.parse(String(ev.data)) as ServerMessage;
      } catch {
        return;
      }
      if (msg && typeof msg.type === "string") this.handle(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.openedAt && Date.now() - this.openedAt >= (this.o.healthyAfterMs ?? 5000) && this.state === "open") this.attempt = 0;
      this.openedAt = 0;
      if (!opened) void this.refused(url, hint);
      else this.retry(`closed ${ev.code}${ev.reason ? ` ${ev.reason}` : ""}`);
    };
  }

  /** A connect that never opened: find out why (see the module doc). */
  private async refused(url: string, hint: string): Promise<void> {
    let status = Number(hint) || 0;
    let code = "";
    let message = "";
    let retryAfterMs = 0;
    if (this.o.probe ?? typeof fetch === "function") {
      try {
        // The token is in the URL already; no header, so no CORS preflight.
        const res = await fetch(url.replace(/^ws/, "http"), { cache: "no-store" });
        status = res.status;
        retryAfterMs = Number(res.headers.get("retry-after")) * 1000 || 0;
        const body = (await res.json().catch(() => null)) as { error?: { code?: string; message?: string } } | null;
        code = body?.error?.code ?? "";
        message = body?.error?.message ?? "";
      } catch {
        /* unreachable, or cross-origin: unknown */
      }
      if (this.state !== "connecting" || this.ws) return;
    }
    if (FATAL[status]) {
      clearTimeout(this.timer);
      this.emit("error", new SidewireError(code || FATAL[status]!, message || `sidewire: upgrade refused (${status})`, status, true));
      this.close();
      return;
    }
    if (BACKOFF[status]) this.emit("error", new SidewireError(code || BACKOFF[status]!, message || `sidewire: upgrade refused (${status})`, status));
    this.retry(status ? `refused: ${status}` : "unreachable", retryAfterMs);
  }

  private retry(reason: string, floorMs = 0): void {
    if (this.state === "closed") return;
    const min = this.o.minDelayMs ?? 1000;
    const cap = this.o.maxDelayMs ?? 30000;
    const ceiling = Math.min(cap, min * 2 ** Math.min(this.attempt, 30));
    const delayMs = Math.max(floorMs, Math.round(Math.random() * ceiling));
    this.attempt++;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.open(), delayMs);
    this.setState("reconnecting", { attempt: this.attempt, delayMs, reason });
  }

  private handle(msg: ServerMessage): void {
    switch (msg.type) {
      case "connection_ack": {
        const d = msg.data as AckData;
        this.server = d;
        if (d.statsIntervalSecs > 0) this.statsIntervalMs = d.statsIntervalSecs * 1000;
        if (this.lastSeq === null) this.lastSeq = d.lastSeq;
        this.behindSince = 0;
        this.statsFloor = "";
        this.emit("ack", d);
        this.sendSubscribe(false);
        this.setState("open", { attempt: this.attempt });
        this.ping();
        return;
      }
      case "pong":
        if (this.lastPingSent) this.emit("pong", Date.now() - this.lastPingSent);
        this.lastPingSent = 0;
        return;
      case "resume_complete":
        this.emit("resume", msg.data as ResumeCompleteData);
        return;
    }
    const seq = (msg as EventMessage).seq;
    if (typeof seq === "number") {
      if (this.lastSeq !== null && seq <= this.lastSeq) return; // overlap of replay and live: already delivered
      this.lastSeq = seq;
      // A stored gauge report is not a feed event (its values come with the next stats).
      if (msg.type === "stats_update" || (this.types && !this.types.has(msg.type))) return;
      this.emit("event", msg as EventMessage);
    } else if (msg.type === "stats_update") {
      this.onStats(msg.data as Stats);
    } else if (msg.type === "error") {
      const d = (msg.data ?? {}) as { code?: string; message?: string };
      this.emit("error", new SidewireError(d.code ?? "server_error", d.message ?? JSON.stringify(d)));
    }
  }

  private onStats(s: Stats): void {
    if (s.generatedAt < this.statsFloor) return; // older than one this connection gave: newest wins
    this.statsFloor = s.generatedAt;
    this.stats = s;
    // The server's history is behind what this client delivered: a replica
    // that has not caught up yet (seconds), or a store that started over.
    // Only the second lasts; then follow the server's numbering again.
    const last = this.lastSeq;
    if (last !== null && typeof s.lastSeq === "number" && s.lastSeq < last) {
      const now = Date.now();
      if (!this.behindSince) this.behindSince = now;
      else if (now - this.behindSince >= (this.o.resetAfterMs ?? 15000)) {
        this.behindSince = 0;
        this.lastSeq = s.lastSeq;
        this.emit("resume", { replayed: 0, lastSeq: s.lastSeq, truncated: true, reset: true });
      }
    } else this.behindSince = 0;
    this.emit("stats", s);
  }

  private sendSubscribe(always = true): void {
    if (this.ws?.readyState === 1 && (always || this.types)) this.ws.send(JSON.stringify({ type: "subscribe", types: this.types ? [...this.types] : [] }));
  }

  private ping(): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return;
    this.lastPingSent = this.pingAt = Date.now();
    ws.send('{"type":"ping"}');
  }

  private tick(): void {
    if (this.state !== "open") return;
    const now = Date.now();
    const every = this.o.pingIntervalMs ?? 25000;
    if (every > 0 && now - this.pingAt >= every) this.ping();
    const silence = this.o.silenceTimeoutMs ?? Math.max(20000, 3 * this.statsIntervalMs);
    if (silence > 0 && now - this.lastMsgAt > silence) {
      this.drop(4000);
      this.retry("silent");
    }
  }

  private drop(code: number): void {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null; // its handlers see that and stay quiet
    try {
      ws.close(code);
    } catch {
      /* already closed */
    }
  }
}

function norm(types: readonly string[] | undefined): Set<string> | null {
  return types && types.length && !types.includes("*") ? new Set(types) : null;
}

/** Opens a live feed; see {@link ConnectOptions} and {@link DashboardClient}. */
export function connect(options: ConnectOptions = {}): DashboardClient {
  return new DashboardClient(options);
}
