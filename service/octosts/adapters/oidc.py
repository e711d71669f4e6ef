"""OIDC token verification: discovery, JWKS and signatures over httpx.

``OidcVerifier.verify`` runs the pipeline as named stages so the observer can
time each one: ``token_parse`` -> ``issuer_validate`` -> ``discovery`` ->
``jwks`` -> ``signature_verify`` -> ``claims_validate``. ``discovery`` and
``jwks`` run (and are observed) only when the issuer's keys are not cached;
a cache hit is annotated ``cache=hit`` on the ``jwks`` stage.

Defences, in order: the token arrives size-capped by the transport
(``domain.tokens.MAX_TOKEN_BYTES``, before any parsing); the issuer
URL from the unverified payload must pass the syntax rules and the optional
deployment allowlist before any network call; every URL fetched (discovery,
jwks_uri, each redirect hop) passes the same rules and an SSRF guard that
resolves the host and refuses non-public addresses unless the issuer is
explicitly allowed; responses are streamed with a size cap and timeouts.
The guard checks the addresses the resolver returns; the HTTP client resolves
again when it connects, so a DNS server answering differently within
milliseconds (rebinding) is not covered. Deployments that need that should
route issuer traffic through an egress proxy that enforces the same rule.

With a fleet's Redis (``shared``), an issuer's discovery result and keys are shared
(``adapters.shared_cache``): a cold issuer costs the fleet one discovery and one JWKS fetch,
and keys read back pass the same URL rules and key caps as fetched ones.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
import jwt
from jwt.api_jwk import PyJWK

from octosts.adapters.cache import SingleFlight, TtlCache
from octosts.adapters.http_body import BodyRefused, read_capped
from octosts.adapters.local_fault import local_fault_cause
from octosts.adapters.shared_cache import Filled, SharedCache, SharedEntry
from octosts.domain.errors import (
    UNKNOWN_KEY_ID,
    IssuerRejected,
    IssuerUnavailable,
    StsError,
    TokenClaimsInvalid,
    TokenExpired,
    TokenMalformed,
    TokenSignatureInvalid,
)
from octosts.domain.issuers import ANY_ISSUER, IssuerAllowlist, issuer_entry_problem
from octosts.domain.jwks import (
    ALLOWED_ALGORITHMS,
    B64URL,
    MAX_KEYS,
    MAX_KEYS_TRIED,
    TOO_MANY_CANDIDATE_KEYS,
    PinnedJwks,
    key_algorithms,
    rsa_key_refusal,
)
from octosts.domain.ports import (
    REFUSED_PREFIX,
    Clock,
    NullObserver,
    NullReplicaHealth,
    ReplicaHealth,
    Stage,
    StageObserver,
    SystemClock,
)
from octosts.domain.tokens import (
    MAX_CLAIM_DEPTH,
    IssuerUrl,
    VerifiedToken,
    check_token_times,
    json_too_deep,
    parse_issuer_url,
    token_from_claims,
)

Resolver = Callable[[str], Awaitable[Sequence[str]]]


async def system_resolver(host: str) -> list[str]:
    """Resolve ``host`` with the event loop's getaddrinfo (all address families)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """Settings for ``OidcVerifier``.

    ``insecure_issuers``: exact issuer URLs allowed to use plain http and
    loopback/private addresses (local development, in-cluster issuers); the
    permission extends to URLs on the same origin (their jwks_uri). When
    ``allowlist`` (the deployment's, built by ``domain.issuers.compile_allowlist``)
    restricts, only issuers it allows (and ``insecure_issuers``) are accepted.
    """

    insecure_issuers: frozenset[str] = frozenset()
    allowlist: IssuerAllowlist = ANY_ISSUER
    leeway_seconds: float = 30.0
    connect_timeout: float = 3.0
    read_timeout: float = 5.0
    fetch_deadline: float = 10.0  # whole fetch incl. redirects: slow-drip bodies end here
    max_response_bytes: int = 100 * 1024
    max_redirects: int = 3
    cache_ttl: float = 3600.0
    cache_stale_for: float = 3600.0  # serve last-known keys while the issuer is down
    cache_maxsize: int = 256
    negative_ttl: float = 10.0
    kid_refetch_interval: float = 30.0

    def __post_init__(self) -> None:
        for issuer in self.insecure_issuers:
            problem = issuer_entry_problem(issuer, allow_insecure=True)
            if problem is not None:
                raise ValueError(f"insecure_issuers: {problem}")
        if self.max_response_bytes < 1 or self.cache_maxsize < 1:
            raise ValueError("size limits must be positive")


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    algorithms: frozenset[str]
    jwk: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class IssuerKeys:
    """Discovery result and verification keys of one issuer (one cache entry)."""

    issuer: str
    jwks_uri: str
    keys: tuple[_Key, ...]
    # PyJWK objects per (kid, alg), built on first use; parsing keys per token is waste
    _parsed: dict[tuple[int, str], PyJWK] = field(default_factory=dict, compare=False)

    def candidates(self, kid: str | None, alg: str) -> list[int]:
        """Indexes of the keys that may verify a token with this kid and alg (all of them:
        the verifier tries at most ``MAX_KEYS_TRIED``)."""
        return [
            i
            for i, k in enumerate(self.keys)
            if alg in k.algorithms and (kid is None or k.kid == kid)
        ]

    def pyjwk(self, index: int, alg: str) -> PyJWK:
        cached = self._parsed.get((index, alg))
        if cached is None:
            cached = PyJWK(dict(self.keys[index].jwk), algorithm=alg)
            self._parsed[(index, alg)] = cached
        return cached


@dataclass(frozen=True, slots=True)
class _Unverified:
    header: Mapping[str, Any]
    payload: Mapping[str, Any]
    issuer: str
    alg: str
    kid: str | None


def make_http_client(config: OidcConfig, *, verify: Any = True) -> httpx.AsyncClient:
    """An httpx client suited to issuer fetches: no proxies from the environment, no cookies.

    ``verify`` is passed to httpx (True, or an ``ssl.SSLContext`` trusting a dev CA).
    """
    return httpx.AsyncClient(
        verify=verify,
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        # identity: bodies are read raw under a byte cap. With gzip the cap would see
        # compressed bytes (a small response inflating to gigabytes) or hand them to the parser.
        headers={
            "User-Agent": "octo-sts",
            "Accept": "application/json",
            "Accept-Encoding": "identity",
        },
    )


def _b64decode(part: str, what: str) -> bytes:
    if not B64URL.fullmatch(part):
        raise TokenMalformed(f"{what} is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenMalformed(f"{what} is not base64url") from exc


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    # UTF-8 only (RFC 7519 section 7.2): json.loads would read UTF-16/32 bytes too, where a
    # '"' byte can be half of another character and the depth scan below loses track.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenMalformed(f"{what} is not UTF-8") from exc
    if json_too_deep(raw):  # before any parser (ours, then pyjwt's) recurses into it
        raise TokenMalformed(f"{what} nests deeper than {MAX_CLAIM_DEPTH} levels")
    try:
        value = json.loads(text)  # a BOM is refused too ("Unexpected UTF-8 BOM")
    except (ValueError, RecursionError) as exc:
        raise TokenMalformed(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenMalformed(f"{what} is not a JSON object")
    return value


def parse_unverified(bearer: str) -> _Unverified:
    """Split and decode a compact JWS without trusting it.

    ``bearer`` is within the transport's size cap (``bearer_from_values``).
    Raises TokenMalformed, TokenSignatureInvalid (algorithm not allowed),
    IssuerRejected (no ``iss``).
    """
    if not bearer.isascii():
        raise TokenMalformed("token is not ASCII")
    parts = bearer.split(".")
    if len(parts) != 3:
        raise TokenMalformed("token is not a compact JWS (three dot-separated parts)")
    header = _json_object(_b64decode(parts[0], "header"), "header")
    payload = _json_object(_b64decode(parts[1], "payload"), "payload")
    _b64decode(parts[2], "signature")  # an empty signature ("alg": "none") fails here
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise TokenSignatureInvalid("token algorithm not allowed (asymmetric algorithms only)")
    if "crit" in header:
        raise TokenMalformed("critical header extensions are not supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenMalformed("kid header is not a string")
    issuer = payload.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise IssuerRejected("token has no iss claim")
    return _Unverified(header=header, payload=payload, issuer=issuer, alg=alg, kid=kid)


@dataclass(frozen=True, slots=True)
class ParsedJwks:
    keys: tuple[_Key, ...]
    refused: Mapping[str, int]  # reason -> keys refused by rsa_key_refusal

    def usable(self) -> tuple[_Key, ...]:
        """The keys; raises IssuerRejected when there is none."""
        if not self.keys:
            why = ", ".join(f"{count} {reason}" for reason, count in sorted(self.refused.items()))
            raise IssuerRejected(
                "JWKS document has no usable signature keys" + (f" (refused: {why})" if why else "")
            )
        return self.keys


def parse_jwks(doc: Mapping[str, Any]) -> ParsedJwks:
    """Usable signature keys of a JWKS document, and the keys refused for their cost.

    Raises IssuerRejected (no keys list, more than 100 keys); ``usable()`` raises it
    when no key is left.
    """
    raw_keys = doc.get("keys")
    if not isinstance(raw_keys, list):
        raise IssuerRejected("JWKS document has no keys list")
    if len(raw_keys) > MAX_KEYS:
        raise IssuerRejected(f"JWKS document has more than {MAX_KEYS} keys")
    keys: list[_Key] = []
    refused: dict[str, int] = {}
    for raw in raw_keys:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
            continue
        algorithms = key_algorithms(raw)
        kid = raw.get("kid")
        if not algorithms or (kid is not None and not isinstance(kid, str)):
            continue
        refusal = rsa_key_refusal(raw) if raw.get("kty") == "RSA" else None
        if refusal is not None:
            refused[refusal] = refused.get(refusal, 0) + 1
            continue
        if not _usable(raw, algorithms):  # skipped, as other verifiers do
            continue
        keys.append(_Key(kid=kid, algorithms=algorithms, jwk=dict(raw)))
    return ParsedJwks(tuple(keys), refused)


def _usable(jwk: Mapping[str, Any], algorithms: frozenset[str]) -> bool:
    """Whether a key object can be built from ``jwk`` (an EC point on its curve, ...)."""
    try:
        PyJWK(dict(jwk), algorithm=min(algorithms))
    except (jwt.PyJWTError, ValueError, TypeError):
        return False
    return True


def unusable_pinned_keys(keys: PinnedJwks) -> list[int]:
    """Indexes of pinned keys whose material no key object can be built from (the rules of
    ``domain.jwks`` passed; this is the part only the crypto library can judge)."""
    return [i for i, key in enumerate(keys.keys) if not _usable(key.jwk, key.algorithms)]


def _refuse_address(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        # Tunnelled IPv4 (6to4, Teredo) reaches the embedded address: judge that one too.
        embedded = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if addr.is_site_local or (embedded is not None and _refuse_address(str(embedded))):
            return True
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
    return (
        addr.is_loopback
        or addr.is_private
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_unspecified
        or addr.is_reserved
        or not addr.is_global
    )


class OidcVerifier:
    """Verifies OIDC tokens against their issuer's published keys (a ``TokenVerifier``).

    One instance per process; it owns its caches. ``http`` is not closed by
    the verifier (the wiring module owns it).
    """

    def __init__(
        self,
        config: OidcConfig,
        *,
        http: httpx.AsyncClient,
        clock: Clock | None = None,
        observer: StageObserver | None = None,
        resolver: Resolver = system_resolver,
        replica: ReplicaHealth | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        """``replica`` hears of fetches that failed through this replica's own fault."""
        self._config = config
        self._shared = shared
        self._replica: ReplicaHealth = replica or NullReplicaHealth()
        self._http = http
        self._clock = clock or SystemClock()
        self._observer: StageObserver = observer or NullObserver()
        self._resolver = resolver
        self._insecure_origins = {
            parse_issuer_url(i, allow_insecure=True).origin for i in config.insecure_issuers
        }
        self._timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout)
        self._keys: TtlCache[str, IssuerKeys] = TtlCache(
            name="oidc_keys", maxsize=config.cache_maxsize, clock=self._clock
        )
        self._failures: TtlCache[str, StsError] = TtlCache(
            name="oidc_failures", maxsize=config.cache_maxsize, clock=self._clock
        )
        self._refetched: TtlCache[str, bool] = TtlCache(
            name="oidc_kid_refetch", maxsize=config.cache_maxsize, clock=self._clock
        )
        self._flight: SingleFlight[str, IssuerKeys] = SingleFlight()
        self._pinned: TtlCache[str, IssuerKeys] = TtlCache(
            name="pinned_keys", maxsize=config.cache_maxsize, clock=self._clock
        )
        # Issuers whose tokens pinned keys verified lately (``pinned_lately``).
        self._pinned_issuers: TtlCache[str, float] = TtlCache(
            name="pinned_issuers", maxsize=config.cache_maxsize, clock=self._clock
        )

    async def verify(self, bearer: str) -> VerifiedToken:
        """Verify a raw JWT (without the ``Bearer`` scheme).

        Raises TokenMalformed, IssuerRejected, TokenSignatureInvalid,
        TokenExpired, TokenClaimsInvalid (all AuthenticationError) and
        IssuerUnavailable.
        """
        obs = self._observer
        with obs.stage("token_parse"):
            token = parse_unverified(bearer)
        with obs.stage("issuer_validate") as stage:
            insecure = self._validate_issuer(token.issuer)
            cached = self._keys.get(token.issuer)
            if cached is None and self._failures.get(token.issuer) is None:
                # the guard runs before the first network call of a cold issuer;
                # each fetch (and redirect hop) is guarded again in _fetch_json
                await self._guard(
                    parse_issuer_url(token.issuer, allow_insecure=insecure), insecure=insecure
                )
            stage.annotate("insecure", insecure)
        if cached is not None:
            with obs.stage("jwks") as stage:
                stage.annotate("cache", "hit")
            keys = cached
        else:
            keys = await self._load(token.issuer, insecure)
        candidates = keys.candidates(token.kid, token.alg)
        # keys loaded by this very call are as fresh as a refetch would be
        if (
            not candidates
            and token.kid is not None
            and cached is not None
            and self._may_refetch(token.issuer)
        ):
            keys = await self._flight.do(
                token.issuer, lambda: self._fetch_keys(token.issuer, insecure, refetch=True)
            )
            candidates = keys.candidates(token.kid, token.alg)
        with obs.stage("signature_verify") as stage:
            claims = self._verify_signature(bearer, token, keys, candidates, stage)
        return self._checked_claims(claims, token, insecure=insecure)

    # -- keys pinned in a trust policy ----------------------------------------

    def claimed_issuer(self, bearer: str) -> str:
        """See ``domain.ports.PinnedVerifier.claimed_issuer``: the ``token_parse``,
        ``issuer_validate`` and ``claims_validate`` rules of ``verify``, without the network
        and on claims not verified yet."""
        with self._observer.stage("token_peek"):
            token = parse_unverified(bearer)
            insecure = self._validate_issuer(token.issuer)
            # Rules that only refuse, on unverified claims: an expired or malformed token
            # costs no GitHub lookup (verification checks them again on the signed claims).
            check_token_times(
                token.payload, now=self._clock.now(), leeway=self._config.leeway_seconds
            )
            token_from_claims(token.payload, allow_insecure=insecure)
            return token.issuer

    async def verify_pinned(self, bearer: str, keys: PinnedJwks) -> VerifiedToken:
        """Verify with a policy's pinned ``keys`` only (``domain.ports.PinnedVerifier``).

        The issuer is never resolved, fetched or guarded: its URL only has to pass the token
        rules and the deployment's allowlist. Raises TokenMalformed, IssuerRejected,
        TokenSignatureInvalid (no pinned key matches: ``unknown_key_id``; bad signature),
        TokenExpired, TokenClaimsInvalid.
        """
        obs = self._observer
        with obs.stage("token_parse"):
            token = parse_unverified(bearer)
        with obs.stage("issuer_validate") as stage:
            insecure = self._validate_issuer(token.issuer)
            stage.annotate("pinned", value=True)
        issuer_keys = self._pinned.get(keys.digest)
        if issuer_keys is None:
            # Parsed key objects only, by the key material's digest: the keys a policy pins
            # are looked up by the policy's own digest, never by issuer.
            parsed = tuple(_Key(k.kid, k.algorithms, dict(k.jwk)) for k in keys.keys)
            issuer_keys = IssuerKeys(issuer="", jwks_uri=f"pinned:{keys.source}", keys=parsed)
            self._pinned.set(keys.digest, issuer_keys, ttl=self._config.cache_ttl)
        candidates = issuer_keys.candidates(token.kid, token.alg)
        with obs.stage("signature_verify") as stage:
            stage.annotate("keys", "pinned")
            claims = self._verify_signature(
                bearer, token, issuer_keys, candidates, stage, whose="pinned key"
            )
        verified = self._checked_claims(claims, token, insecure=insecure)
        self._pinned_issuers.set(token.issuer, self._clock.now(), ttl=self._config.cache_ttl)
        return verified

    def holds_keys(self, issuer: str) -> bool:
        """See ``domain.ports.PinnedVerifier.holds_keys`` (fresh or kept stale)."""
        return self._keys.get_entry(issuer) is not None

    def pinned_lately(self, issuer: str) -> bool:
        """See ``domain.ports.PinnedVerifier.pinned_lately`` (within the keys' cache TTL)."""
        return self._pinned_issuers.get(issuer) is not None

    def _checked_claims(
        self, claims: dict[str, Any], token: _Unverified, *, insecure: bool
    ) -> VerifiedToken:
        with self._observer.stage("claims_validate"):
            check_token_times(claims, now=self._clock.now(), leeway=self._config.leeway_seconds)
            verified = token_from_claims(claims, allow_insecure=insecure)
            if verified.issuer != token.issuer:  # cannot happen: the payload is signed
                raise IssuerRejected("issuer changed during verification")
            return verified

    # -- issuer rules --------------------------------------------------------

    def _validate_issuer(self, issuer: str) -> bool:
        """Returns whether the issuer is explicitly allowed to be insecure."""
        insecure = issuer in self._config.insecure_issuers
        parse_issuer_url(issuer, allow_insecure=insecure)
        allowlist = self._config.allowlist
        if allowlist.restricts and not (insecure or allowlist.allows(issuer)):
            raise IssuerRejected("issuer is not in the deployment's issuer allowlist")
        return insecure

    def _check_url(self, url: str, *, insecure: bool, what: str) -> IssuerUrl:
        """Validate a discovery/JWKS/redirect URL with the issuer rules.

        Plain http only on the origin of an explicitly allowed issuer, and only
        while verifying a token of such an issuer. Raises IssuerRejected.
        """
        parsed = parse_issuer_url(url, allow_insecure=True)
        if parsed.scheme != "https" and not self._trusted_origin(parsed, insecure=insecure):
            raise IssuerRejected(f"{what} URL must use https")
        return parsed

    def _trusted_origin(self, url: IssuerUrl, *, insecure: bool) -> bool:
        return insecure and url.origin in self._insecure_origins

    async def _guard(self, url: IssuerUrl, *, insecure: bool) -> None:
        """SSRF guard: refuse hosts resolving to non-public addresses.

        Raises IssuerRejected (refused address, or the name does not resolve).
        """
        if self._trusted_origin(url, insecure=insecure):
            return
        try:
            addresses: Sequence[str] = [str(ipaddress.ip_address(url.host))]
        except ValueError:
            try:
                async with asyncio.timeout(self._config.connect_timeout):
                    addresses = await self._resolver(url.host)
            except (OSError, TimeoutError, UnicodeError) as exc:
                # Rejected, not "unavailable": otherwise the status code (401 vs 503) would
                # tell anyone whether an internal name resolves. Issuers already cached keep
                # working on their stale keys through a DNS outage.
                raise IssuerRejected(f"cannot resolve issuer host {url.host}") from exc
        if not addresses:
            raise IssuerRejected(f"issuer host {url.host} has no addresses")
        if any(_refuse_address(a) for a in addresses):
            raise IssuerRejected(
                f"issuer host {url.host} resolves to a non-public address "
                "(allowed only for explicitly configured issuers)"
            )

    def _may_refetch(self, issuer: str) -> bool:
        # an unknown kid may mean the issuer rotated keys; refetch, but at most
        # once per interval so junk kids cannot make us hammer the issuer
        if self._refetched.get(issuer) is not None:
            return False
        self._refetched.set(issuer, value=True, ttl=self._config.kid_refetch_interval)
        return True

    # -- discovery and JWKS --------------------------------------------------

    async def _load(self, issuer: str, insecure: bool) -> IssuerKeys:  # noqa: FBT001
        failure = self._failures.get(issuer)
        if failure is not None:
            stale = self._stale(issuer)
            if stale is not None and isinstance(failure, IssuerUnavailable):
                return stale
            raise _copy_error(failure)
        return await self._flight.do(issuer, lambda: self._fetch_keys(issuer, insecure))

    def _stale(self, issuer: str) -> IssuerKeys | None:
        entry = self._keys.get_entry(issuer)
        return entry.value if entry is not None else None

    async def _fetch_keys(
        self,
        issuer: str,
        insecure: bool,  # noqa: FBT001
        *,
        refetch: bool = False,
    ) -> IssuerKeys:
        try:
            keys, ttl = await self._shared_keys(issuer, insecure, refetch=refetch)
        except (IssuerUnavailable, IssuerRejected) as exc:
            self._failures.set(issuer, exc, ttl=self._config.negative_ttl)
            stale = self._stale(issuer)
            if stale is not None and isinstance(exc, IssuerUnavailable):
                return stale  # last-known keys beat an outage
            raise
        self._failures.delete(issuer)
        self._keys.set(issuer, keys, ttl=ttl, stale_for=self._config.cache_stale_for)
        return keys

    async def _shared_keys(
        self,
        issuer: str,
        insecure: bool,  # noqa: FBT001
        *,
        refetch: bool,
    ) -> tuple[IssuerKeys, float]:
        """Keys and how long they stay fresh: fetched, or another process's through Redis."""
        ttl = self._config.cache_ttl
        if self._shared is None:
            return await self._discover_and_fetch(issuer, insecure, refetch=refetch), ttl

        async def fetch(_entry: SharedEntry | None) -> Filled[tuple[IssuerKeys, float]]:
            keys = await self._discover_and_fetch(issuer, insecure, refetch=refetch)
            share = {"jwks_uri": keys.jwks_uri, "keys": [dict(k.jwk) for k in keys.keys]}
            return Filled((keys, ttl), share, ttl)

        def decode(entry: SharedEntry) -> tuple[IssuerKeys, float] | None:
            keys = self._keys_from_shared(issuer, insecure, entry.value)
            return (keys, entry.fresh_until - self._clock.now()) if keys is not None else None

        # A refetch (a kid we do not know) takes only keys newer than ours: another
        # process may have fetched the rotated set already.
        held = self._keys.get_entry(issuer) if refetch else None
        return await self._shared.read_through(
            (issuer,),
            decode=decode,
            fetch=fetch,
            newer_than=held.stored_at if held is not None else None,
        )

    def _keys_from_shared(
        self,
        issuer: str,
        insecure: bool,  # noqa: FBT001
        value: Mapping[str, Any],
    ) -> IssuerKeys | None:
        """Shared keys, held to the rules fetched ones pass (URL rules, key caps).

        Raises IssuerRejected (unusable: fetched again) or returns None.
        """
        jwks_uri, raw_keys = value.get("jwks_uri"), value.get("keys")
        if not isinstance(jwks_uri, str) or not isinstance(raw_keys, list):
            return None
        self._check_url(jwks_uri, insecure=insecure, what="jwks_uri")
        parsed = parse_jwks({"keys": raw_keys})
        if parsed.refused:
            return None  # never written by us: only usable keys are shared
        return IssuerKeys(issuer=issuer, jwks_uri=jwks_uri, keys=parsed.usable())

    async def _discover_and_fetch(
        self,
        issuer: str,
        insecure: bool,  # noqa: FBT001
        *,
        refetch: bool,
    ) -> IssuerKeys:
        obs = self._observer
        with obs.stage("discovery") as stage:
            stage.annotate("cache", "refetch" if refetch else "miss")
            url = issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = await self._fetch_json(url, insecure=insecure, what="discovery")
            if doc.get("issuer") != issuer:
                raise IssuerRejected("discovery document issuer does not match the token issuer")
            jwks_uri = doc.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise IssuerRejected("discovery document has no jwks_uri")
            self._check_url(jwks_uri, insecure=insecure, what="jwks_uri")
        with obs.stage("jwks") as stage:
            stage.annotate("cache", "refetch" if refetch else "miss")
            jwks = await self._fetch_json(jwks_uri, insecure=insecure, what="JWKS")
            parsed = parse_jwks(jwks)
            for reason, count in parsed.refused.items():
                stage.annotate(f"{REFUSED_PREFIX}{reason}", count)
            keys = parsed.usable()
            stage.annotate("keys", len(keys))
        return IssuerKeys(issuer=issuer, jwks_uri=jwks_uri, keys=keys)

    async def _fetch_json(self, url: str, *, insecure: bool, what: str) -> dict[str, Any]:
        """GET a JSON object, following redirects that pass the URL rules and the guard.

        Raises IssuerRejected (URL rules, guard, 4xx, too many redirects, not an
        object) and IssuerUnavailable (network, timeout, 5xx, oversized, not JSON).
        """
        try:
            async with asyncio.timeout(self._config.fetch_deadline):
                for _ in range(self._config.max_redirects + 1):
                    parsed = self._check_url(url, insecure=insecure, what=what)
                    await self._guard(parsed, insecure=insecure)
                    status, location, body = await self._get(url, what)
                    if status in {301, 302, 303, 307, 308} and location is not None:
                        url = urljoin(url, location)
                        continue
                    return self._decode(status, body, what)
        except TimeoutError as exc:
            raise IssuerUnavailable(f"{what} fetch timed out") from exc
        raise IssuerRejected(f"{what}: more than {self._config.max_redirects} redirects")

    async def _get(self, url: str, what: str) -> tuple[int, str | None, bytes]:
        cap = self._config.max_response_bytes
        try:
            async with self._http.stream(
                "GET", url, timeout=self._timeout, follow_redirects=False
            ) as response:
                if response.is_redirect:
                    return response.status_code, response.headers.get("location"), b""
                try:
                    body = await read_capped(response, cap)
                except BodyRefused as exc:  # too large, or compressed: the message says which
                    raise IssuerUnavailable(f"{what} response {exc}") from exc
                return response.status_code, None, body
        except httpx.TimeoutException as exc:
            raise IssuerUnavailable(f"{what} fetch timed out") from exc
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            cause = local_fault_cause(exc)
            if cause is not None:  # this replica's fault, not the issuer's
                self._replica.local_fault(cause)
                raise IssuerUnavailable(f"{what} fetch failed on this replica: {cause}") from exc
            raise IssuerUnavailable(f"{what} fetch failed: {type(exc).__name__}") from exc

    @staticmethod
    def _decode(status: int, body: bytes, what: str) -> dict[str, Any]:
        if status >= 500 or status in {408, 429}:
            raise IssuerUnavailable(f"{what} answered HTTP {status}")
        if status != 200:
            raise IssuerRejected(f"{what} answered HTTP {status}")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise IssuerUnavailable(f"{what} response is not JSON") from exc
        if not isinstance(doc, dict):
            raise IssuerRejected(f"{what} response is not a JSON object")
        return doc

    # -- signature -----------------------------------------------------------

    def _verify_signature(
        self,
        bearer: str,
        token: _Unverified,
        keys: IssuerKeys,
        candidates: list[int],
        stage: Stage,
        *,
        whose: str = "issuer key",
    ) -> dict[str, Any]:
        if not candidates:
            raise TokenSignatureInvalid(
                f"no {whose} matches the token's kid and algorithm", reason=UNKNOWN_KEY_ID
            )
        if len(candidates) > MAX_KEYS_TRIED:
            stage.annotate(REFUSED_PREFIX + TOO_MANY_CANDIDATE_KEYS, 1)
            candidates = candidates[:MAX_KEYS_TRIED]
        last: Exception | None = None
        for tried, index in enumerate(candidates, 1):
            stage.annotate("keys_tried", tried)
            try:
                return jwt.decode(
                    bearer,
                    key=keys.pyjwk(index, token.alg),
                    algorithms=[token.alg],
                    # times are checked against the injected clock in
                    # claims_validate; audience belongs to the trust policy
                    options={
                        "require": ["exp", "iss"],
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": False,
                        "verify_iss": False,
                        "verify_sub": False,
                        "verify_jti": False,
                    },
                )
            except jwt.InvalidSignatureError as exc:
                last = exc
            except jwt.MissingRequiredClaimError as exc:
                raise TokenClaimsInvalid(f"{exc.claim} claim is required") from exc
            except jwt.ExpiredSignatureError as exc:  # pragma: no cover - verify_exp is off
                raise TokenExpired("token has expired") from exc
            except (jwt.PyJWTError, ValueError, TypeError) as exc:
                raise TokenSignatureInvalid("token signature cannot be verified") from exc
        raise TokenSignatureInvalid("token signature does not verify") from last


def _copy_error(error: StsError) -> StsError:
    # re-raising one cached instance would chain tracebacks across requests
    return type(error)(error.detail, reason=error.reason)
