"""Quoting untrusted text in messages: one helper for names, policies and permissions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from octosts.domain.errors import InvalidRequest, PolicyInvalid
from octosts.domain.names import check_identity, parse_scope
from octosts.domain.permissions import permission_problem
from octosts.domain.policy import compile_policy, decide_trust
from octosts.domain.text import clip, show
from tests.fakes import verified

HOSTILE = "\x1b[31m\u202e<b>" + "A" * 10_000


def test_clip_marks_what_it_cut() -> None:
    assert clip("abc", 3) == "abc"
    assert clip("abcd", 3) == "abc..."
    assert clip("", 3) == ""


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "'plain'"),
        ("a\x1bb", "'a\\x1bb'"),
        ("\u202e", "'\\u202e'"),
        ("é", "'\\xe9'"),
        ("x" * 41, "'" + "x" * 40 + "...'"),
    ],
)
def test_show_quotes_escapes_and_bounds(text: str, shown: str) -> None:
    assert show(text, 40) == shown


@given(st.text(max_size=500), st.integers(min_value=1, max_value=200))
def test_show_is_printable_ascii_and_bounded(text: str, limit: int) -> None:
    shown = show(text, limit)
    assert shown.isascii()
    assert shown.isprintable()
    # every character may become a 10-character escape (\U0001f600), plus quotes and "..."
    assert len(shown) <= 10 * limit + 5


def _messages() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, call in (("scope", parse_scope), ("identity", check_identity)):
        with pytest.raises(InvalidRequest) as info:
            call(HOSTILE)
        out[name] = str(info.value)
    problem = permission_problem("contents", HOSTILE)
    assert problem is not None
    out["permission"] = problem
    with pytest.raises(PolicyInvalid) as bad:
        compile_policy(
            {
                "issuer": "https://a.example",
                "subject": "x",
                "permissions": {"contents": "read"},
                "repositories": [HOSTILE],
            },
            kind="org",
        )
    out["policy"] = " ".join(p.message for p in bad.value.problems)
    policy = compile_policy(
        {"issuer": "https://a.example", "subject": "x", "permissions": {"contents": "read"}},
        kind="repo",
    )
    out["decision"] = decide_trust(
        policy, verified(iss="https://a.example", sub=HOSTILE), domain="d"
    ).detail
    return out


@pytest.mark.parametrize("where", ["scope", "identity", "permission", "policy", "decision"])
def test_every_domain_message_quotes_hostile_input_the_same_way(where: str) -> None:
    message = _messages()[where]
    assert message.isascii()
    assert message.isprintable()
    assert "\\x1b[31m\\u202e<b>AAA" in message  # escaped, not dropped or replaced
    assert "A" * 121 not in message
