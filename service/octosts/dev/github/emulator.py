"""``GitHubEmulator``: the parts of the package put together behind one object.

A request goes: control endpoints aside, the base latency, the fault rule that fires (its
latency, then its answer), authentication, the route table (rate limit checked there), then
``x-ratelimit-*`` headers and the call log.
"""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from octosts.dev.github.answers import Answer, HttpError, hang_up
from octosts.dev.github.auth import ANONYMOUS, App, authenticate
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
    SECONDARY_LIMIT_MESSAGE,
    Fault,
    Faults,
    RateLimits,
)
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
        fail_rate: float = 0.0,
        seed: int | None = None,
        user_owners: frozenset[str] = frozenset(),
        installation_permissions: Mapping[str, str] = DEFAULT_INSTALLATION_PERMISSIONS,
        clock: Clock | None = None,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self.app = App(app_id, app_public_key, dict(installation_permissions))
        self.repos = Repos()
        self.ledger = TokenLedger(max_tokens)
        self.limits = RateLimits(rate_limit, self._clock)
        self.faults = Faults(self._clock, latency_ms=latency_ms, fail_rate=fail_rate, seed=seed)
        self.webhooks = WebhookSender()
        self._calls = CallLog()
        self._control = Control(self._calls, self.faults, self.ledger, self._clock, self.reset)
        self._router = Router(ROUTES)
        self._context = Context(
            self.app, self.repos, self.ledger, self.limits, self._clock, lambda: self.url
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
        return self.limits.limit

    @rate_limit.setter
    def rate_limit(self, value: int) -> None:
        self.limits.limit = value

    # -- repository state ------------------------------------------------------------------

    def add_owner(self, login: str, *, is_user: bool = False) -> int:
        """Register an owner (one installation); returns its installation id."""
        return self.repos.add_owner(login, is_user=is_user)

    def remove_owner(self, login: str) -> None:
        """Uninstall the app from an owner (its installation answers 404 afterwards)."""
        self.repos.remove_owner(login)

    def add_repo(self, owner: str, repo: str) -> None:
        self.repos.add_repo(owner, repo)

    def owners(self) -> Iterator[tuple[str, int, bool]]:
        """(login, installation id, is_user) for every owner, by installation id."""
        for owner in self.repos.owners():
            yield owner.login, owner.installation_id, owner.is_user

    def installation_id(self, owner: str) -> int | None:
        record = self.repos.owner(owner)
        return record.installation_id if record else None

    def set_file(self, owner: str, repo: str, path: str, content: bytes | str) -> None:
        """Create or replace a file on the default branch (creating owner and repo)."""
        self.repos.set_file(owner, repo, path, content)

    def delete_file(self, owner: str, repo: str, path: str) -> None:
        self.repos.delete_file(owner, repo, path)

    def get_file(self, owner: str, repo: str, path: str) -> bytes | None:
        return self.repos.get_file(owner, repo, path)

    # -- commits, pull requests, webhooks ---------------------------------------------------

    def configure_webhook(self, url: str, secrets: tuple[str, ...] | str) -> None:
        """Send deliveries to ``url``, signed with the first of ``secrets``. Raises ValueError."""
        self.webhooks.configure(url, secrets)

    def deliveries(self) -> list[Delivery]:
        return self.webhooks.deliveries()

    def send_event(self, event: str, payload: dict[str, Any]) -> None:
        """Queue an arbitrary signed delivery (e.g. ``check_suite``, ``ping``)."""
        self.webhooks.enqueue(event, payload)

    def check_runs(
        self, owner: str, repo: str, head_sha: str | None = None
    ) -> list[dict[str, Any]]:
        """Check runs created in a repository (optionally for one commit), oldest first."""
        return self.repos.check_runs(owner, repo, head_sha)

    def head(self, owner: str, repo: str, branch: str = DEFAULT_BRANCH) -> str:
        """The head commit of a branch (creating an initial commit for ``main``)."""
        return self.repos.head(owner, repo, branch)

    def _context_of(self, owner: str, repo: str, sender: str, sender_type: str) -> dict[str, Any]:
        return event_context(owner, repo, self.installation_id(owner), sender, sender_type)

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
        context = self._context_of(owner, repo, sender, sender_type)
        self.webhooks.enqueue("push", push_payload(branch, pushed, context))
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
        context = self._context_of(owner, repo, sender, sender_type)
        self.webhooks.enqueue("pull_request", pull_request_payload(owner, repo, pull, context))
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
        self.webhooks.stop()
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
            principal = authenticate(headers, self.app, self.ledger, self._clock.now())
            answer = self._router.dispatch(
                self._context, method, path, parts.query, headers, body, principal
            )
        except HttpError as err:
            answer = err.answer()
        # Conditional hits and GET /rate_limit cost nothing, as on GitHub.
        free = answer.status == HTTPStatus.NOT_MODIFIED or path == "/rate_limit"
        self.limits.stamp(answer, principal.budget, count=not free)
        answer.headers.setdefault("x-github-request-id", secrets.token_hex(8).upper())
        self._calls.append(Call(method, path, answer.status, principal.kind, self._clock.now()))
        return answer
