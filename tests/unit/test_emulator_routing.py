"""The emulator's route patterns: one segment per ``{name}``, the rest for a final ``{name+}``."""

from __future__ import annotations

import pytest

from octosts.dev.github.answers import Answer
from octosts.dev.github.routing import Context, Request, route


def _handler(_: Context, __: Request) -> Answer:
    return Answer(200)


CONTENTS = route("GET", "/repos/{owner}/{repo}/contents/{path+}", "token", _handler)
CHECK_RUNS = route("GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs", "token", _handler)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/repos/o/r/contents/README.md", {"owner": "o", "repo": "r", "path": "README.md"}),
        ("/repos/o/r/contents/a/b/c.yaml", {"owner": "o", "repo": "r", "path": "a/b/c.yaml"}),
        ("/repos/o/r/contents", None),  # a path is required
        ("/repos/o/r/compare/a...b", None),
        ("/repos/o/contents/x", None),
    ],
)
def test_rest_pattern(path: str, params: dict[str, str] | None) -> None:
    assert CONTENTS.match("GET", [s for s in path.split("/") if s]) == params


def test_fixed_length_pattern_and_method() -> None:
    segments = ["repos", "o", "r", "commits", "main", "check-runs"]
    assert CHECK_RUNS.match("GET", segments) == {"owner": "o", "repo": "r", "ref": "main"}
    assert CHECK_RUNS.match("POST", segments) is None
    assert CHECK_RUNS.match("GET", [*segments, "extra"]) is None
    assert CHECK_RUNS.match("GET", segments[:-1]) is None
