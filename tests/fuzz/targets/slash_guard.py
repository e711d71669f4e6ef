"""Issuer patterns and the RE2 slash guard, with a '/' oracle.

Input: UTF-8 text; the first line is an issuer pattern, each further line an
issuer to match it against. Path: ``domain.issuers.compile_issuer_pattern`` (RE2
compile, then ``domain.slash_guard.check_pattern_guard``) and
``compile_allowlist``, which the deployment's ``OCTOSTS_ISSUER_PATTERNS`` and the
org files go through.

Property: only ``ValueError`` (the guard's and RE2's refusal) and
``AllowlistInvalid`` escape. The oracle, independent of how the guard reads a
pattern: if the guard accepts a pattern, every line it fullmatches has the same
number of '/', and it matches no string with one '/' more or fewer than such a line
(``_support.check_fixed_slashes``).
A guard that let '/' match at a variable position (``.``, ``\\S``, ``(/a)?``, a
'/' in an alternation branch that factoring cannot fix...) fails this for some
line, so the property holds for any rewrite of the guard, not just today's.
"""

from __future__ import annotations

from octosts.domain.issuers import AllowlistInvalid, compile_allowlist, compile_issuer_pattern
from tests.fuzz.targets._support import check_fixed_slashes, text

MAX_LINES = 40


def one_input(data: bytes) -> None:
    source, _, rest = text(data).partition("\n")
    try:
        pattern = compile_issuer_pattern(source)
    except ValueError:
        pattern = None
    try:
        compile_allowlist([], [source])
    except AllowlistInvalid:
        assert pattern is None, "compile_allowlist refused what compile_issuer_pattern accepted"
        return
    assert pattern is not None, "compile_allowlist accepted what compile_issuer_pattern refused"
    check_fixed_slashes(pattern, rest.split("\n")[:MAX_LINES])
