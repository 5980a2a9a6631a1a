"""sidewire-client: send a backend's activity to a sidewire sidecar.

>>> from sidewire_client import Client
>>> sw = Client("http://127.0.0.1:8790", source="api-1")
>>> sw.ingestion_complete("report.pdf", nodes_created=12)
True

``emit`` never blocks and never raises; a background thread batches events
to the sidecar's ingest hook and retries while it is away. See the README for
the ASGI/WSGI middleware (``sidewire_client.asgi``, ``sidewire_client.wsgi``)
and the logging handler (``sidewire_client.log_handler``).
"""

from ._client import DROP_REASONS, Client, ClientStats, Timestamp
from ._events import InvalidEventError
from ._version import __version__

__all__ = ["DROP_REASONS", "Client", "ClientStats", "InvalidEventError", "Timestamp", "__version__"]
