"""A small FastAPI backend that ingests files and answers queries, attached to sidewire.

It is the kind of app sidewire was designed next to: documents are split into
"nodes" (paragraphs) and indexed in memory; queries rank nodes by shared
words. Every finished ingestion and query becomes an event, the index size
is reported as gauges, every request is recorded by the middleware and
every logged error becomes an ``error`` event.

Run it next to a sidecar::

    sidewire serve &                                   # 127.0.0.1:8790
    pip install -e clients/python fastapi uvicorn
    uvicorn app:app --app-dir examples/fastapi_app --port 8000

Environment: ``SIDEWIRE_URL`` (default ``http://127.0.0.1:8790``),
``SIDEWIRE_TOKEN`` (when the sidecar sets ``auth.ingest_tokens``),
``SIDEWIRE_SOURCE`` (default ``fastapi-example``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import BaseModel

from sidewire_client import Client
from sidewire_client.asgi import SidewireMiddleware, sidewire_lifespan
from sidewire_client.log_handler import SidewireLogHandler

# --- the three lines that attach the app to sidewire -------------------------
sidewire = Client(source=os.environ.get("SIDEWIRE_SOURCE", "fastapi-example"))
app = FastAPI(title="sidewire example backend", lifespan=sidewire_lifespan(sidewire))
app.add_middleware(SidewireMiddleware, client=sidewire)
# ------------------------------------------------------------------------------

# Optional: logged warnings and errors of the app show up on the dashboard.
log = logging.getLogger("example")
logging.getLogger().addHandler(SidewireLogHandler(sidewire))

WORD = re.compile(r"[a-z0-9]+")
MAX_DOCUMENT_BYTES = 5 * 1024 * 1024


def words(text: str) -> Counter[str]:
    return Counter(WORD.findall(text.lower()))


@dataclass
class Node:
    document: str
    text: str
    words: Counter[str]


@dataclass
class Index:
    """An in-memory index of documents split into paragraph nodes."""

    nodes: list[Node] = field(default_factory=list)
    documents: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, text: str) -> int:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
        new = [Node(name, p, words(p)) for p in paragraphs]
        with self.lock:
            self.nodes = [n for n in self.nodes if n.document != name] + new
            self.documents[name] = len(new)
        return len(new)

    def search(self, query: str, limit: int) -> list[tuple[float, Node]]:
        wanted = words(query)
        with self.lock:
            nodes = list(self.nodes)
        scored = [(float(sum(min(n.words[w], c) for w, c in wanted.items())), n) for n in nodes]
        return sorted((s for s in scored if s[0] > 0), key=lambda s: -s[0])[:limit]


index = Index()
api = APIRouter(prefix="/api/v1")


def report_gauges() -> None:
    with index.lock:
        sidewire.gauge(totalNodes=len(index.nodes), totalFiles=len(index.documents))


@api.put("/documents/{name}", status_code=201)
async def ingest(name: str, request: Request) -> dict[str, object]:
    """Ingest a text document (the request body) under ``name``."""
    started = time.perf_counter()
    body = await request.body()
    if not body or len(body) > MAX_DOCUMENT_BYTES:
        raise HTTPException(400, "the body must be 1 byte to 5 MiB of UTF-8 text")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        log.warning("document %r is not UTF-8; refused", name)
        raise HTTPException(400, "the document is not UTF-8 text") from None
    nodes = index.add(name, text)
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    sidewire.ingestion_complete(name, nodes_created=nodes, duration_ms=duration_ms, sizeBytes=len(body))
    report_gauges()
    return {"document": name, "nodesCreated": nodes}


@api.get("/documents")
def documents() -> dict[str, int]:
    with index.lock:
        return dict(index.documents)


@api.delete("/documents/{name}", status_code=204)
def delete(name: str) -> None:
    with index.lock:
        if index.documents.pop(name, None) is None:
            raise HTTPException(404, f"no document {name!r}")
        index.nodes = [n for n in index.nodes if n.document != name]
    report_gauges()


class Query(BaseModel):
    q: str
    limit: int = 3


@api.post("/query")
def query(body: Query) -> dict[str, object]:
    started = time.perf_counter()
    hits = index.search(body.q, max(1, min(body.limit, 20)))
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    sidewire.query_complete(body.q[:200], latency_ms=latency_ms, sources=len(hits))
    return {
        "query": body.q,
        "answers": [{"document": n.document, "score": s, "text": n.text[:300]} for s, n in hits],
    }


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


app.include_router(api)
