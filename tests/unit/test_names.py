from __future__ import annotations

import pytest

from octosts.domain.errors import InvalidRequest
from octosts.domain.names import Scope, check_identity, parse_scope


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("octo-sts", Scope("octo-sts", None)),
        ("a", Scope("a", None)),
        ("A1-b2", Scope("A1-b2", None)),
        ("o" * 39, Scope("o" * 39, None)),
        ("octo-sts/app", Scope("octo-sts", "app")),
        ("org/.github", Scope("org", ".github")),
        ("org/a.b_c-d", Scope("org", "a.b_c-d")),
        ("org/" + "r" * 100, Scope("org", "r" * 100)),
        ("org/...", Scope("org", "...")),
    ],
)
def test_valid_scopes(text: str, expected: Scope) -> None:
    assert parse_scope(text) == expected
    assert str(parse_scope(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/",
        "org/",
        "/repo",
        "-org",
        "org-",
        "o--rg",
        "o_rg",
        "o.rg",
        "o" * 40,
        "org/" + "r" * 101,
        "org/.",
        "org/..",
        "org/a/b",
        "org/repo/",
        "org/re po",
        "org/re%2fpo",
        "org\\repo",
        "ørg",
        "org/répo",
        "org\n",
        "org/repo\n",
        "org/repo\x00",
        "org/\uff52\uff45\uff50\uff4f",  # fullwidth letters are not ASCII
    ],
)
def test_invalid_scopes(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_scope(text)
    assert info.value.reason == "invalid_request"
    assert "scope" in str(info.value)


@pytest.mark.parametrize("text", ["ci", "a.b_c-D9", "x" * 100, "...", "-lead"])
def test_valid_identities(text: str) -> None:
    assert check_identity(text) == text


@pytest.mark.parametrize(
    "text", ["", ".", "..", "x" * 101, "a/b", "a b", "a\nb", "é", "a:b", "a\x00", "../etc"]
)
def test_invalid_identities(text: str) -> None:
    with pytest.raises(InvalidRequest):
        check_identity(text)


def test_messages_echo_only_a_bounded_sanitised_prefix() -> None:
    hostile = "\x1b[31m" + "A" * 10_000
    for call in (parse_scope, check_identity):
        with pytest.raises(InvalidRequest) as info:
            call(hostile)
        message = str(info.value)
        assert "\x1b" not in message
        assert len(message) < 300
        assert "A" * 41 not in message
