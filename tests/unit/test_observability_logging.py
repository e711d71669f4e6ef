"""Redaction of secrets from log events, and the logging configuration."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from octosts.observability.logging import (
    _PATTERNS,
    configure_logging,
    redact,
    redact_value,
    scrub,
)

JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ"
    ".eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIiwic3ViIjoiYWxpY2UifQ"
    ".c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
)
GHS = "ghs_16C7e42F292c6912E7710c838347Ae178B4a"
GHP = "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
PAT = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretsecretsecret\n"
    "abcdefabcdef\n-----END RSA PRIVATE KEY-----"
)
SECRETS = (JWT, GHS, GHP, PAT, "MIIEowIBAAKCAQEAsecretsecretsecret", "opaque-bearer-value")


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    # Fragments too: the signature and the token body.
    assert "c2lnbmF0dXJl" not in text
    assert "16C7e42F292c" not in text


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        (f"token is {JWT} here", "token is [REDACTED_JWT] here"),
        (f"minted {GHS}.", "minted [REDACTED_GITHUB_TOKEN]."),
        (f"pat={PAT}", "pat=[REDACTED_GITHUB_TOKEN]"),
        (f"key:\n{PEM}\nafter", "key:\n[REDACTED_PRIVATE_KEY]\nafter"),
        ("Authorization: Bearer opaque-bearer-value", "Authorization: [REDACTED]"),
        ('{"authorization": "opaque-bearer-value"}', '{"authorization": "[REDACTED]"}'),
        ("sent Bearer opaque-bearer-value", "sent Bearer [REDACTED]"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecret", "[REDACTED_PRIVATE_KEY]"),
    ],
)
def test_scrub(raw: str, kept: str) -> None:
    assert scrub(raw) == kept


def test_scrub_keeps_ordinary_text() -> None:
    text = (
        "policy org/repo/.github/chainguard/deploy.sts.yaml: subject does not match (sha256 ab12)"
    )
    assert scrub(text) == text


def test_redact_processor_walks_nested_values_keys_and_objects() -> None:
    class Holder:
        def __repr__(self) -> str:
            return f"Holder({GHP})"

    event = {
        "event": f"got {JWT}",
        "authorization": "opaque-bearer-value",
        "Private-Key": "anything at all",
        "token_sha256": "ab" * 32,
        "nested": {"list": [1, True, None, {"deep": (GHS, PEM)}], "headers": {"Token": "x"}},
        GHS: "token as a key",
        "obj": Holder(),
        "err": ValueError(f"bad token {JWT}"),
        "raw": GHS.encode(),
    }
    out = redact(None, "info", event)
    assert_clean(repr(out))
    assert out["authorization"] == "[REDACTED]"
    assert out["Private-Key"] == "[REDACTED]"
    assert out["token_sha256"] == "ab" * 32  # a fingerprint is not a secret
    assert out["nested"]["list"][:3] == [1, True, None]
    assert out["nested"]["headers"]["Token"] == "[REDACTED]"
    assert out["err"] == "ValueError: bad token [REDACTED_JWT]"
    assert "[REDACTED_GITHUB_TOKEN]" in out


def test_redact_value_bounds_depth() -> None:
    deep: list[object] = []
    cur = deep
    for _ in range(50):
        nxt: list[object] = []
        cur.append(nxt)
        cur = nxt
    assert "[TRUNCATED]" in repr(redact_value(deep))


def fail() -> None:
    raise RuntimeError(f"upstream said {GHP}")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buf = io.StringIO()
    try:
        yield buf
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_json_logging_redacts_events_exceptions_and_stdlib_records(stream: io.StringIO) -> None:
    configure_logging(level="info", fmt="json", stream=stream)
    log = structlog.get_logger("t")
    structlog.contextvars.bind_contextvars(request_id="req-9")
    log.info("exchange", header=f"Authorization: Bearer {JWT}", extra={"k": GHS})
    log.debug("hidden below the level")
    try:
        fail()
    except RuntimeError:
        log.exception("boom")
    logging.getLogger("some.library").warning("header %s", f"Bearer {JWT}")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["exchange", "boom", "header Bearer [REDACTED_JWT]"]
    assert lines[0]["request_id"] == "req-9"
    assert lines[0]["level"] == "info"
    assert "timestamp" in lines[0]
    assert lines[1]["exception"]  # the traceback is kept, scrubbed
    assert_clean(stream.getvalue())


def test_console_logging_redacts(stream: io.StringIO) -> None:
    configure_logging(level="debug", fmt="console", stream=stream)
    structlog.get_logger().debug("dev", token=GHS, note=f"jwt {JWT}")
    try:
        fail()
    except RuntimeError:
        structlog.get_logger().exception("boom")
    text = stream.getvalue()
    assert "dev" in text
    assert "boom" in text
    assert_clean(text)


def test_bad_configuration_is_refused(stream: io.StringIO) -> None:
    with pytest.raises(ValueError, match="level"):
        configure_logging(level="loud", stream=stream)
    with pytest.raises(ValueError, match="format"):
        configure_logging(fmt="xml", stream=stream)  # type: ignore[arg-type]


_FRAGMENTS = [
    "eyJhbGciOiJSUzI1NiJ9",
    ".eyJzdWIiOiJ4In0",
    ".c2ln",
    "ghs_" + "a" * 20,
    "ghp_" + "Z" * 16,
    "github_pat_" + "A1_" * 8,
    "Authorization: ",
    'AUTHORIZATION"="',
    "Bearer ",
    "bAsIc ",
    "basic dXNlcjpwYXNzd29yZA==",
    "BEARER abcdefgh.12345678",
    "token ",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----",
    "abcdefgh12345678",
    " ",
    "\n",
    '"',
    "=",
    ":",
]


def _every_pattern(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=6), max_size=12).map("".join))
def test_the_quick_scan_never_skips_text_a_pattern_would_change(text: str) -> None:
    # scrub returns text untouched when the one quick scan finds no trigger: it must find one
    # wherever any pattern would replace something.
    assert scrub(text) == _every_pattern(text)
