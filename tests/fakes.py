"""Fakes for the domain ports (type-checked against the Protocols)."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import httpx

from octosts.adapters.github_rest import Answer, HttpPool, TimedOut
from octosts.adapters.http_body import read_capped
from octosts.domain.errors import (
    NoInstallation,
    PolicyNotFound,
    TokenMalformed,
    TokenSignatureInvalid,
)
from octosts.domain.jwks import PinnedJwks
from octosts.domain.policy import TrustPolicy, compile_policy
from octosts.domain.ports import (
    Clock,
    FileRead,
    GitHubApp,
    MintedToken,
    PinnedVerifier,
    PolicyLocation,
    PolicySource,
    TokenVerifier,
)
from octosts.domain.tokens import VerifiedToken
from octosts.webhook.handler import IssuersInvalidator, PolicyInvalidator


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


_: Clock = FakeClock()


def verified(
    sub: str = "repo:octo-org/demo:ref:refs/heads/main",
    iss: str = "https://token.actions.githubusercontent.com",
    aud: tuple[str, ...] = ("octo-sts.dev",),
    **claims: object,
) -> VerifiedToken:
    payload: dict[str, object] = {"iss": iss, "sub": sub, "aud": list(aud), "exp": 2_000_000_000}
    payload.update(claims)
    return VerifiedToken(iss, sub, aud, 2_000_000_000.0, payload)


ACTIONS = "https://token.actions.githubusercontent.com"


class FakeVerifier:
    """Maps raw bearer strings to tokens; anything else raises the given error.

    As a PinnedVerifier: ``pinned`` maps a bearer to (the digest of the only key set that
    verifies it, its token); a bearer starting with ``malformed`` cannot be read; any other
    claims its token's issuer (``claims`` overrides, default GitHub Actions').
    """

    def __init__(
        self,
        tokens: Mapping[str, VerifiedToken],
        error: Exception | None = None,
        *,
        pinned: Mapping[str, tuple[str, VerifiedToken]] | None = None,
        claims: Mapping[str, str] | None = None,
        held: frozenset[str] = frozenset(),
    ) -> None:
        self.tokens = dict(tokens)
        self.error = error
        self.calls = 0
        self.pinned = dict(pinned or {})
        self.claims = dict(claims or {})
        self.held = held
        self.pinned_calls: list[str] = []  # digests of the key sets asked
        self.pinned_issuers: set[str] = set()

    async def verify(self, bearer: str) -> VerifiedToken:
        self.calls += 1
        if bearer in self.tokens:
            return self.tokens[bearer]
        raise self.error or TokenSignatureInvalid("unknown test token")

    def claimed_issuer(self, bearer: str) -> str:
        if bearer.startswith("malformed"):
            raise TokenMalformed("not a JWT")
        if bearer in self.claims:
            return self.claims[bearer]
        known = self.tokens.get(bearer) or self.pinned.get(bearer, ("", None))[1]
        return known.issuer if known is not None else ACTIONS

    async def verify_pinned(self, bearer: str, keys: PinnedJwks) -> VerifiedToken:
        self.pinned_calls.append(keys.digest)
        digest, token = self.pinned.get(bearer, ("", None))
        if token is None or digest != keys.digest:
            raise TokenSignatureInvalid("no pinned key verifies the token")
        self.pinned_issuers.add(token.issuer)
        return token

    def holds_keys(self, issuer: str) -> bool:
        return issuer in self.held

    def pinned_lately(self, issuer: str) -> bool:
        return issuer in self.pinned_issuers


class FakeGitHub:
    def __init__(self, installations: Mapping[str, int]) -> None:
        self.installations = dict(installations)
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.minted: list[tuple[int, dict[str, str], tuple[str, ...]]] = []
        self.reads = 0
        self.lookups = 0
        self.fail_with: Exception | None = None

    async def installation_id(self, owner: str) -> int:
        self.lookups += 1
        if owner not in self.installations:
            raise NoInstallation(f"no installation for {owner}")
        return self.installations[owner]

    async def read_file(
        self, installation_id: int, owner: str, repo: str, path: str, etag: str | None = None
    ) -> FileRead:
        self.reads += 1
        await asyncio.sleep(0)  # yield like real I/O, so concurrent callers interleave
        if self.fail_with is not None:
            raise self.fail_with
        content = self.files.get((owner, repo, path))
        if content is None:
            raise PolicyNotFound("404")
        tag = f'"{hash(content)}"'
        if etag == tag:
            return FileRead(None, tag)
        return FileRead(content, tag)

    async def mint(
        self, installation_id: int, permissions: Mapping[str, str], repositories: Sequence[str]
    ) -> MintedToken:
        self.minted.append((installation_id, dict(permissions), tuple(repositories)))
        return MintedToken(
            token=f"ghs_fake{len(self.minted)}",
            expires_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
            permissions=dict(permissions),
            repositories=tuple(repositories),
        )


class FakePolicies:
    def __init__(self, policies: Mapping[tuple[str, str, str], TrustPolicy]) -> None:
        self.policies = dict(policies)
        self.asked: list[PolicyLocation] = []

    async def trust_policy(self, installation_id: int, location: PolicyLocation) -> TrustPolicy:
        self.asked.append(location)
        key = (location.owner, location.repo, location.path)
        if key not in self.policies:
            raise PolicyNotFound("no such policy")
        return self.policies[key]


def policy(kind: str = "repo", **fields: object) -> TrustPolicy:
    data: dict[str, object] = {
        "issuer": "https://token.actions.githubusercontent.com",
        "subject": "repo:octo-org/demo:ref:refs/heads/main",
        "permissions": {"contents": "read"},
    }
    data.update(fields)
    return compile_policy(data, kind=kind)  # type: ignore[arg-type]


class FakeInvalidator:
    """The webhook's cache invalidators (policies by owner, repo, path; issuers by owner):
    records each call and reports one entry dropped."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str | None]] = []

    def invalidate(self, owner: str, repo: str | None = None, path: str | None = None) -> Any:
        self.calls.append((owner, repo, path))
        return 1


_v: TokenVerifier = FakeVerifier({})
_pv: PinnedVerifier = FakeVerifier({})
_g: GitHubApp = FakeGitHub({})
_p: PolicySource = FakePolicies({})


class HandlerPool:
    """A GitHub connection pool (``github_rest.HttpPool``) answering from a handler.

    ``handler(httpx.Request)`` (sync or async) returns an ``httpx.Response`` (its raw
    stream is read under the cap by the same rules as the real pool) or raises one of
    ``github_rest.Unanswered``'s subclasses, as the real pool does for socket failures.
    httpx's types serve here as plain request/response values. A handler slower than
    the attempt's deadline is cut (``TimedOut``), as on the real pool.
    """

    def __init__(self, handler: Callable[[httpx.Request], object]) -> None:
        self._handler = handler

    async def fetch(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        deadline: float,
        connect_timeout: float,
        pool_wait: float,
        cap: int,
    ) -> Answer:
        request = httpx.Request(method, url, headers=dict(headers), content=body)
        try:
            async with asyncio.timeout(deadline):
                response = self._handler(request)
                if inspect.isawaitable(response):
                    response = await response
                assert isinstance(response, httpx.Response)
                raw = await read_capped(response, cap)
        except TimeoutError as exc:
            raise TimedOut("TimeoutError") from exc
        return Answer(response.status_code, response.headers, raw)

    async def aclose(self) -> None:
        pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


_pool: HttpPool = HandlerPool(lambda request: httpx.Response(200))
_policies: PolicyInvalidator = FakeInvalidator()
_issuers: IssuersInvalidator = FakeInvalidator()
