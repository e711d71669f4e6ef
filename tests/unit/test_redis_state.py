"""The Redis plumbing's pure parts: the circuit breaker, value seals, configuration, settings."""

from __future__ import annotations

import pytest

from octosts.adapters.redis_state import (
    CircuitBreaker,
    RedisConfig,
    RedisState,
    ident,
    url_problem,
)
from octosts.settings import SettingsError, load
from tests.fakes import FakeClock

URL = "redis://127.0.0.1:6379/0"
KEY = b"k" * 32


def breaker(clock: FakeClock, failures: int = 3) -> CircuitBreaker:
    return CircuitBreaker(failures=failures, open_seconds=5.0, timer=clock.now)


def test_breaker_opens_after_failures_in_a_row_only() -> None:
    clock = FakeClock()
    b = breaker(clock)
    assert b.failed() is False
    assert b.failed() is False
    assert b.succeeded() is False  # a success in between starts the count again
    assert not b.failed()
    assert not b.failed()
    assert b.failed() is True  # the third in a row opens it
    assert b.is_open
    assert not b.allow()


def test_breaker_lets_one_probe_through_after_the_pause() -> None:
    clock = FakeClock()
    b = breaker(clock, failures=1)
    b.failed()
    clock.advance(4.9)
    assert not b.allow()
    clock.advance(0.2)
    assert b.allow()  # the probe
    assert not b.allow()  # only one at a time
    assert b.failed() is False  # still open (it was): no new "opened" event
    assert not b.allow()
    clock.advance(5.1)
    assert b.allow()
    assert b.succeeded() is True  # the probe's success closes it
    assert not b.is_open
    assert b.allow()


def test_a_cancelled_probe_frees_the_slot() -> None:
    clock = FakeClock()
    b = breaker(clock, failures=1)
    b.failed()
    clock.advance(6)
    assert b.allow()
    b.abandoned()
    assert b.allow()


def state(key: bytes | None) -> RedisState:
    return RedisState(RedisConfig(url=URL, hmac_key=key))


def test_signed_values_are_bound_to_their_key_name_and_body() -> None:
    signed = state(KEY)
    sealed = signed.seal("octosts:v1:policy:a", b'{"x":1}')
    assert signed.open("octosts:v1:policy:a", sealed) == b'{"x":1}'
    # Moved to another key (another org's entry), tampered with, or signed with another key.
    assert signed.open("octosts:v1:policy:b", sealed) is None
    assert signed.open("octosts:v1:policy:a", sealed[:-1] + b"2") is None
    assert state(b"o" * 32).open("octosts:v1:policy:a", sealed) is None
    # Unsigned values are refused where values must be signed, and the other way round.
    plain = state(None).seal("octosts:v1:policy:a", b'{"x":1}')
    assert signed.open("octosts:v1:policy:a", plain) is None
    assert state(None).open("octosts:v1:policy:a", sealed) is None
    assert state(None).open("octosts:v1:policy:a", plain) == b'{"x":1}'
    assert signed.open("octosts:v1:policy:a", b"s") is None


def test_key_parts_cannot_be_confused() -> None:
    assert ident("a:b", "c") != ident("a", "b:c")
    assert ident("a", "b") != ident("a,b")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://r:6379/0", None),
        ("rediss://:secret@r.example:6380", None),
        ("unix:///run/redis.sock", None),
        ("http://r:6379", "must be a redis://, rediss:// or unix:// URL"),
        ("redis://", "has no host"),
        ("r:6379", "must be a redis://, rediss:// or unix:// URL"),
    ],
)
def test_urls(url: str, problem: str | None) -> None:
    assert url_problem(url) == problem


@pytest.mark.parametrize(
    "bad",
    [
        {"url": "http://x"},
        {"url": URL, "hmac_key": b"short"},
        {"url": URL, "timeout": 0},
        {"url": URL, "breaker_failures": 0},
        {"url": URL, "prefix": "a b"},
    ],
)
def test_config_refuses(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="RedisConfig"):
        RedisConfig(**bad)  # type: ignore[arg-type]


def test_repr_shows_no_url_or_key() -> None:
    config = RedisConfig(url="redis://:hunter2hunter2@r:6379", hmac_key=KEY)
    assert "hunter2" not in repr(config)
    assert "kkkk" not in repr(config)


BASE = {
    "STS_DOMAIN": "sts.example.com",
    "GITHUB_APP_ID": "1",
    "GITHUB_APP_PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----\nx\n-----END RSA PRIVATE KEY-----",
}


def test_settings_are_off_by_default_and_checked_without_echoing_secrets() -> None:
    settings = load(BASE)
    assert settings.redis_url == ""
    with pytest.raises(SettingsError) as info:
        load(
            {
                **BASE,
                "OCTOSTS_REDIS_URL": "http://:hunter2hunter2@r:6379",
                "OCTOSTS_REDIS_HMAC_KEY": "too-short-hunter3",
                "OCTOSTS_REDIS_PREFIX": "a b",
            }
        )
    message = str(info.value)
    assert "OCTOSTS_REDIS_URL: must be a redis://" in message
    assert "OCTOSTS_REDIS_HMAC_KEY: must be at least 32 bytes" in message
    assert "OCTOSTS_REDIS_PREFIX" in message
    assert "hunter2" not in message
    assert "hunter3" not in message
    assert "hunter2" not in repr(load({**BASE, "OCTOSTS_REDIS_URL": "redis://:hunter2@r"}))


def test_a_signing_key_without_redis_is_a_mistake() -> None:
    with pytest.raises(SettingsError, match="set without OCTOSTS_REDIS_URL"):
        load({**BASE, "OCTOSTS_REDIS_HMAC_KEY": "k" * 32})
