"""ext_authz ``mode: egress`` called directly with Envoy-shaped Check requests.

Real Exchanger, Egress and held-token cache over fake ports: what Envoy is told to send
upstream, what the workload is answered, and what is reported.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2

from octosts.adapters.held_tokens import HeldTokenCache
from octosts.domain.egress import Egress, EgressReporter
from octosts.domain.errors import GitHubUnavailable, RateLimited
from octosts.domain.exchange import CallInfo, ExchangeAttempt, Exchanger, ExchangeRequest
from octosts.domain.ports import NullObserver
from octosts.transport.ext_authz import AuthorizationServicer, EgressCheck, ExtAuthzOptions
from tests.fakes import FakeClock, FakeGitHub, FakePolicies, FakeVerifier, policy, verified

OIDC = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOm8vcjpyZWY6bWFpbiJ9.c2ln"
DEMO = ("octo-org", "demo", ".github/chainguard/ci.sts.yaml")
ASK = {"x-octo-sts-scope": "octo-org/demo", "x-octo-sts-identity": "ci"}


class Reports:
    def __init__(self) -> None:
        self.done: list[tuple[CallInfo, ExchangeRequest, bool, BaseException | None]] = []

    def egress_done(
        self,
        call: CallInfo,
        request: ExchangeRequest,
        attempt: ExchangeAttempt,
        reused: bool,
        error: BaseException | None,
    ) -> None:
        self.done.append((call, request, reused, error))


_: EgressReporter = Reports()


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.aborted: tuple[Any, str] | None = None

    async def abort(self, code: Any, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


class Harness:
    def __init__(self, *, verbose: bool = False) -> None:
        self.github = FakeGitHub({"octo-org": 7})
        self.policies = FakePolicies({DEMO: policy(permissions={"issues": "write"})})
        exchanger = Exchanger(
            verifier=FakeVerifier({OIDC: verified()}),
            github=self.github,
            policies=self.policies,
            observer=NullObserver(),
            domain="octo-sts.dev",
        )
        self.reports = Reports()
        egress = Egress(exchanger, HeldTokenCache(clock=FakeClock()))
        self.servicer = AuthorizationServicer(
            FakeVerifier({}),
            ExtAuthzOptions(verbose=verbose),
            egress=EgressCheck(egress, self.reports),
        )
        self.context = FakeContext()

    async def check(
        self,
        headers: dict[str, str],
        *,
        path: str = "/github/repos/octo-org/demo/issues",
        **extensions: str,
    ) -> Any:
        req = external_auth_pb2.CheckRequest()
        http = req.attributes.request.http
        http.path = path
        for k, v in {"x-request-id": "rid-7", **headers}.items():
            http.headers[k] = v
        req.attributes.context_extensions["mode"] = "egress"
        for k, v in extensions.items():
            req.attributes.context_extensions[k] = v
        return await self.servicer.Check(req, self.context)


def upstream(resp: Any) -> dict[str, str]:
    assert resp.WhichOneof("http_response") == "ok_response", resp
    return {o.header.key: o.header.value for o in resp.ok_response.headers}


def denied(resp: Any, status: int) -> tuple[dict[str, Any], dict[str, str]]:
    assert resp.WhichOneof("http_response") == "denied_response", resp
    assert resp.denied_response.status.code == status
    headers = {o.header.key: o.header.value for o in resp.denied_response.headers}
    assert headers["content-type"] == "application/json"
    return json.loads(resp.denied_response.body), headers


@pytest.mark.parametrize("scheme", ["Bearer", "token", "TOKEN"])
async def test_allowed_requests_go_upstream_with_the_github_token_only(scheme: str) -> None:
    h = Harness()
    resp = await h.check(
        {"authorization": f"{scheme} {OIDC}", **ASK, "x-octo-sts-subject": "spoofed"}
    )
    assert upstream(resp) == {"authorization": "Bearer ghs_fake1"}
    assert list(resp.ok_response.headers_to_remove) == [
        "x-octo-sts-identity",
        "x-octo-sts-scope",
        "x-octo-sts-subject",
    ]
    assert OIDC not in resp.SerializeToString().decode(errors="replace")
    assert h.github.minted == [(7, {"issues": "write"}, ("demo",))]
    (call, request, reused, error) = h.reports.done[0]
    assert (call.rpc, call.request_id, request.scope, reused, error) == (
        "egress",
        "rid-7",
        "octo-org/demo",
        False,
        None,
    )


async def test_the_second_request_reuses_the_token_and_is_reported_so() -> None:
    h = Harness()
    first = await h.check({"authorization": f"Bearer {OIDC}", **ASK})
    second = await h.check({"authorization": f"Bearer {OIDC}", **ASK})
    assert upstream(first) == upstream(second)
    assert len(h.github.minted) == 1
    assert [reused for _, _, reused, _ in h.reports.done] == [False, True]


async def test_a_query_is_githubs_business_not_the_exchange_routes() -> None:
    # mode verify refuses a repeated ``scope`` (the exchange route's ambiguity); egress must not.
    h = Harness()
    resp = await h.check(
        {"authorization": f"Bearer {OIDC}", **ASK}, path="/github/search/code?scope=a&scope=b"
    )
    upstream(resp)


@pytest.mark.parametrize(
    ("headers", "extensions", "reason"),
    [
        ({"x-octo-sts-identity": "ci"}, {}, "missing_egress_header"),
        ({"x-octo-sts-scope": "octo-org/demo"}, {}, "missing_egress_header"),
        ({**ASK, "x-octo-sts-scope": "octo-org/demo,octo-org/other"}, {}, "invalid_request"),
        (
            {"x-octo-sts-scope": "octo-org/other"},
            {"scope": "octo-org/demo", "identity": "ci"},
            "fixed_by_route",
        ),
    ],
)
async def test_scope_and_identity_must_be_named_once_and_not_against_the_route(
    headers: dict[str, str], extensions: dict[str, str], reason: str
) -> None:
    h = Harness()
    body, _ = denied(
        await h.check({"authorization": f"Bearer {OIDC}", **headers}, **extensions), 400
    )
    assert body["code"] == 3
    assert f"({reason})" in body["message"]
    assert h.github.minted == []
    assert h.reports.done[0][3] is not None


async def test_a_route_can_fix_scope_and_identity() -> None:
    h = Harness()
    fixed = {"scope": "octo-org/demo", "identity": "ci"}
    assert upstream(await h.check({"authorization": f"Bearer {OIDC}"}, **fixed))
    assert upstream(await h.check({"authorization": f"Bearer {OIDC}", **ASK}, **fixed))


async def test_a_policy_refusal_is_403_with_the_family_only() -> None:
    h = Harness()
    h.policies.policies[DEMO] = policy(subject="repo:octo-org/demo:ref:refs/heads/prod")
    body, headers = denied(await h.check({"authorization": f"Bearer {OIDC}", **ASK}), 403)
    assert body == {"code": 7, "message": "forbidden (permission_denied)", "request_id": "rid-7"}
    assert "www-authenticate" not in headers
    assert h.github.minted == []
    verbose = Harness(verbose=True)
    verbose.policies.policies[DEMO] = h.policies.policies[DEMO]
    body, _ = denied(await verbose.check({"authorization": f"Bearer {OIDC}", **ASK}), 403)
    assert body["message"].startswith("forbidden (subject_mismatch): ")


@pytest.mark.parametrize("authorization", [None, "Basic abc", f"Bearer {OIDC}x", "token ghs_abc"])
async def test_no_or_an_untrusted_token_is_401(authorization: str | None) -> None:
    h = Harness()
    headers = {**ASK, **({"authorization": authorization} if authorization else {})}
    body, response_headers = denied(await h.check(headers), 401)
    assert body["code"] == 16
    assert response_headers["www-authenticate"].startswith("Bearer")
    assert h.github.minted == []


async def test_a_github_rate_limit_is_429_with_retry_after() -> None:
    h = Harness()
    limited = RateLimited("primary", retry_after=41.5, reason="rate_limited_primary")

    async def rate_limited(owner: str) -> int:
        raise limited

    h.github.installation_id = rate_limited  # type: ignore[method-assign]
    body, headers = denied(await h.check({"authorization": f"Bearer {OIDC}", **ASK}), 429)
    assert body["code"] == 8
    assert headers["retry-after"] == "42"


async def test_github_unreachable_is_a_fault_envoy_retries_not_a_denial() -> None:
    h = Harness()

    async def unavailable(owner: str) -> int:
        raise GitHubUnavailable("timeout")

    h.github.installation_id = unavailable  # type: ignore[method-assign]
    with pytest.raises(Aborted):
        await h.check({"authorization": f"Bearer {OIDC}", **ASK})
    assert h.context.aborted is not None
    assert h.context.aborted[0] is grpc.StatusCode.UNAVAILABLE
    assert isinstance(h.reports.done[0][3], GitHubUnavailable)


async def test_without_an_egress_check_the_mode_does_not_exist() -> None:
    servicer = AuthorizationServicer(FakeVerifier({OIDC: verified()}))
    req = external_auth_pb2.CheckRequest()
    req.attributes.request.http.headers["authorization"] = f"Bearer {OIDC}"
    req.attributes.context_extensions["mode"] = "egress"
    resp = await servicer.Check(req, FakeContext())
    assert resp.denied_response.status.code == 403
