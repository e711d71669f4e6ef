"""The prober's checks and exit codes (``ops.probe``, ``cli.probe``), with a fake transport.

The live stack is tests/e2e/test_probe_live.py; here every outcome the service or GitHub can
produce is dealt by hand.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from prometheus_client import CollectorRegistry

from octosts.cli.probe import exit_code
from octosts.client import (
    NO_RETRY,
    Client,
    ClientError,
    ExchangeResult,
    Forbidden,
    RevokeError,
    ServerError,
    StaticTokenSource,
    TokenSourceError,
    Unauthenticated,
    Unavailable,
)
from octosts.client.core import SyncTransport
from octosts.ops.probe import (
    NEGATIVE,
    POSITIVE,
    CheckResult,
    ProbeMetrics,
    Prober,
    ProbeReport,
    ProbeSpec,
    Target,
)

OIDC = "header.payload.signature"
MINTED = "ghs_minted_token_value"
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
POS = Target(("octo-org/prober",), "prober")
NEG = Target(("octo-org/prober",), "prober-negative")


class FakeTransport:
    """Answers per identity: an ExchangeResult's permissions, or an error to raise."""

    def __init__(self, answers: dict[str, dict[str, str] | ClientError]) -> None:
        self.answers = answers
        self.calls: list[tuple[tuple[str, ...], str, str]] = []

    def exchange(
        self,
        scopes: tuple[str, ...],
        identity: str,
        audience: str | None,
        token: str,
        timeout: float,
    ) -> ExchangeResult:
        self.calls.append((scopes, identity, token))
        answer = self.answers[identity]
        if isinstance(answer, ClientError):
            raise answer
        return ExchangeResult(MINTED, NOW + dt.timedelta(hours=1), answer)

    def close(self) -> None:
        pass


_: SyncTransport = FakeTransport({})


class FakeRevoke:
    def __init__(self, error: ClientError | None = None) -> None:
        self.revoked: list[str] = []
        self.error = error

    def __call__(self, token: str) -> None:
        if self.error is not None:
            raise self.error
        self.revoked.append(token)


class FailingSource:
    def token(self, audience: str | None) -> str:
        raise TokenSourceError("cannot read token file /var/run/t: No such file")


def probe(
    answers: dict[str, dict[str, str] | ClientError],
    *,
    revoke: FakeRevoke | None = None,
    expected: dict[str, str] | None = None,
    negative: bool = True,
    source: object = None,
) -> tuple[ProbeReport, FakeTransport, FakeRevoke]:
    transport = FakeTransport(answers)
    revoker = revoke or FakeRevoke()
    spec = ProbeSpec(
        POS if "prober" in answers else None,
        NEG if negative else None,
        expected or {"contents": "read"},
    )
    ticks = iter(range(100))
    prober = Prober(
        spec,
        endpoint="https://sts.example.com",
        client=lambda: Client(transport=transport, retry=NO_RETRY),
        token_source=source or StaticTokenSource(OIDC),  # type: ignore[arg-type]
        revoke=revoker,
        monotonic=lambda: float(next(ticks)),
        now=lambda: NOW,
    )
    return prober.run(), transport, revoker


def denied() -> Forbidden:
    return Forbidden("permission denied", reason="permission_denied", request_id="r1")


def test_both_checks_pass_and_the_token_is_revoked() -> None:
    report, transport, revoker = probe(
        {"prober": {"contents": "read"}, "prober-negative": denied()}
    )
    assert report.passed
    assert exit_code(report) == 0
    assert revoker.revoked == [MINTED]
    assert [c[1:] for c in transport.calls] == [("prober", OIDC), ("prober-negative", OIDC)]
    shown = report.to_json()
    assert shown["result"] == "pass"
    assert shown["time"] == "2026-12-01T12:00:00Z"
    positive, negative = shown["checks"]
    assert positive == {
        "check": POSITIVE,
        "result": "pass",
        "scope": "octo-org/prober",
        "identity": "prober",
        "duration_seconds": 1.0,
        "permissions": {"contents": "read"},
        "expected_permissions": {"contents": "read"},
        "revoked": True,
    }
    assert negative["code"] == "PERMISSION_DENIED"
    assert negative["reason"] == "permission_denied"
    assert negative["result"] == "pass"


def test_other_permissions_than_expected_fail_and_the_token_is_still_revoked() -> None:
    report, _, revoker = probe({"prober": {"contents": "read", "issues": "write"}}, negative=False)
    (check,) = report.checks
    assert not check.passed
    assert check.problem == "permissions differ: issues expected none, granted write"
    assert revoker.revoked == [MINTED]
    assert exit_code(report) == 1


def test_fewer_permissions_than_expected_fail() -> None:
    report, _, _ = probe(
        {"prober": {"contents": "read"}},
        expected={"contents": "write", "issues": "read"},
        negative=False,
    )
    assert report.checks[0].problem == (
        "permissions differ: contents expected write, granted read; "
        "issues expected read, granted none"
    )


def test_a_negative_exchange_allowed_is_the_alarm_and_its_token_is_revoked() -> None:
    report, _, revoker = probe(
        {"prober": {"contents": "read"}, "prober-negative": {"contents": "read"}}
    )
    positive, negative = report.checks
    assert positive.passed
    assert not negative.passed
    assert negative.problem == "exchange unexpectedly allowed"
    assert negative.revoked is True
    assert revoker.revoked == [MINTED, MINTED]
    assert exit_code(report) == 1


def test_a_negative_refused_for_another_reason_than_policy_fails() -> None:
    unavailable = Unavailable("no healthy upstream")
    report, _, _ = probe({"prober": {"contents": "read"}, "prober-negative": unavailable})
    negative = report.checks[1]
    assert not negative.passed
    assert negative.problem is not None
    assert negative.problem.startswith("not refused by policy")
    assert exit_code(report) == 6


def test_service_down_fails_both_with_unavailable() -> None:
    down = Unavailable("connection refused")
    report, _, revoker = probe({"prober": down, "prober-negative": down})
    assert [c.passed for c in report.checks] == [False, False]
    assert exit_code(report) == 6
    assert revoker.revoked == []


def test_positive_refused_exits_4() -> None:
    report, _, _ = probe({"prober": denied(), "prober-negative": denied()})
    assert exit_code(report) == 4


def test_a_token_github_does_not_honour_is_a_wrong_answer() -> None:
    revoke = FakeRevoke(RevokeError("GitHub rejected the token", status=401))
    report, _, _ = probe({"prober": {"contents": "read"}}, revoke=revoke, negative=False)
    (check,) = report.checks
    assert check.revoked is False
    assert check.problem is not None
    assert "does not honour" in check.problem
    assert exit_code(report) == 1


def test_github_unreachable_for_the_revocation_exits_6() -> None:
    revoke = FakeRevoke(RevokeError("cannot reach GitHub: ConnectError"))
    report, _, _ = probe({"prober": {"contents": "read"}}, revoke=revoke, negative=False)
    assert report.checks[0].problem is not None
    assert "could not be revoked" in report.checks[0].problem
    assert exit_code(report) == 6


def test_no_oidc_token_fails_every_check_without_calling_the_service() -> None:
    report, transport, _ = probe(
        {"prober": {"contents": "read"}, "prober-negative": denied()}, source=FailingSource()
    )
    assert transport.calls == []
    assert [c.passed for c in report.checks] == [False, False]
    assert exit_code(report) == 3


def check(passed: bool, error: ClientError | None) -> CheckResult:
    return CheckResult(POSITIVE, POS, passed, 0.0, None if passed else "x", error)


@pytest.mark.parametrize(
    ("checks", "code"),
    [
        ([check(True, None), check(True, None)], 0),
        ([check(False, None), check(False, Unavailable("x"))], 1),  # a wrong answer first
        ([check(False, Unavailable("x")), check(False, denied())], 4),
        ([check(False, ServerError("x"))], 1),
        ([check(False, Unauthenticated("x"))], 4),
        ([check(False, TokenSourceError("x")), check(False, Unavailable("x"))], 6),
    ],
)
def test_exit_code_precedence(checks: list[CheckResult], code: int) -> None:
    assert exit_code(ProbeReport("e", NOW, tuple(checks), {})) == code


def test_no_token_in_the_json_even_when_things_go_wrong() -> None:
    revoke = FakeRevoke(RevokeError("GitHub answered HTTP 500", status=500))
    report, _, _ = probe(
        {"prober": {"contents": "write"}, "prober-negative": {"contents": "read"}}, revoke=revoke
    )
    text = json.dumps(report.to_json())
    assert MINTED not in text
    assert OIDC not in text


def test_nothing_to_probe_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to probe"):
        ProbeSpec(None, None)


def test_metrics_follow_the_last_run() -> None:
    registry = CollectorRegistry()
    metrics = ProbeMetrics(registry)
    passing, _, _ = probe({"prober": {"contents": "read"}, "prober-negative": denied()})
    failing, _, _ = probe({"prober": {"contents": "read"}, "prober-negative": {"contents": "read"}})
    metrics.observe(passing)
    metrics.observe(failing)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("octo_sts_probe_success", check=POSITIVE) == 1
    assert value("octo_sts_probe_success", check=NEGATIVE) == 0
    assert value("octo_sts_probe_duration_seconds", check=NEGATIVE) == 1.0
    assert value("octo_sts_probe_runs_total", check=NEGATIVE, result="pass") == 1
    assert value("octo_sts_probe_runs_total", check=NEGATIVE, result="fail") == 1
    assert value("octo_sts_probe_last_run_timestamp_seconds") == NOW.timestamp()
