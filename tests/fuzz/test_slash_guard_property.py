"""The slash guard against RE2 itself: a differential property (hypothesis).

Why hypothesis here, not atheris: the property needs strings the pattern matches,
and random bytes almost never match a random pattern. So patterns are drawn as
trees (literals and classes in their RE2 spellings, sequences, alternations,
repetitions, groups with flags), rendered to RE2 syntax, and each tree can also
*sample* strings of its language. Which characters a leaf matches is asked of RE2
(at import), so the oracle shares nothing with the guard's own reading of RE2.

Property, for every pattern the guard accepts (``compile_issuer_pattern``):
two strings it matches have the same number of '/'; no string with one '/' more
or fewer than a match is matched; and swapping the '/'-separated segments of two
matches gives a match (the language is a product of '/'-free parts joined by fixed
'/'). That is what "'/' only as a fixed literal" means, whatever rewriting
(factoring alternations...) the guard does to prove it.

``make test`` runs a fixed number of derandomized examples; ``make fuzz`` sets
OCTOSTS_FUZZ_EXAMPLES for many more, randomized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import re2
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from octosts.domain.issuers import compile_issuer_pattern
from tests.fuzz.targets._support import slash_variants

LONG = "OCTOSTS_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("OCTOSTS_FUZZ_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not LONG,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

UNIVERSE = "abzAZ09-.:/_~é Ω中\n\t"
# RE2 spellings of one character (or a class of them). Many say '/' without a '/'.
LEAF_SOURCES = (
    "a",
    "b",
    "z",
    "A",
    "0",
    "-",
    ":",
    r"\.",
    "/",
    r"\/",
    r"\x2F",
    r"\x{2f}",
    r"\057",
    r"\Q/\E",
    "[/]",
    r"[\/]",
    "[a-z]",
    "[^/]",
    "[^a]",
    "[a-z0-9-]",
    "[.-9]",
    "[+-0]",
    "[[:alnum:]]",
    "[[:punct:]]",
    "[[:^alpha:]]",
    r"\d",
    r"\w",
    r"\W",
    r"\S",
    r"\s",
    r"\pL",
    r"\PL",
    r"\p{Greek}",
    r"\p{^Greek}",
    r"\p{P}",
    r"[\pL\d]",
    r"[^\n]",
    r"[\x20-\x7e]",
    "[]a]",
    "[/a]",
    "[Hh]",
    ".",
    r"\C",
    "[^[:alnum:]]",
)


def _matched(source: str) -> tuple[str, ...]:
    regex = re2.compile(source)
    return tuple(c for c in UNIVERSE if regex.fullmatch(c) is not None)


@dataclass(frozen=True)
class Leaf:
    source: str
    samples: tuple[str, ...]  # strings it matches (for most leaves: single characters)


# Leaves matching no character of UNIVERSE are left out: they could not be sampled.
LEAVES = tuple(Leaf(s, chars) for s in LEAF_SOURCES if (chars := _matched(s)))
# Most issuer patterns start with a scheme and host: half of the drawn ones do too.
PREFIXES = (
    Leaf("https://", ("https://",)),
    Leaf(r"https://[a-z]+\.example\.com/", ("https://a.example.com/", "https://xyz.example.com/")),
)


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    branches: tuple[Node, ...]


@dataclass(frozen=True)
class Rep:
    item: Node
    op: str
    low: int
    high: int


@dataclass(frozen=True)
class Group:
    item: Node
    opening: str


Node = Leaf | Seq | Alt | Rep | Group
# operator, fewest and most repeats sampled (a star is sampled up to 2 times)
OPERATORS = (
    ("*", 0, 2),
    ("+", 1, 3),
    ("?", 0, 1),
    ("{1}", 1, 1),
    ("{2}", 2, 2),
    ("{0,2}", 0, 2),
    ("*?", 0, 2),
)
OPENINGS = ("(?:", "(", "(?P<g>", "(?i:", "(?s:", "(?-i:")


def render(node: Node) -> str:
    if isinstance(node, Leaf):
        return node.source
    if isinstance(node, Seq):
        return "".join(
            _atom(item) if isinstance(item, Alt) else render(item) for item in node.items
        )
    if isinstance(node, Alt):
        return "|".join(render(branch) for branch in node.branches)
    if isinstance(node, Rep):
        return _atom(node.item) + node.op
    return f"{node.opening}{render(node.item)})"


def _atom(node: Node) -> str:
    """``node`` as one operand (of a repetition, or inside a sequence)."""
    if isinstance(node, Leaf | Group):
        return render(node)
    return f"(?:{render(node)})"


def trees() -> st.SearchStrategy[Node]:
    leaves = st.sampled_from(LEAVES)
    literal_slash = st.just(Leaf("/", ("/",)))

    def extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        return st.one_of(
            st.lists(children, min_size=1, max_size=5).map(lambda xs: Seq(tuple(xs))),
            st.lists(children, min_size=2, max_size=3).map(lambda xs: Alt(tuple(xs))),
            st.tuples(children, st.sampled_from(OPERATORS)).map(lambda t: Rep(t[0], *t[1])),
            st.tuples(children, st.sampled_from(OPENINGS)).map(lambda t: Group(*t)),
        )

    body = st.recursive(st.one_of(leaves, literal_slash), extend, max_leaves=12)
    prefixed = st.tuples(st.sampled_from(PREFIXES), body).map(Seq)
    return st.one_of(body, prefixed)


def sample(node: Node) -> st.SearchStrategy[str]:
    """Strings of ``node``'s language (every one of them matches the rendered pattern)."""
    if isinstance(node, Leaf):
        return st.sampled_from(node.samples)
    if isinstance(node, Seq):
        return st.tuples(*(sample(item) for item in node.items)).map("".join)
    if isinstance(node, Alt):
        return st.one_of(*(sample(branch) for branch in node.branches))
    if isinstance(node, Rep):
        return st.lists(sample(node.item), min_size=node.low, max_size=node.high).map("".join)
    return sample(node.item)


def _accepted(source: str) -> re2._Regexp | None:  # type: ignore[name-defined]
    try:
        compile_issuer_pattern(source)
    except ValueError:
        return None
    return re2.compile(source)


# On a failure hypothesis prints the strategy, whose leaf table is large: not a problem.
@pytest.mark.filterwarnings(
    "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
)
@FUZZ
@given(tree=trees(), data=st.data())
def test_accepted_patterns_match_slash_only_at_fixed_places(
    tree: Node, data: st.DataObject
) -> None:
    source = render(tree)
    regex = _accepted(source)
    if regex is None:
        return  # refusing is always safe; this property is about what is let through
    first, second = data.draw(sample(tree)), data.draw(sample(tree))
    assert regex.fullmatch(first) is not None, (source, first)
    assert regex.fullmatch(second) is not None, (source, second)
    assert first.count("/") == second.count("/"), (source, first, second)
    for variant in slash_variants(first):
        assert regex.fullmatch(variant) is None, (source, first, variant)
    crossed = [
        a if index % 2 else b
        for index, (a, b) in enumerate(zip(first.split("/"), second.split("/"), strict=True))
    ]
    assert regex.fullmatch("/".join(crossed)) is not None, (source, first, second)


@pytest.mark.parametrize(
    "wanted",
    [
        pytest.param(
            lambda src: "/" in src and src.count("/") > src.count("https://") * 2, id="slash"
        ),
        pytest.param(lambda src: "|" in src, id="alternation"),
        pytest.param(lambda src: "(?i" in src, id="case-folding"),
    ],
)
def test_the_strategy_reaches_accepted_patterns(wanted: object) -> None:
    """Not vacuous: accepted patterns with '/' beyond the scheme, alternations, flags."""
    found = find(
        trees(),
        lambda tree: wanted(render(tree)) and _accepted(render(tree)) is not None,  # type: ignore[operator]
        settings=settings(derandomize=True, database=None, max_examples=20_000),
    )
    assert _accepted(render(found)) is not None
