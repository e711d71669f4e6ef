"""The GitHub App's endpoints: installations, policy files and token minting.

``GitHubAppClient`` implements ``octosts.domain.ports.GitHubApp`` on top of the
one GitHub REST core (``adapters.github_rest``: requests, caps, deadline, error
mapping, rate limits, retries); this module only says which calls it makes, with
which credentials, and what their statuses mean.

Orphan tokens: a mint whose requester stops waiting (its deadline, our timeout,
the caller cancelling, shutdown) is not abandoned at GitHub, which may still make
the token. Its answer is awaited in the background (up to ``orphan_wait``); a
token in it is revoked at once (``DELETE /installation/token``) and reported to
the ``OrphanSink`` (a metric and an audit event). ``settle`` waits for those at
shutdown, before the connection pool closes.

Caches belong to the instance:

======================  =====================  ===========================  ===========
cache                   key                    TTL                          bound
======================  =====================  ===========================  ===========
installations           owner (lower-cased)    ``installation_ttl`` (1 h)   maxsize
no-installation         owner (lower-cased)    ``installation_negative_ttl``  maxsize
contents tokens         installation id        until ``expires_at - margin``  maxsize
app JWT                 (one)                  ``app_jwt_reuse`` (5 min)    1
======================  =====================  ===========================  ===========

With several Apps ([fleet]) there is one client per App (so every cache above is per
App), put together by ``adapters.github_apps``.

With a fleet's Redis (``shared``), installation ids and "not installed" answers are shared
(``adapters.shared_cache``, keyed by App id and owner): a cold owner costs the fleet one
lookup per App. Tokens never are.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol, TypeGuard

import structlog

from octosts.adapters.cache import SingleFlight, TtlCache
from octosts.adapters.github_rest import (
    APP_BUDGET,
    APP_ERRORS,
    RAW_MEDIA,
    Budget,
    Request,
    Response,
    error_for,
    quote_path,
    repo_path,
    timed_out,
)
from octosts.adapters.shared_cache import Filled
from octosts.adapters.signer import JWT_LIFETIME_SECONDS, app_jwt
from octosts.domain.deadline import set_deadline
from octosts.domain.errors import (
    GitHubUnavailable,
    InvalidRequest,
    MintRejected,
    NoInstallation,
    PolicyInvalid,
    PolicyNotFound,
    StsError,
)
from octosts.domain.names import is_owner_name, is_repo_name
from octosts.domain.ports import FileRead, MintedToken
from octosts.domain.text import show

if TYPE_CHECKING:
    from octosts.adapters.github_rest import GitHubRest
    from octosts.adapters.shared_cache import SharedCache, SharedEntry
    from octosts.adapters.signer import AppSigner
    from octosts.domain.ports import Clock, Stage, StageObserver

_log = structlog.get_logger("octosts.github")

# What became of a token GitHub minted after its requester stopped waiting: revoked,
# revoke_failed (still live: an operator must act), unknown (no answer came within
# orphan_wait: GitHub may or may not have made one).
OrphanOutcome = Literal["revoked", "revoke_failed", "unknown"]


class OrphanSink(Protocol):
    """Where orphan tokens are reported (``observability.exchanges.ExchangeEvents``).

    Called in the background task that settled the orphan, which runs in a copy of
    the abandoned call's context (its request id and trace are still bound).
    """

    def orphan_token(
        self, outcome: OrphanOutcome, installation_id: int, token: MintedToken | None, /
    ) -> None: ...


class NoOrphanSink:
    """Reports nowhere (tests, CLI); orphans are still revoked."""

    def orphan_token(
        self, outcome: OrphanOutcome, installation_id: int, token: MintedToken | None, /
    ) -> None:
        pass


# What the App's own token for reading trust policies asks for (the App must have it:
# `octo-sts setup manifest` requests it).
POLICY_READ_PERMISSIONS: Mapping[str, str] = MappingProxyType({"contents": "read"})

# Owner and repository names follow domain.names (checked before a name becomes part
# of a URL); file paths are checked here, segment by segment.
_PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._@+=,-]{1,255}$")

_READ_ERRORS = APP_ERRORS.but(
    {404: PolicyNotFound, 403: lambda d: PolicyNotFound(d, reason="policy_unreadable")}
)
_MINT_ERRORS = APP_ERRORS.but({404: NoInstallation, 422: MintRejected})


@dataclass(frozen=True, slots=True)
class GitHubConfig:
    """The App, and how long to trust what GitHub said about it.

    Raises ValueError (naming the field) for an invalid value.
    """

    app_id: int
    installation_ttl: float = 3600.0
    installation_negative_ttl: float = 300.0
    installation_cache_size: int = 10_000
    contents_token_cache_size: int = 10_000
    # A cached contents:read token is replaced this long before GitHub expires it.
    contents_token_margin: float = 300.0
    app_jwt_reuse: float = 300.0
    # How long a mint's answer is still awaited after its requester stopped waiting,
    # to revoke the token in it (see the module doc).
    orphan_wait: float = 60.0
    # One of several Apps ([fleet]): its own budget is ``app:<id>`` in metrics and logs
    # (``Budget.label``); the one App of a one-App deployment keeps ``app``.
    pooled: bool = False

    def __post_init__(self) -> None:
        if self.app_id <= 0:
            raise ValueError("GitHubConfig.app_id: must be a positive integer")
        if self.installation_ttl <= 0:
            raise ValueError("GitHubConfig.installation_ttl: must be positive")
        if self.installation_negative_ttl < 0 or self.contents_token_margin < 0:
            raise ValueError("GitHubConfig: negative TTLs and margins are not allowed")
        if self.installation_cache_size < 1 or self.contents_token_cache_size < 1:
            raise ValueError("GitHubConfig: cache sizes must be at least 1")
        if not 0 < self.app_jwt_reuse < JWT_LIFETIME_SECONDS - 60:
            raise ValueError("GitHubConfig.app_jwt_reuse: must be between 0 and 8 minutes")
        if self.orphan_wait <= 0:
            raise ValueError("GitHubConfig.orphan_wait: must be positive")


@dataclass(frozen=True, slots=True)
class _CachedToken:
    token: str
    expires_at: float

    def __repr__(self) -> str:
        return f"_CachedToken(expires_at={self.expires_at!r})"


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


def _check_path(path: str) -> None:
    if len(path) > 1024 or any(
        s in {".", ".."} or not _PATH_SEGMENT_RE.fullmatch(s) for s in path.split("/")
    ):
        raise InvalidRequest(f"invalid repository file path {show(path, 100)}")


class GitHubAppClient:
    """``GitHubApp`` over the GitHub REST API (github.com or GHES), through ``rest``."""

    def __init__(
        self,
        config: GitHubConfig,
        *,
        rest: GitHubRest,
        signer: AppSigner,
        clock: Clock,
        observer: StageObserver,
        orphans: OrphanSink | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        self._config = config
        self._shared = shared
        self._rest = rest
        self._signer = signer
        self._clock = clock
        self._observer = observer
        self._installations: TtlCache[str, int] = TtlCache(
            name="github_installations", maxsize=config.installation_cache_size, clock=clock
        )
        self._no_installation: TtlCache[str, bool] = TtlCache(
            name="github_no_installation", maxsize=config.installation_cache_size, clock=clock
        )
        self._contents_tokens: TtlCache[int, _CachedToken] = TtlCache(
            name="github_contents_tokens", maxsize=config.contents_token_cache_size, clock=clock
        )
        self._app_budget = Budget(app_id=config.app_id) if config.pooled else APP_BUDGET
        self._installation_flight: SingleFlight[str, int | None] = SingleFlight()
        self._token_flight: SingleFlight[int, _CachedToken] = SingleFlight()
        self._jwt: tuple[str, float] | None = None
        self._jwt_lock = asyncio.Lock()
        self._orphan_sink: OrphanSink = orphans or NoOrphanSink()
        self._orphans: set[asyncio.Task[None]] = set()
        # Mints whose requester has neither taken the answer nor given up yet.
        self._undecided: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"GitHubAppClient({self._rest!r}, app_id={self._config.app_id})"

    @property
    def app_id(self) -> int:
        return self._config.app_id

    @property
    def app_budget(self) -> Budget:
        """The budget the App's own calls spend (installation lookups, mints)."""
        return self._app_budget

    def known_installation(self, owner: str) -> int | bool | None:
        """What this App's caches say of ``owner``, without calling GitHub: its installation
        id, False (not installed), or None (not known)."""
        key = owner.lower()
        cached = self._installations.get(key)
        if cached is not None:
            return cached
        return False if self._no_installation.get(key) else None

    def app_rate_limited(self) -> bool:
        """Whether GitHub rate-limits the App's own budget now (every installation lookup
        and mint is refused until it lifts): the ``octosts.github`` health detail."""
        return self._rest.rate_limits.hold_of(self._app_budget, self._clock.now()) is not None

    async def _app_auth(self) -> str:
        async with self._jwt_lock:
            now = self._clock.now()
            if self._jwt is None or not 0 <= now - self._jwt[1] < self._config.app_jwt_reuse:
                self._jwt = (await app_jwt(self._signer, self._config.app_id, self._clock), now)
            return f"Bearer {self._jwt[0]}"

    # -- installations -------------------------------------------------------------------

    async def installation_id(self, owner: str) -> int:
        """Installation of the app for an org (``/orgs``) or else a user (``/users``).

        Raises InvalidRequest (bad owner syntax), NoInstallation, RateLimited,
        GitHubUnavailable, StsError (the app's credentials are refused).
        """
        _check_owner(owner)
        key = owner.lower()
        with self._observer.stage("installation_lookup") as stage:
            stage.annotate("github.app_id", self._config.app_id)
            cached = self._installations.get(key)
            if cached is not None:
                stage.annotate("cache", "hit")
                return cached
            if self._no_installation.get(key):
                stage.annotate("cache", "negative_hit")
                raise NoInstallation(f"the GitHub App is not installed for {owner!r} (cached)")
            stage.annotate("cache", "miss")
            found = await self._installation_flight.do(
                key, lambda: self._shared_lookup(owner, stage)
            )
            if found is None:
                raise NoInstallation(f"the GitHub App is not installed for {owner!r}")
            return found

    async def _shared_lookup(self, owner: str, stage: Stage) -> int | None:
        """The installation id, None when not installed (through the fleet's Redis, if any)."""
        if self._shared is None:
            return (await self._lookup(owner, stage, None)).value
        stage.annotate("shared", value=True)
        key = owner.lower()
        return await self._shared.read_through(
            (str(self._config.app_id), key),  # each App has its own installation ids
            decode=lambda entry: self._adopt_installation(key, entry),
            fetch=lambda entry: self._lookup(owner, stage, entry),
        )

    def _adopt_installation(self, key: str, entry: SharedEntry) -> int | None:
        """A shared answer, checked like GitHub's, in this process's caches too."""
        ttl = entry.fresh_until - self._clock.now()
        if entry.value.get("installed") is False:
            self._no_installation.set(key, value=True, ttl=ttl)
            return None
        inst = entry.value.get("id")
        if not _installation_id(inst):
            raise ValueError("not an installation id")  # unusable: looked up again
        self._installations.set(key, inst, ttl=ttl)
        return int(inst)

    async def _lookup(
        self, owner: str, stage: Stage, _shared: SharedEntry | None
    ) -> Filled[int | None]:
        key = owner.lower()
        for kind in ("orgs", "users"):
            what = f"installation lookup /{kind}/{owner}"
            resp = await self._rest.send(
                Request(
                    "GET",
                    f"/{kind}/{owner}/installation",
                    authorization=await self._app_auth(),
                    endpoint="installation_lookup",
                    what=what,
                    budget=self._app_budget,
                ),
                stage,
            )
            if resp.status == 404:
                continue
            if resp.status != 200:
                raise error_for(resp, what)
            data = resp.json(what)
            inst = data.get("id") if isinstance(data, dict) else None
            if not _installation_id(inst):
                raise GitHubUnavailable(f"GitHub answered {what} without an installation id")
            ttl = self._config.installation_ttl
            self._installations.set(key, inst, ttl=ttl)
            self._no_installation.delete(key)
            return Filled(inst, {"id": inst}, ttl)
        negative_ttl = self._config.installation_negative_ttl
        if negative_ttl > 0:
            self._no_installation.set(key, value=True, ttl=negative_ttl)
        return Filled(None, {"installed": False}, negative_ttl)

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
                minted = await self._mint(
                    installation_id, POLICY_READ_PERMISSIONS, (), stage, "contents_token_mint"
                )
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
        _check_path(path)
        target = f"{repo_path(owner, repo)}/contents/{quote_path(path)}"
        what = f"read {owner}/{repo}/{path}"
        budget = Budget(installation_id)
        resp: Response | None = None
        for attempt in range(2):
            token = await self._contents_token(installation_id)
            resp = await self._rest.send(
                Request(
                    "GET",
                    target,
                    authorization=f"token {token}",
                    endpoint="contents_read",
                    what=what,
                    budget=budget,
                    accept=RAW_MEDIA,
                    etag=etag,
                )
            )
            if resp.status != 401 or attempt:
                break
            # Revoked or expired early: forget it and try once with a fresh token.
            self._contents_tokens.delete(installation_id)
        assert resp is not None  # the loop runs at least once
        if resp.status == 304:
            return FileRead(content=None, etag=resp.headers.get("etag") or etag)
        if resp.status != 200:
            raise error_for(resp, what, _READ_ERRORS)
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
            stage.annotate("github.app_id", self._config.app_id)
            return await self._mint(installation_id, permissions, repositories, stage, "token_mint")

    async def _mint(
        self,
        installation_id: int,
        permissions: Mapping[str, str],
        repositories: Sequence[str],
        stage: Stage,
        endpoint: str,
    ) -> MintedToken:
        if installation_id <= 0:
            raise InvalidRequest("installation id must be positive")
        for repo in repositories:
            _check_repo(repo)
        body: dict[str, object] = {"permissions": dict(permissions)}
        if repositories:
            body["repositories"] = list(repositories)
        what = f"mint token for installation {installation_id}"
        wait = self._rest.caller_wait(what)
        request = Request(
            "POST",
            f"/app/installations/{installation_id}/access_tokens",
            authorization=await self._app_auth(),
            endpoint=endpoint,
            what=what,
            budget=self._app_budget,
            json_body=body,
            timeout=self._config.orphan_wait,  # the answer is awaited after we stop waiting
            # Retried after a 5xx: a token GitHub may have made without answering is lost
            # either way (unreachable, it expires within the hour); the one we get is
            # delivered, or revoked as an orphan. Envoy's retry on another replica is the same.
            repeatable=True,
        )
        # Not cancelled with its requester: a token GitHub makes must reach someone.
        sending = asyncio.ensure_future(self._rest.send(request))

        def read(answer: Response) -> MintedToken:
            minted = _minted_token(answer, permissions, repositories, what)
            return dataclasses.replace(
                minted, app_id=self._config.app_id, installation_id=installation_id
            )

        decided = asyncio.get_running_loop().create_future()
        self._undecided.add(decided)
        try:
            resp = await asyncio.wait_for(asyncio.shield(sending), wait)
        except TimeoutError:
            self._adopt(sending, installation_id, read)
            raise GitHubUnavailable(
                f"GitHub timed out on {what} (deadline {wait:.3g} s);"
                " a token it makes later is revoked"
            ) from None
        except asyncio.CancelledError:
            self._adopt(sending, installation_id, read)
            raise
        finally:
            # The answer is ours, or adopted above: ``settle`` waits for this moment.
            self._undecided.discard(decided)
            decided.set_result(None)
        stage.annotate("github.status", resp.status)
        if resp.status == 404:
            # Uninstalled (or reinstalled under a new id): the next lookup must ask GitHub
            # instead of serving this id from the cache for an hour.
            await self._forget_installation(installation_id)
        if resp.status != 201:
            raise error_for(resp, what, _MINT_ERRORS)
        return read(resp)

    async def _forget_installation(self, installation_id: int) -> None:
        owners = self._installations.keys_where(lambda cached: cached == installation_id)
        self._installations.delete_values(lambda cached: cached == installation_id)
        if self._shared is not None:
            for owner in owners:
                await self._shared.forget((str(self._config.app_id), owner))

    def _adopt(
        self,
        sending: asyncio.Future[Response],
        installation_id: int,
        read: Callable[[Response], MintedToken],
    ) -> None:
        """Revoke the token in ``sending``'s answer (``read`` reads it), once it comes."""
        task = asyncio.ensure_future(self._settle_orphan(sending, installation_id, read))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def _settle_orphan(
        self,
        sending: asyncio.Future[Response],
        installation_id: int,
        read: Callable[[Response], MintedToken],
    ) -> None:
        # This task's context is a copy of the abandoned call's: its deadline has passed,
        # and the revocation must not be cut by it.
        set_deadline(None)
        try:
            resp = await sending
        except StsError as exc:
            if timed_out(exc):  # still no answer after orphan_wait: GitHub may have made one
                _log.error("orphan_token", outcome="unknown", installation_id=installation_id)
                self._orphan_sink.orphan_token("unknown", installation_id, None)
            return  # refused, rate-limited, unreachable: no token was made
        if resp.status != 201:
            return
        try:
            minted = read(resp)
        except GitHubUnavailable:
            self._orphan_sink.orphan_token("unknown", installation_id, None)
            return
        outcome: OrphanOutcome = "revoked"
        try:
            await self.revoke(minted.token)
        except StsError as exc:
            outcome = "revoke_failed"
            _log.error(
                "orphan_token",
                outcome=outcome,
                installation_id=installation_id,
                token_sha256=_sha256(minted.token),
                error=exc.reason,
            )
        else:
            _log.warning("orphan_token", outcome=outcome, installation_id=installation_id)
        self._orphan_sink.orphan_token(outcome, installation_id, minted)

    async def settle(self, within: float) -> int:
        """Wait up to ``within`` seconds for every mint in flight to reach its requester or
        be revoked; returns how many are left (shutdown calls it once the server has
        stopped, before the connection pool closes: a requester cut by the stop gives
        its mint up when its cancellation reaches it, which may be after the stop)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        if self._undecided:
            await asyncio.wait(set(self._undecided), timeout=within)
        if self._orphans and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._orphans), timeout=left)
        unsettled = len(self._orphans) + len(self._undecided)
        if unsettled:
            _log.error("orphan_tokens_unsettled", count=unsettled)
        return unsettled

    async def revoke(self, token: str) -> None:
        """Revoke an installation token (``DELETE /installation/token``).

        A token that is already invalid (401) counts as revoked. Raises
        RateLimited, GitHubUnavailable, StsError.
        """
        what = "revoke installation token"
        resp = await self._rest.send(
            Request(
                "DELETE",
                "/installation/token",
                authorization=f"token {token}",
                endpoint="token_revoke",
                what=what,
            )
        )
        if resp.status not in {204, 401}:
            raise error_for(resp, what)


def _installation_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _file_content(resp: Response, what: str) -> bytes:
    """Raw bytes from either media type: raw, or JSON with base64 ``content``."""
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        return resp.body
    data = resp.json(what)
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
    resp: Response, permissions: Mapping[str, str], repositories: Sequence[str], what: str
) -> MintedToken:
    data = resp.json(what)
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
