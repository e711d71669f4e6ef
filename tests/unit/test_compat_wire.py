"""How the original Octo STS's request shapes are read (transport/compat.py)."""

from __future__ import annotations

import urllib.parse

import pytest

from octosts.domain.errors import InvalidRequest
from octosts.transport.compat import (
    AMBIGUOUS_SCOPE,
    MAX_FIELDS,
    MAX_FORM_BYTES,
    REPEATED_PARAMETER,
    check_query,
    exchange_request_from_form,
    logged_audiences,
    scope_of,
)

FORM = "application/x-www-form-urlencoded"


def sdk_form(**fields: list[str]) -> bytes:
    """A body as Go's url.Values.Encode writes it (keys sorted, values in order, %-escaped)."""
    pairs = [(key, value) for key in sorted(fields) for value in fields[key]]
    return urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote).encode()


# -- the scope ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "scopes", "expected"),
    [
        ("o/r", [], "o/r"),
        ("", ["o/r"], "o/r"),
        ("o/r", ["o/r"], "o/r"),  # what the SDK sends: scope = scopes[0]
        ("", ["o/r", "o/r"], "o/r"),  # identical repeats name one scope
        ("", [], ""),  # nothing: the exchange says "scope is empty"
    ],
)
def test_scope_is_scopes0_else_scope(scope: str, scopes: list[str], expected: str) -> None:
    assert scope_of(scope, scopes) == expected


@pytest.mark.parametrize(
    ("scope", "scopes"),
    [
        ("", ["o/a", "o/b"]),
        ("o/a", ["o/a", "o/b"]),
        ("o/a", ["o/b"]),
        ("o/a", [""]),
        ("", ["", "o/a"]),
    ],
)
def test_more_than_one_scope_is_refused_not_guessed(scope: str, scopes: list[str]) -> None:
    with pytest.raises(InvalidRequest) as refused:
        scope_of(scope, scopes)
    assert refused.value.reason == AMBIGUOUS_SCOPE
    # The message names the rule, not the caller's values.
    assert "o/a" not in str(refused.value)


def test_logged_audiences_are_bounded() -> None:
    assert logged_audiences(["octo-sts.dev", ""]) == ["octo-sts.dev", ""]
    many = logged_audiences(["x" * 1000] * 50)
    assert len(many) == 5
    assert all(len(v) == 100 for v in many)


# -- form bodies -------------------------------------------------------------------------------


def test_the_sdks_form_reads_as_its_grpc_request() -> None:
    body = sdk_form(
        aud=["octo-sts.dev", "ci"],
        scope=["octo-org/demo"],
        scopes=["octo-org/demo"],
        identity=["ci"],
        cap=["a", "b"],
        identity_provider=["idp"],
    )
    request = exchange_request_from_form(body, FORM)
    assert list(request.aud) == ["octo-sts.dev", "ci"]
    assert request.scope == "octo-org/demo"
    assert list(request.scopes) == ["octo-org/demo"]
    assert request.identity == "ci"
    assert list(request.cap) == ["a", "b"]
    assert request.identity_provider == "idp"


@pytest.mark.parametrize(
    "content_type",
    [
        FORM,
        "Application/X-WWW-Form-URLEncoded",
        f"{FORM}; charset=UTF-8",
        f'{FORM};charset="utf-8"',
    ],
)
def test_form_content_types(content_type: str) -> None:
    body = b"scope=o%2Fr&identity=ci&unknown=1&unknown=2&access_token=x"
    request = exchange_request_from_form(body, content_type)
    assert (request.scope, request.identity) == ("o/r", "ci")  # unknown names are ignored


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"scope=o%2Fa&scope=o%2Fb&identity=ci", REPEATED_PARAMETER),
        (b"scope=o%2Fa&identity=ci&identity=other", REPEATED_PARAMETER),
        (b"scope=o%2Fa&identity=ci&identity_provider=a&identity_provider=b", REPEATED_PARAMETER),
        (b"scope=o%2Fa&identity=ci&identity=ci", REPEATED_PARAMETER),  # even when equal
        (b"scope=%ff&identity=ci", "bad_form"),  # percent-escapes that are not UTF-8
        (b"scope=\xff&identity=ci", "bad_form"),
        (b"&".join([b"x=1"] * (MAX_FIELDS + 1)), "bad_form"),
        (b"scope=" + b"a" * MAX_FORM_BYTES, "bad_form"),
    ],
)
def test_bad_forms_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        exchange_request_from_form(body, FORM)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "", "multipart/form-data", f"{FORM}; charset=latin-1"],
)
def test_other_content_types_are_refused(content_type: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        exchange_request_from_form(b"scope=o%2Fr&identity=ci", content_type)
    assert refused.value.reason == "bad_form"


# -- query strings (the edge's check before GET / JSON POST) ----------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/sts/exchange",
        "/sts/exchange?scope=o/r&identity=ci",
        # The octo-sts action's request.
        "/sts/exchange?scope=o/r&scopes=o/r&identity=ci",
        # What the SDK repeats, and names the transcoder ignores, may repeat.
        "/sts/exchange?scope=o/r&identity=ci&aud=a&aud=b&cap=x&cap=y&scopes=o/r&scopes=o/r",
        "/sts/exchange?scope=o/r&identity=ci&utm=1&utm=2",
        # `scopes` is a repeated field of octosts.v1 (several repositories): the transcoder
        # reads all of it, and the service holds scope and scopes to the typed API's rule.
        "/sts/exchange?scopes=o/a&identity=ci",
        "/sts/exchange?scopes=o/a&scopes=o/b&identity=ci",
        "/sts/exchange?scope=o/a&scopes=o/b&identity=ci",
    ],
)
def test_queries_that_say_one_thing_pass(path: str) -> None:
    check_query(path)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("scope=o/a&scope=o/b&identity=ci", REPEATED_PARAMETER),
        ("scope=o/a&identity=ci&identity=other", REPEATED_PARAMETER),
        ("scope=o/a&identity=ci&audience=a&audience=b", REPEATED_PARAMETER),
        ("scope=%ff&identity=ci", "bad_query"),
        ("&".join(["x=1"] * (MAX_FIELDS + 1)), "bad_query"),
    ],
)
def test_ambiguous_queries_are_refused(query: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_query(f"/sts/exchange?{query}")
    assert refused.value.reason == reason


@pytest.mark.parametrize("name", ["scope%00", "scope%00x", "identity%00%00a"])
def test_a_name_with_a_nul_is_not_the_field_it_starts_with(name: str) -> None:
    # protobuf's upb looks field names up as C strings: "scope\0x" found the `scope` field,
    # and setting it raised AttributeError (INTERNAL) instead of ignoring an unknown name.
    # Found by the compat fuzz target (tests/fuzz/corpus/compat/crash-nul-in-field-name).
    check_query(f"/sts/exchange?scope=o/r&{name}=o/other&{name}=x")
    request = exchange_request_from_form(f"scope=o%2Fr&{name}=a&{name}=b".encode(), FORM)
    assert (request.scope, request.identity) == ("o/r", "")
