// Route templates from real Express 5 and Fastify 5 apps: one `http_request`
// event per request with the template (router prefixes included), never the
// raw path or query; unmatched requests share `<unmatched>`; probes left out.
import { test } from "node:test";
import assert from "node:assert/strict";
import express from "express";
import Fastify from "fastify";
import { expressMiddleware, fastifyPlugin } from "../dist/ingest.js";

const recorder = () => {
  const events = [];
  return { events, emit: (type, data) => (events.push({ type, ...data }), true) };
};

async function listen(app) {
  const srv = await new Promise((r) => {
    const s = app.listen(0, "127.0.0.1", () => r(s));
  });
  return { base: `http://127.0.0.1:${srv.address().port}`, close: () => new Promise((r) => srv.close(r)) };
}

async function until(cond) {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 5));
}

test("Express: templates with nested routers and param prefixes, never the raw path", async () => {
  const client = recorder();
  const app = express();
  app.set("env", "test"); // no error printout from the /boom route
  app.use(expressMiddleware(client));
  const posts = express.Router({ mergeParams: true });
  posts.get("/:postId", (req, res) => res.json({ ok: true }));
  posts.post("/", (req, res) => res.status(201).end());
  const users = express.Router();
  users.use("/:uid/posts", posts);
  users.get("/:uid", (req, res) => res.send("u"));
  app.use("/api/v1/users", users);
  app.get("/items/:id", (req, res) => res.send("i"));
  app.get("/boom", () => {
    throw new Error("boom");
  });
  app.get("/healthz", (req, res) => res.send("ok"));
  app.use("/v1", users);
  app.use("/v2", users); // one router mounted twice: told apart by the request
  const { base, close } = await listen(app);
  const hits = [
    ["GET", "/items/42?secret=x"],
    ["GET", "/api/v1/users/7"],
    ["GET", "/api/v1/users/7/posts/99"],
    ["POST", "/api/v1/users/7/posts"],
    ["GET", "/nope/123"],
    ["GET", "/boom"],
    ["GET", "/healthz"],
    ["GET", "/v2/5"],
  ];
  for (const [method, path] of hits) await (await fetch(base + path, { method })).text();
  await until(() => client.events.length >= 7);
  await close();
  const got = client.events.map((e) => `${e.method} ${e.route} ${e.status}`);
  assert.deepEqual(got, [
    "GET /items/:id 200",
    "GET /api/v1/users/:uid 200",
    "GET /api/v1/users/:uid/posts/:postId 200",
    "POST /api/v1/users/:uid/posts 201",
    "GET <unmatched> 404",
    "GET /boom 500",
    "GET /v2/:uid 200",
  ]);
  for (const e of client.events) {
    assert.equal(e.type, "http_request");
    assert.ok(typeof e.durationMs === "number" && e.durationMs >= 0);
    assert.ok(!JSON.stringify(e).includes("secret") && !/\/(7|42|99)\b/.test(e.route));
  }
});

test("Express: sampling keeps 5xx and marks the rate; excluded routes and prefixes", async () => {
  const client = recorder();
  const app = express();
  app.use(expressMiddleware(client, { sampleRate: 0, excludePaths: ["/static/"], excludeRoutes: ["/skip"] }));
  app.get("/a", (req, res) => res.send("a"));
  app.get("/skip", (req, res) => res.send("s"));
  app.get("/static/x.js", (req, res) => res.send("x"));
  app.get("/err", (req, res) => res.status(503).send("e"));
  const { base, close } = await listen(app);
  for (const p of ["/a", "/skip", "/static/x.js", "/err"]) await (await fetch(base + p)).text();
  await until(() => client.events.length >= 1);
  await new Promise((r) => setTimeout(r, 50));
  await close();
  assert.deepEqual(
    client.events.map((e) => [e.route, e.status, e.sampleRate]),
    [["/err", 503, 0]],
  );
});

test("Fastify: templates with register prefixes; 404 unmatched; probes left out", async () => {
  const client = recorder();
  const app = Fastify();
  await app.register(fastifyPlugin, { client });
  await app.register(
    async (api) => {
      api.get("/items/:id", async () => ({ ok: true }));
      await api.register(
        async (inner) => {
          inner.post("/:orderId/pay", async (req, reply) => reply.code(202).send());
        },
        { prefix: "/orders" },
      );
    },
    { prefix: "/api/v2" },
  );
  app.get("/healthz", async () => "ok");
  app.get("/fail", async () => {
    throw new Error("x");
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  const base = `http://127.0.0.1:${app.server.address().port}`;
  for (const [m, p] of [
    ["GET", "/api/v2/items/5?q=secret"],
    ["POST", "/api/v2/orders/77/pay"],
    ["GET", "/missing/3"],
    ["GET", "/healthz"],
    ["GET", "/fail"],
  ])
    await (await fetch(base + p, { method: m })).text();
  await until(() => client.events.length >= 4);
  await app.close();
  assert.deepEqual(
    client.events.map((e) => `${e.method} ${e.route} ${e.status}`),
    ["GET /api/v2/items/:id 200", "POST /api/v2/orders/:orderId/pay 202", "GET <unmatched> 404", "GET /fail 500"],
  );
  assert.ok(client.events.every((e) => e.durationMs >= 0));
});
