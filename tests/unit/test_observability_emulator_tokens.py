"""The GitHub emulator's store of issued tokens stays bounded under load.

The overhead benchmark mints thousands of tokens a second against one emulator;
an unbounded store made every mint slower (throughput fell round by round).
Driven through ``GitHubEmulator.handle`` (no socket: the store is what is tested).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from octosts.adapters.signer import app_jwt
from octosts.dev.github import FIRST_INSTALLATION_ID, TOKEN_LIFETIME, GitHubEmulator
from tests.emulator import APP_ID, make_emulator, real_time_clock, signer
from tests.fakes import FakeClock


def _mint(emulator: GitHubEmulator, clock: FakeClock) -> str:
    # A fresh app JWT each time: the tests move the clock past its 10 min lifetime.
    auth = f"Bearer {asyncio.run(app_jwt(signer(), APP_ID, clock))}"
    answer = emulator.handle(
        "POST",
        f"/app/installations/{FIRST_INSTALLATION_ID}/access_tokens",
        {"authorization": auth},
        b"{}",
    )
    assert answer.status == 201, answer.body
    return str(json.loads(answer.body)["token"])


def _status_with(emulator: GitHubEmulator, token: str) -> int:
    answer = emulator.handle(
        "GET", "/installation/repositories", {"authorization": f"token {token}"}, b""
    )
    return answer.status


@pytest.fixture
def clock() -> FakeClock:
    return real_time_clock()


def test_store_is_capped_oldest_first(tmp_path: Path, clock: FakeClock) -> None:
    emulator = make_emulator(tmp_path, clock, rate_limit=1000, max_tokens=5)
    tokens = [_mint(emulator, clock) for _ in range(8)]
    assert len(emulator.ledger.live()) == 5
    assert _status_with(emulator, tokens[0]) == 401  # evicted, like a revoked token
    assert _status_with(emulator, tokens[2]) == 401
    assert _status_with(emulator, tokens[-1]) == 200
    assert _status_with(emulator, tokens[3]) == 200


def test_expired_tokens_are_dropped_on_mint(tmp_path: Path, clock: FakeClock) -> None:
    emulator = make_emulator(tmp_path, clock, rate_limit=1000)
    old = [_mint(emulator, clock) for _ in range(3)]
    clock.advance(TOKEN_LIFETIME / 2)
    newer = _mint(emulator, clock)
    clock.advance(TOKEN_LIFETIME / 2 + 1)  # the first three expired, ``newer`` has not
    latest = _mint(emulator, clock)
    assert emulator.ledger.live() == {newer, latest}
    assert all(_status_with(emulator, t) == 401 for t in old)
    assert _status_with(emulator, newer) == 200


def test_revoking_one_token_keeps_the_others(tmp_path: Path, clock: FakeClock) -> None:
    emulator = make_emulator(tmp_path, clock, rate_limit=1000)
    first, second = _mint(emulator, clock), _mint(emulator, clock)
    answer = emulator.handle(
        "DELETE", "/installation/token", {"authorization": f"token {first}"}, b""
    )
    assert answer.status == 204
    assert _status_with(emulator, first) == 401
    assert _status_with(emulator, second) == 200
