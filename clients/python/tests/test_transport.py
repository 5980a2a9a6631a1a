"""URL handling and Retry-After parsing of the transport."""

from __future__ import annotations

import email.utils

import pytest

from sidewire_client._transport import Endpoint, parse_retry_after


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8790", Endpoint("http", "127.0.0.1", 8790, "/api/v1/ingest")),
        ("http://127.0.0.1:8790/", Endpoint("http", "127.0.0.1", 8790, "/api/v1/ingest")),
        ("http://sidecar/api/v1/ingest", Endpoint("http", "sidecar", 80, "/api/v1/ingest")),
        ("https://obs.example/sidewire", Endpoint("https", "obs.example", 443, "/sidewire/api/v1/ingest")),
        ("http://[::1]:9000", Endpoint("http", "::1", 9000, "/api/v1/ingest")),
    ],
)
def test_endpoint_takes_a_base_or_a_full_ingest_url(url: str, expected: Endpoint) -> None:
    assert Endpoint.parse(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1:8790", "ftp://host", "http://", "http://host/?x=1", "http://host/#f"])
def test_endpoint_refuses_what_is_not_a_sidecar_url(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        Endpoint.parse(url)


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_767_211_200.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
