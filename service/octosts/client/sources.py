"""Where the workload's OIDC token comes from.

A token source is called once per exchange (``token(audience)``), so a file
that Kubernetes rotates or an Actions token with a fresh ``exp`` is picked up
without restarting the caller. Sources are synchronous; the async client runs
network sources in a worker thread.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Protocol

import httpx

from octosts.client.errors import TokenSourceError
from octosts.client.models import MAX_TOKEN_BYTES, check_token

# The Actions token endpoint answers with a small JSON document.
MAX_ACTIONS_RESPONSE_BYTES = 64 * 1024


class TokenSource(Protocol):
    """Returns a bearer token (an OIDC JWT) for ``audience``.

    ``audience`` is the audience the STS expects; sources that cannot choose
    it (files, variables) ignore it. Raises ``TokenSourceError``.
    """

    def token(self, audience: str | None) -> str: ...


def _checked(token: str, origin: str) -> str:
    try:
        return check_token(token.strip(), f"the token from {origin}")
    except ValueError as exc:
        raise TokenSourceError(str(exc)) from exc


class StaticTokenSource:
    """A token given directly (tests, callers that fetched it themselves)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticTokenSource(<redacted>)"

    def token(self, audience: str | None) -> str:  # noqa: ARG002
        return _checked(self._token, "the caller")


class EnvTokenSource:
    """The token in an environment variable, read at each call."""

    def __init__(self, name: str, environ: Mapping[str, str] | None = None) -> None:
        self.name = name
        self._environ = os.environ if environ is None else environ

    def __repr__(self) -> str:
        return f"EnvTokenSource({self.name!r})"

    def token(self, audience: str | None) -> str:  # noqa: ARG002
        value = self._environ.get(self.name)
        if value is None:
            raise TokenSourceError(f"environment variable {self.name} is not set")
        return _checked(value, f"${self.name}")


class FileTokenSource:
    """A token file, re-read at each call (a Kubernetes projected service-account token rotates)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileTokenSource({str(self.path)!r})"

    def token(self, audience: str | None) -> str:  # noqa: ARG002
        try:
            with self.path.open("rb") as fh:
                data = fh.read(MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            raise TokenSourceError(
                f"cannot read token file {self.path}: {exc.strerror or exc}"
            ) from exc
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError as exc:
            raise TokenSourceError(f"token file {self.path} is not ASCII text") from exc
        return _checked(text, f"file {self.path}")


class StdinTokenSource:
    """The token piped on standard input; read once, then remembered (stdin cannot be re-read)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._token: str | None = None

    def __repr__(self) -> str:
        return "StdinTokenSource()"

    def token(self, audience: str | None) -> str:  # noqa: ARG002
        if self._token is None:
            stream = self._stream if self._stream is not None else sys.stdin
            try:
                text = stream.read(MAX_TOKEN_BYTES + 1)
            except (OSError, UnicodeDecodeError) as exc:
                raise TokenSourceError(f"cannot read the token from stdin: {exc}") from exc
            self._token = _checked(text, "stdin")
        return self._token


class ActionsTokenSource:
    """The GitHub Actions OIDC token (job permission ``id-token: write``).

    GETs ``$ACTIONS_ID_TOKEN_REQUEST_URL&audience=...`` with
    ``Authorization: bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN`` and returns the
    ``value`` of the JSON answer. ``default_audience`` is used when the caller
    passes none (the CLI passes the STS host name).
    """

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        default_audience: str | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self.default_audience = default_audience
        self._timeout = timeout
        self._transport = transport

    def __repr__(self) -> str:
        return "ActionsTokenSource()"

    def token(self, audience: str | None) -> str:
        url = self._environ.get("ACTIONS_ID_TOKEN_REQUEST_URL")
        request_token = self._environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        if not url or not request_token:
            raise TokenSourceError(
                "ACTIONS_ID_TOKEN_REQUEST_URL / ACTIONS_ID_TOKEN_REQUEST_TOKEN are not set "
                "(is this a GitHub Actions job with `permissions: id-token: write`?)"
            )
        audience = audience or self.default_audience
        try:
            # The URL already carries `api-version`; `params=` would replace it.
            target = httpx.URL(url)
            if audience:
                target = target.copy_merge_params({"audience": audience})
        except httpx.InvalidURL as exc:
            raise TokenSourceError("ACTIONS_ID_TOKEN_REQUEST_URL is not a valid URL") from exc
        try:
            with (
                httpx.Client(timeout=self._timeout, transport=self._transport) as client,
                client.stream(
                    "GET",
                    target,
                    headers={
                        "Authorization": f"bearer {request_token}",
                        "Accept": "application/json",
                    },
                ) as response,
            ):
                body = _read_capped(response, MAX_ACTIONS_RESPONSE_BYTES)
                status = response.status_code
        except httpx.TimeoutException as exc:
            raise TokenSourceError("the Actions token endpoint timed out") from exc
        except httpx.HTTPError as exc:
            # httpx messages name the URL, never the Authorization header.
            raise TokenSourceError(f"cannot reach the Actions token endpoint: {exc}") from exc
        if status != 200:
            raise TokenSourceError(f"the Actions token endpoint answered HTTP {status}")
        try:
            value = json.loads(body)["value"]
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenSourceError("the Actions token endpoint sent no `value`") from exc
        if not isinstance(value, str):
            raise TokenSourceError("the Actions token endpoint sent a non-string `value`")
        return _checked(value, "the Actions token endpoint")


def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise TokenSourceError(f"the Actions token endpoint sent more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_token_source(
    spec: str, *, environ: Mapping[str, str] | None = None, default_audience: str | None = None
) -> TokenSource:
    """Build a source from a CLI spec: ``actions``, ``file:PATH``, ``env:NAME`` or ``stdin``.

    Raises ``ValueError`` for an unknown spec.
    """
    kind, _, arg = spec.partition(":")
    if kind == "actions" and not arg:
        return ActionsTokenSource(environ=environ, default_audience=default_audience)
    if kind == "stdin" and not arg:
        return StdinTokenSource()
    if kind == "file" and arg:
        return FileTokenSource(arg)
    if kind == "env" and arg:
        return EnvTokenSource(arg, environ)
    raise ValueError(f"unknown token source {spec!r}: use actions, file:PATH, env:NAME or stdin")
