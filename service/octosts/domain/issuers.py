"""Organization trusted-token-issuers: which OIDC issuers an org accepts at all.

The file ``.github/chainguard/trusted-token-issuers.yaml`` in the org policy
repository restricts, for every exchange into that organization, which token
issuers may be used, before any trust policy is read::

    mode: enforce            # or audit (default enforce)
    issuers:                 # exact match
      - https://token.actions.githubusercontent.com
    issuer_patterns:         # RE2, full match
      - https://[a-z0-9-]+\\.oidc\\.example\\.com

``compile_trusted_issuers`` validates parsed data (the YAML reading is the
adapter's, ``adapters.policy_yaml.parse_trusted_issuers``).

Pattern guard
-------------
An issuer pattern must not be able to match ``/`` anywhere except as a fixed
literal: otherwise ``https://[a-z.]+\\.example\\.com.*`` would also accept
``https://evil.example/x/.example.com...``-like issuers hosted on someone
else's domain path. google-re2's Python binding does not expose RE2's parser,
so ``check_pattern_guard`` runs only after ``re2.compile`` accepted the
pattern and then reads it with a small recursive-descent parser of RE2 syntax
(groups and flags, alternation, ``* + ? {n,m}``, ``.``, ``\\C``, classes with
ranges, negation, POSIX ``[:name:]``, Perl ``\\d\\s\\w``, Unicode ``\\pX``
``\\p{Name}`` ``\\p{^Name}``, ``\\Q...\\E``, ``\\x..``/``\\x{..}``, octal and
control escapes). It refuses:

* ``.`` and ``\\C`` anywhere;
* any character class that admits ``/`` (``\\S``, ``[^\\n]``, ``[[:ascii:]]``,
  ``[.-9]``, ``\\p{P}``...), except a class holding only ``/`` (``[/]``), which
  is the fixed literal;
* a literal ``/`` (however written: ``/``, ``\\/``, ``\\x2F``, ``\\057``, ``\\Q/\\E``)
  under a repetition (``* + ? {n,m}``, even ``{n}``), an optional group or an
  alternation branch.

A fixed ``/`` (also spelled ``\\x2F``) in the concatenation is fine.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from octosts.domain.errors import IssuerRejected, PolicyInvalid, PolicyProblem
from octosts.domain.policy import Pattern, compile_pattern
from octosts.domain.tokens import parse_issuer_url

IssuersMode = Literal["enforce", "audit"]

ISSUERS_FILE = ".github/chainguard/trusted-token-issuers.yaml"
MAX_ISSUERS = 64
MAX_ISSUER_PATTERNS = 16
MAX_ENTRY_LENGTH = 256
FIELDS = ("mode", "issuers", "issuer_patterns")


@dataclass(frozen=True, slots=True)
class TrustedIssuers:
    """A validated trusted-token-issuers file."""

    mode: IssuersMode
    issuers: frozenset[str]
    patterns: tuple[Pattern, ...]

    def allows(self, issuer: str) -> bool:
        """True when ``issuer`` is listed exactly or fully matches a pattern."""
        return issuer in self.issuers or any(p.fullmatch(issuer) for p in self.patterns)


@dataclass(frozen=True, slots=True)
class IssuerVerdict:
    """The org allowlist's answer for one verified issuer.

    ``allowed`` is False only in enforce mode; ``audited`` is True when an
    audit-mode file would have refused the issuer (the exchange proceeds and
    the audit event and metric record it).
    """

    allowed: bool
    audited: bool
    reason: str  # "no_restriction" | "issuer_trusted" | "issuer_not_trusted"


NO_RESTRICTION = IssuerVerdict(allowed=True, audited=False, reason="no_restriction")


def judge_issuer(trusted: TrustedIssuers | None, issuer: str) -> IssuerVerdict:
    """Pure decision: ``trusted`` None means the org has no (readable) file."""
    if trusted is None:
        return NO_RESTRICTION
    if trusted.allows(issuer):
        return IssuerVerdict(allowed=True, audited=False, reason="issuer_trusted")
    if trusted.mode == "audit":
        return IssuerVerdict(allowed=True, audited=True, reason="issuer_not_trusted")
    return IssuerVerdict(allowed=False, audited=False, reason="issuer_not_trusted")


def compile_trusted_issuers(
    data: object,
    *,
    lines: Mapping[str, int] | None = None,
    insecure_issuers: frozenset[str] = frozenset(),
) -> TrustedIssuers:
    """Validate a parsed trusted-token-issuers document.

    ``insecure_issuers`` are ``http://`` issuers the operator allowed (local
    development); every other issuer must be ``https``.

    Raises PolicyInvalid listing every problem (field and line).
    """
    return _Compiler(lines or {}, insecure_issuers).run(data)


class _Compiler:
    def __init__(self, lines: Mapping[str, int], insecure: frozenset[str]) -> None:
        self.lines = lines
        self.insecure = insecure
        self.problems: list[PolicyProblem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(PolicyProblem(path, message, self.lines.get(path)))

    def run(self, data: object) -> TrustedIssuers:
        if not isinstance(data, Mapping):
            line = 1 if data is not None else None
            raise PolicyInvalid([PolicyProblem("", "the file must be a mapping of fields", line)])
        for key in data:
            if key not in FIELDS:
                self.problem(str(key)[:60], f"unknown field (allowed: {', '.join(FIELDS)})")
        mode = self.mode(data.get("mode", "enforce"))
        issuers = self.issuers(data.get("issuers", []))
        patterns = self.patterns(data.get("issuer_patterns", []))
        if not issuers and not patterns and not self.problems:
            self.problem("", "list at least one entry in issuers or issuer_patterns")
        if self.problems:
            raise PolicyInvalid(self.problems)
        return TrustedIssuers(mode=mode, issuers=frozenset(issuers), patterns=tuple(patterns))

    def mode(self, value: object) -> IssuersMode:
        if value == "enforce" or value == "audit":  # noqa: PLR1714 - narrows the Literal
            return value
        self.problem("mode", "must be exactly 'enforce' or 'audit'")
        return "enforce"

    def entries(self, name: str, value: object, limit: int) -> list[tuple[str, str]]:
        if not isinstance(value, list):
            self.problem(name, "must be a list of strings")
            return []
        if len(value) > limit:
            self.problem(name, f"at most {limit} entries")
        seen: set[str] = set()
        result: list[tuple[str, str]] = []
        for index, item in enumerate(value):
            path = f"{name}[{index}]"
            if not isinstance(item, str) or not item:
                self.problem(path, "must be a non-empty string")
            elif len(item) > MAX_ENTRY_LENGTH:
                self.problem(path, f"longer than {MAX_ENTRY_LENGTH} characters")
            elif item in seen:
                self.problem(path, "duplicate entry")
            else:
                seen.add(item)
                result.append((path, item))
        return result

    def issuers(self, value: object) -> list[str]:
        good: list[str] = []
        for path, issuer in self.entries("issuers", value, MAX_ISSUERS):
            try:
                url = parse_issuer_url(issuer, allow_insecure=issuer in self.insecure)
            except IssuerRejected as exc:
                self.problem(path, exc.detail or "not a valid issuer URL")
                continue
            # Entries are compared with a token's iss as exact strings: keep them canonical.
            if url.scheme != url.scheme.lower() or url.host != url.host.lower():
                self.problem(path, "scheme and host must be lowercase")
                continue
            good.append(issuer)
        return good

    def patterns(self, value: object) -> list[Pattern]:
        good: list[Pattern] = []
        for path, source in self.entries("issuer_patterns", value, MAX_ISSUER_PATTERNS):
            try:
                compiled = compile_pattern(source)
                check_pattern_guard(source)
            except ValueError as exc:
                self.problem(path, str(exc))
                continue
            good.append(compiled)
        return good


# -- the pattern guard -------------------------------------------------------------------

_SLASH = "/"
# Which POSIX classes contain '/'.
_POSIX_SLASH = {
    "alnum": False,
    "alpha": False,
    "ascii": True,
    "blank": False,
    "cntrl": False,
    "digit": False,
    "graph": True,
    "lower": False,
    "print": True,
    "punct": True,
    "space": False,
    "upper": False,
    "word": False,
    "xdigit": False,
}
_PERL_CLASSES = frozenset("dDsSwW")  # the upper-case ones (negations) admit '/'
_CONTROL_ESCAPES = {"a": "\a", "f": "\f", "t": "\t", "n": "\n", "r": "\r", "v": "\v"}
_OCTAL = frozenset("01234567")
_HEX = frozenset("0123456789abcdefABCDEF")


def _unicode_class_admits_slash(name: str) -> bool:
    """Whether ``\\p{name}`` contains '/' (U+002F: category Po, script Common)."""
    if name == "Any":
        return True
    if name == "Common":
        return True
    if 1 <= len(name) <= 2 and name[0].isupper():
        return unicodedata.category(_SLASH).startswith(name)
    return False  # any other script: '/' belongs to Common only


@dataclass(frozen=True, slots=True)
class _Lit:
    char: str
    pos: int


@dataclass(frozen=True, slots=True)
class _Class:
    admits_slash: bool
    only_slash: bool
    pos: int
    text: str


@dataclass(frozen=True, slots=True)
class _AnyChar:
    pos: int
    text: str


@dataclass(frozen=True, slots=True)
class _Seq:
    items: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Alt:
    branches: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Repeat:
    item: _Node
    fixed_once: bool  # ``{1}``: still one fixed occurrence
    pos: int


_Node = _Lit | _Class | _AnyChar | _Seq | _Alt | _Repeat


class _Unsupported(ValueError):
    """Syntax this reader does not know; the guard refuses rather than guesses."""


class _Parser:
    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0

    def peek(self, offset: int = 0) -> str:
        j = self.i + offset
        return self.s[j] if j < len(self.s) else ""

    def take(self) -> str:
        if self.i >= len(self.s):
            raise _Unsupported("unexpected end of pattern")
        c = self.s[self.i]
        self.i += 1
        return c

    def parse(self) -> _Node:
        node = self.alternation()
        if self.i != len(self.s):
            raise _Unsupported(f"unexpected {self.peek()!r} at offset {self.i}")
        return node

    def alternation(self) -> _Node:
        branches = [self.concatenation()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.concatenation())
        return branches[0] if len(branches) == 1 else _Alt(tuple(branches))

    def concatenation(self) -> _Node:
        items: list[_Node] = []
        while self.peek() and self.peek() not in "|)":
            atom = self.atom()
            if atom is None:
                continue
            items.append(self.quantified(atom))
        return _Seq(tuple(items))

    def quantified(self, atom: _Node) -> _Node:
        while True:
            start = self.i
            c = self.peek()
            if c in {"*", "+", "?"}:
                self.i += 1
                atom = _Repeat(atom, fixed_once=False, pos=start)
            elif c == "{":
                bounds = self.braces()
                if bounds is None:
                    return atom  # a literal '{', read as the next atom
                atom = _Repeat(atom, fixed_once=bounds == (1, 1), pos=start)
            else:
                return atom
            if self.peek() == "?":  # non-greedy: same language
                self.i += 1

    def braces(self) -> tuple[int, int | None] | None:
        end = self.s.find("}", self.i)
        if end < 0:
            return None
        body = self.s[self.i + 1 : end]
        low, comma, high = body.partition(",")
        if not low.isdigit() or (high and not high.isdigit()) or not low.isascii():
            return None
        self.i = end + 1
        if not comma:
            return int(low), int(low)
        return int(low), int(high) if high else None

    def atom(self) -> _Node | None:
        start = self.i
        c = self.take()
        if c == "(":
            return self.group(start)
        if c == "[":
            return self.char_class(start)
        if c == ".":
            return _AnyChar(start, ".")
        if c in {"^", "$"}:
            return _Seq(())
        if c == "\\":
            return self.escape(start)
        if c in {"*", "+", "?"}:
            raise _Unsupported(f"repetition without an operand at offset {start}")
        return _Lit(c, start)

    def group(self, start: int) -> _Node | None:
        if self.peek() == "?":
            self.i += 1
            if (self.peek() == "P" and self.peek(1) == "<") or self.peek() == "<":
                end = self.s.find(">", self.i)
                if end < 0:
                    raise _Unsupported(f"unterminated group name at offset {start}")
                self.i = end + 1
            else:
                while self.peek() and self.peek() in "imsU-":
                    self.i += 1
                if self.peek() == ")":  # (?flags): no operand, nothing '/'-related
                    self.i += 1
                    return None
                if self.take() != ":":
                    raise _Unsupported(f"unknown group syntax at offset {start}")
        inner = self.alternation()
        if self.take() != ")":
            raise _Unsupported(f"unbalanced parenthesis at offset {start}")
        return inner

    def escape(self, start: int) -> _Node:
        c = self.take()
        if c in {"A", "z", "b", "B"}:
            return _Seq(())
        if c == "C":
            return _AnyChar(start, "\\C")
        if c in _PERL_CLASSES:
            return _Class(c.isupper(), only_slash=False, pos=start, text=self.s[start : self.i])
        if c in {"p", "P"}:
            return self.unicode_class(start, negated=c == "P")
        if c == "Q":
            end = self.s.find("\\E", self.i)
            base = self.i
            text = self.s[base:] if end < 0 else self.s[base:end]
            self.i = len(self.s) if end < 0 else end + 2
            return _Seq(tuple(_Lit(ch, base + k) for k, ch in enumerate(text)))
        return _Lit(self.escaped_char(c, start), start)

    def escaped_char(self, c: str, start: int) -> str:
        """The character of a single-character escape whose letter ``c`` was taken."""
        if c == "x":
            if self.peek() == "{":
                end = self.s.find("}", self.i)
                digits = self.s[self.i + 1 : end] if end > 0 else ""
                if not digits or not set(digits) <= _HEX:
                    raise _Unsupported(f"bad \\x escape at offset {start}")
                self.i = end + 1
                return chr(int(digits, 16))
            digits = self.s[self.i : self.i + 2]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise _Unsupported(f"bad \\x escape at offset {start}")
            self.i += 2
            return chr(int(digits, 16))
        if c in _OCTAL:
            digits = c
            while len(digits) < 3 and self.peek() in _OCTAL and self.peek():
                digits += self.take()
            return chr(int(digits, 8))
        if c in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[c]
        if c.isascii() and not c.isalnum():
            return c  # an escaped punctuation character is itself
        raise _Unsupported(f"unknown escape \\{c} at offset {start}")

    def unicode_class(self, start: int, *, negated: bool) -> _Class:
        if self.peek() == "{":
            end = self.s.find("}", self.i)
            if end < 0:
                raise _Unsupported(f"unterminated \\p{{...}} at offset {start}")
            name = self.s[self.i + 1 : end]
            self.i = end + 1
        else:
            name = self.take()
        if name.startswith("^"):
            negated, name = not negated, name[1:]
        admits = _unicode_class_admits_slash(name) != negated
        return _Class(admits, only_slash=False, pos=start, text=self.s[start : self.i])

    def char_class(self, start: int) -> _Class:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        admits = False
        only_slash = True
        first = True
        while first or self.peek() != "]":
            if not self.peek():
                raise _Unsupported(f"unterminated character class at offset {start}")
            item_admits, item_only_slash = self.class_item()
            admits = admits or item_admits
            only_slash = only_slash and item_only_slash
            first = False
        self.i += 1
        if negated:
            return _Class(not admits, only_slash=False, pos=start, text=self.s[start : self.i])
        return _Class(
            admits, only_slash=only_slash and admits, pos=start, text=self.s[start : self.i]
        )

    def class_item(self) -> tuple[bool, bool]:
        """(admits '/', is exactly '/') for one item of a bracketed class."""
        item_start = self.i
        if self.peek() == "[" and self.peek(1) == ":":
            end = self.s.find(":]", self.i + 2)
            if end > 0:
                name = self.s[self.i + 2 : end]
                self.i = end + 2
                negated = name.startswith("^")
                name = name.removeprefix("^")
                if name not in _POSIX_SLASH:
                    raise _Unsupported(f"unknown POSIX class at offset {item_start}")
                return _POSIX_SLASH[name] != negated, False
        low = self.class_char()
        if isinstance(low, _Class):
            return low.admits_slash, False
        if self.peek() == "-" and self.peek(1) not in {"]", ""}:
            self.i += 1
            high = self.class_char()
            if isinstance(high, _Class):
                raise _Unsupported(f"class range ends in a class at offset {item_start}")
            inside = low <= _SLASH <= high
            return inside, inside and low == high
        return low == _SLASH, low == _SLASH

    def class_char(self) -> str | _Class:
        start = self.i
        c = self.take()
        if c != "\\":
            return c
        e = self.take()
        if e in _PERL_CLASSES:
            return _Class(e.isupper(), only_slash=False, pos=start, text=self.s[start : self.i])
        if e in {"p", "P"}:
            return self.unicode_class(start, negated=e == "P")
        return self.escaped_char(e, start)


_Leaf = _Lit | _Class | _AnyChar


def _leaves(node: _Node, *, variable: bool, why: str) -> Iterator[tuple[_Leaf, bool, str]]:
    """Every single-character leaf with whether its position is variable, and why."""
    if isinstance(node, _Seq):
        for item in node.items:
            yield from _leaves(item, variable=variable, why=why)
    elif isinstance(node, _Alt):
        for branch in node.branches:
            yield from _leaves(branch, variable=True, why="in an alternation")
    elif isinstance(node, _Repeat):
        if node.fixed_once:
            yield from _leaves(node.item, variable=variable, why=why)
        else:
            yield from _leaves(node.item, variable=True, why="under a repetition or optional group")
    else:
        yield node, variable, why


def _leaf_problem(leaf: _Leaf, *, variable: bool, why: str) -> str | None:
    if isinstance(leaf, _Class) and leaf.only_slash:
        leaf = _Lit(_SLASH, leaf.pos)  # [/] is the fixed literal
    if isinstance(leaf, _Lit):
        if leaf.char == _SLASH and variable:
            return f"a literal '/' at offset {leaf.pos} is {why}"
        return None
    if isinstance(leaf, _AnyChar) or leaf.admits_slash:
        return f"{leaf.text!r} at offset {leaf.pos} matches '/'"
    return None


def check_pattern_guard(source: str) -> None:
    """Refuse an issuer pattern that can match '/' except as a fixed literal.

    Call after the pattern compiled with RE2 (syntax already valid). Raises
    ValueError naming the pattern and the offending part.
    """
    shown = source if len(source) <= 80 else source[:77] + "..."
    try:
        tree = _Parser(source).parse()
    except _Unsupported as exc:
        raise ValueError(
            f"pattern {shown!r}: cannot be checked for '/' safety ({exc}); rewrite it"
        ) from None
    for leaf, variable, why in _leaves(tree, variable=False, why=""):
        problem = _leaf_problem(leaf, variable=variable, why=why)
        if problem is None:
            continue
        raise ValueError(
            f"pattern {shown!r} may match '/' other than as a fixed literal: {problem}"
        )
