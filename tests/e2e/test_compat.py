"""What users of the original Octo STS already run keeps working against this gateway.

- octo-sts's GitHub Action: ``GET /sts/exchange?scope=..&identity=..`` with a bearer token, reads
  ``.token`` from the JSON, nothing else (no Accept header, the slash in the scope left as is);
- gRPC callers using the ``chainguard.platform.oidc.SecurityTokenService`` names, with ``aud``;
- form POSTs (chainguard.dev/sdk's HTTP/1 downgrade exchanger): the answer is exactly a
  ``RawToken`` in JSON, errors the usual ``{"code", "message"}`` bodies (the SDK itself:
  test_chainguard_sdk_live.py);
- the FAQ's shell shapes: ``curl ... | jq -r .access_token``, ``.token_type == "Bearer"``,
  ``.expires_in`` a JSON number;
- the Terraform ``external`` data source pattern (``clients/terraform/octo-sts-token.sh``).

``jq`` and ``curl`` are the real binaries when installed (Debian packages ``jq``, ``curl``);
without them the shell tests fail under ``CI`` and skip elsewhere, and the jq paths are checked
with Python's JSON instead.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from octosts._gen.chainguard.platform.oidc import oidc_pb2
from octosts.dev.stack import DevStack
from tests.e2e.test_clients_live import (
    IDENTITY,
    REPO_ROOT,
    SCOPE,
    allowed_token,
    denied_token,
    github_status,
    toolchain,
)

pytestmark = pytest.mark.e2e

TERRAFORM_PROGRAM = REPO_ROOT / "clients" / "terraform" / "octo-sts-token.sh"
CHAINGUARD_EXCHANGE = "/chainguard.platform.oidc.SecurityTokenService/Exchange"


def tls(stack: DevStack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.ca_cert))


# -- octo-sts's GitHub Action ----------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        f"scope={SCOPE}&identity={IDENTITY}",
        # Newer releases also send `scopes`, repeating `scope`.
        f"scope={SCOPE}&scopes={SCOPE}&identity={IDENTITY}",
    ],
)
def test_octo_sts_action_request_works_unchanged(stack: DevStack, query: str) -> None:
    # The action builds the URL by string concatenation: the scope's slash is not escaped. Its
    # OIDC token is requested with the STS domain as the audience.
    url = f"{stack.gateway_url}/sts/exchange?{query}"
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {allowed_token(stack, aud=stack.domain)}"}
    )
    with urllib.request.urlopen(request, context=tls(stack), timeout=15) as resp:
        assert resp.status == 200
        body = json.loads(resp.read(256 * 1024))
    token = body["token"]
    assert isinstance(token, str)
    assert github_status(stack, token) == 200


# -- chainguard.platform.oidc gRPC names -----------------------------------------------------


def chainguard_call(
    stack: DevStack, request: oidc_pb2.ExchangeRequest, oidc: str
) -> oidc_pb2.RawToken:
    """A unary call by its full wire name, as any client generated from the public proto makes."""
    creds = grpc.ssl_channel_credentials(stack.ca_cert.read_bytes())
    with grpc.secure_channel(f"localhost:{stack.ports.gateway}", creds) as channel:
        exchange = channel.unary_unary(
            CHAINGUARD_EXCHANGE,
            request_serializer=oidc_pb2.ExchangeRequest.SerializeToString,
            response_deserializer=oidc_pb2.RawToken.FromString,
        )
        reply: oidc_pb2.RawToken = exchange(
            request, metadata=(("authorization", f"Bearer {oidc}"),), timeout=15
        )
        return reply


def test_chainguard_grpc_names_with_and_without_aud(stack: DevStack) -> None:
    oidc = allowed_token(stack)
    plain = chainguard_call(stack, oidc_pb2.ExchangeRequest(scope=SCOPE, identity=IDENTITY), oidc)
    with_aud = chainguard_call(
        stack, oidc_pb2.ExchangeRequest(aud=[stack.domain], scope=SCOPE, identity=IDENTITY), oidc
    )
    for reply in (plain, with_aud):
        assert reply.token.startswith("ghs_")
        assert github_status(stack, reply.token) == 200
    assert plain.token != with_aud.token

    # A token minted for a custom audience as well, asked for by that audience.
    both = stack.token(
        "repo:octo-org/demo:ref:refs/heads/main",
        aud=[stack.domain, "terraform"],  # type: ignore[arg-type]
        workflow_ref="octo-org/demo/.github/workflows/ci.yaml@refs/heads/main",
    )
    custom = chainguard_call(
        stack, oidc_pb2.ExchangeRequest(aud=["terraform"], scope=SCOPE, identity=IDENTITY), both
    )
    assert github_status(stack, custom.token) == 200


@pytest.mark.parametrize("aud", [["somewhere-else"], ["a", "b"], [""], [IDENTITY]])
def test_chainguard_grpc_aud_is_not_a_demand(stack: DevStack, aud: list[str]) -> None:
    # As in the original: `aud` is logged, never checked; the policy's audience rule applies.
    request = oidc_pb2.ExchangeRequest(aud=aud, scope=SCOPE, identity=IDENTITY)
    reply = chainguard_call(stack, request, allowed_token(stack))
    assert github_status(stack, reply.token) == 200
    assert reply.expiry.seconds > time.time()


def test_chainguard_grpc_denied(stack: DevStack) -> None:
    request = oidc_pb2.ExchangeRequest(scope=SCOPE, identity=IDENTITY)
    with pytest.raises(grpc.RpcError) as refused:
        chainguard_call(stack, request, denied_token(stack))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


# -- form POSTs (chainguard.dev/sdk's HTTP/1 downgrade exchanger) ----------------------------


def form_post(stack: DevStack, fields: list[tuple[str, str]], oidc: str | None) -> Any:
    """POST /sts/exchange as the SDK sends it: HTTP/1.1, a form body, a bearer header."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if oidc is not None:
        headers["Authorization"] = f"Bearer {oidc}"
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(
        f"{stack.gateway_url}/sts/exchange", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, context=tls(stack), timeout=15) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read(64 * 1024))
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), json.loads(refused.read(64 * 1024))


SDK_FORM = [
    ("aud", "octo-sts.local"),
    ("cap", "a"),
    ("cap", "b"),
    ("identity", IDENTITY),
    ("scope", SCOPE),
    ("scopes", SCOPE),
]


def test_form_post_answers_exactly_a_raw_token(stack: DevStack) -> None:
    status, headers, body = form_post(stack, SDK_FORM, allowed_token(stack))
    assert status == 200
    assert headers["content-type"] == "application/json"
    # protojson.Unmarshal in the SDK refuses unknown fields: nothing but RawToken's.
    assert set(body) <= {"token", "refresh_token", "expiry"}
    assert body["refresh_token"] == ""
    assert body["expiry"].endswith("Z")
    assert not any(name.startswith("grpc-") for name in map(str.lower, headers))
    assert github_status(stack, body["token"]) == 200


@pytest.mark.parametrize(
    ("fields", "oidc", "status", "code"),
    [
        # A repeated singular field is ambiguous: refused, in a form body as in a query.
        ([*SDK_FORM, ("identity", "other")], "allowed", 400, 3),
        ([*SDK_FORM, ("scopes", "octo-org/other")], "allowed", 400, 3),
        ([("identity", "nope"), ("scope", SCOPE)], "allowed", 403, 7),
        (SDK_FORM, "denied", 403, 7),
        (SDK_FORM, None, 401, 16),
    ],
)
def test_form_post_errors_are_json_code_and_message(
    stack: DevStack, fields: list[tuple[str, str]], oidc: str | None, status: int, code: int
) -> None:
    token = {"allowed": allowed_token(stack), "denied": denied_token(stack), None: None}[oidc]
    got, headers, body = form_post(stack, fields, token)
    assert (got, body["code"]) == (status, code)
    assert isinstance(body["message"], str)
    assert headers["content-type"] == "application/json"
    assert token is None or token not in json.dumps(body)


def test_get_and_json_post_keep_the_rich_answer(stack: DevStack) -> None:
    oidc = allowed_token(stack)
    url = f"{stack.gateway_url}/sts/exchange?scope={SCOPE}&identity={IDENTITY}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {oidc}"})
    with urllib.request.urlopen(request, context=tls(stack), timeout=15) as resp:
        got = json.loads(resp.read(64 * 1024))
    posted = urllib.request.Request(
        f"{stack.gateway_url}/sts/exchange",
        data=json.dumps({"scope": SCOPE, "identity": IDENTITY}).encode(),
        headers={"Authorization": f"Bearer {oidc}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(posted, context=tls(stack), timeout=15) as resp:
        got_posted = json.loads(resp.read(64 * 1024))
    for body in (got, got_posted):
        assert {"token", "access_token", "token_type", "expires_in", "expires_at"} <= set(body)
        assert github_status(stack, body["token"]) == 200


def test_get_with_a_different_scopes_is_400(stack: DevStack) -> None:
    url = (
        f"{stack.gateway_url}/sts/exchange?scope={SCOPE}&scopes=octo-org/other&identity={IDENTITY}"
    )
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {allowed_token(stack)}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=tls(stack), timeout=15)
    assert refused.value.code == 400
    assert "ambiguous_scope" in json.loads(refused.value.read(64 * 1024))["message"]


# -- FAQ shapes: curl | jq -------------------------------------------------------------------


def shell(script: str, env: dict[str, str], stdin: str | None = None) -> Any:
    return subprocess.run(
        ["sh", "-c", script],
        env={"PATH": os.environ.get("PATH", ""), **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def curl_exchange(stack: DevStack, oidc: str) -> str:
    """The FAQ's request: curl with the bearer header (fed on stdin, not argv)."""
    toolchain("curl")
    run = shell(
        'printf "Authorization: Bearer %s\\n" "$OIDC" | '
        'curl -sS --max-time 15 --cacert "$CA" -H @- "$URL/sts/exchange?scope=$SCOPE&identity=$ID"',
        {
            "OIDC": oidc,
            "CA": str(stack.ca_cert),
            "URL": stack.gateway_url,
            "SCOPE": SCOPE,
            "ID": IDENTITY,
        },
    )
    assert run.returncode == 0, run.stderr
    body: str = run.stdout
    return body


def jq(program: str, document: str, *flags: str) -> Any:
    path = shutil.which("jq")
    if path is None:
        return None
    return subprocess.run(
        [path, *flags, program],
        input=document,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_faq_jq_shapes(stack: DevStack) -> None:
    body = curl_exchange(stack, allowed_token(stack))
    data = json.loads(body)
    access = jq(".access_token", body, "-r")
    if access is None:
        if os.environ.get("CI"):
            pytest.fail("`jq` is not installed; CI must provide it (Debian package jq)")
        # Same paths, Python's JSON.
        token = data["access_token"]
        assert data["token_type"] == "Bearer"
        assert isinstance(data["expires_in"], int)
    else:
        assert access.returncode == 0, access.stderr
        token = access.stdout.strip()
        assert access.stdout == token + "\n"  # -r: raw string, no quotes
        assert jq('.token_type == "Bearer"', body, "-e").returncode == 0
        assert jq('.expires_in | type == "number"', body, "-e").returncode == 0
        assert jq(".expires_in > 0 and .expires_in <= 3600", body, "-e").returncode == 0
        assert jq(".token == .access_token", body, "-e").returncode == 0
    assert token == data["token"]
    assert github_status(stack, token) == 200


# -- Terraform `external` data source --------------------------------------------------------


def terraform_program(query: dict[str, str], env: dict[str, str] | None = None) -> Any:
    toolchain("jq")
    toolchain("curl")
    return shell(f'sh "{TERRAFORM_PROGRAM}"', env or {}, stdin=json.dumps(query))


def test_terraform_external_program(stack: DevStack, tmp_path: Path) -> None:
    token_file = tmp_path / "oidc"
    oidc = allowed_token(stack)
    token_file.write_text(oidc + "\n")
    query = {
        "endpoint": stack.gateway_url,
        "scope": SCOPE,
        "identity": IDENTITY,
        "ca_file": str(stack.ca_cert),
    }
    by_file = terraform_program({**query, "token_file": str(token_file)})
    by_env = terraform_program(
        {**query, "token_env": "OIDC", "audience": stack.domain}, {"OIDC": oidc}
    )
    for run in (by_file, by_env):
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        # `external` accepts only a flat object of strings.
        assert isinstance(result, dict)
        assert all(isinstance(v, str) for v in result.values()), result
        assert set(result) == {"token", "token_type", "expires_at", "expires_in"}
        assert result["token_type"] == "Bearer"
        assert 0 < int(result["expires_in"]) <= 3600
        assert github_status(stack, result["token"]) == 200
        assert oidc not in run.stderr


def test_terraform_external_program_errors(stack: DevStack, tmp_path: Path) -> None:
    token_file = tmp_path / "oidc"
    denied = denied_token(stack)
    token_file.write_text(denied)
    query = {
        "endpoint": stack.gateway_url,
        "scope": SCOPE,
        "identity": IDENTITY,
        "ca_file": str(stack.ca_cert),
        "token_file": str(token_file),
    }
    refused = terraform_program(query)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert "HTTP 403" in refused.stderr
    assert "request_id=" in refused.stderr
    assert denied not in refused.stderr

    no_ca = terraform_program({k: v for k, v in query.items() if k != "ca_file"})
    assert no_ca.returncode == 1  # the private CA is not trusted without ca_file
    assert no_ca.stdout == ""
    missing = terraform_program({"endpoint": stack.gateway_url, "scope": SCOPE})
    assert missing.returncode == 1
    assert "query.identity is required" in missing.stderr
