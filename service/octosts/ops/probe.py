"""Probers: synthetic exchanges whose answer is known, run against a live deployment.

As the original service ships a prober and a negative prober, one run has two checks, each
optional, with the same OIDC token (the prober's own workload identity):

``positive``  an exchange that must be allowed with exactly the expected permissions; the
              token is then revoked (``DELETE /installation/token``), which also proves
              GitHub honours it (a token GitHub answers 401 for fails the check).
``negative``  an exchange that must be refused (``PERMISSION_DENIED``): a policy exists for
              the identity but does not match the prober's token. Allowed is the alarm this
              check exists for; a token minted anyway is revoked at once.

A check that fails records why (``problem``) and, when the client raised, the error, from
which the CLI derives its exit code (``cli.probe``). Results never carry a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from octosts.client import (
    Client,
    ClientError,
    ExchangeError,
    ExchangeResult,
    Forbidden,
    RevokeError,
    TokenSource,
)

POSITIVE = "positive"
NEGATIVE = "negative"
# GitHub answers a revocation of a token it does not honour with these.
_NOT_HONOURED = frozenset({401, 403, 404})


@dataclass(frozen=True, slots=True)
class Target:
    """One exchange the prober asks for: a scope (or several repositories) and an identity."""

    scopes: tuple[str, ...]
    identity: str


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """What is probed and what must come of it."""

    positive: Target | None
    negative: Target | None
    expected: Mapping[str, str] = field(default_factory=dict)  # the positive's permissions
    audience: str | None = None

    def __post_init__(self) -> None:
        if self.positive is None and self.negative is None:
            raise ValueError("nothing to probe: give a positive or a negative check")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome. ``error``: the client error behind a failure (None when the
    service answered, but wrongly)."""

    check: str
    target: Target
    passed: bool
    duration: float
    problem: str | None = None
    error: ClientError | None = None
    permissions: Mapping[str, str] | None = None  # what was granted, if anything
    revoked: bool | None = None  # whether a token minted was revoked

    def to_json(self, expected: Mapping[str, str]) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "check": self.check,
            "result": "pass" if self.passed else "fail",
            "scope": ",".join(self.target.scopes),
            "identity": self.target.identity,
            "duration_seconds": round(self.duration, 4),
        }
        if self.problem is not None:
            shown["problem"] = self.problem
        if isinstance(self.error, ExchangeError):
            shown["code"] = self.error.code
            shown["reason"] = self.error.reason
            shown["request_id"] = self.error.request_id
        if self.permissions is not None:
            shown["permissions"] = dict(self.permissions)
            if self.check == POSITIVE:
                shown["expected_permissions"] = dict(expected)
        if self.revoked is not None:
            shown["revoked"] = self.revoked
        return shown


@dataclass(frozen=True, slots=True)
class ProbeReport:
    endpoint: str
    started_at: datetime
    checks: tuple[CheckResult, ...]
    expected: Mapping[str, str]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "result": "pass" if self.passed else "fail",
            "time": self.started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "endpoint": self.endpoint,
            "checks": [check.to_json(self.expected) for check in self.checks],
        }


class Prober:
    """Runs the checks of ``spec``; ``client`` makes a fresh client per run (connection set-up
    is part of what a user sees), ``revoke`` gives a token back to GitHub."""

    def __init__(
        self,
        spec: ProbeSpec,
        *,
        endpoint: str,
        client: Callable[[], Client],
        token_source: TokenSource,
        revoke: Callable[[str], None],
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._spec = spec
        self._endpoint = endpoint
        self._client = client
        self._source = token_source
        self._revoke = revoke
        self._monotonic = monotonic
        self._now = now

    def run(self) -> ProbeReport:
        started = self._now()
        checks: list[CheckResult] = []
        try:
            # One token for both checks: the negative must be refused to this very workload.
            bearer: str | ClientError = self._source.token(self._spec.audience)
        except ClientError as exc:
            bearer = exc
        with self._client() as client:
            if self._spec.positive is not None:
                checks.append(self._timed(POSITIVE, self._spec.positive, client, bearer))
            if self._spec.negative is not None:
                checks.append(self._timed(NEGATIVE, self._spec.negative, client, bearer))
        return ProbeReport(self._endpoint, started, tuple(checks), self._spec.expected)

    def _timed(
        self, check: str, target: Target, client: Client, bearer: str | ClientError
    ) -> CheckResult:
        start = self._monotonic()
        if isinstance(bearer, ClientError):
            outcome = _Outcome(problem=f"no OIDC token: {bearer}", error=bearer)
        elif check == POSITIVE:
            outcome = self._positive(target, client, bearer)
        else:
            outcome = self._negative(target, client, bearer)
        return CheckResult(
            check,
            target,
            outcome.problem is None,
            self._monotonic() - start,
            outcome.problem,
            outcome.error,
            outcome.permissions,
            outcome.revoked,
        )

    def _exchange(self, target: Target, client: Client, bearer: str) -> ExchangeResult:
        return client.exchange(
            list(target.scopes), target.identity, audience=self._spec.audience, token=bearer
        )

    def _positive(self, target: Target, client: Client, bearer: str) -> _Outcome:
        try:
            result = self._exchange(target, client, bearer)
        except ClientError as exc:
            return _Outcome(problem=f"exchange failed: {exc}", error=exc)
        granted = dict(result.permissions)
        revoke_problem, revoke_error = self._give_back(result.token)
        outcome = _Outcome(permissions=granted, revoked=revoke_problem is None)
        if granted != dict(self._spec.expected):
            outcome.problem = f"permissions differ: {_difference(self._spec.expected, granted)}"
        elif revoke_problem is not None:
            outcome.problem, outcome.error = revoke_problem, revoke_error
        return outcome

    def _negative(self, target: Target, client: Client, bearer: str) -> _Outcome:
        try:
            result = self._exchange(target, client, bearer)
        except Forbidden as exc:
            return _Outcome(error=exc)  # refused: the pass, with the service's code and reason
        except ClientError as exc:
            return _Outcome(problem=f"not refused by policy: {exc}", error=exc)
        revoke_problem, _ = self._give_back(result.token)
        return _Outcome(
            problem="exchange unexpectedly allowed",
            permissions=dict(result.permissions),
            revoked=revoke_problem is None,
        )

    def _give_back(self, token: str) -> tuple[str | None, ClientError | None]:
        """Revoke ``token``: (None, None), or why not and the error behind it (None: GitHub
        does not honour the token, a wrong answer rather than an outage)."""
        try:
            self._revoke(token)
        except RevokeError as exc:
            if exc.status in _NOT_HONOURED:
                return f"GitHub does not honour the token minted: {exc}", None
            return f"the token minted could not be revoked: {exc}", exc
        except ClientError as exc:
            return f"the token minted could not be revoked: {exc}", exc
        return None, None


@dataclass(slots=True)
class _Outcome:
    problem: str | None = None
    error: ClientError | None = None
    permissions: dict[str, str] | None = None
    revoked: bool | None = None


def _difference(expected: Mapping[str, str], granted: Mapping[str, str]) -> str:
    parts = []
    for name in sorted(set(expected) | set(granted)):
        want, got = expected.get(name), granted.get(name)
        if want != got:
            parts.append(f"{name} expected {want or 'none'}, granted {got or 'none'}")
    return "; ".join(parts)


def parse_scopes(text: str) -> tuple[str, ...]:
    """``owner/repo`` or several repositories of one owner, comma-separated. Raises ValueError."""
    scopes = tuple(s.strip() for s in text.split(","))
    if not all(scopes):
        raise ValueError(f"scope {text!r}: empty entry")
    return scopes


class ProbeMetrics:
    """The probe's Prometheus metrics in ``registry`` (a textfile for node_exporter's textfile
    collector, or the loop mode's /metrics).

    ``octo_sts_probe_success{check}``                  1 passed, 0 failed (the last run)
    ``octo_sts_probe_duration_seconds{check}``         how long the last run's check took
    ``octo_sts_probe_last_run_timestamp_seconds``      when the last run started
    ``octo_sts_probe_runs_total{check,result}``        runs since start (loop mode)
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.success = Gauge(
            "octo_sts_probe_success",
            "1 if the last run of the check passed, else 0",
            ["check"],
            registry=registry,
        )
        self.duration = Gauge(
            "octo_sts_probe_duration_seconds",
            "Duration of the last run of the check",
            ["check"],
            registry=registry,
        )
        self.last_run = Gauge(
            "octo_sts_probe_last_run_timestamp_seconds",
            "Unix time the last probe run started",
            registry=registry,
        )
        self.runs = Counter(
            "octo_sts_probe_runs",
            "Probe runs by check and result",
            ["check", "result"],
            registry=registry,
        )

    def observe(self, report: ProbeReport) -> None:
        self.last_run.set(report.started_at.timestamp())
        for check in report.checks:
            self.success.labels(check.check).set(1 if check.passed else 0)
            self.duration.labels(check.check).set(check.duration)
            self.runs.labels(check.check, "pass" if check.passed else "fail").inc()
