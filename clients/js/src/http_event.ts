/**
 * One `http_request` event per HTTP request, from Express or Fastify:
 *
 *     {"method": "GET", "route": "/items/:id", "status": 200, "durationMs": 3.417}
 *
 * `route` is the route *template* with router prefixes (`/api/v1/items/:id`),
 * never the raw path or query, so a dashboard can group by it and the number
 * of distinct values stays bounded; requests no route matched share
 * `<unmatched>`. Bodies, query strings and headers are never recorded.
 * Probes and scrapes (`/healthz`, `/readyz`, `/livez`, `/metrics`,
 * `/favicon.ico`) are left out by default.
 */

import type { Client } from "./ingest.js";

export interface RequestEventOptions {
  /** Event type (default `http_request`). */
  eventType?: string;
  /** Paths not recorded; an entry ending in `/` excludes everything under it. */
  excludePaths?: readonly string[];
  /** Route templates not recorded. */
  excludeRoutes?: readonly string[];
  /** Record this share of requests (0–1, default 1); `sampleRate` is then added to the event. */
  sampleRate?: number;
  /** Record 5xx answers even when not sampled (default true). */
  alwaysRecordErrors?: boolean;
  /** `route` of requests no route matched (default `<unmatched>`). */
  unmatchedRoute?: string;
}

const DEFAULT_EXCLUDED = ["/healthz", "/readyz", "/livez", "/metrics", "/favicon.ico"];

class Recorder {
  readonly type: string;
  readonly rate: number;
  private readonly exact: Set<string>;
  private readonly prefixes: string[];
  private readonly routes: Set<string>;
  private readonly errors: boolean;
  readonly unmatched: string;

  constructor(
    readonly client: Client,
    o: RequestEventOptions = {},
  ) {
    const rate = o.sampleRate ?? 1;
    if (!(rate >= 0 && rate <= 1)) throw new RangeError("sidewire: sampleRate must be between 0 and 1");
    const paths = o.excludePaths ?? DEFAULT_EXCLUDED;
    this.type = o.eventType ?? "http_request";
    this.rate = rate;
    this.exact = new Set(paths.filter((p) => !p.endsWith("/")));
    this.prefixes = paths.filter((p) => p.endsWith("/"));
    this.routes = new Set(o.excludeRoutes ?? []);
    this.errors = o.alwaysRecordErrors ?? true;
    this.unmatched = o.unmatchedRoute ?? "<unmatched>";
  }

  excluded(path: string): boolean {
    return this.exact.has(path) || this.prefixes.some((p) => path.startsWith(p));
  }

  sampled(): boolean {
    return this.rate >= 1 || Math.random() < this.rate;
  }

  record(sampled: boolean, method: string, route: string | undefined, status: number, ms: number): void {
    if (!sampled && !(this.errors && status >= 500)) return;
    const r = route || this.unmatched;
    if (this.routes.has(r)) return;
    const data: Record<string, unknown> = { method, route: r, status, durationMs: Math.round(ms * 1000) / 1000 };
    if (this.rate < 1) data.sampleRate = this.rate;
    this.client.emit(this.type, data);
  }
}

// --- Express -------------------------------------------------------------

/** The parts of Express's request/response the middleware reads (Express 4 and 5). */
interface ExpressRequest {
  method: string;
  originalUrl?: string;
  url: string;
  baseUrl?: string;
  // Read loosely (cast where used), so Express's own types fit in.
  route?: unknown;
  app?: unknown;
}
interface ExpressResponse {
  statusCode: number;
  once(event: "finish" | "close", fn: () => void): unknown;
}
interface ExpressLayer {
  route?: { path?: unknown; stack?: unknown };
  handle?: { stack?: ExpressLayer[] };
  rawPath?: unknown;
  name?: string;
}
interface ExpressRouter {
  stack?: ExpressLayer[];
}

const paramPattern = (template: string): RegExp =>
  new RegExp("^" + template.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\\?\*[A-Za-z_]\w*|:[A-Za-z_]\w*\??/g, "[^/]+") + "$");

/**
 * Where `route` sits in the app: the templates of the routers it is mounted
 * under (Express 5 keeps each layer's `rawPath`), so `/users/:uid` +
 * `/posts/:id` and not the raw `baseUrl` (`/users/42`). Several mounts of one
 * router are told apart by the request's `baseUrl`.
 */
function mountedTemplates(stack: ExpressLayer[] | undefined, route: object, prefix: string, out: string[], depth = 0): void {
  if (!stack || depth > 16) return;
  for (const layer of stack) {
    if (layer.route === route) out.push(prefix);
    const sub = layer.handle?.stack;
    if (!layer.route && Array.isArray(sub)) {
      const raws = Array.isArray(layer.rawPath) ? layer.rawPath : [layer.rawPath];
      for (const raw of raws) {
        if (typeof raw !== "string") continue; // a RegExp mount: no template to show
        mountedTemplates(sub, route, raw === "/" ? prefix : prefix + raw.replace(/\/+$/, ""), out, depth + 1);
      }
    }
  }
}

function expressRoute(req: ExpressRequest, cache: WeakMap<object, string | string[]>): string | undefined {
  const route = req.route as { path?: unknown } | undefined;
  if (!route || typeof route !== "object") return undefined;
  const path = Array.isArray(route.path) ? route.path.join("|") : typeof route.path === "string" ? route.path : "";
  const base = req.baseUrl ?? "";
  let known = cache.get(route);
  if (known === undefined) {
    const out: string[] = [];
    const app = req.app as { router?: ExpressRouter; _router?: ExpressRouter } | undefined;
    const router = app?.router ?? app?._router;
    mountedTemplates(router?.stack, route, "", out);
    // None found (Express 4 keeps no templates of mounts): the request's baseUrl.
    known = out.length === 1 ? out[0]! : out;
    cache.set(route, known);
  }
  let prefix: string;
  if (typeof known === "string") prefix = known;
  else prefix = known.find((t) => paramPattern(t).test(base)) ?? base;
  return (prefix + (path === "/" && prefix ? "" : path)) || "/";
}

/**
 * Express middleware: `app.use(expressMiddleware(client))`, before the
 * routes. Records when the response finishes (or the client goes away).
 */
export function expressMiddleware(client: Client, options?: RequestEventOptions): (req: ExpressRequest, res: ExpressResponse, next: () => void) => void {
  const rec = new Recorder(client, options);
  const cache = new WeakMap<object, string | string[]>();
  return (req, res, next) => {
    const url = req.originalUrl ?? req.url;
    const q = url.indexOf("?");
    if (rec.excluded(q < 0 ? url : url.slice(0, q))) return next();
    const sampled = rec.sampled();
    const start = performance.now();
    let done = false;
    const end = () => {
      if (done) return;
      done = true;
      let route: string | undefined;
      try {
        route = expressRoute(req, cache);
      } catch {
        route = undefined;
      }
      rec.record(sampled, req.method, route, res.statusCode, performance.now() - start);
    };
    res.once("finish", end);
    res.once("close", end);
    next();
  };
}

// --- Fastify -------------------------------------------------------------

interface FastifyLike {
  addHook(name: "onResponse", fn: (request: FastifyRequestLike, reply: FastifyReplyLike) => Promise<void>): unknown;
}
interface FastifyRequestLike {
  method: string;
  url: string;
  routeOptions?: { url?: string };
  routerPath?: string;
  is404?: boolean;
}
interface FastifyReplyLike {
  statusCode: number;
  elapsedTime?: number;
}

/**
 * A Fastify plugin: `app.register(fastifyPlugin, { client })`. It applies to
 * the whole app (like `fastify-plugin`), so routes registered under a
 * `prefix` are recorded with it.
 */
export const fastifyPlugin = Object.assign(
  // eslint-disable-next-line @typescript-eslint/require-await -- Fastify wants a promise-returning plugin
  async function sidewire(app: FastifyLike, opts: RequestEventOptions & { client: Client }): Promise<void> {
    if (!opts?.client) throw new TypeError("sidewire: register(fastifyPlugin, { client })");
    const rec = new Recorder(opts.client, opts);
    // eslint-disable-next-line @typescript-eslint/require-await -- an async hook needs no `done` callback
    app.addHook("onResponse", async (request, reply) => {
      const q = request.url.indexOf("?");
      if (rec.excluded(q < 0 ? request.url : request.url.slice(0, q))) return;
      const route = request.is404 ? undefined : (request.routeOptions?.url ?? request.routerPath);
      rec.record(rec.sampled(), request.method, route, reply.statusCode, reply.elapsedTime ?? 0);
    });
  },
  { [Symbol.for("skip-override")]: true, [Symbol.for("fastify.display-name")]: "sidewire" },
);
