"""End to end through the real stack: Envoy over TLS -> ext_authz + Exchange in real replicas.

The dev issuer signs the tokens, the GitHub emulator serves the example policies and mints
installation tokens, two ``octo-sts serve`` replicas sit behind Envoy. What is asserted is what
a client sees (status, JSON body, headers, gRPC codes) plus the replicas' own ``/metrics`` to
prove where a request stopped.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from octosts._gen.chainguard.platform.oidc import oidc_pb2, oidc_pb2_grpc
from octosts._gen.octosts.v1 import sts_pb2, sts_pb2_grpc
from octosts.dev.issuer import generate_key, load_state, mint_token
from octosts.dev.stack import DevStack
from tests.polling import eventually

pytestmark = pytest.mark.e2e

REPO_SUB = "repo:octo-org/demo:ref:refs/heads/main"
WORKFLOW = "octo-org/demo/.github/workflows/ci.yaml@refs/heads/main"
ORG_SUB = "repo:octo-org/demo:environment:production"
REPO_QUERY = {"scope": "octo-org/demo", "identity": "ci"}
EXCHANGE = "/sts/exchange"


# -- helpers ---------------------------------------------------------------------------------


def repo_token(stack: DevStack, **claims: Any) -> str:
    """A token the demo repo policy (identity ``ci``) accepts, unless ``claims`` change that."""
    return stack.token(REPO_SUB, **{"workflow_ref": WORKFLOW, **claims})


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def http(stack: DevStack) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(stack.ca_cert))
    return httpx.AsyncClient(base_url=stack.gateway_url, verify=ctx, timeout=15.0)


def grpc_channel(stack: DevStack) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(stack.ca_cert.read_bytes())
    return grpc.aio.secure_channel(f"localhost:{stack.ports.gateway}", creds)


def replica_metric(stack: DevStack, index: int, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` matching ``labels`` on one replica's ``/metrics``."""
    port = stack.ports.metrics[index]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def metric_sum(stack: DevStack, name: str, **labels: str) -> float:
    """Sum over every replica of the stack."""
    return sum(replica_metric(stack, i, name, **labels) for i in range(len(stack.ports.metrics)))


def replica_exchanges(stack: DevStack, index: int) -> float:
    return replica_metric(stack, index, "grpc_server_handled_total", grpc_method="Exchange")


def exchanges(stack: DevStack) -> float:
    return metric_sum(stack, "grpc_server_handled_total", grpc_method="Exchange")


def denials(stack: DevStack) -> float:
    return metric_sum(stack, "octo_sts_ext_authz_decisions_total", decision="deny")


async def counted(check: Callable[[], bool], what: str) -> None:
    """Wait until ``check`` (blocking: it scrapes the replicas) holds; the replicas count an RPC
    just after Envoy has the answer."""
    await eventually(lambda: asyncio.to_thread(check), what, interval=0.05)


def assert_token_json(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "grpc-status" not in resp.headers
    body: dict[str, Any] = resp.json()
    assert isinstance(body["token"], str)
    assert body["token"].startswith("ghs_")
    assert body["access_token"] == body["token"]
    assert type(body["expires_in"]) is int  # a JSON number, not an int64 string
    assert 0 < body["expires_in"] <= 3600
    return body


def assert_error_json(resp: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert "grpc-status" not in resp.headers
    body: dict[str, Any] = resp.json()
    assert body["code"] == code
    return body


# -- HTTP/JSON -------------------------------------------------------------------------------


async def test_get_and_post_exchange_return_a_github_token(stack: DevStack) -> None:
    token = repo_token(stack)
    async with http(stack) as client:
        got = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
        posted = await client.post(EXCHANGE, json=REPO_QUERY, headers=bearer(token))
    for resp in (got, posted):
        body = assert_token_json(resp)
        assert body["repositories"] == ["demo"]
        assert body["permissions"] == {"contents": "read", "issues": "write"}
    assert got.json()["token"] != posted.json()["token"]  # two real mints by the emulator


async def test_org_policy_exchange(stack: DevStack) -> None:
    token = stack.token(ORG_SUB)
    async with http(stack) as client:
        resp = await client.post(
            EXCHANGE, json={"scope": "octo-org", "identity": "deploy"}, headers=bearer(token)
        )
    body = assert_token_json(resp)
    assert body["permissions"] == {"contents": "read", "deployments": "write"}
    assert body["repositories"] == ["demo"]


async def test_unknown_query_parameters_are_ignored(stack: DevStack) -> None:
    async with http(stack) as client:
        got = await client.get(
            EXCHANGE, params={**REPO_QUERY, "utm_source": "x"}, headers=bearer(repo_token(stack))
        )
        posted = await client.post(
            f"{EXCHANGE}?foo=bar", json=REPO_QUERY, headers=bearer(repo_token(stack))
        )
    assert_token_json(got)
    assert_token_json(posted)


def _expired(stack: DevStack) -> str:
    now = int(time.time())
    # Well beyond the service's clock leeway.
    return repo_token(stack, iat=now - 7200, nbf=now - 7200, exp=now - 3600)


def _wrongly_signed(stack: DevStack) -> str:
    state = load_state(stack.workdir / "dev-issuer")
    assert state is not None
    # Same issuer and kid, other key: only the signature is wrong.
    impostor = generate_key("rsa", kid=state.key.kid)
    return mint_token(impostor, stack.issuer_url, {"sub": REPO_SUB, "aud": stack.domain})


def _untrusted_issuer(stack: DevStack) -> str:
    # Plain http and not in OCTOSTS_INSECURE_ISSUERS: refused before any fetch (an https issuer
    # that cannot be reached would be a 503, rightly: the token might be valid).
    state = load_state(stack.workdir / "dev-issuer")
    assert state is not None
    return mint_token(state.key, "http://issuer.invalid", {"sub": REPO_SUB, "aud": stack.domain})


BAD_AUTH: dict[str, Callable[[DevStack], dict[str, str]]] = {
    "missing": lambda _: {},
    "not_bearer": lambda s: {"authorization": f"Basic {repo_token(s)}"},
    "malformed": lambda _: bearer("not.a.jwt"),
    "garbage": lambda _: bearer("x" * 40),
    "expired": lambda s: bearer(_expired(s)),
    "wrong_signature": lambda s: bearer(_wrongly_signed(s)),
    "untrusted_issuer": lambda s: bearer(_untrusted_issuer(s)),
}


@pytest.mark.parametrize("case", sorted(BAD_AUTH))
async def test_bad_tokens_are_401_at_the_edge_without_reaching_exchange(
    stack: DevStack, case: str
) -> None:
    headers = BAD_AUTH[case](stack)
    before_exchange, before_deny = exchanges(stack), denials(stack)
    async with http(stack) as client:
        got = await client.get(EXCHANGE, params=REPO_QUERY, headers=headers)
        posted = await client.post(EXCHANGE, json=REPO_QUERY, headers=headers)
    for resp in (got, posted):
        body = assert_error_json(resp, 401, 16)
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert body["request_id"] == resp.headers["x-request-id"]
        for value in headers.values():
            assert value.split()[-1] not in resp.text  # the token is never echoed
    # Proof that Envoy stopped them: both were denied by ext_authz in a replica ...
    await counted(lambda: denials(stack) >= before_deny + 2, "both denials counted")
    # ... and no replica handled an Exchange RPC meanwhile.
    assert exchanges(stack) == before_exchange


async def test_policy_mismatch_is_403_json(stack: DevStack) -> None:
    before = exchanges(stack)
    wrong_branch = stack.token(
        "repo:octo-org/demo:ref:refs/heads/dev",
        workflow_ref="octo-org/demo/.github/workflows/ci.yaml@refs/heads/dev",
    )
    async with http(stack) as client:
        resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(wrong_branch))
    body = assert_error_json(resp, 403, 7)
    assert wrong_branch not in resp.text
    assert "message" in body
    # A policy decision is made by Exchange (the token itself was fine).
    await counted(lambda: exchanges(stack) >= before + 1, "the exchange counted")


@pytest.mark.parametrize("path", ["/nope", "/sts/exchange/extra", "/sts", "/"])
async def test_unknown_path_is_404(stack: DevStack, path: str) -> None:
    async with http(stack) as client:
        resp = await client.get(path, headers=bearer(repo_token(stack)))
    assert_error_json(resp, 404, 5)


async def test_unknown_method_is_404(stack: DevStack) -> None:
    async with http(stack) as client:
        resp = await client.put(EXCHANGE, json=REPO_QUERY, headers=bearer(repo_token(stack)))
    assert_error_json(resp, 404, 5)


async def test_malformed_json_body_is_400(stack: DevStack) -> None:
    before = exchanges(stack)
    async with http(stack) as client:
        resp = await client.post(
            EXCHANGE,
            content=b'{"scope": "octo-org/demo", "identity": ',
            headers={**bearer(repo_token(stack)), "content-type": "application/json"},
        )
    body = assert_error_json(resp, 400, 3)
    assert body["request_id"] == resp.headers["x-request-id"]
    assert body["message"].endswith(" (invalid_request)"), body
    assert len(body["message"]) > len(" (invalid_request)")  # Envoy's own text comes first
    assert exchanges(stack) == before


async def test_health_route(stack: DevStack) -> None:
    async with http(stack) as client:
        resp = await client.get("/healthz")
    assert resp.status_code == 200


# -- spoofed identity headers ----------------------------------------------------------------
# The phase-1 test (test_envoy_gateway.py) records the metadata a stand-in upstream receives and
# shows Envoy overwrites x-octo-sts-subject. The real service does not log its metadata, so here
# we show what matters to a user: a spoofed subject neither grants nor changes an identity.


async def test_spoofed_subject_does_not_grant_access(stack: DevStack) -> None:
    wrong_branch = stack.token(
        "repo:octo-org/demo:ref:refs/heads/dev",
        workflow_ref="octo-org/demo/.github/workflows/ci.yaml@refs/heads/dev",
    )
    spoof = {
        **bearer(wrong_branch),
        "x-octo-sts-subject": REPO_SUB,
        "x-octo-sts-issuer": stack.issuer_url,
    }
    async with http(stack) as client:
        resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=spoof)
    assert_error_json(resp, 403, 7)


async def test_spoofed_subject_does_not_change_the_audited_identity(stack: DevStack) -> None:
    spoof = {**bearer(repo_token(stack)), "x-octo-sts-subject": "repo:evil/evil:ref:refs/heads/x"}
    async with http(stack) as client:
        resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=spoof)
    assert_token_json(resp)
    request_id = resp.headers["x-request-id"]

    def audited() -> list[str]:
        subjects = []
        for path in (stack.workdir / "logs").glob("sts-*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if request_id in line and '"exchange"' in line:
                    event = json.loads(line)
                    # The audit event nests the caller under "actor"; plain log lines do not.
                    subjects.append(event.get("actor", event).get("sub"))
        return subjects

    await counted(lambda: bool(audited()), "the audit event")
    assert set(audited()) == {REPO_SUB}


async def test_tokens_never_reach_the_service_logs(stack: DevStack) -> None:
    oidc = repo_token(stack)
    async with http(stack) as client:
        resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(oidc))
        denied = await client.get(EXCHANGE, headers=bearer(oidc + "x"))
    github = assert_token_json(resp)["token"]
    assert denied.status_code == 401
    request_id = resp.headers["x-request-id"]

    def logs() -> str:
        return "".join(
            p.read_text(errors="replace") for p in (stack.workdir / "logs").glob("sts-*.log")
        )

    await counted(lambda: request_id in logs(), "the request id in the logs")
    text = logs()
    assert oidc not in text
    assert github not in text


# -- native gRPC -----------------------------------------------------------------------------


async def test_native_grpc_over_tls_both_services(stack: DevStack) -> None:
    metadata = tuple(bearer(repo_token(stack)).items())
    async with grpc_channel(stack) as channel:
        sts = sts_pb2_grpc.SecurityTokenServiceStub(channel)
        reply = await sts.Exchange(
            sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
            metadata=metadata,
            timeout=15,
        )
        assert reply.token.startswith("ghs_")
        assert list(reply.repositories) == ["demo"]
        chainguard = oidc_pb2_grpc.SecurityTokenServiceStub(channel)
        raw = await chainguard.Exchange(
            oidc_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
            metadata=metadata,
            timeout=15,
        )
        assert raw.token.startswith("ghs_")
        assert raw.token != reply.token

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await sts.Exchange(sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"))
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as mismatch:
            await chainguard.Exchange(
                oidc_pb2.ExchangeRequest(scope="octo-org/demo", identity="deploy"),
                metadata=metadata,
                timeout=15,
            )
        assert mismatch.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- failures (each test has its own stack: they kill replicas) ------------------------------


async def test_all_replicas_down_is_503_not_403(own_stack: DevStack) -> None:
    stack = own_stack
    token = repo_token(stack)
    for index in range(len(stack.ports.grpc)):
        await asyncio.to_thread(stack.stop_server, index, kill=True)
    async with http(stack) as client:
        resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
        assert resp.status_code == 503, resp.text

        async def health_down() -> bool:
            return (await client.get("/healthz")).status_code == 503

        await eventually(health_down, "/healthz to be 503 with every replica down", interval=0.1)
        # Still 503 once Envoy's health checks have marked the replicas down.
        resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
        assert resp.status_code == 503, resp.text
    async with grpc_channel(stack) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await sts_pb2_grpc.SecurityTokenServiceStub(channel).Exchange(
                sts_pb2.ExchangeRequest(scope="octo-org/demo", identity="ci"),
                metadata=tuple(bearer(token).items()),
                timeout=15,
            )
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_replica_killed_mid_load_fails_no_exchange(own_stack: DevStack) -> None:
    stack = own_stack
    total, concurrency, kill_after = 200, 8, 50
    token = repo_token(stack)
    statuses: list[int] = []
    killed = asyncio.Event()
    lock = asyncio.Lock()
    pending = iter(range(total))
    served_by_victim: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in pending:
            resp = await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token))
            statuses.append(resp.status_code)
            async with lock:
                if len(statuses) >= kill_after and not killed.is_set():
                    killed.set()
                    served_by_victim.append(await asyncio.to_thread(replica_exchanges, stack, 1))
                    # SIGKILL: in-flight requests on that replica see a reset.
                    await asyncio.to_thread(stack.stop_server, 1, kill=True)

    async with http(stack) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    assert killed.is_set()
    assert len(statuses) == total
    failed = {code: statuses.count(code) for code in set(statuses) if code != 200}
    assert failed == {}, f"failed exchanges: {failed}"
    # The killed replica was taking its share of the load (else the test proves nothing).
    assert served_by_victim[0] > 0


async def test_repeated_scope_is_400_not_a_guess(stack: DevStack) -> None:
    async with http(stack) as client:
        reply = await client.get(
            "/sts/exchange?scope=octo-org/demo&scope=octo-org/other&identity=ci",
            headers=bearer(repo_token(stack)),
        )
    assert reply.status_code == 400
    assert reply.headers["content-type"] == "application/json"
    assert "repeated_parameter" in reply.json()["message"]
