"""The RE2 slash guard: may an issuer pattern match '/' other than as a fixed literal?

Both levels of issuer trust (the deployment's ``OCTOSTS_ISSUER_PATTERNS`` and an
organization's trusted-token-issuers file) accept a pattern only if it passes
this guard: otherwise ``https://[a-z.]+\\.example\\.com.*`` would also accept
``https://evil.example/x/.example.com...``-like issuers hosted on someone
else's domain path.

The original octo-sts applies the same rule to the tree Go's ``regexp/syntax``
parser builds, and that parser already simplifies while it reads: it merges
adjacent literals into strings and factors the common leading string out of an
alternation, so ``https://a\\.example\\.com|https://b\\.example\\.com`` is read
as ``https://(?:a\\.example\\.com|b\\.example\\.com)`` and its '/' sit at fixed
positions. We accept what that tree proves, no more. google-re2's Python
binding does not expose a parser, so ``check_pattern_guard`` runs only after
``re2.compile`` accepted the pattern, in three stages:

1. *read*: ``_Parser``, a recursive-descent parser of RE2 syntax (groups,
   flags, alternation, ``* + ? {n,m}``, ``.``, ``\\C``, classes with ranges,
   negation, POSIX ``[:name:]``, Perl ``\\d\\s\\w``, Unicode ``\\pX``
   ``\\p{Name}`` ``\\p{^Name}``, ``\\Q...\\E``, ``\\x..``/``\\x{..}``, octal and
   control escapes), builds the tree as written: single-character literals
   (with their case-folding flag), classes (with their members), groups.
   Syntax it does not know is refused, never guessed.
2. *simplify*: ``_simplify`` rebuilds that tree the way Go's parser (and RE2's,
   which it follows) builds it while parsing: a class of one character is that
   literal (``[/]`` is ``/``, ``[Hh]`` a case-folded ``H``); adjacent literals
   with the same flags merge; a run of one-character alternatives becomes a
   class; and an alternation is factored in Go's four rounds (common leading
   string of adjacent branches, common leading class, runs of characters into
   classes, duplicate empty branches). Where we cannot know Go's answer (case
   folding outside ASCII, classes with Unicode names) we do not merge or
   factor: the guard may then refuse what the original accepts, never the
   reverse (``tests/integration/test_slash_guard_go.py`` holds us to Go's own
   parser on a corpus).
3. *judge*: ``_problem`` walks the simplified tree, marking every part whose
   position is variable (under a repetition, an optional group or an
   alternation branch), and refuses:

   * ``.`` and ``\\C`` anywhere;
   * any class that admits ``/`` (``\\S``, ``[^\\n]``, ``[[:ascii:]]``,
     ``[.-9]``, ``\\p{P}``...);
   * a literal ``/`` (however written: ``/``, ``\\/``, ``\\x2F``, ``\\057``,
     ``\\Q/\\E``, ``[/]``) at a variable position.

   One deliberate leniency: ``{1}`` (exactly once) keeps its content fixed; the
   original counts any ``{n,m}`` as variable.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from octosts.domain.text import show_pattern

_SLASH = "/"
_MAX_CHAR = 0x10FFFF
_MAX_NESTING = 64  # groups inside groups; Python's recursion limit is the real bound
_Ranges = tuple[tuple[int, int], ...]


def _span(low: str, high: str) -> tuple[int, int]:
    return ord(low), ord(high)


_DIGIT = (_span("0", "9"),)
_UPPER = (_span("A", "Z"),)
_LOWER = (_span("a", "z"),)
_ALPHA = (*_UPPER, *_LOWER)
_WORD = (*_DIGIT, *_ALPHA, _span("_", "_"))
# Members of the POSIX classes (ASCII, as RE2 defines them).
_POSIX: dict[str, _Ranges] = {
    "alnum": (*_DIGIT, *_ALPHA),
    "alpha": _ALPHA,
    "ascii": ((0x00, 0x7F),),
    "blank": ((0x09, 0x09), (0x20, 0x20)),
    "cntrl": ((0x00, 0x1F), (0x7F, 0x7F)),
    "digit": _DIGIT,
    "graph": ((0x21, 0x7E),),
    "lower": _LOWER,
    "print": ((0x20, 0x7E),),
    "punct": ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)),
    "space": ((0x09, 0x0D), (0x20, 0x20)),
    "upper": _UPPER,
    "word": _WORD,
    "xdigit": (*_DIGIT, _span("A", "F"), _span("a", "f")),
}
# \d \s \w (RE2's \s has no \v); the upper-case escapes are their complements.
_PERL: dict[str, _Ranges] = {
    "d": _DIGIT,
    "s": ((0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)),
    "w": _WORD,
}
_CONTROL_ESCAPES = {"a": "\a", "f": "\f", "t": "\t", "n": "\n", "r": "\r", "v": "\v"}
_OCTAL = frozenset("01234567")
_HEX = frozenset("0123456789abcdefABCDEF")
_OPERATORS: dict[str, tuple[int, int | None]] = {"*": (0, None), "+": (1, None), "?": (0, 1)}
# ASCII letters whose case folding has a third, non-ASCII member (K: Kelvin sign,
# S: long s): Go keeps ``[Kk]`` a class rather than a case-folded literal.
_FOLD_TRIPLES = frozenset("KS")


def _normalize(ranges: Iterable[tuple[int, int]]) -> _Ranges:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def _complement(ranges: _Ranges) -> _Ranges:
    result: list[tuple[int, int]] = []
    next_low = 0
    for low, high in ranges:
        if low > next_low:
            result.append((next_low, low - 1))
        next_low = high + 1
    if next_low <= _MAX_CHAR:
        result.append((next_low, _MAX_CHAR))
    return tuple(result)


def _holds_slash(ranges: _Ranges) -> bool:
    return any(low <= ord(_SLASH) <= high for low, high in ranges)


def _case_matters(ranges: _Ranges) -> bool:
    """Whether case folding can change this set (it holds a letter or a non-ASCII character)."""
    return any(high > 0x7F or _ranges_meet(((low, high),), _ALPHA) for low, high in ranges)


def _ranges_meet(a: _Ranges, b: _Ranges) -> bool:
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


def _unicode_class_admits_slash(name: str) -> bool:
    """Whether ``\\p{name}`` contains '/' (U+002F: category Po, script Common)."""
    if name == "Any":
        return True
    if name == "Common":
        return True
    if 1 <= len(name) <= 2 and name[0].isupper():
        return unicodedata.category(_SLASH).startswith(name)
    return False  # any other script: '/' belongs to Common only


def _fold_letter(char: str) -> str:
    """The character Go stores for ``char`` under ``(?i)``: its smallest case variant.

    Known here for ASCII letters only; any other character is kept as written, so
    two spellings of one non-ASCII letter never compare equal (we factor less).
    """
    return char.upper() if char.isascii() and char.isalpha() else char


# ---- the tree ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Lit:
    """Literal characters; ``fold``: read under ``(?i)`` (Go keeps the flag even on '/')."""

    chars: str
    fold: bool
    pos: tuple[int, ...] = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Class:
    """A character class. Equal ``members`` mean equal sets (the converse need not hold)."""

    admits_slash: bool
    members: tuple[object, ...]
    # Its characters when case folding cannot change them and all are known.
    plain: _Ranges | None = field(compare=False)
    single: _Lit | None = field(compare=False)  # the literal Go reads it as, if any
    pos: int = field(compare=False)
    text: str = field(compare=False)


@dataclass(frozen=True, slots=True)
class _AnyChar:
    pos: int = field(compare=False)
    text: str = field(compare=False)


@dataclass(frozen=True, slots=True)
class _Empty:
    """Matches the empty string (an empty group or branch)."""


@dataclass(frozen=True, slots=True)
class _Assert:
    """An empty-width assertion: ``^ $ \\A \\z \\b \\B``."""

    kind: str


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
    greedy: bool
    pos: int = field(compare=False)

    @property
    def fixed_once(self) -> bool:
        """``{1}``: still one fixed occurrence."""
        return self.low == self.high == 1


@dataclass(frozen=True, slots=True)
class _Capture:
    item: _Node


@dataclass(frozen=True, slots=True)
class _Group:
    """A non-capturing group as written (only in the read tree)."""

    item: _Node


_Node = _Lit | _Class | _AnyChar | _Empty | _Assert | _Seq | _Alt | _Repeat | _Capture | _Group
_EMPTY = _Empty()


def _class(
    ranges: Sequence[tuple[int, int]],
    names: Sequence[tuple[str, bool]],
    *,
    negated: bool,
    fold: bool,
    pos: int,
    text: str,
) -> _Class:
    """A class from its written members: ranges and Unicode names ``(name, negated)``."""
    written = _normalize(ranges)
    if names:  # membership we cannot enumerate: compare by spelling
        admits = _holds_slash(written) or any(
            _unicode_class_admits_slash(name) != neg for name, neg in names
        )
        return _Class(admits != negated, ("text", text, fold), None, None, pos, text)
    final = _complement(written) if negated else written
    if fold and _case_matters(written):  # Go adds every case variant: keep what was written
        single = None if negated else _folded_single(written, pos)
        return _Class(_holds_slash(final), ("fold", negated, written), None, single, pos, text)
    return _Class(_holds_slash(final), ("set", final), final, _single(final, pos), pos, text)


def _single(ranges: _Ranges, pos: int) -> _Lit | None:
    """The literal Go reads a class as: one character, or both cases of an ASCII letter."""
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return _Lit(chr(ranges[0][0]), fold=False, pos=(pos,))
    return _folded_single(ranges, pos)


def _folded_single(ranges: _Ranges, pos: int) -> _Lit | None:
    """``[Hh]`` (or ``(?i)[h]``): the case-folded literal ``H``; Go's rule for ASCII letters.

    Not ``K`` and ``S``, whose case variants include a third, non-ASCII character.
    """
    if sum(high - low + 1 for low, high in ranges) > 2:
        return None
    chars = {chr(code) for low, high in ranges for code in range(low, high + 1)}
    letter = min(chars).upper()
    if not (letter.isascii() and letter.isalpha()) or letter in _FOLD_TRIPLES:
        return None
    return _Lit(letter, fold=True, pos=(pos,)) if chars <= {letter, letter.lower()} else None


# ---- stage 1: read -----------------------------------------------------------------------


class _Unsupported(ValueError):
    """Syntax this reader does not know; the guard refuses rather than guesses."""


class _Parser:
    def __init__(self, source: str) -> None:
        self.s = source
        self.i = 0
        self.fold = False
        self.depth = 0

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

    def concatenation(self) -> _Seq:
        items: list[_Node] = []
        while self.peek() and self.peek() not in "|)":
            atoms = self.atoms()
            if atoms:
                # A quantifier binds to the last atom only (``\Qab\E*`` repeats ``b``).
                items += [*atoms[:-1], self.quantified(atoms[-1])]
            elif items:
                # After a flags group, to the atom before it: ``a(?i)+`` is ``a+``.
                items[-1] = self.quantified(items[-1])
        return _Seq(tuple(items))

    def quantified(self, atom: _Node) -> _Node:
        while True:
            start = self.i
            c = self.peek()
            if c in _OPERATORS:
                self.i += 1
                bounds: tuple[int, int | None] | None = _OPERATORS[c]
            elif c == "{":
                bounds = self.braces()
                if bounds is None:
                    return atom  # a literal '{', read as the next atom
            else:
                return atom
            greedy = self.peek() != "?"
            if not greedy:
                self.i += 1
            assert bounds is not None  # narrowed above
            atom = _Repeat(atom, *bounds, greedy=greedy, pos=start)

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

    def atoms(self) -> list[_Node]:
        """The next atom(s): several for ``\\Q...\\E``, none for a flags group ``(?i)``."""
        start = self.i
        c = self.take()
        if c == "(":
            group = self.group(start)
            return [] if group is None else [group]
        if c == "[":
            return [self.char_class(start)]
        if c == ".":
            return [_AnyChar(start, ".")]
        if c in {"^", "$"}:
            return [_Assert(c)]
        if c == "\\":
            return self.escape(start)
        if c in {"*", "+", "?"}:
            raise _Unsupported(f"repetition without an operand at offset {start}")
        return [self.literal(c, start)]

    def literal(self, char: str, pos: int) -> _Lit:
        if self.fold:
            return _Lit(_fold_letter(char), fold=True, pos=(pos,))
        return _Lit(char, fold=False, pos=(pos,))

    def group(self, start: int) -> _Node | None:
        capture = True
        saved_fold = self.fold
        if self.peek() == "?":
            self.i += 1
            if (self.peek() == "P" and self.peek(1) == "<") or self.peek() == "<":
                end = self.s.find(">", self.i)
                if end < 0:
                    raise _Unsupported(f"unterminated group name at offset {start}")
                self.i = end + 1
            else:
                capture = False
                fold = self.flags(start)
                if self.peek() == ")":  # (?flags): for the rest of the enclosing group
                    self.i += 1
                    self.fold = fold
                    return None
                if self.take() != ":":
                    raise _Unsupported(f"unknown group syntax at offset {start}")
                self.fold = fold
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise _Unsupported(f"groups nested deeper than {_MAX_NESTING}")
        inner = self.alternation()
        self.depth -= 1
        if self.take() != ")":
            raise _Unsupported(f"unbalanced parenthesis at offset {start}")
        self.fold = saved_fold
        return _Capture(inner) if capture else _Group(inner)

    def flags(self, start: int) -> bool:
        """Read ``imsU`` flags (``-`` clears those after it); returns the new fold flag."""
        fold, setting = self.fold, True
        while self.peek() and self.peek() in "imsU-":
            c = self.take()
            if c == "-":
                setting = False
            elif c == "i":
                fold = setting
        if self.peek() not in {")", ":"}:
            raise _Unsupported(f"unknown group syntax at offset {start}")
        return fold

    def escape(self, start: int) -> list[_Node]:
        c = self.take()
        if c in {"A", "z", "b", "B"}:
            return [_Assert("\\" + c)]
        if c == "C":
            return [_AnyChar(start, "\\C")]
        if c.lower() in _PERL:
            members = _PERL[c.lower()]
            return [self.made_class(_complement(members) if c.isupper() else members, [], start)]
        if c in {"p", "P"}:
            name = self.unicode_name(start, negated=c == "P")
            return [self.made_class((), [name], start)]
        if c == "Q":
            end = self.s.find("\\E", self.i)
            base = self.i
            text = self.s[base:] if end < 0 else self.s[base:end]
            self.i = len(self.s) if end < 0 else end + 2
            return [self.literal(ch, base + k) for k, ch in enumerate(text)]
        return [self.literal(self.escaped_char(c, start), start)]

    def made_class(self, ranges: _Ranges, names: list[tuple[str, bool]], start: int) -> _Class:
        """A class escape outside brackets (``\\d``, ``\\pL``)."""
        text = self.s[start : self.i]
        return _class(ranges, names, negated=False, fold=self.fold, pos=start, text=text)

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

    def unicode_name(self, start: int, *, negated: bool) -> tuple[str, bool]:
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
        return name, negated

    def char_class(self, start: int) -> _Class:
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        names: list[tuple[str, bool]] = []
        first = True
        while first or self.peek() != "]":
            if not self.peek():
                raise _Unsupported(f"unterminated character class at offset {start}")
            self.class_item(ranges, names)
            first = False
        self.i += 1
        text = self.s[start : self.i]
        return _class(ranges, names, negated=negated, fold=self.fold, pos=start, text=text)

    def class_item(self, ranges: list[tuple[int, int]], names: list[tuple[str, bool]]) -> None:
        """Add the members of one item of a bracketed class."""
        item_start = self.i
        if self.peek() == "[" and self.peek(1) == ":":
            end = self.s.find(":]", self.i + 2)
            if end > 0:
                name = self.s[self.i + 2 : end]
                self.i = end + 2
                negated = name.startswith("^")
                members = _POSIX.get(name.removeprefix("^"))
                if members is None:
                    raise _Unsupported(f"unknown POSIX class at offset {item_start}")
                ranges += _complement(members) if negated else members
                return
        low = self.class_char(ranges, names)
        if low is None:
            return
        if self.peek() == "-" and self.peek(1) not in {"]", ""}:
            self.i += 1
            high = self.class_char(ranges, names)
            if high is None:
                raise _Unsupported(f"class range ends in a class at offset {item_start}")
            ranges.append((ord(low), ord(high)))
            return
        ranges.append((ord(low), ord(low)))

    def class_char(
        self, ranges: list[tuple[int, int]], names: list[tuple[str, bool]]
    ) -> str | None:
        """One character of a class, or None for a class escape (its members are added)."""
        start = self.i
        c = self.take()
        if c != "\\":
            return c
        e = self.take()
        if e.lower() in _PERL:
            members = _PERL[e.lower()]
            ranges += _complement(members) if e.isupper() else members
            return None
        if e in {"p", "P"}:
            names.append(self.unicode_name(start, negated=e == "P"))
            return None
        return self.escaped_char(e, start)


# ---- stage 2: simplify (the tree Go's parser builds) ---------------------------------------


def _simplify(node: _Node) -> _Node:
    """The read tree rebuilt as Go's ``regexp/syntax`` builds it while parsing."""
    return _pushed(_build(node))


def _build(node: _Node) -> _Node:
    if isinstance(node, _Seq):
        return _concat([_pushed(_build(item)) for item in node.items])
    if isinstance(node, _Alt):
        return _alternate([_build(branch) for branch in node.branches])
    if isinstance(node, _Group):
        return _build(node.item)  # its caller pushes the content
    if isinstance(node, _Capture):
        return _Capture(_pushed(_build(node.item)))
    if isinstance(node, _Repeat):
        return replace(node, item=_pushed(_build(node.item)))
    return node


def _pushed(node: _Node) -> _Node:
    """What Go's parser stacks for ``node``: a class of one character is that literal."""
    if isinstance(node, _Class) and node.single is not None:
        return node.single
    return node


def _concat(items: list[_Node]) -> _Node:
    """A concatenation: adjacent literals with the same flags merge into one string.

    A group's concatenation joins as one piece, then is spliced in: its literals do
    not merge with their new neighbours (Go merges only while pushing).
    """
    pieces: list[_Node] = []
    for item in items:
        before = pieces[-1] if pieces else None
        if isinstance(item, _Lit) and isinstance(before, _Lit) and before.fold == item.fold:
            pieces[-1] = _Lit(before.chars + item.chars, item.fold, before.pos + item.pos)
        else:
            pieces.append(item)
    flat = [part for piece in pieces for part in _parts(piece)]
    if not flat:
        return _EMPTY
    return flat[0] if len(flat) == 1 else _Seq(tuple(flat))


def _parts(node: _Node) -> tuple[_Node, ...]:
    return node.items if isinstance(node, _Seq) else (node,)


def _is_char(node: _Node) -> bool:
    """One character wide: Go's ``isCharClass`` (a one-character literal, a class, ``.``)."""
    return (isinstance(node, _Lit) and len(node.chars) == 1) or isinstance(node, _Class | _AnyChar)


def _alternate(branches: list[_Node]) -> _Node:
    # Adjacent one-character branches merge into a class as soon as they are read.
    merged: list[_Node] = []
    for branch in branches:
        if merged and _is_char(branch) and _is_char(merged[-1]):
            merged[-1] = _merge_chars([merged[-1], branch])
        else:
            merged.append(branch)
    return _collapse(merged)


def _collapse(subs: Sequence[_Node]) -> _Node:
    """Alternatives of alternatives flattened, then factored; one alternative is itself."""
    if len(subs) == 1:
        return subs[0]
    flat = [branch for sub in subs for branch in _branches(sub)]
    factored = _factor(flat)
    return factored[0] if len(factored) == 1 else _Alt(tuple(factored))


def _branches(node: _Node) -> tuple[_Node, ...]:
    return node.branches if isinstance(node, _Alt) else (node,)


def _factor(subs: list[_Node]) -> list[_Node]:
    """Go's four rounds over the branches of one alternation, in order."""
    if len(subs) < 2:
        return subs
    # 1: adjacent branches that begin with a common string (same flags) share it;
    subs = _factor_runs(subs, _leading_string, _common_string, _drop_string)
    # 2: those that begin with an equal one-character piece (or {n} of one) share it;
    subs = _factor_runs(subs, _leading_piece, _same_piece, _drop_piece)
    # 3: runs of one-character branches become one class; 4: runs of empty ones, one.
    subs = _runs(subs, _is_char, _merge_chars)
    return _runs(subs, lambda n: isinstance(n, _Empty), lambda run: run[0])


def _factor_runs(
    subs: list[_Node],
    lead: Callable[[_Node], _Node | None],
    shared: Callable[[_Node, _Node], _Node | None],
    drop: Callable[[_Node, _Node], _Node],
) -> list[_Node]:
    """Each maximal run of adjacent branches whose leads share a part: ``part(rest|rest...)``."""
    out: list[_Node] = []
    start = 0
    common: _Node | None = None
    for i in range(len(subs) + 1):
        current = lead(subs[i]) if i < len(subs) else None
        if common is not None and current is not None:
            joined = shared(common, current)
            if joined is not None:
                common = joined
                continue
        if i - start > 1 and common is not None:
            rest = [drop(sub, common) for sub in subs[start:i]]
            out.append(_Seq((common, _collapse(rest))))
        elif i - start == 1:
            out.append(subs[start])
        start, common = i, current
    return out


def _runs(
    subs: list[_Node], member: Callable[[_Node], bool], join: Callable[[list[_Node]], _Node]
) -> list[_Node]:
    """Each maximal run of adjacent ``member`` branches replaced by ``join(run)``."""
    out: list[_Node] = []
    run: list[_Node] = []
    for sub in [*subs, None]:
        if sub is not None and member(sub):
            run.append(sub)
            continue
        if run:
            out.append(join(run) if len(run) > 1 else run[0])
            run = []
        if sub is not None:
            out.append(sub)
    return out


def _leading_string(node: _Node) -> _Lit | None:
    first = node.items[0] if isinstance(node, _Seq) and node.items else node
    return first if isinstance(first, _Lit) else None


def _common_string(common: _Node, lead: _Node) -> _Lit | None:
    if not (isinstance(common, _Lit) and isinstance(lead, _Lit)) or lead.fold != common.fold:
        return None
    same = 0
    while same < min(len(common.chars), len(lead.chars)) and common.chars[same] == lead.chars[same]:
        same += 1
    return _Lit(common.chars[:same], common.fold, common.pos[:same]) if same else None


def _drop_string(node: _Node, prefix: _Node) -> _Node:
    if isinstance(node, _Seq) and node.items:
        first = _drop_string(node.items[0], prefix)
        if isinstance(first, _Empty):
            return _rest(node.items[1:])
        return _Seq((first, *node.items[1:]))
    if isinstance(node, _Lit) and isinstance(prefix, _Lit):
        count = len(prefix.chars)
        left = node.chars[count:]
        return _Lit(left, node.fold, node.pos[count:]) if left else _EMPTY
    return node


def _rest(items: tuple[_Node, ...]) -> _Node:
    if not items:
        return _EMPTY
    return items[0] if len(items) == 1 else _Seq(items)


def _leading_piece(node: _Node) -> _Node | None:
    if isinstance(node, _Empty):
        return None
    if isinstance(node, _Seq) and node.items:
        return None if isinstance(node.items[0], _Empty) else node.items[0]
    return node


def _same_piece(first: _Node, piece: _Node) -> _Node | None:
    """``first`` when ``piece`` equals it and it is one character wide (or ``{n}`` of one)."""
    if first != piece:
        return None
    if isinstance(first, _Repeat):
        return first if first.low == first.high and _is_char(first.item) else None
    return first if _is_char(first) else None


def _drop_piece(node: _Node, _piece: _Node) -> _Node:
    return _rest(node.items[1:]) if isinstance(node, _Seq) else _EMPTY


def _merge_chars(run: list[_Node]) -> _Node:
    """One class for a run of one-character alternatives (Go's ``mergeCharClass``).

    A run of one and the same literal stays that literal (``/|/`` is ``/``).
    """
    if all(node == run[0] for node in run) and isinstance(run[0], _Lit):
        return run[0]
    chars: list[_Class] = []
    for node in run:
        if isinstance(node, _AnyChar):
            return node  # '.' already holds every other alternative
        if isinstance(node, _Lit):
            chars.append(_as_class(node))
        elif isinstance(node, _Class):
            chars.append(node)
    first = chars[0]
    admits = any(c.admits_slash for c in chars)
    text = "|".join(c.text for c in chars)
    plains = [c.plain for c in chars]
    if all(plain is not None for plain in plains):
        union = _normalize(span for plain in plains if plain is not None for span in plain)
        return _Class(admits, ("set", union), union, _single(union, first.pos), first.pos, text)
    members = ("union", frozenset(c.members for c in chars))
    return _Class(admits, members, None, None, first.pos, text)


def _as_class(lit: _Lit) -> _Class:
    """A one-character literal as the class Go merges it as."""
    code = ord(lit.chars)
    return _class([(code, code)], [], negated=False, fold=lit.fold, pos=lit.pos[0], text=lit.chars)


# ---- stage 3: judge ----------------------------------------------------------------------


def _problem(node: _Node, *, variable: bool = False, why: str = "") -> str | None:
    """The first part of ``node`` that lets the pattern match '/' other than as a fixed literal."""
    if isinstance(node, _Seq):
        return _first(node.items, variable=variable, why=why)
    if isinstance(node, _Alt):
        return _first(node.branches, variable=True, why=_IN_ALTERNATION)
    if isinstance(node, _Repeat):
        if node.fixed_once:
            return _problem(node.item, variable=variable, why=why)
        return _problem(node.item, variable=True, why="under a repetition or optional group")
    if isinstance(node, _Capture | _Group):
        return _problem(node.item, variable=variable, why=why)
    return _leaf_problem(node, variable=variable, why=why)


def _leaf_problem(node: _Node, *, variable: bool, why: str) -> str | None:
    if isinstance(node, _Lit):
        for char, pos in zip(node.chars, node.pos, strict=True):
            if char == _SLASH and variable:
                return f"a literal '/' at offset {pos} is {why}"
    elif isinstance(node, _AnyChar) or (isinstance(node, _Class) and node.admits_slash):
        return f"{show_pattern(node.text)} at offset {node.pos} matches '/'"
    return None  # a class without '/', _Empty, _Assert


_IN_ALTERNATION = (
    "in an alternation (alternatives may differ only after the last '/', "
    "as in https://(?:a|b)\\.example\\.com, or go in entries of their own)"
)


def _first(nodes: Iterable[_Node], *, variable: bool, why: str) -> str | None:
    for node in nodes:
        problem = _problem(node, variable=variable, why=why)
        if problem is not None:
            return problem
    return None


def check_pattern_guard(source: str) -> None:
    """Refuse an issuer pattern that can match '/' except as a fixed literal.

    Call after the pattern compiled with RE2 (syntax already valid). Raises
    ValueError naming the pattern, the offending part and how to fix it.
    """
    shown = show_pattern(source)
    try:
        tree = _simplify(_Parser(source).parse())
        problem = _problem(tree)
    except _Unsupported as exc:
        raise ValueError(
            f"pattern {shown}: cannot be checked for '/' safety ({exc}); rewrite it"
        ) from None
    except RecursionError:
        raise ValueError(
            f"pattern {shown}: cannot be checked for '/' safety (nested too deeply); rewrite it"
        ) from None
    if problem is not None:
        raise ValueError(
            f"pattern {shown} may match '/' other than as a fixed literal: {problem}. "
            "Keep every '/' at a fixed position: escape literal dots as \\. and bound each "
            "varying part, e.g. https://[a-z0-9-]+\\.example\\.com"
        )
