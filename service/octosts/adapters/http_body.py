"""Bounded reads of HTTP response bodies (issuers, GitHub, webhook calls to GitHub).

The rules live in ``read_capped_chunks``, whatever the HTTP library: httpx (issuers)
and aiohttp (GitHub) both hand it the answer's headers and its raw byte stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping

import httpx


class BodyRefused(Exception):
    """The body was not read; the message says why (it completes "the answer ...")."""


class BodyTooLarge(BodyRefused):
    """The response is larger than the caller's cap (or claims to be)."""


class BodyCompressed(BodyRefused):
    """The server compressed the body although ``Accept-Encoding: identity`` was sent."""


async def read_capped(response: httpx.Response, cap: int) -> bytes:
    """``read_capped_chunks`` over an httpx response's raw stream."""
    return await read_capped_chunks(response.headers, response.aiter_raw(), cap)


async def read_capped_chunks(
    headers: Mapping[str, str], chunks: AsyncIterable[bytes], cap: int
) -> bytes:
    """The raw body, at most ``cap`` bytes: an error past it, never a truncation.

    Raw bytes are read (no decoding), so the cap counts what crossed the wire and a
    small compressed body can never inflate in memory. Our clients ask for
    ``identity``; a server that compresses anyway is refused. ``headers`` look-ups
    must be case-insensitive.
    Raises BodyTooLarge, BodyCompressed (both BodyRefused).
    """
    if headers.get("content-encoding", "identity").lower() != "identity":
        raise BodyCompressed("is compressed although identity was asked for")
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise BodyTooLarge(f"exceeds {cap} bytes")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > cap:
            raise BodyTooLarge(f"exceeds {cap} bytes")
    return bytes(body)
