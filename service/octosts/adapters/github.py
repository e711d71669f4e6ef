"""The GitHub App adapter: installations, policy files and token minting over the REST API.

``GitHubAppClient`` implements ``octosts.domain.ports.GitHubApp``. Every HTTP
answer goes through ``_error_for`` (the one mapping from GitHub statuses and
httpx failures to domain errors). Caches belong to the instance:

======================  =====================  ===========================  ===========
cache                   key                    TTL                          bound
======================  =====================  ===========================  ===========
installations           owner (lower-cased)    ``installation_ttl`` (1 h)   maxsize
no-installation         owner (lower-cased)    ``installation_negative_ttl``  maxsize
contents tokens         installation id        until ``expires_at - margin``  maxsize
app JWT                 (one)                  ``app_jwt_reuse`` (5 min)    1
======================  =====================  ===========================  ===========
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from octosts.adapters.cache import SingleFlight, TtlCache
from octosts.adapters.http_body import BodyCompressed, BodyTooLarge, read_capped
from octosts.adapters.signer import JWT_LIFETIME_SECONDS, app_jwt
from octosts.domain.errors import (
    GitHubUnavailable,
    InvalidRequest,
    MintRejected,
    NoInstallation,
    PermissionDenied,
    PolicyInvalid,
    PolicyNotFound,
    RateLimited,
    StsError,
)
from octosts.domain.names import is_owner_name, is_repo_name
from octosts.domain.ports import FileRead, MintedToken
from octosts.domain.text import show

if TYPE_CHECKING:
    from octosts.adapters.signer import AppSigner
    from octosts.domain.ports import Clock, Stage, StageObserver

API_VERSION = "2022-11-28"
_JSON_MEDIA = "application/vnd.github+json"
_RAW_MEDIA = "application/vnd.github.raw+json"

# Owner and repository names follow domain.names (checked before a name becomes part
# of a URL); file paths are checked here, segment by segment.
_PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._@+=,-]{1,255}$")

# Label used for rate-limit budgets spent with the app JWT (not an installation's).
APP_BUDGET = "app"


@dataclass(frozen=True, slots=True)
class GitHubConfig:
    """How to reach GitHub and how long to trust what it said.

    Raises ValueError (naming the field) for an invalid value.
    """

    app_id: int
    base_url: str = "https://api.github.com"
    connect_timeout: float = 5.0
    request_timeout: float = 10.0  # whole request, including reading the body
    max_response_bytes: int = 1 << 20
    installation_ttl: float = 3600.0
    installation_negative_ttl: float = 300.0
    installation_cache_size: int = 10_000
    contents_token_cache_size: int = 10_000
    # A cached contents:read token is replaced this long before GitHub expires it.
    contents_token_margin: float = 300.0
    app_jwt_reuse: float = 300.0
    user_agent: str = "octo-sts"

    def __post_init__(self) -> None:
        if self.app_id <= 0:
            raise ValueError("GitHubConfig.app_id: must be a positive integer")
        check_base_url(self.base_url)
        for name in ("connect_timeout", "request_timeout", "installation_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GitHubConfig.{name}: must be positive")
        if self.installation_negative_ttl < 0 or self.contents_token_margin < 0:
            raise ValueError("GitHubConfig: negative TTLs and margins are not allowed")
        if self.max_response_bytes < 1024:
            raise ValueError("GitHubConfig.max_response_bytes: must be at least 1024")
        if self.installation_cache_size < 1 or self.contents_token_cache_size < 1:
            raise ValueError("GitHubConfig: cache sizes must be at least 1")
        if not 0 < self.app_jwt_reuse < JWT_LIFETIME_SECONDS - 60:
            raise ValueError("GitHubConfig.app_jwt_reuse: must be between 0 and 8 minutes")

    @property
    def api_root(self) -> str:
        return self.base_url.rstrip("/")


def github_http_client(timeout: float, *, verify: Any = True) -> httpx.AsyncClient:
    """An httpx client for the GitHub API: no proxies from the environment, no redirects.

    ``Accept-Encoding: identity`` because bodies are read raw under a byte cap:
    with gzip the parser would get compressed bytes (httpx's raw stream does not
    decode) and the cap would count the wrong size.
    """
    return httpx.AsyncClient(
        verify=verify,
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        headers={"Accept-Encoding": "identity"},
    )


def check_base_url(url: str) -> None:
    """https, or http on a loopback host only. Raises ValueError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValueError(f"GitHub base URL {url!r}: must be an absolute https URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"GitHub base URL {url!r}: no credentials, query or fragment allowed")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(f"GitHub base URL {url!r}: https is required except on loopback")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise GitHubUnavailable(
                f"GitHub answered {self.status} with a body that is not JSON"
            ) from exc

    def message(self) -> str:
        """GitHub's ``message`` field, shortened, for operator-facing details."""
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return ""
        msg = data.get("message") if isinstance(data, dict) else None
        return msg[:200] if isinstance(msg, str) else ""


@dataclass(frozen=True, slots=True)
class _CachedToken:
    token: str
    expires_at: float

    def __repr__(self) -> str:
        return f"_CachedToken(expires_at={self.expires_at!r})"


def _is_rate_limited(resp: _Response) -> str | None:
    """``"primary"``/``"secondary"`` when a 403/429 is a rate limit, else None.

    GitHub's documented signals: ``x-ratelimit-remaining: 0`` (primary);
    ``retry-after`` or a "secondary rate limit" message (secondary). A 429 is
    always a limit.
    """
    if resp.headers.get("x-ratelimit-remaining") == "0":
        return "primary"
    if "retry-after" in resp.headers or "secondary rate limit" in resp.message().lower():
        return "secondary"
    if resp.status == 429:
        return "secondary"
    if "rate limit" in resp.message().lower():
        return "primary"
    return None


def _error_for(  # noqa: PLR0911 - one flat table reads best
    resp: _Response,
    what: str,
    *,
    not_found: Callable[[str], StsError] | None = None,
    forbidden: Callable[[str], StsError] | None = None,
    unprocessable: Callable[[str], StsError] | None = None,
) -> StsError:
    """The one mapping from a non-success GitHub answer to a domain error."""
    status = resp.status
    msg = resp.message()
    detail = f"GitHub {status} on {what}" + (f": {msg}" if msg else "")
    if status == 401:
        # Our own credentials were refused: a deployment problem, not the caller's.
        return StsError(
            f"{detail} (check GITHUB_APP_ID, the app private key and the server clock)",
            reason="github_app_auth_failed",
        )
    if status in {403, 429}:
        kind = _is_rate_limited(resp)
        if kind is not None:
            retry = resp.headers.get("retry-after") or resp.headers.get("x-ratelimit-reset", "")
            return RateLimited(
                f"{detail} ({kind} rate limit; retry-after/reset={retry})",
                reason=f"rate_limited_{kind}",
            )
        if forbidden is not None:
            return forbidden(detail)
        return PermissionDenied(detail, reason="github_forbidden")
    if status == 404 and not_found is not None:
        return not_found(detail)
    if status == 422 and unprocessable is not None:
        return unprocessable(detail)
    if status >= 500:
        return GitHubUnavailable(detail)
    return StsError(f"unexpected {detail}", reason="github_unexpected_status")


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise GitHubUnavailable("GitHub token response has no expires_at")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise GitHubUnavailable("GitHub token response has an unreadable expires_at") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _check_owner(owner: str) -> None:
    if not is_owner_name(owner):
        raise InvalidRequest(f"invalid GitHub owner name {show(owner, 50)}")


def _check_repo(repo: str) -> None:
    if not is_repo_name(repo):
        raise InvalidRequest(f"invalid GitHub repository name {show(repo, 110)}")


def _quote_path(path: str) -> str:
    segments = path.split("/")
    if len(path) > 1024 or any(
        s in {".", ".."} or not _PATH_SEGMENT_RE.fullmatch(s) for s in segments
    ):
        raise InvalidRequest(f"invalid repository file path {show(path, 100)}")
    return "/".join(urllib.parse.quote(s, safe="") for s in segments)


class GitHubAppClient:
    """``GitHubApp`` over the GitHub REST API (github.com or GHES).

    ``http`` is owned by the caller (connection pool shared with nothing
    secret-bearing); ``on_rate_limit(budget, remaining)`` is called with each
    ``x-ratelimit-remaining`` seen, ``budget`` being the installation id or
    ``"app"``.
    """

    def __init__(
        self,
        config: GitHubConfig,
        *,
        http: httpx.AsyncClient,
        signer: AppSigner,
        clock: Clock,
        observer: StageObserver,
        on_rate_limit: Callable[[str, int], None] | None = None,
    ) -> None:
        self._config = config
        self._http = http
        self._signer = signer
        self._clock = clock
        self._observer = observer
        self._on_rate_limit = on_rate_limit
        self._installations: TtlCache[str, int] = TtlCache(
            name="github_installations", maxsize=config.installation_cache_size, clock=clock
        )
        self._no_installation: TtlCache[str, bool] = TtlCache(
            name="github_no_installation", maxsize=config.installation_cache_size, clock=clock
        )
        self._contents_tokens: TtlCache[int, _CachedToken] = TtlCache(
            name="github_contents_tokens", maxsize=config.contents_token_cache_size, clock=clock
        )
        self._installation_flight: SingleFlight[str, int] = SingleFlight()
        self._token_flight: SingleFlight[int, _CachedToken] = SingleFlight()
        self._jwt: tuple[str, float] | None = None
        self._jwt_lock = asyncio.Lock()
        self._rate_remaining: OrderedDict[str, int] = OrderedDict()

    def __repr__(self) -> str:
        return f"GitHubAppClient(base_url={self._config.api_root!r}, app_id={self._config.app_id})"

    # -- observability -------------------------------------------------------------------

    def rate_limit_remaining(self) -> Mapping[str, int]:
        """Last ``x-ratelimit-remaining`` per budget (installation id or ``"app"``); a copy."""
        return dict(self._rate_remaining)

    def _record_rate(self, budget: str, headers: httpx.Headers) -> None:
        raw = headers.get("x-ratelimit-remaining")
        if raw is None or not raw.isdigit():
            return
        remaining = int(raw)
        self._rate_remaining[budget] = remaining
        self._rate_remaining.move_to_end(budget)
        while len(self._rate_remaining) > self._config.installation_cache_size:
            self._rate_remaining.popitem(last=False)
        if self._on_rate_limit is not None:
            self._on_rate_limit(budget, remaining)

    # -- HTTP ----------------------------------------------------------------------------

    async def _app_jwt(self) -> str:
        async with self._jwt_lock:
            now = self._clock.now()
            if self._jwt is not None and 0 <= now - self._jwt[1] < self._config.app_jwt_reuse:
                return self._jwt[0]
            token = await app_jwt(self._signer, self._config.app_id, self._clock)
            self._jwt = (token, now)
            return token

    async def _request(  # noqa: PLR0913 - keyword-only request options
        self,
        method: str,
        path: str,
        *,
        authorization: str,
        budget: str | None,
        what: str,
        accept: str = _JSON_MEDIA,
        json_body: object = None,
        etag: str | None = None,
        stage: Stage | None = None,
    ) -> _Response:
        """One request with a size cap and a whole-request deadline.

        Raises GitHubUnavailable for transport failures, timeouts and oversized
        answers; HTTP statuses are returned for the caller to map.
        """
        headers = {
            "Accept": accept,
            "Authorization": authorization,
            "User-Agent": self._config.user_agent,
            "X-GitHub-Api-Version": API_VERSION,
        }
        if etag:
            headers["If-None-Match"] = etag
        timeout = httpx.Timeout(self._config.request_timeout, connect=self._config.connect_timeout)
        cap = self._config.max_response_bytes
        try:
            async with asyncio.timeout(self._config.request_timeout):
                async with self._http.stream(
                    method,
                    self._config.api_root + path,
                    headers=headers,
                    json=json_body,
                    timeout=timeout,
                    follow_redirects=False,
                ) as resp:
                    try:
                        body = await read_capped(resp, cap)
                    except BodyTooLarge as exc:
                        raise GitHubUnavailable(
                            f"GitHub answer to {what} exceeds {cap} bytes"
                        ) from exc
                    except BodyCompressed as exc:
                        raise GitHubUnavailable(f"GitHub answer to {what} is compressed") from exc
                    result = _Response(resp.status_code, resp.headers, body)
        except TimeoutError as exc:
            raise GitHubUnavailable(f"GitHub timed out on {what}") from exc
        except httpx.TimeoutException as exc:
            raise GitHubUnavailable(f"GitHub timed out on {what}") from exc
        except httpx.HTTPError as exc:
            # The exception's class says enough; its text may repeat the URL only.
            raise GitHubUnavailable(f"GitHub unreachable on {what}: {type(exc).__name__}") from exc
        if stage is not None:
            stage.annotate("github_status", result.status)
        if budget is not None:
            self._record_rate(budget, result.headers)
        return result

    # -- installations -------------------------------------------------------------------

    async def installation_id(self, owner: str) -> int:
        """Installation of the app for an org (``/orgs``) or else a user (``/users``).

        Raises InvalidRequest (bad owner syntax), NoInstallation, RateLimited,
        GitHubUnavailable, StsError (the app's credentials are refused).
        """
        _check_owner(owner)
        key = owner.lower()
        with self._observer.stage("installation_lookup") as stage:
            cached = self._installations.get(key)
            if cached is not None:
                stage.annotate("cache", "hit")
                return cached
            if self._no_installation.get(key):
                stage.annotate("cache", "negative_hit")
                raise NoInstallation(f"the GitHub App is not installed for {owner!r} (cached)")
            stage.annotate("cache", "miss")
            return await self._installation_flight.do(key, lambda: self._lookup(owner, stage))

    async def _lookup(self, owner: str, stage: Stage) -> int:
        key = owner.lower()
        for kind in ("orgs", "users"):
            what = f"installation lookup /{kind}/{owner}"
            resp = await self._request(
                "GET",
                f"/{kind}/{owner}/installation",
                authorization=f"Bearer {await self._app_jwt()}",
                budget=APP_BUDGET,
                what=what,
                stage=stage,
            )
            if resp.status == 404:
                continue
            if resp.status != 200:
                raise _error_for(resp, what)
            data = resp.json()
            inst = data.get("id") if isinstance(data, dict) else None
            if not isinstance(inst, int) or isinstance(inst, bool) or inst <= 0:
                raise GitHubUnavailable(f"GitHub answered {what} without an installation id")
            self._installations.set(key, inst, ttl=self._config.installation_ttl)
            self._no_installation.delete(key)
            return inst
        if self._config.installation_negative_ttl > 0:
            self._no_installation.set(key, value=True, ttl=self._config.installation_negative_ttl)
        raise NoInstallation(f"the GitHub App is not installed for {owner!r}")

    # -- contents ------------------------------------------------------------------------

    async def _contents_token(self, installation_id: int) -> str:
        cached = self._contents_tokens.get(installation_id)
        with self._observer.stage("contents_token_cache") as stage:
            stage.annotate("cache", "hit" if cached is not None else "miss")
        if cached is not None:
            return cached.token
        entry = await self._token_flight.do(
            installation_id, lambda: self._mint_contents_token(installation_id)
        )
        return entry.token

    async def _mint_contents_token(self, installation_id: int) -> _CachedToken:
        with self._observer.stage("contents_token_mint") as stage:
            try:
                minted = await self._mint(installation_id, {"contents": "read"}, (), stage)
            except MintRejected as exc:
                # The app itself lacks contents:read there: nobody's policy is readable.
                raise PolicyNotFound(
                    f"cannot read policies in installation {installation_id}: {exc.detail}",
                    reason="policy_unreadable",
                ) from exc
        expires = minted.expires_at.timestamp()
        ttl = expires - self._clock.now() - self._config.contents_token_margin
        entry = _CachedToken(minted.token, expires)
        if ttl > 0:
            self._contents_tokens.set(installation_id, entry, ttl=ttl)
        return entry

    async def read_file(
        self, installation_id: int, owner: str, repo: str, path: str, etag: str | None = None
    ) -> FileRead:
        """Read a file on the default branch with a cached contents:read token.

        Returns ``FileRead(content=None, etag=...)`` when ``etag`` still matches
        (GitHub 304). Raises InvalidRequest (bad names), PolicyNotFound (404,
        directory, repository not accessible), PolicyInvalid (file too large for
        the contents API), RateLimited, GitHubUnavailable, StsError.
        """
        _check_owner(owner)
        _check_repo(repo)
        url = f"/repos/{owner}/{repo}/contents/{_quote_path(path)}"
        what = f"read {owner}/{repo}/{path}"
        resp: _Response | None = None
        for attempt in range(2):
            token = await self._contents_token(installation_id)
            resp = await self._request(
                "GET",
                url,
                authorization=f"token {token}",
                budget=str(installation_id),
                what=what,
                accept=_RAW_MEDIA,
                etag=etag,
            )
            if resp.status != 401 or attempt:
                break
            # Revoked or expired early: forget it and try once with a fresh token.
            self._contents_tokens.delete(installation_id)
        assert resp is not None  # the loop runs at least once
        if resp.status == 304:
            return FileRead(content=None, etag=resp.headers.get("etag") or etag)
        if resp.status != 200:
            raise _error_for(
                resp,
                what,
                not_found=PolicyNotFound,
                forbidden=lambda d: PolicyNotFound(d, reason="policy_unreadable"),
            )
        return FileRead(content=_file_content(resp, what), etag=resp.headers.get("etag"))

    # -- tokens --------------------------------------------------------------------------

    async def mint(
        self, installation_id: int, permissions: Mapping[str, str], repositories: Sequence[str]
    ) -> MintedToken:
        """Create an installation token with exactly these permissions and repositories.

        An empty ``repositories`` means all repositories of the installation.
        Raises MintRejected (422), NoInstallation (404), RateLimited,
        GitHubUnavailable, StsError.
        """
        with self._observer.stage("token_mint") as stage:
            return await self._mint(installation_id, permissions, repositories, stage)

    async def _mint(
        self,
        installation_id: int,
        permissions: Mapping[str, str],
        repositories: Sequence[str],
        stage: Stage,
    ) -> MintedToken:
        if installation_id <= 0:
            raise InvalidRequest("installation id must be positive")
        for repo in repositories:
            _check_repo(repo)
        body: dict[str, object] = {"permissions": dict(permissions)}
        if repositories:
            body["repositories"] = list(repositories)
        what = f"mint token for installation {installation_id}"
        resp = await self._request(
            "POST",
            f"/app/installations/{installation_id}/access_tokens",
            authorization=f"Bearer {await self._app_jwt()}",
            budget=APP_BUDGET,
            what=what,
            json_body=body,
            stage=stage,
        )
        if resp.status == 404:
            # Uninstalled (or reinstalled under a new id): the next lookup must ask GitHub
            # instead of serving this id from the cache for an hour.
            self._installations.delete_values(lambda cached: cached == installation_id)
        if resp.status != 201:
            raise _error_for(
                resp,
                what,
                not_found=NoInstallation,
                unprocessable=MintRejected,
            )
        return _minted_token(resp, permissions, repositories)

    async def revoke(self, token: str) -> None:
        """Revoke an installation token (``DELETE /installation/token``).

        A token that is already invalid (401) counts as revoked. Raises
        RateLimited, GitHubUnavailable, StsError.
        """
        what = "revoke installation token"
        resp = await self._request(
            "DELETE",
            "/installation/token",
            authorization=f"token {token}",
            budget=None,  # the token's own budget, which nobody watches
            what=what,
        )
        if resp.status not in {204, 401}:
            raise _error_for(resp, what)


def _file_content(resp: _Response, what: str) -> bytes:
    """Raw bytes from either media type: raw, or JSON with base64 ``content``."""
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return resp.body
    data = resp.json()
    if not isinstance(data, dict) or data.get("type") != "file":
        raise PolicyNotFound(f"{what}: not a file")
    encoding = data.get("encoding")
    content = data.get("content")
    if encoding == "none" or content == "":
        raise PolicyInvalid(f"{what}: file too large for the contents API")
    if encoding != "base64" or not isinstance(content, str):
        raise GitHubUnavailable(f"{what}: unexpected content encoding {str(encoding)[:20]!r}")
    try:
        return base64.b64decode(content.replace("\n", ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GitHubUnavailable(f"{what}: content is not valid base64") from exc


def _minted_token(
    resp: _Response, permissions: Mapping[str, str], repositories: Sequence[str]
) -> MintedToken:
    data = resp.json()
    if not isinstance(data, dict) or not isinstance(data.get("token"), str) or not data["token"]:
        raise GitHubUnavailable("GitHub token response has no token")
    granted = data.get("permissions")
    perms = (
        {str(k): str(v) for k, v in granted.items()}
        if isinstance(granted, dict)
        else dict(permissions)
    )
    repos_data = data.get("repositories")
    if isinstance(repos_data, list):
        names = tuple(str(r["name"]) for r in repos_data if isinstance(r, dict) and "name" in r)
    else:
        names = tuple(repositories)
    return MintedToken(
        token=data["token"],
        expires_at=_parse_time(data.get("expires_at")),
        permissions=perms,
        repositories=names,
    )
