"""The RE2 slash guard: which issuer patterns may match '/' other than as a fixed literal.

Every row's verdict is the original's (Go's ``regexp/syntax`` tree, judged by the same
rule), except where a comment says otherwise; ``tests/integration/test_slash_guard_go.py``
checks these tables and a generated corpus against Go's own parser.
"""

from __future__ import annotations

import pytest

from octosts.domain.slash_guard import check_pattern_guard

# Atoms that match '/', and '/' at a variable position, in every spelling.
REFUSED = [
    ".",
    r"https://.*",
    r"https://x\.com/.+",
    r"https://x\.com\S+",
    r"https://x\.com[^\n]+",
    r"https://x\.com[[:ascii:]]+",
    r"https://x\.com[[:punct:]]",
    r"https://x\.com[[:^alpha:]]",
    r"https://x\.com[.-9]",
    r"https://x\.com[+-0]",
    r"https://x\.com[\x20-\x7e]",
    r"https://x\.com\p{P}",
    r"https://x\.com\pP",
    r"https://x\.com\p{Po}",
    r"https://x\.com\p{Common}",
    r"https://x\.com\PL",
    r"https://x\.com\p{^Greek}",
    r"https://x\.com[^a-z]",
    r"https://x\.com\W",
    r"https://x\.com\D",
    r"https://x\.com\C",
    r"https://x\.com/*",
    r"https://x\.com/+",
    r"https://x\.com/?",
    r"https://x\.com(/a)?",
    r"https://x\.com(/a){0,3}",
    r"https://x\.com(/a){2}",
    r"https://a\.com|https://b\.com/x",
    r"https://x\.com(\x2F)*",
    r"https://x\.com\x{2f}?",
    r"https://x\.com\057?",
    r"https://x\.com\/*",
    r"https://x\.com(\Q/\E)?",
    r"https://x\.com[/]*",
    r"(?s:https://x\.com.)",
    r"(?P<host>[a-z]+|/)",
]

# Alternations the simplification cannot make safe: the '/' stays inside a branch.
REFUSED_ALTERNATIONS = [
    r"https://a\.com/x|https://b\.com/y",  # common prefix "https://", then a '/' per branch
    r"https://a\.example\.com|http://b\.example\.com",  # common prefix "http" only
    r"https://a\.com(?:/x|/y/z)",  # '/' factored, "y/z" keeps one
    r"https://a\.com/(?:x|y)|https://b\.com",
    r"https://a|x|https://b",  # only adjacent branches are factored
    r"(?i:https://a)|https://b",  # case-folded and exact literals are not one string
    r"(?i)https:[/]/a|https://b",  # under (?i) a typed '/' is case-folded, [/] is not
    r"^https://a\.com|^https://b\.com",  # an anchor is not a literal: nothing is factored
    r"(https://a\.com)|(https://b\.com)",  # nor is a capture group
    r"(?:)https://a\.com|https://b\.com",
    r"(?:https://a\.com|https://b\.com)?",
    r"https://a\.com|",
    r"https://(good\.example\.com|evil\.com/x/trusted\.example\.com)",
    r"https://x\.com/(?i)?",  # a quantifier after a flags group repeats the '/' before it
]

ACCEPTED = [
    r"https://token\.actions\.githubusercontent\.com",
    r"https://[a-z0-9-]+\.oidc\.example\.com",
    r"https://oidc\.example\.com/[a-z0-9-]+",
    r"https://gitlab\.com/[^/]+",
    r"https:\x2F/x\.com",
    r"https:\x{2F}\x2fx\.com",
    r"https:\/\/x\.com",
    r"https://x\.com/\Q/\E",
    r"https://x\.com[/]a",
    r"(?i)https://X\.example\.com/(?:a){1}",
    r"https://(?:a|b)\.example\.com/x",
    r"https://[\pL\d-]+\.example\.com",
    r"https://[[:alnum:]-]+\.example\.com",
    r"https://[]a-]+\.example\.com",
    r"^https://a\.example\.com/\d{1,5}$",
    r"https://\p{Greek}+\.example\.com",
    r"https://x\.com\Q/a\E?",  # the '?' repeats the last character only
    r"https://x\.com/(?i)",
]

# Alternations whose '/' are at fixed positions once Go's parser has simplified them.
ACCEPTED_ALTERNATIONS = [
    r"https://a\.example\.com|https://b\.example\.com",  # the original's own test
    r"https://a\.com|https://b\.com|https://c\.com",
    r"https://a\.com|https://a\.com",
    r"(?i)https://a\.example\.com|https://b\.example\.com",
    r"(?i)HTTPS://A\.example\.com|https://b\.example\.com",  # (?i) compares case-folded
    r"(?i:https://a\.com)|(?i:https://b\.com)",
    r"(?:https://a\.example\.com|https://b\.example\.com)",
    r"(?:https://(?:a|b)\.example\.com|https://c\.example\.com)",
    r"https://a\.example\.com/x|https://a\.example\.com/y",  # differ after every '/'
    r"https://a\.example\.com/(?:x|y)",
    r"https://x\.com(?:/a|/b)",
    r"https://x\.com(?:/|/)a",
    r"https:[/]/a\.example\.com|https://b\.example\.com",  # [/] is the literal '/'
    r"https:\x2F\x2Fa\.com|https://b\.com",
    r"[Hh]ttps://a\.com|[Hh]ttps://b\.com",  # [Hh] is a case-folded 'H'
    r"[Kk]ttps://a\.com|[Kk]ttps://b\.com",  # [Kk] stays a class; equal classes factor too
    r"[a-z]{3}/x|[a-z]{3}/y",  # so do equal fixed repeats of a class
]


@pytest.mark.parametrize("pattern", REFUSED + REFUSED_ALTERNATIONS)
def test_guard_refuses_patterns_that_can_match_slash(pattern: str) -> None:
    with pytest.raises(ValueError, match="may match '/'") as info:
        check_pattern_guard(pattern)
    message = str(info.value)
    assert f'pattern "{pattern}"' in message  # named as written, backslashes not doubled
    assert r"https://[a-z0-9-]+\.example\.com" in message  # and how to write it instead


@pytest.mark.parametrize("pattern", ACCEPTED + ACCEPTED_ALTERNATIONS)
def test_guard_accepts_fixed_slashes_and_slash_free_classes(pattern: str) -> None:
    check_pattern_guard(pattern)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"https://a\.com|https://b\.com/x", "a literal '/' at offset 29 is in an alternation"),
        (r"https://x\.com/(?i)?", "a literal '/' at offset 14 is under a repetition"),
        (r"https://x\.com\Q/a\E*x/?", "a literal '/' at offset 22 is under a repetition"),
        (r"https://x\.com\S", r'"\S" at offset 14 matches'),
        (r"https://x\.com[^a]", '"[^a]" at offset 14 matches'),
    ],
)
def test_the_reason_names_the_part_and_its_offset(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError, match="may match") as info:
        check_pattern_guard(pattern)
    assert reason in str(info.value)


def test_alternation_advice_says_how_to_rewrite() -> None:
    with pytest.raises(ValueError) as info:
        check_pattern_guard(r"https://a\.com/x|https://b\.com/y")
    assert "alternatives may differ only after the last '/'" in str(info.value)


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"a\kb", r"unknown escape \k"),
        ("(?:" * 65 + "a" + ")" * 65, "nested deeper than 64"),
    ],
)
def test_what_the_reader_cannot_judge_is_refused_with_the_reason(pattern: str, why: str) -> None:
    with pytest.raises(ValueError, match="cannot be checked for '/' safety") as info:
        check_pattern_guard(pattern)
    assert why in str(info.value)


def test_patterns_at_the_deployment_size_limit_are_judged() -> None:
    """4096 characters of alternation or nesting: a verdict, never a RecursionError."""
    chain = "|".join("a" * n for n in range(1, 90))[:4096]
    check_pattern_guard(chain)
    slashes = "|".join(f"https://x{'b' * n}/" for n in range(300))[:4096]
    with pytest.raises(ValueError, match="may match '/'"):
        check_pattern_guard(slashes)
