"""The real chainguard.dev/sdk (v0.1.195) Go client against the live stack, unchanged.

tests/e2e/chainguard_sdk is a Go test module depending on the SDK: ``sts.New(...).Exchange``
with the audiences existing callers send, a raw ``SecurityTokenServiceClient`` with only
``Scopes``, the HTTP/1 downgrade exchanger (form POSTs) and the ``octosts`` token source,
through Envoy over TLS and straight to a replica; a wrong identity is PermissionDenied and an
expired token Unauthenticated. Every minted token is used against the GitHub emulator.

``make client-deps`` downloads the module's dependencies and compiles it once; here ``go test``
runs it with the stack's addresses (a cold build cache makes the first run slow, hence the
timeout). Go missing fails under ``CI`` and skips elsewhere, like the other client tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from octosts.dev.stack import DevStack
from tests.e2e.test_clients_live import (
    IDENTITY,
    REPO_SUB,
    SCOPE,
    WORKFLOW,
    allowed_token,
    toolchain,
)

pytestmark = pytest.mark.e2e

MODULE = Path(__file__).resolve().parent / "chainguard_sdk"
# Every test of the module, each of which must pass (a skip means the driver is broken).
EXPECTED = {
    "TestSDKExchangeGRPC": 6,  # {envoy, direct} x aud {domain, "", identity}
    "TestSDKRawClientWithOnlyScopes": 2,
    "TestSDKHTTP1Downgrade": 4,
    "TestSDKOctoSTSTokenSource": 0,
    "TestSDKWrongIdentityIsPermissionDenied": 3,
    "TestSDKExpiredTokenIsUnauthenticated": 3,
    "TestSDKSeveralScopesAreInvalidArgument": 0,
}


def sdk_env(stack: DevStack) -> dict[str, str]:
    now = int(time.time())
    expired = stack.token(REPO_SUB, workflow_ref=WORKFLOW, iat=now - 7200, exp=now - 3600)
    # Loopback only: a proxy from the caller's environment must not be asked.
    base = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return {
        **base,
        "OCTO_STS_SDK_GATEWAY": stack.gateway_url,
        "OCTO_STS_SDK_DIRECT": f"http://127.0.0.1:{stack.ports.grpc[0]}",
        "OCTO_STS_SDK_DOMAIN": stack.domain,
        "OCTO_STS_SDK_SCOPE": SCOPE,
        "OCTO_STS_SDK_IDENTITY": IDENTITY,
        "OCTO_STS_SDK_TOKEN": allowed_token(stack),
        "OCTO_STS_SDK_EXPIRED_TOKEN": expired,
        "OCTO_STS_SDK_GITHUB": stack.github_url,
        # The SDK trusts the system roots only; Go reads them from here.
        "SSL_CERT_FILE": str(stack.ca_cert),
    }


@pytest.mark.timeout(600)
def test_chainguard_sdk_against_the_stack(stack: DevStack) -> None:
    go = toolchain("go")
    proc = subprocess.run(
        [go, "test", "-count=1", "-json", "."],
        cwd=MODULE,
        env=sdk_env(stack),
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    outcomes: dict[str, str] = {}
    output: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        name = event.get("Test")
        if name is None:
            continue
        if event["Action"] == "output":
            output.setdefault(name, []).append(event["Output"])
        elif event["Action"] in {"pass", "fail", "skip"}:
            outcomes[name] = event["Action"]
    failed = {n: "".join(output.get(n, [])) for n, o in outcomes.items() if o != "pass"}
    assert not failed, json.dumps(failed, indent=1)[:8000]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for name, subtests in EXPECTED.items():
        assert outcomes.get(name) == "pass", name
        ran = [n for n in outcomes if n.startswith(f"{name}/")]
        assert len(ran) == subtests, (name, ran)
    assert set(outcomes) - {n for n in outcomes if "/" in n} == set(EXPECTED)
