"""What a route answers: an HTTP status, body and headers, or an ``HttpError`` raised on the way.

Error bodies have GitHub's shape (``message`` + ``documentation_url``); list endpoints page with
GitHub's ``Link`` header.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

DOCS = "https://docs.github.com/rest"
JSON = "application/json; charset=utf-8"
RAW = "application/vnd.github.raw; charset=utf-8"


class HttpError(Exception):
    """An error answer: ``status`` with GitHub's ``{"message", "documentation_url"}`` body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def answer(self) -> Answer:
        return json_answer(
            self.status, {"message": self.message, "documentation_url": DOCS}, self.headers
        )


def not_found() -> HttpError:
    return HttpError(404, "Not Found")


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    disconnect: bool = False  # close the connection without answering (a fault)


def hang_up() -> Answer:
    """No answer at all: the server closes the connection (logged with status 0)."""
    return Answer(0, disconnect=True)


def json_answer(status: int, data: object, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(data, indent=None).encode(), headers=dict(headers or {}))


def no_content() -> Answer:
    return Answer(204, b"", content_type="")


def parse_json_object(body: bytes, *, empty_ok: bool = False) -> dict[str, object]:
    """The request body as a JSON object, or 400 ``Problems parsing JSON`` as GitHub answers."""
    if empty_ok and not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise HttpError(400, "Problems parsing JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "Problems parsing JSON")
    return data


def iso(ts: float) -> str:
    """GitHub's timestamp format (UTC, whole seconds)."""
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def paginated(items: Sequence[object], query: str, url: str) -> tuple[list[object], dict[str, str]]:
    """One page of ``items`` for ``?per_page=&page=`` (30 by default, at most 100) and its headers.

    ``url`` is the absolute URL of the list. The ``Link`` header names the ``prev``, ``next``,
    ``last`` and ``first`` pages where there are such, as GitHub's does; values that are not
    numbers are ignored (the defaults apply), as GitHub ignores them.
    """
    params = urllib.parse.parse_qs(query)
    per_page = min(max(_number(params, "per_page", 30), 1), 100)
    page = max(_number(params, "page", 1), 1)
    chunk = list(items[(page - 1) * per_page : page * per_page])
    last = max((len(items) + per_page - 1) // per_page, 1)
    rels = []
    if page > 1:
        rels.append(("prev", min(page - 1, last)))
    if page < last:
        rels += [("next", page + 1), ("last", last)]
    if page > 1:
        rels.append(("first", 1))
    links = [f'<{url}?per_page={per_page}&page={n}>; rel="{rel}"' for rel, n in rels]
    return chunk, ({"link": ", ".join(links)} if links else {})


def _number(params: Mapping[str, list[str]], name: str, default: int) -> int:
    value = params.get(name, [""])[0]
    return int(value) if value.isdecimal() and len(value) < 10 else default
