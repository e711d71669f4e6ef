"""``GitHubEmulator``: the parts of the package put together behind one object.

A request goes: control endpoints aside, the base latency, the fault rule that fires (its
latency, then its answer), authentication, the route table (rate limit checked there), then
``x-ratelimit-*`` headers and the call log.

Several Apps ([fleet]): the App given to the constructor is the first, installed on every
owner; ``add_app`` adds more, each with its own key, installations (every owner, or the ones
named), primary rate limit (its JWT's budget and each of its installations') and webhook.
"""

from __future__ import annotations

import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from octosts.dev.github.answers import Answer, HttpError, hang_up
from octosts.dev.github.auth import ANONYMOUS, APP_SLUG, App, authenticate
from octosts.dev.github.control import PREFIX, Call, CallLog, Control, control_answer
from octosts.dev.github.deliveries import (
    Delivery,
    WebhookSender,
    event_context,
    pull_request_payload,
    push_payload,
)
from octosts.dev.github.ledger import MAX_TOKENS, TokenLedger, TokenState
from octosts.dev.github.limits import (
    PRIMARY_LIMIT_MESSAGE,
    RATE_WINDOW,
    SECONDARY_LIMIT_MESSAGE,
    Fault,
    Faults,
    RateLimits,
)
from octosts.dev.github.manifests import ManifestFlow, NewApp, slug_of
from octosts.dev.github.routes import ROUTES
from octosts.dev.github.routing import Context, Router
from octosts.dev.github.server import EmulatorServer
from octosts.dev.github.state import DEFAULT_BRANCH, Pull, Repos
from octosts.domain.ports import SystemClock

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from octosts.domain.ports import Clock

# What the emulated app may grant in every installation. ``administration`` is
# read-only so a test can ask for more than the installation has (422).
DEFAULT_INSTALLATION_PERMISSIONS: Mapping[str, str] = {
    "actions": "write",
    "administration": "read",
    "checks": "write",
    "contents": "write",
    "deployments": "write",
    "environments": "write",
    "issues": "write",
    "members": "read",
    "metadata": "read",
    "packages": "write",
    "pages": "write",
    "pull_requests": "write",
    "statuses": "write",
    "workflows": "write",
}


class GitHubEmulator:
    """The emulator's state and HTTP server. Thread-safe; use ``start``/``stop`` or ``with``."""

    def __init__(  # noqa: PLR0913 - keyword-only knobs of a dev server
        self,
        *,
        app_public_key: rsa.RSAPublicKey,
        app_id: int = 1,
        repos_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_dir: Path | None = None,
        latency_ms: int = 0,
        rate_limit: int = 5000,
        rate_window: int = RATE_WINDOW,
        fail_rate: float = 0.0,
        seed: int | None = None,
        user_owners: frozenset[str] = frozenset(),
        installation_permissions: Mapping[str, str] = DEFAULT_INSTALLATION_PERMISSIONS,
        clock: Clock | None = None,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self.app = App(app_id, app_public_key, dict(installation_permissions))
        self.apps: dict[int, App] = {app_id: self.app}  # by id, the first one first
        self._app_limits: dict[int, int] = {}
        self._manifest_lock = threading.Lock()  # an App's own rate limit, if it has one
        self.repos = Repos()
        self.repos.auto_install(app_id)
        self.ledger = TokenLedger(max_tokens)
        self.limits = RateLimits(rate_limit, self._clock, rate_window)
        self.limits.limit_of = self._limit_of
        self.faults = Faults(self._clock, latency_ms=latency_ms, fail_rate=fail_rate, seed=seed)
        self.webhooks = WebhookSender(app_id)
        self._app_webhooks: dict[int, WebhookSender] = {app_id: self.webhooks}
        self._calls = CallLog()
        self._control = Control(
            self._calls, self.faults, self.ledger, self._clock, self.reset, self.describe_apps
        )
        self._router = Router(ROUTES)
        self.manifests = ManifestFlow(self._app_from_manifest, self._clock, lambda: self.url)
        self._context = Context(
            self.apps,
            self.repos,
            self.ledger,
            self.limits,
            self._clock,
            lambda: self.url,
            self.manifests,
        )
        self._host, self._port, self._tls_dir = host, port, tls_dir
        self._server: EmulatorServer | None = None
        self.ca_cert: Path | None = None  # the CA of the HTTPS certificate, once started
        if repos_dir is not None:
            self.repos.load(repos_dir, user_owners)
        else:
            for login in sorted(user_owners):
                self.add_owner(login, is_user=True)

    # -- knobs tests turn at run time -------------------------------------------------------

    @property
    def app_id(self) -> int:
        return self.app.app_id

    @property
    def latency_ms(self) -> int:
        return self.faults.latency_ms

    @latency_ms.setter
    def latency_ms(self, value: int) -> None:
        self.faults.latency_ms = value

    @property
    def fail_rate(self) -> float:
        return self.faults.fail_rate

    @fail_rate.setter
    def fail_rate(self, value: float) -> None:
        self.faults.fail_rate = value

    @property
    def rate_limit(self) -> int:
        """Requests per window of every budget without a limit of its own."""
        return self.limits.limit

    @rate_limit.setter
    def rate_limit(self, value: int) -> None:
        self.limits.limit = value

    # -- Apps ------------------------------------------------------------------------------

    def add_app(
        self,
        app_id: int,
        public_key: rsa.RSAPublicKey,
        *,
        rate_limit: int | None = None,
        owners: Iterable[str] | None = None,
        permissions: Mapping[str, str] = DEFAULT_INSTALLATION_PERMISSIONS,
        slug: str | None = None,
    ) -> App:
        """Serve another App: installed on every owner (``owners`` None, also those added
        later) or on the ``owners`` named (created if new); ``rate_limit`` requests per window
        for its JWT and for each of its installations (None: ``rate_limit`` of the emulator).
        Raises ValueError for an id already served or a limit below 1."""
        if app_id in self.apps or app_id < 1:
            raise ValueError(f"app id {app_id} is taken or not positive")
        app = App(app_id, public_key, dict(permissions), slug or f"{APP_SLUG}-{app_id}")
        self.apps[app_id] = app
        self.set_app_rate_limit(app_id, rate_limit)
        self._app_webhooks[app_id] = WebhookSender(app_id)
        if owners is None:
            self.repos.auto_install(app_id)
        else:
            for login in owners:
                self.repos.install(login, app_id)
        return app

    def _app_from_manifest(
        self, new: NewApp, public_key: rsa.RSAPublicKey
    ) -> tuple[App, str | None]:
        """Serve the App a manifest conversion creates (``manifests``): the next free id, on
        every owner, with the manifest's permissions and webhook. Returns it and its webhook
        secret."""
        with self._manifest_lock:
            app_id = max(self.apps) + 1
            taken = {app.slug for app in self.apps.values()}
            slug = slug_of(new.name)
            app = self.add_app(
                app_id,
                public_key,
                permissions=new.permissions,
                slug=slug if slug not in taken else f"{slug}-{app_id}",
            )
        if new.webhook_url is None:
            return app, None
        secret = secrets.token_hex(20)
        self.configure_webhook(new.webhook_url, secret, app_id=app_id)
        return app, secret

    def set_app_rate_limit(self, app_id: int, rate_limit: int | None) -> None:
        """Give an App a primary rate limit of its own (None: the emulator's). Raises ValueError."""
        if rate_limit is None:
            self._app_limits.pop(app_id, None)
        elif rate_limit < 1:
            raise ValueError("rate_limit must be at least 1")
        else:
            self._app_limits[app_id] = rate_limit

    def _limit_of(self, budget: str) -> int | None:
        kind, _, number = budget.partition(":")
        if not number.isdigit():
            return None
        if kind == "app":
            return self._app_limits.get(int(number))
        found = self.repos.installation(int(number))
        return None if found is None else self._app_limits.get(found[1])

    def install(self, owner: str, app_id: int | None = None) -> int:
        """Install an App (the first one by default) on ``owner``; returns the installation id."""
        return self.repos.install(owner, self._app(app_id).app_id)

    def uninstall(self, owner: str, app_id: int | None = None) -> None:
        """Remove an App's installation from ``owner`` (its id answers 404 afterwards)."""
        self.repos.uninstall(owner, self._app(app_id).app_id)

    def _app(self, app_id: int | None) -> App:
        if app_id is None:
            return self.app
        if app_id not in self.apps:
            raise KeyError(f"no App {app_id}")
        return self.apps[app_id]

    def describe_apps(self) -> list[dict[str, Any]]:
        """Every App: id, slug, installations (owner -> id) and its JWT's ``core`` budget."""
        owners = list(self.repos.owners())
        return [
            {
                "id": app.app_id,
                "slug": app.slug,
                "installations": {
                    o.login: o.installations[app.app_id]
                    for o in owners
                    if app.app_id in o.installations
                },
                "core": self.limits.core(f"app:{app.app_id}"),
            }
            for app in self.apps.values()
        ]

    # -- repository state ------------------------------------------------------------------

    def add_owner(self, login: str, *, is_user: bool = False) -> int | None:
        """Register an owner; returns the first App's installation id there (every owner has
        one unless it was uninstalled)."""
        return self.repos.add_owner(login, is_user=is_user).installations.get(self.app.app_id)

    def remove_owner(self, login: str) -> None:
        """Remove an owner and every App's installation on it (they answer 404 afterwards)."""
        self.repos.remove_owner(login)

    def add_repo(self, owner: str, repo: str) -> None:
        self.repos.add_repo(owner, repo)

    def owners(self, app_id: int | None = None) -> Iterator[tuple[str, int, bool]]:
        """(login, installation id, is_user) for every owner an App (the first one by default)
        is installed on, by installation id."""
        app = self._app(app_id).app_id
        installed = [o for o in self.repos.owners() if app in o.installations]
        for owner in sorted(installed, key=lambda o: o.installations[app]):
            yield owner.login, owner.installations[app], owner.is_user

    def installation_id(self, owner: str, app_id: int | None = None) -> int | None:
        """An App's (the first one by default) installation id on ``owner``, or None."""
        record = self.repos.owner(owner)
        return record.installations.get(self._app(app_id).app_id) if record else None

    def set_file(self, owner: str, repo: str, path: str, content: bytes | str) -> None:
        """Create or replace a file on the default branch (creating owner and repo)."""
        self.repos.set_file(owner, repo, path, content)

    def delete_file(self, owner: str, repo: str, path: str) -> None:
        self.repos.delete_file(owner, repo, path)

    def get_file(self, owner: str, repo: str, path: str) -> bytes | None:
        return self.repos.get_file(owner, repo, path)

    # -- commits, pull requests, webhooks ---------------------------------------------------

    def configure_webhook(
        self, url: str, secrets: tuple[str, ...] | str, *, app_id: int | None = None
    ) -> None:
        """Send an App's (the first one by default) deliveries to ``url``, signed with the first
        of ``secrets``. Raises ValueError, KeyError (no such App)."""
        self._app_webhooks[self._app(app_id).app_id].configure(url, secrets)

    def deliveries(self, app_id: int | None = None) -> list[Delivery]:
        """Deliveries sent by one App's webhook, or (None) by every App's."""
        if app_id is not None:
            return self._app_webhooks[self._app(app_id).app_id].deliveries()
        return [d for sender in self._app_webhooks.values() for d in sender.deliveries()]

    def send_event(self, event: str, payload: dict[str, Any]) -> None:
        """Queue an arbitrary signed delivery (e.g. ``check_suite``, ``ping``) on the first
        App's webhook."""
        self.webhooks.enqueue(event, payload)

    def _deliver(
        self,
        owner: str,
        repo: str,
        event: str,
        payload: Callable[[dict[str, Any]], dict[str, Any]],
        sender: str,
        sender_type: str,
    ) -> None:
        """Queue ``event`` on the webhook of every App installed on ``owner``, each with its own
        installation in the payload (``payload`` builds it from the event context)."""
        for app_id, webhook in self._app_webhooks.items():
            installation = self.installation_id(owner, app_id)
            if installation is None:
                continue  # an App hears nothing from where it is not installed
            context = event_context(owner, repo, installation, sender, sender_type)
            webhook.enqueue(event, payload(context))

    def check_runs(
        self, owner: str, repo: str, head_sha: str | None = None
    ) -> list[dict[str, Any]]:
        """Check runs created in a repository (optionally for one commit), oldest first."""
        return self.repos.check_runs(owner, repo, head_sha)

    def head(self, owner: str, repo: str, branch: str = DEFAULT_BRANCH) -> str:
        """The head commit of a branch (creating an initial commit for ``main``)."""
        return self.repos.head(owner, repo, branch)

    def commit(
        self,
        owner: str,
        repo: str,
        changes: Mapping[str, bytes | str | None],
        *,
        branch: str = DEFAULT_BRANCH,
        sender: str = "octocat",
        sender_type: str = "User",
    ) -> str:
        """Commit file changes (None deletes) to a branch and send a ``push`` delivery.

        Commits to ``main`` change what the contents API serves. Returns the sha.
        """
        pushed = self.repos.commit(owner, repo, changes, branch)
        self._deliver(
            owner, repo, "push", lambda c: push_payload(branch, pushed, c), sender, sender_type
        )
        return pushed.sha

    def open_pull_request(
        self,
        owner: str,
        repo: str,
        changes: Mapping[str, bytes | str | None],
        *,
        sender: str = "octocat",
        sender_type: str = "User",
    ) -> tuple[int, str]:
        """Commit ``changes`` on a new branch, open a PR into ``main`` and send
        ``pull_request`` (opened). Returns (number, head sha)."""
        number = self.repos.next_pull_number(owner, repo)
        base = self.head(owner, repo)
        branch = f"pr-{number}"
        self.repos.branch_from(owner, repo, branch, base)
        head = self.commit(
            owner, repo, changes, branch=branch, sender=sender, sender_type=sender_type
        )
        pull = Pull(number, branch, base, head)
        self.repos.add_pull(owner, repo, pull)
        self._deliver(
            owner,
            repo,
            "pull_request",
            lambda c: pull_request_payload(owner, repo, pull, c),
            sender,
            sender_type,
        )
        return number, head

    # -- test hooks ------------------------------------------------------------------------

    def calls(self) -> list[Call]:
        return self._calls.list()

    def count(self, method: str, path_prefix: str = "") -> int:
        """How many answered calls match ``method`` and start with ``path_prefix``."""
        return sum(1 for c in self.calls() if c.method == method and c.path.startswith(path_prefix))

    def reset(self) -> None:
        """Forget the call log, rate-limit budgets and fault rules (tokens stay valid)."""
        self._calls.clear()
        self.limits.clear()
        self.faults.clear()

    def add_fault(
        self, fault: Fault, times: int | None = None, seconds: float | None = None
    ) -> int:
        """Put a fault rule in force (see ``limits.Fault``); returns its id for ``remove_fault``."""
        return self.faults.add(fault, times, seconds)

    def remove_fault(self, rule_id: int) -> bool:
        return self.faults.remove(rule_id)

    def inject(self, fault: Fault, times: int = 1) -> int:
        """Answer the next ``times`` matching requests with ``fault``."""
        return self.faults.add(fault, times)

    def force_error(self, status: int = 502, times: int = 1, path_prefix: str = "") -> int:
        return self.inject(Fault(status, "Server Error", path_prefix=path_prefix), times)

    def force_secondary_limit(
        self,
        status: int = 403,
        retry_after: int | None = 60,
        times: int = 1,
        path_prefix: str = "",
    ) -> int:
        fault = Fault(
            status, SECONDARY_LIMIT_MESSAGE, retry_after=retry_after, path_prefix=path_prefix
        )
        return self.inject(fault, times)

    def force_primary_limit(
        self, reset_in: int = 60, status: int = 403, path_prefix: str = ""
    ) -> int:
        """``x-ratelimit-remaining: 0`` on matching requests until ``reset_in`` seconds from now."""
        fault = Fault(
            status, PRIMARY_LIMIT_MESSAGE, exhaust=True, reset_in=reset_in, path_prefix=path_prefix
        )
        return self.faults.add(fault, seconds=reset_in or None)

    def force_forbidden(self, times: int = 1, path_prefix: str = "") -> int:
        """A plain permission 403 (rate-limit headers show budget left)."""
        fault = Fault(403, "Resource not accessible by integration", path_prefix=path_prefix)
        return self.inject(fault, times)

    def tokens(self, state: TokenState | None = None) -> list[dict[str, Any]]:
        """The token ledger (see ``ledger.TokenLedger.entries``), optionally one state only."""
        return self.ledger.entries(self._clock.now(), state)

    def token_grant(self, token: str) -> Mapping[str, Any] | None:
        """What a token issued here may do (for assertions), or None."""
        grant = self.ledger.peek(token)
        return None if grant is None else grant.describe()

    # -- server ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return self._server.url

    def start(self) -> Self:
        self._server = EmulatorServer(self.handle, self._host, self._port, self._tls_dir)
        self._server.start()
        self.ca_cert = self._server.ca_cert
        return self

    def stop(self) -> None:
        for webhook in self._app_webhooks.values():
            webhook.stop()
        if self._server is not None:
            self._server.stop()
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling (called from handler threads) ---------------------------------

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """Answer one request (``headers`` with lower-cased names), as the server does."""
        parts = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(parts.path)
        if path.startswith(PREFIX):
            return control_answer(method, path, parts.query, body, self._control)
        firing = self.faults.take(method, path)
        self.faults.delay(firing.fault.latency_ms if firing else 0)
        if firing is not None and firing.fault.disconnect:
            self._calls.append(Call(method, path, 0, "none", self._clock.now()))
            return hang_up()
        principal = ANONYMOUS
        try:
            if firing is not None and firing.fault.status is not None:
                raise firing.fault.error(firing.added_at)
            principal = authenticate(headers, self.apps, self.ledger, self._clock.now())
            answer = self._router.dispatch(
                self._context, method, path, parts.query, headers, body, principal
            )
        except HttpError as err:
            answer = err.answer()
        # Conditional hits and GET /rate_limit cost nothing, as on GitHub.
        free = answer.status == HTTPStatus.NOT_MODIFIED or path == "/rate_limit"
        self.limits.stamp(answer, principal.budget, count=not free)
        answer.headers.setdefault("x-github-request-id", secrets.token_hex(8).upper())
        self._calls.append(
            Call(method, path, answer.status, principal.kind, self._clock.now(), principal.app_id)
        )
        return answer
