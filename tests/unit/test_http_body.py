from __future__ import annotations

import gzip

import httpx
import pytest

from octosts.adapters.http_body import BodyCompressed, BodyTooLarge, read_capped


def response(body: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))


async def test_reads_up_to_the_cap() -> None:
    assert await read_capped(response(b"x" * 10), cap=10) == b"x" * 10


async def test_past_the_cap_is_an_error_not_a_truncation() -> None:
    with pytest.raises(BodyTooLarge):
        await read_capped(response(b"x" * 11), cap=10)


async def test_a_declared_length_past_the_cap_is_refused_before_reading() -> None:
    with pytest.raises(BodyTooLarge):
        await read_capped(response(b"", **{"content-length": "1000000"}), cap=10)


async def test_compressed_bodies_are_refused_even_when_small() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)  # ~1 KB on the wire, 1 MB inflated
    with pytest.raises(BodyCompressed):
        await read_capped(response(bomb, **{"content-encoding": "gzip"}), cap=100_000)
