#!/usr/bin/env node
// Writes src/messages.ts (the wire types of the dashboard WebSocket and the
// ingest answers) from the server's OpenAPI document, so the TypeScript types
// cannot drift from the server: CI runs `--check`, which fails when the
// committed file differs from what the release binary documents.
//
//   node scripts/gen-types.mjs [--check] [--openapi FILE|URL]
//
// Without --openapi it starts $SIDEWIRE_BIN (default target/release/sidewire)
// on a free loopback port and reads /api-docs/openapi.json.
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { startServer } from "../test/helpers/server.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, "..", "src", "messages.ts");
const args = process.argv.slice(2);
const check = args.includes("--check");
const src = args.includes("--openapi") ? args[args.indexOf("--openapi") + 1] : null;

// Schema name in the document -> exported TypeScript name.
const WANTED = {
  Event: "EventMessage",
  StatsSnapshot: "Stats",
  ConnectionAck: "ConnectionAck",
  StatsUpdate: "StatsUpdate",
  Pong: "Pong",
  ResumeComplete: "ResumeComplete",
  ServerMessage: "ServerMessage",
  Subscribe: "Subscribe",
  Ping: "Ping",
  Resume: "Resume",
  ClientMessage: "ClientMessage",
  IngestEvent: "IngestEvent",
  IngestResult: "IngestResult",
  ErrorBody: "ErrorBody",
  ErrorDetail: "ErrorDetail",
};

async function loadDoc() {
  if (src && /^https?:/.test(src)) return (await fetch(src)).json();
  if (src) return JSON.parse(await readFile(src, "utf8"));
  const srv = await startServer({ plugin: "memory" });
  try {
    return await (await fetch(`${srv.base}/api-docs/openapi.json`)).json();
  } finally {
    await srv.stop();
  }
}

const doc = await loadDoc();
const schemas = doc.components?.schemas ?? {};
const extra = new Map(); // inline object schemas given names of their own

const name = (ref) => {
  const n = ref.replace("#/components/schemas/", "");
  if (!WANTED[n]) WANTED[n] = n;
  return WANTED[n];
};

function ts(s, hint) {
  if (!s || s === true) return "unknown";
  if (s.$ref) return name(s.$ref);
  if (s.oneOf || s.anyOf) return (s.oneOf ?? s.anyOf).map((x) => ts(x)).join(" | ");
  if (s.allOf) return s.allOf.map((x) => ts(x)).join(" & ");
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.const !== undefined) return JSON.stringify(s.const);
  const types = Array.isArray(s.type) ? s.type : s.type ? [s.type] : [];
  if (types.length > 1) return types.map((t) => ts({ ...s, type: t }, hint)).join(" | ");
  switch (types[0]) {
    case "string":
      return "string";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "null":
      return "null";
    case "array":
      return `${wrap(ts(s.items))}[]`;
    case "object":
    case undefined: {
      if (!s.properties) {
        const ap = s.additionalProperties;
        return ap && ap !== true ? `Record<string, ${ts(ap)}>` : "Record<string, unknown>";
      }
      if (hint) {
        extra.set(hint, s);
        return hint;
      }
      return body(s);
    }
  }
  return "unknown";
}
const wrap = (t) => (/[|&]/.test(t) ? `(${t})` : t);

function body(s, pad = "") {
  const req = new Set(s.required ?? []);
  const lines = Object.entries(s.properties ?? {}).map(([k, v]) => {
    const doc = v.description ? `${pad}  /** ${v.description.replace(/\s*\n\s*/g, " ").replace(/\*\//g, "*\\/")} */\n` : "";
    const t = v.properties && !v.$ref ? body(v, pad + "  ") : ts(v);
    return `${doc}${pad}  ${k}${req.has(k) ? "" : "?"}: ${t};`;
  });
  const ap = s.additionalProperties;
  if (ap && ap !== true) {
    // TypeScript wants every named property to fit the index signature too.
    const all = new Set([ts(ap), ...Object.values(s.properties ?? {}).flatMap((v) => ts(v).split(" | "))]);
    lines.push(`${pad}  [key: string]: ${[...all, "undefined"].join(" | ")};`);
  }
  return `{\n${lines.join("\n")}\n${pad}}`;
}

function decl(schemaName, tsName, s) {
  const d = s.description ? `/** ${s.description.replace(/\s*\n\s*/g, " ").replace(/\*\//g, "*\\/")} */\n` : "";
  const t = s.properties ? body(s) : ts(s);
  return s.properties ? `${d}export interface ${tsName} ${t}\n` : `${d}export type ${tsName} = ${t};\n`;
}

const parts = [];
const done = new Set();
for (let again = true; again; ) {
  again = false;
  for (const [n, t] of Object.entries(WANTED)) {
    if (done.has(n)) continue;
    if (!schemas[n]) throw new Error(`schema ${n} not in the OpenAPI document`);
    done.add(n);
    again = true;
    parts.push(decl(n, t, schemas[n]));
  }
}
// Names the client code uses for nested parts.
parts.push(`/** \`connection_ack\` data. */\nexport type AckData = ConnectionAck["data"];\n`);
parts.push(`/** \`resume_complete\` data. */\nexport type ResumeCompleteData = ResumeComplete["data"];\n`);

const text = `// Generated by scripts/gen-types.mjs from the server's OpenAPI document
// (/api-docs/openapi.json). Do not edit:
// \`npm run gen-types\` rewrites it; CI checks it is current.

${parts.join("\n")}`;

if (check) {
  const have = await readFile(out, "utf8").catch(() => "");
  if (have !== text) {
    console.error("src/messages.ts differs from what the server's OpenAPI document gives: run `npm run gen-types` and commit it");
    process.exit(1);
  }
  console.log("src/messages.ts matches the server's OpenAPI document");
} else {
  await writeFile(out, text);
  console.log(`wrote ${path.relative(process.cwd(), out)}`);
}
