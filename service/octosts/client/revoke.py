"""Revoke a GitHub installation token: ``DELETE {github_api}/installation/token``."""

from __future__ import annotations

import httpx

from octosts.client.errors import ConfigError, RevokeError
from octosts.client.models import check_token

DEFAULT_GITHUB_API = "https://api.github.com"
_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}


def _request_parts(token: str, github_api: str) -> tuple[str, dict[str, str]]:
    try:
        check_token(token)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not github_api.startswith(("https://", "http://")):
        raise ConfigError(f"GitHub API base must be an http(s) URL, got {github_api!r}")
    return github_api.rstrip("/") + "/installation/token", {
        **_HEADERS,
        "Authorization": f"Bearer {token}",
    }


def _check(status: int) -> None:
    # 204: revoked. 401: the token is already expired or revoked, which is
    # the state the caller wants; report it anyway so scripts can tell.
    if status == 204:
        return
    if status == 401:
        raise RevokeError("GitHub rejected the token (already revoked or expired)", status=status)
    raise RevokeError(f"GitHub answered HTTP {status}", status=status)


def _map(exc: httpx.HTTPError) -> RevokeError:
    if isinstance(exc, httpx.TimeoutException):
        return RevokeError("GitHub did not answer in time")
    return RevokeError(f"cannot reach GitHub: {type(exc).__name__}")


def revoke(
    token: str,
    *,
    github_api: str = DEFAULT_GITHUB_API,
    timeout: float = 10.0,
    transport: httpx.BaseTransport | None = None,
) -> None:
    """Revoke ``token``.

    Raises ``RevokeError`` (``status`` 401 when already invalid), ``ConfigError``.
    """
    url, headers = _request_parts(token, github_api)
    try:
        with httpx.Client(timeout=timeout, transport=transport) as client:
            response = client.delete(url, headers=headers)
    except httpx.HTTPError as exc:
        raise _map(exc) from exc
    _check(response.status_code)


async def arevoke(
    token: str,
    *,
    github_api: str = DEFAULT_GITHUB_API,
    timeout: float = 10.0,  # noqa: ASYNC109  (httpx's own timeout, per request)
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """asyncio ``revoke``."""
    url, headers = _request_parts(token, github_api)
    try:
        async with httpx.AsyncClient(timeout=timeout, transport=transport) as client:
            response = await client.delete(url, headers=headers)
    except httpx.HTTPError as exc:
        raise _map(exc) from exc
    _check(response.status_code)
