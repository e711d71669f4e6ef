"""Hostile token payloads ([hardening-2] findings 1 and 2) against the pure claim rules.

Times no float can hold and claims nested hundreds of levels deep once escaped as
OverflowError / RecursionError (INTERNAL, HTTP 503). They are authentication errors now.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octosts.adapters.oidc import parse_unverified
from octosts.domain.errors import AuthenticationError, TokenClaimsInvalid, TokenMalformed
from octosts.domain.tokens import (
    MAX_CLAIM_DEPTH,
    MAX_NUMERIC_DATE,
    check_token_times,
    json_too_deep,
    token_from_claims,
)
from tests.hostile import (
    DEEP_CLAIMS,
    DEEP_JSON_TEXTS,
    HOSTILE_TIMES,
    SHALLOW_JSON_TEXTS,
    case_ids,
    nested_lists,
    nested_objects,
)
from tests.issuers import b64url

NOW = 1_700_000_000.0
BASE = {"iss": "https://issuer.example", "sub": "repo:o/r:ref:refs/heads/main", "exp": NOW + 60}


def claims(**more: Any) -> dict[str, Any]:
    return {**BASE, **more}


def token_with_payload(payload: bytes, header: bytes = b'{"alg":"RS256"}') -> str:
    return f"{b64url(header)}.{b64url(payload)}.{b64url(b'sig')}"


@pytest.mark.parametrize(("name", "value"), HOSTILE_TIMES, ids=case_ids(HOSTILE_TIMES))
def test_times_outside_1970_to_9999_are_invalid_claims(name: str, value: object) -> None:
    hostile = claims(**{name: value})
    with pytest.raises(TokenClaimsInvalid, match=f"{name} claim must be seconds"):
        check_token_times(hostile, now=NOW, leeway=30)
    with pytest.raises(TokenClaimsInvalid, match=f"{name} claim must be seconds"):
        token_from_claims(hostile)


@pytest.mark.parametrize("value", [0, 1, NOW, MAX_NUMERIC_DATE, float(MAX_NUMERIC_DATE)])
def test_times_at_the_bounds_are_numbers(value: float) -> None:
    assert token_from_claims(claims(exp=value, nbf=value, iat=value)).expires_at == value


def test_a_hostile_time_read_from_json_text_is_refused() -> None:
    # As a token carries it: digits the JSON parser turns into an int, then the rules see it.
    payload = json.loads('{"iss":"https://issuer.example","sub":"s","exp":1' + "0" * 400 + "}")
    with pytest.raises(TokenClaimsInvalid):
        token_from_claims(payload)


@pytest.mark.parametrize(("name", "value"), DEEP_CLAIMS, ids=case_ids(DEEP_CLAIMS))
def test_deep_claims_are_refused_without_recursing(name: str, value: object) -> None:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)  # a copy recursing per level would fail long before 600
    try:
        with pytest.raises(TokenClaimsInvalid, match="nest deeper than"):
            token_from_claims(claims(**{name: value}))
    finally:
        sys.setrecursionlimit(limit)


def test_claims_exactly_at_the_depth_cap_are_kept() -> None:
    # The payload object is level 1, so its values may nest MAX_CLAIM_DEPTH - 1 more.
    deepest = nested_objects(MAX_CLAIM_DEPTH - 1)
    token = token_from_claims(claims(k=deepest, l=nested_lists(MAX_CLAIM_DEPTH - 1)))
    assert token.claims["k"] == deepest
    with pytest.raises(TokenClaimsInvalid):
        token_from_claims(claims(k=nested_objects(MAX_CLAIM_DEPTH)))


def test_kept_claims_are_a_copy() -> None:
    inner = {"pod": {"name": "p"}}
    token = token_from_claims(claims(**{"kubernetes.io": inner}))
    inner["pod"]["name"] = "changed"
    assert token.claims["kubernetes.io"] == {"pod": {"name": "p"}}


@pytest.mark.parametrize(("name", "value"), DEEP_CLAIMS, ids=case_ids(DEEP_CLAIMS))
def test_deep_payloads_are_malformed_before_any_parser_sees_them(name: str, value: object) -> None:
    bearer = token_with_payload(json.dumps(claims(**{name: value})).encode())
    with pytest.raises(TokenMalformed, match="payload nests deeper than"):
        parse_unverified(bearer)


def test_a_deep_header_is_malformed() -> None:
    header = json.dumps({"alg": "RS256", "x": nested_lists(100)}).encode()
    bearer = token_with_payload(json.dumps(BASE).encode(), header=header)
    with pytest.raises(TokenMalformed, match="header nests deeper than"):
        parse_unverified(bearer)


@pytest.mark.parametrize("raw", DEEP_JSON_TEXTS)
def test_hostile_json_texts_are_refused_as_tokens(raw: bytes) -> None:
    with pytest.raises(AuthenticationError):
        parse_unverified(token_with_payload(raw))


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32"])
def test_a_payload_not_in_utf8_is_malformed(encoding: str) -> None:
    # json.loads reads UTF-16/32 bytes too, and in UTF-16 a '"' byte can be half of another
    # character ("\u0122" is 22 01): the depth scan, reading bytes, lost track of strings and
    # 40 levels passed it. A JWT's JSON is UTF-8 (RFC 7519 section 7.2).
    # Found by the claims fuzz target (tests/fuzz/corpus/claims/payload-utf16-*).
    deep = json.dumps(claims(a="\u0122", x=nested_lists(40)), ensure_ascii=False)
    with pytest.raises(TokenMalformed, match=r"payload is not (UTF-8|JSON)"):
        parse_unverified(token_with_payload(deep.encode(encoding)))


def test_a_payload_with_a_byte_order_mark_is_malformed() -> None:
    with pytest.raises(TokenMalformed, match="payload is not JSON"):
        parse_unverified(token_with_payload(json.dumps(BASE).encode("utf-8-sig")))


@pytest.mark.parametrize("raw", SHALLOW_JSON_TEXTS)
def test_brackets_inside_strings_do_not_count(raw: bytes) -> None:
    assert not json_too_deep(raw)


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=40,
)


@given(JSON_VALUES, st.integers(min_value=1, max_value=20))
def test_depth_scan_agrees_with_the_parsed_depth(value: object, limit: int) -> None:
    raw = json.dumps(value).encode()
    assert json_too_deep(raw, limit=limit) == (_depth(value) > limit)
