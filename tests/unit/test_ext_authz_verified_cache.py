"""CachingVerifier: verify once per token until it expires; remember bad signatures briefly."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from octosts.adapters.verified_cache import CachingVerifier
from octosts.domain.errors import (
    UNKNOWN_KEY_ID,
    IssuerRejected,
    IssuerUnavailable,
    TokenClaimsInvalid,
    TokenExpired,
    TokenMalformed,
    TokenSignatureInvalid,
)
from octosts.domain.ports import TokenVerifier
from octosts.domain.tokens import VerifiedToken
from tests.fakes import FakeClock

T0 = 1_700_000_000.0


class CountingVerifier:
    def __init__(self, expires_at: float = T0 + 300) -> None:
        self.expires_at = expires_at
        self.calls = 0
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def verify(self, bearer: str) -> VerifiedToken:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return VerifiedToken(
            "https://issuer.example", f"sub-{bearer[:3]}", ("aud",), self.expires_at, {}
        )


_: TokenVerifier = CountingVerifier()
__: TokenVerifier = CachingVerifier(CountingVerifier(), clock=FakeClock())


async def test_second_verification_is_a_cache_hit_until_exp() -> None:
    clock = FakeClock(T0)
    inner = CountingVerifier(expires_at=T0 + 300)
    cached = CachingVerifier(inner, clock=clock)
    first = await cached.verify("tok-a")
    assert await cached.verify("tok-a") is first
    assert inner.calls == 1
    clock.advance(299)
    await cached.verify("tok-a")
    assert inner.calls == 1
    clock.advance(1)  # at exp: never served beyond it
    await cached.verify("tok-a")
    assert inner.calls == 2


async def test_max_ttl_caps_the_lifetime() -> None:
    clock = FakeClock(T0)
    inner = CountingVerifier(expires_at=T0 + 10_000)
    cached = CachingVerifier(inner, clock=clock, max_ttl=60)
    await cached.verify("tok")
    clock.advance(61)
    await cached.verify("tok")
    assert inner.calls == 2


async def test_already_expired_result_is_not_stored() -> None:
    inner = CountingVerifier(expires_at=T0 - 1)
    cached = CachingVerifier(inner, clock=FakeClock(T0))
    await cached.verify("tok")
    assert len(cached) == 0


@pytest.mark.parametrize(
    "error",
    [
        IssuerUnavailable("down"),
        TokenExpired("expired"),
        TokenClaimsInvalid("nbf in the future"),
        IssuerRejected("resolves to a private address"),
        TokenMalformed("junk"),
        # A kid the issuer does not publish yet may become valid at the next key rotation.
        TokenSignatureInvalid("no key matches the kid", reason=UNKNOWN_KEY_ID),
    ],
)
async def test_other_failures_are_not_cached(error: Exception) -> None:
    inner = CountingVerifier()
    inner.fail = error
    cached = CachingVerifier(inner, clock=FakeClock(T0))
    for _attempt in range(2):
        with pytest.raises(type(error)):
            await cached.verify("tok")
    assert inner.calls == 2
    inner.fail = None
    await cached.verify("tok")
    assert inner.calls == 3


async def test_signature_failure_is_remembered_for_failure_ttl_only() -> None:
    clock = FakeClock(T0)
    inner = CountingVerifier()
    inner.fail = TokenSignatureInvalid("token signature does not verify")
    cached = CachingVerifier(inner, clock=clock, failure_ttl=5)
    raised = []
    for _attempt in range(3):
        with pytest.raises(TokenSignatureInvalid) as info:
            await cached.verify("forged")
        raised.append(info.value)
    assert inner.calls == 1
    # a fresh exception each time (no traceback chained across requests), same reason/detail
    assert raised[1] is not raised[2]
    assert {(e.reason, e.detail) for e in raised} == {
        ("token_signature_invalid", "token signature does not verify")
    }
    assert len(cached) == 0  # never in the verified cache
    inner.fail = None
    clock.advance(4.9)
    with pytest.raises(TokenSignatureInvalid):
        await cached.verify("forged")
    assert inner.calls == 1
    clock.advance(0.1)  # TTL over: verified again (e.g. after a JWKS refresh)
    await cached.verify("forged")
    assert inner.calls == 2


async def test_remembered_failure_is_per_token() -> None:
    inner = CountingVerifier()
    inner.fail = TokenSignatureInvalid("bad")
    cached = CachingVerifier(inner, clock=FakeClock(T0))
    with pytest.raises(TokenSignatureInvalid):
        await cached.verify("forged")
    inner.fail = None
    await cached.verify("forgeD")  # another token is verified, not denied by association
    assert inner.calls == 2


async def test_failure_ttl_zero_disables_the_negative_cache() -> None:
    inner = CountingVerifier()
    inner.fail = TokenSignatureInvalid("bad")
    cached = CachingVerifier(inner, clock=FakeClock(T0), failure_ttl=0)
    for _attempt in range(2):
        with pytest.raises(TokenSignatureInvalid):
            await cached.verify("forged")
    assert inner.calls == 2
    with pytest.raises(ValueError, match="failure_ttl"):
        CachingVerifier(inner, clock=FakeClock(T0), failure_ttl=-1)


async def test_negative_cache_is_bounded() -> None:
    inner = CountingVerifier()
    inner.fail = TokenSignatureInvalid("bad")
    cached = CachingVerifier(inner, clock=FakeClock(T0), failure_maxsize=2)
    for token in ("f-1", "f-2", "f-3"):
        with pytest.raises(TokenSignatureInvalid):
            await cached.verify(token)
    assert len(cached._failures) == 2
    with pytest.raises(TokenSignatureInvalid):
        await cached.verify("f-1")  # evicted (least recently used): verified again
    assert inner.calls == 4


async def test_bounded_and_keyed_by_hash_not_raw_token() -> None:
    cached = CachingVerifier(CountingVerifier(), clock=FakeClock(T0), maxsize=2)
    for token in ("tok-1", "tok-2", "tok-3"):
        await cached.verify(token)
    assert len(cached) == 2
    keys = list(cached._cache._data)
    assert hashlib.sha256(b"tok-3").digest() in keys
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys)


async def test_concurrent_verifications_share_one_call() -> None:
    inner = CountingVerifier()
    inner.gate = asyncio.Event()
    cached = CachingVerifier(inner, clock=FakeClock(T0))
    tasks = [asyncio.ensure_future(cached.verify("tok")) for _ in range(5)]
    await asyncio.sleep(0)
    inner.gate.set()
    results = await asyncio.gather(*tasks)
    assert inner.calls == 1
    assert all(r is results[0] for r in results)
