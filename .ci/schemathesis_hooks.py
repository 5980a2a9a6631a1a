"""Schemathesis hooks for sidewire's API (loaded through SCHEMATHESIS_HOOKS by
.ci/schemathesis.sh).

`POST /api/v1/ingest` also takes `application/x-ndjson`: one JSON event per
line. The document gives that body the `IngestBatch` schema (the events, as
an array), which schemathesis generates as a list; it has no serializer for
the media type, so this one writes each item as one line of JSON. A string
(the documented example is the raw NDJSON text) goes out as it is; any other
value (negative tests) goes out as a single line.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        return "".join(json.dumps(item) + "\n" for item in value).encode("utf-8")
    return (json.dumps(value) + "\n").encode("utf-8")
