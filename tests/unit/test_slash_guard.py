"""The RE2 slash guard: which issuer patterns may match '/' other than as a fixed literal."""

from __future__ import annotations

import pytest

from octosts.domain.slash_guard import check_pattern_guard

# Every case from the issue, plus spellings of the same thing.
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
    r"https://x\.com(?:/a|/b)",
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
]


@pytest.mark.parametrize("pattern", REFUSED)
def test_guard_refuses_patterns_that_can_match_slash(pattern: str) -> None:
    with pytest.raises(ValueError, match="may match '/'") as info:
        check_pattern_guard(pattern)
    assert repr(pattern)[:40] in str(info.value)  # the error names the pattern


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_guard_accepts_fixed_slashes_and_slash_free_classes(pattern: str) -> None:
    check_pattern_guard(pattern)
