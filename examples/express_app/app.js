// An Express app attached to sidewire. Run the sidecar (`cargo run --release`
// in the repo root), then `npm start` here and open http://127.0.0.1:8790/.
import express from "express";
import { Client, expressMiddleware } from "sidewire-client/ingest";

// 1. One client per process: $SIDEWIRE_URL / $SIDEWIRE_TOKEN / $SIDEWIRE_SOURCE
//    or these defaults; it flushes what is queued on SIGTERM/SIGINT and at exit.
const sidewire = new Client({ source: process.env.SIDEWIRE_SOURCE ?? "express-app", handleExit: true });

const app = express();
app.use(express.json());
// 2. One `http_request` event per request, with the route template.
app.use(expressMiddleware(sidewire));

// 3. The app's own work, reported where it happens.
const docs = express.Router();
docs.post("/", (req, res) => {
  const started = performance.now();
  const file = String(req.body?.file ?? "upload.pdf");
  const nodesCreated = 1 + Math.floor(Math.random() * 20);
  sidewire.ingestionComplete(file, { nodesCreated, durationMs: performance.now() - started });
  sidewire.gauge({ totalNodes: (app.locals.nodes = (app.locals.nodes ?? 0) + nodesCreated) });
  res.status(201).json({ file, nodesCreated });
});
docs.get("/:docId", (req, res) => res.json({ id: req.params.docId }));
app.use("/api/docs", docs);

app.get("/api/search", (req, res) => {
  const latencyMs = 20 + Math.random() * 200;
  sidewire.queryComplete(String(req.query.q ?? ""), { latencyMs, sources: 3 });
  res.json({ results: [] });
});

app.get("/api/fail", () => {
  throw new Error("index unavailable");
});

// Errors become `error` events too.
app.use((err, req, res, _next) => {
  sidewire.error(err, { component: "api", route: req.route?.path });
  res.status(500).json({ error: "internal" });
});

const port = Number(process.env.PORT ?? 3000);
const server = app.listen(port, "127.0.0.1", () => console.log(`express app on http://127.0.0.1:${server.address().port}`));
process.on("SIGTERM", () => server.close());
