"""The RE2 slash guard: may an issuer pattern match '/' other than as a fixed literal?

Both levels of issuer trust (the deployment's ``OCTOSTS_ISSUER_PATTERNS`` and an
organization's trusted-token-issuers file) accept a pattern only if it passes
this guard: otherwise ``https://[a-z.]+\\.example\\.com.*`` would also accept
``https://evil.example/x/.example.com...``-like issuers hosted on someone
else's domain path.

google-re2's Python binding does not expose RE2's parser, so
``check_pattern_guard`` runs only after ``re2.compile`` accepted the pattern
and then reads it in two stages:

1. *read*: ``_Parser``, a small recursive-descent parser of RE2 syntax (groups
   and flags, alternation, ``* + ? {n,m}``, ``.``, ``\\C``, classes with ranges,
   negation, POSIX ``[:name:]``, Perl ``\\d\\s\\w``, Unicode ``\\pX``
   ``\\p{Name}`` ``\\p{^Name}``, ``\\Q...\\E``, ``\\x..``/``\\x{..}``, octal and
   control escapes) builds a tree of ``_Seq``/``_Alt``/``_Repeat`` over
   single-character leaves. Syntax it does not know is refused, never guessed.
2. *judge*: ``_leaves`` walks the tree, marking each leaf whose position is
   variable (under a repetition, an optional group or an alternation branch);
   ``_leaf_problem`` refuses:

   * ``.`` and ``\\C`` anywhere;
   * any character class that admits ``/`` (``\\S``, ``[^\\n]``, ``[[:ascii:]]``,
     ``[.-9]``, ``\\p{P}``...), except a class holding only ``/`` (``[/]``),
     which is the fixed literal;
   * a literal ``/`` (however written: ``/``, ``\\/``, ``\\x2F``, ``\\057``,
     ``\\Q/\\E``) at a variable position.

   A fixed ``/`` (also spelled ``\\x2F``) in the concatenation is fine.

A rewrite that proves more '/' positions fixed (Go's regexp parser factors the
common prefix out of ``https://a\\.example\\.com|https://b\\.example\\.com``)
belongs between the two stages, as a tree-to-tree function: node equality
ignores source offsets (``pos``) so equal prefixes of two branches compare
equal.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

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
_OPERATORS: dict[str, tuple[int, int | None]] = {"*": (0, None), "+": (1, None), "?": (0, 1)}


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
    pos: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Class:
    admits_slash: bool
    only_slash: bool
    pos: int = field(compare=False)
    text: str


@dataclass(frozen=True, slots=True)
class _AnyChar:
    pos: int = field(compare=False)
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
    low: int
    high: int | None  # None: unbounded
    pos: int = field(compare=False)

    @property
    def fixed_once(self) -> bool:
        """``{1}``: still one fixed occurrence."""
        return self.low == self.high == 1


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
            if c in _OPERATORS:
                self.i += 1
                atom = _Repeat(atom, *_OPERATORS[c], pos=start)
            elif c == "{":
                bounds = self.braces()
                if bounds is None:
                    return atom  # a literal '{', read as the next atom
                atom = _Repeat(atom, *bounds, pos=start)
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
    problem = _judge(tree)
    if problem is not None:
        raise ValueError(
            f"pattern {shown!r} may match '/' other than as a fixed literal: {problem}"
        )


def _judge(tree: _Node) -> str | None:
    """The first leaf that lets the pattern match '/' other than as a fixed literal."""
    for leaf, variable, why in _leaves(tree, variable=False, why=""):
        problem = _leaf_problem(leaf, variable=variable, why=why)
        if problem is not None:
            return problem
    return None
