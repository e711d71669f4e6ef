"""Several GitHub Apps as one ([fleet]): each call goes to the App with the most quota left.

GitHub rate-limits each App on its own (its JWT's calls: installation lookups and
token mints) and each installation on its own (policy reads). A deployment that
outgrows one App's quota installs several Apps on its orgs and lists them
(``GITHUB_APPS``, docs/github-apps.md); ``GitHubApps`` implements the domain's
``GitHubApp`` port over one ``GitHubAppClient`` per App, all on one GitHub REST
core, whose ``RateLimits`` follow every App's and installation's budget from
GitHub's ``x-ratelimit-*`` headers.

The choice is one pure function, ``choose_app``, over a snapshot (``Candidate``)
of each App for the owner: installed there or not (or not looked up yet), how
much quota it has left, whether GitHub holds it. Where it is made:

- ``installation_id(owner)``: the installation of the chosen App. An App whose
  installation there is not known yet is looked up when it comes up; one not
  installed is never a candidate for that owner while its negative cache lasts.
- ``mint`` and ``read_file``: the installation's App, or, when that App (for
  reads: that installation) is held or has less quota left than another App
  installed for the same owner, that other App with its own installation there.
  A call refused by a hold was never sent and a rate-limited mint made no token,
  so each may go to the next App at once.
- When every candidate is held: RateLimited with the earliest Retry-After.

Not routed: check runs stay on one App, as GitHub lets only the App that
created a check run update it. The webhook's are made by ``checks_app``, the
one whose webhook delivers the events (a delivery names that App's
installation). A mint granting ``checks: write`` is pinned too
(``pinned_app_order``): to ``checks_app`` or, where it is not installed, the
first App listed that is, so a workload's later token can update the check run
its earlier one created; a pinned App that is held answers RateLimited, never
another App.

With one App every call goes straight to it: the pool adds nothing, and answers
exactly as the one client does.

Pooled Apps should be installed on the same repositories with the same
permissions: a token may come from any of them.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from octosts.adapters.github_rest import Budget
from octosts.domain.errors import InvalidRequest, NoInstallation, RateLimited, StsError
from octosts.domain.names import is_owner_name
from octosts.domain.text import show

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from octosts.adapters.github import GitHubAppClient
    from octosts.adapters.github_rest import RateLimits
    from octosts.domain.ports import Clock, FileRead, MintedToken

T = TypeVar("T")

# Which budget a call spends: the App's own (lookups, mints) or the installation's (reads).
Spends = Literal["app", "installation"]


# -- the choice, pure ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """One App as a choice for one owner, at one moment.

    ``installed``: None while its installation there has not been looked up.
    ``remaining``: quota left by GitHub's last answer; None when unknown (counted as full).
    ``held_until``: GitHub's limit in force on it, if any.
    """

    app_id: int
    installed: bool | None = None
    remaining: int | None = None
    held_until: float | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    """``app_id``: the App to use. None: no App can be used, and then ``retry_after`` is
    how long until the first held one lifts (``lifts_first`` names it), or None when
    no App is installed at all."""

    app_id: int | None = None
    retry_after: float | None = None
    lifts_first: int | None = None


def choose_app(candidates: Sequence[Candidate], now: float) -> Choice:
    """The App with the most quota left among those installed (or maybe installed) and not
    held at ``now``; unknown quota counts as full, ties go to the one listed first."""
    possible = [c for c in candidates if c.installed is not False]
    free = [c for c in possible if c.held_until is None or c.held_until <= now]
    if free:
        best = max(free, key=lambda c: math.inf if c.remaining is None else c.remaining)
        return Choice(best.app_id)  # max keeps the first of equals
    held = [c for c in possible if c.held_until is not None]
    if not held:
        return Choice()
    first = min(held, key=lambda c: c.held_until or 0.0)
    return Choice(None, max((first.held_until or now) - now, 0.0), first.app_id)


def is_pinned(permissions: Mapping[str, str]) -> bool:
    """Whether a mint granting ``permissions`` must come from the owner's one pinned App:
    it may create check runs, which only the App that created them can update."""
    return permissions.get("checks") == "write"


def pinned_app_order(app_ids: Sequence[int], checks_app: int) -> tuple[int, ...]:
    """The Apps a pinned mint may use, best first: the checks App, then the others as listed;
    the first installed for the owner is the one."""
    return (checks_app, *(a for a in app_ids if a != checks_app))


# -- the pool -----------------------------------------------------------------------------------


class AppTelemetry(Protocol):
    """Where the pool reports (``observability.metrics.Metrics`` is one)."""

    def app_minted(self, app_id: int, /) -> None: ...


class NoAppTelemetry:
    def app_minted(self, app_id: int, /) -> None:
        pass


class GitHubApps:
    """``GitHubApp`` over several GitHub Apps (see the module docstring).

    ``clients`` in the configured order (ties go to the first); ``checks_app`` is the
    App whose webhook this service receives (default: the first). ``rate_limits`` is
    the REST core's, shared by every client.
    """

    def __init__(
        self,
        clients: Sequence[GitHubAppClient],
        *,
        rate_limits: RateLimits,
        clock: Clock,
        checks_app: int | None = None,
        telemetry: AppTelemetry | None = None,
        max_installations: int = 10_000,
    ) -> None:
        if not clients:
            raise ValueError("GitHubApps: at least one App")
        self._clients: dict[int, GitHubAppClient] = {c.app_id: c for c in clients}
        if len(self._clients) != len(clients):
            raise ValueError("GitHubApps: App ids must be distinct")
        first = next(iter(self._clients))
        if checks_app is not None and checks_app not in self._clients:
            raise ValueError(f"GitHubApps: checks App {checks_app} is not one of the Apps")
        self._checks = self._clients[first if checks_app is None else checks_app]
        self._single = clients[0] if len(clients) == 1 else None
        self._limits = rate_limits
        self._clock = clock
        self._telemetry: AppTelemetry = telemetry or NoAppTelemetry()
        # installation id -> (app id, owner lower-cased): what a mint names, as lookups found it.
        self._where: OrderedDict[int, tuple[int, str]] = OrderedDict()
        self._max = max_installations

    def __repr__(self) -> str:
        return f"GitHubApps(apps={list(self._clients)}, checks_app={self._checks.app_id})"

    @property
    def app_ids(self) -> tuple[int, ...]:
        return tuple(self._clients)

    def budgets(self) -> tuple[tuple[int, Budget], ...]:
        """Each App's id and its own budget (what ``adapters.shared_quota`` shares)."""
        return tuple((c.app_id, c.app_budget) for c in self._clients.values())

    @property
    def checks_app(self) -> GitHubAppClient:
        """The App whose webhook delivers events: its check runs are made with it alone."""
        return self._checks

    def app_rate_limited(self) -> bool:
        """Whether GitHub holds every App's own budget (no lookup or mint can be made): the
        ``octosts.github`` health detail."""
        return all(c.app_rate_limited() for c in self._clients.values())

    async def settle(self, within: float) -> int:
        """Every App's ``GitHubAppClient.settle``; returns how many mints are left unsettled."""
        left = await asyncio.gather(*(c.settle(within) for c in self._clients.values()))
        return sum(left)

    # -- GitHubApp -------------------------------------------------------------------------

    async def installation_id(self, owner: str) -> int:
        """The installation, for ``owner``, of the App with the most quota left.

        Raises InvalidRequest (bad owner syntax), NoInstallation (no App installed there),
        RateLimited (every App installed there is held), GitHubUnavailable, StsError.
        """
        if self._single is not None:
            return await self._single.installation_id(owner)
        if not is_owner_name(owner):
            raise InvalidRequest(f"invalid GitHub owner name {show(owner, 50)}")
        ruled_out: dict[int, float | None] = {}  # this call's findings: not installed / held
        for _ in range(2 * len(self._clients)):
            now = self._clock.now()
            candidates = [self._looked_up(a, owner, now, ruled_out) for a in self._clients]
            choice = choose_app(candidates, now)
            if choice.app_id is None:
                raise self._none_left(owner, choice, self._app_budget)
            client = self._clients[choice.app_id]
            try:
                installation = await client.installation_id(owner)
            except NoInstallation:
                ruled_out[client.app_id] = None
                continue
            except RateLimited as exc:
                ruled_out[client.app_id] = now + (exc.retry_after or 0.0)
                continue
            self._remember(installation, client.app_id, owner)
            return installation
        raise self._none_left(owner, Choice(), self._app_budget)

    async def read_file(
        self, installation_id: int, owner: str, repo: str, path: str, etag: str | None = None
    ) -> FileRead:
        """``GitHubAppClient.read_file`` with the App of ``installation_id``, or another App
        installed for ``owner`` whose installation has more quota left. Raises as it does, and
        RateLimited when every such installation is held."""
        if self._single is not None:
            return await self._single.read_file(installation_id, owner, repo, path, etag)

        async def read(client: GitHubAppClient, installation: int) -> FileRead:
            return await client.read_file(installation, owner, repo, path, etag)

        return await self._routed(installation_id, owner, "installation", read)

    async def mint(
        self, installation_id: int, permissions: Mapping[str, str], repositories: Sequence[str]
    ) -> MintedToken:
        """``GitHubAppClient.mint`` with the App of ``installation_id`` or, when another App
        installed for the same owner has more quota left, that App. Raises as it does, and
        RateLimited when every such App is held."""
        if self._single is not None:
            minted = await self._single.mint(installation_id, permissions, repositories)
        else:
            where = self._where.get(installation_id)

            async def mint(client: GitHubAppClient, installation: int) -> MintedToken:
                return await client.mint(installation, permissions, repositories)

            owner = where[1] if where is not None else None
            if owner is not None and is_pinned(permissions):
                minted = await self._pinned(owner, mint)
            else:
                minted = await self._routed(installation_id, owner, "app", mint)
        if minted.app_id is not None:
            self._telemetry.app_minted(minted.app_id)
        return minted

    # -- routing ---------------------------------------------------------------------------

    async def _routed(
        self,
        installation_id: int,
        owner: str | None,
        spends: Spends,
        call: Callable[[GitHubAppClient, int], Awaitable[T]],
    ) -> T:
        """``call`` on the best of the Apps known to be installed for ``owner`` (the one of
        ``installation_id`` included), moving on from each that turns out to be held."""
        app = self._app_of(installation_id, owner)
        if owner is None or app is None:
            # Not one the pool handed out (or forgotten): its App is not known here.
            return await call(app or self._checks, installation_id)
        installed = self._installed(owner, app.app_id, installation_id)
        held: dict[int, float | None] = {}
        for _ in range(len(installed)):
            now = self._clock.now()
            candidates = [
                self._candidate(app_id, inst, spends, now, held)
                for app_id, inst in installed.items()
            ]
            choice = choose_app(candidates, now)
            if choice.app_id is None:
                break
            try:
                return await call(self._clients[choice.app_id], installed[choice.app_id])
            except RateLimited as exc:
                held[choice.app_id] = now + (exc.retry_after or 0.0)
        now = self._clock.now()
        candidates = [
            self._candidate(app_id, inst, spends, now, held) for app_id, inst in installed.items()
        ]

        def budget(app_id: int) -> Budget:
            return self._budget(app_id, installed[app_id], spends)

        raise self._none_left(owner, choose_app(candidates, now), budget)

    async def _pinned(self, owner: str, call: Callable[[GitHubAppClient, int], Awaitable[T]]) -> T:
        """``call`` on the first App of ``pinned_app_order`` installed for ``owner``, whatever
        its quota (see ``is_pinned``). Raises NoInstallation when none is, and what the lookup
        and ``call`` raise (RateLimited when that App is held)."""
        for app_id in pinned_app_order(tuple(self._clients), self._checks.app_id):
            client = self._clients[app_id]
            try:
                installation = await client.installation_id(owner)
            except NoInstallation:
                continue
            self._remember(installation, app_id, owner)
            return await call(client, installation)
        raise self._none_left(owner, Choice(), self._app_budget)

    def _installed(self, owner: str, app_id: int, installation_id: int) -> dict[int, int]:
        """App id -> installation id, for every App known to be installed for ``owner``."""
        found = {app_id: installation_id}
        for other, client in self._clients.items():
            known = client.known_installation(owner)
            if other != app_id and not isinstance(known, bool) and known is not None:
                found[other] = known
        return {a: found[a] for a in self._clients if a in found}  # in the configured order

    def _budget(self, app_id: int, installation: int, spends: Spends) -> Budget:
        return self._clients[app_id].app_budget if spends == "app" else Budget(installation)

    def _app_budget(self, app_id: int) -> Budget:
        return self._clients[app_id].app_budget

    def _candidate(
        self,
        app_id: int,
        installation: int,
        spends: Spends,
        now: float,
        held: Mapping[int, float | None],
    ) -> Candidate:
        quota = self._limits.quota(self._budget(app_id, installation, spends), now)
        held_until = _later(quota.held_until, held.get(app_id))
        return Candidate(app_id, installed=True, remaining=quota.remaining, held_until=held_until)

    def _looked_up(
        self, app_id: int, owner: str, now: float, ruled_out: Mapping[int, float | None]
    ) -> Candidate:
        client = self._clients[app_id]
        known = client.known_installation(owner)
        installed = None if known is None else known is not False
        if app_id in ruled_out and ruled_out[app_id] is None:
            installed = False
        quota = self._limits.quota(client.app_budget, now)
        return Candidate(
            app_id, installed, quota.remaining, _later(quota.held_until, ruled_out.get(app_id))
        )

    def _none_left(
        self, owner: str, choice: Choice, budget_of: Callable[[int], Budget]
    ) -> StsError:
        """What ``choice`` (no App) means: NoInstallation, or RateLimited until the first hold
        lifts (its kind names the reason; ``budget_of`` gives an App's budget here)."""
        apps = ", ".join(str(a) for a in self._clients)
        if choice.retry_after is None:
            return NoInstallation(f"none of the GitHub Apps ({apps}) is installed for {owner!r}")
        hold = None
        if choice.lifts_first is not None:
            hold = self._limits.hold_of(budget_of(choice.lifts_first), self._clock.now())
        kind = hold.kind if hold is not None else "secondary"
        return RateLimited(
            f"every GitHub App installed for {owner!r} is rate-limited (Apps {apps});"
            f" retry after {math.ceil(choice.retry_after)} s",
            reason=f"rate_limited_{kind}",
            retry_after=choice.retry_after,
        )

    def _app_of(self, installation_id: int, owner: str | None) -> GitHubAppClient | None:
        """The App ``installation_id`` belongs to, as lookups found it; None if not known."""
        where = self._where.get(installation_id)
        if where is not None:
            return self._clients[where[0]]
        if owner is not None:
            for client in self._clients.values():
                if client.known_installation(owner) == installation_id:
                    return client
        return None

    def _remember(self, installation_id: int, app_id: int, owner: str) -> None:
        self._where[installation_id] = (app_id, owner.lower())
        self._where.move_to_end(installation_id)
        while len(self._where) > self._max:
            self._where.popitem(last=False)


def _later(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else max(a, b)
