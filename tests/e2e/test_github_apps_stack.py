"""Several GitHub Apps through the real stack ([fleet]): ``octo-sts dev stack --apps 3``.

Real processes: the dev issuer, the GitHub emulator serving three Apps (``--app``), an
``octo-sts serve`` replica configured with ``GITHUB_APPS`` and Envoy over TLS. Callers see each
App mint in turn, and 429 with the earliest ``Retry-After`` once GitHub holds every App.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from octosts.dev.github import token_sha256
from octosts.dev.stack import DevStack
from tests.e2e.conftest import start_stack
from tests.e2e.test_gateway_stack import (
    EXCHANGE,
    REPO_QUERY,
    assert_token_json,
    bearer,
    http,
    repo_token,
)
from tests.e2e.test_github_faults import add_fault, github_calls

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    running = start_stack(tmp_path_factory.mktemp("apps"), replicas=1, apps=3)
    try:
        yield running
    finally:
        running.stop()


def emulator(stack: DevStack, path: str) -> Any:
    return httpx.get(f"{stack.github_url}/_emulator/{path}", timeout=5).json()


async def test_each_app_mints_in_turn_and_all_held_is_429_with_the_earliest_retry_after(
    stack: DevStack,
) -> None:
    token = repo_token(stack)
    async with http(stack) as client:
        bodies = [
            assert_token_json(await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token)))
            for _ in range(6)
        ]
        ledger = {t["token_sha256"]: t["app_id"] for t in emulator(stack, "tokens")["tokens"]}
        minted = collections.Counter(ledger[token_sha256(b["token"])] for b in bodies)
        assert minted == {1: 2, 2: 2, 3: 2}
        installations = {
            a["id"]: a["installations"]["octo-org"] for a in emulator(stack, "apps")["apps"]
        }
        since = time.time()
        for app, reset_in in {1: 300, 2: 120, 3: 200}.items():
            path = f"/app/installations/{installations[app]}/access_tokens"
            add_fault(stack, kind="primary_rate_limit", reset_in=reset_in, path_prefix=path)
        answers = [
            await client.get(EXCHANGE, params=REPO_QUERY, headers=bearer(token)) for _ in range(5)
        ]
    for resp in answers:
        assert resp.status_code == 429, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        assert 110 <= int(resp.headers["retry-after"]) <= 121  # App 2's, the first to lift
    # Each App's mint was refused once; then GitHub heard no more.
    assert github_calls(stack, "POST", "/app/installations/", since) == 3
