"""Errors raised by the Octo STS client.

One root, so callers can catch everything with one ``except``::

    ClientError
    ├── ConfigError               bad endpoint, unreadable CA file
    ├── TokenSourceError          the workload's OIDC token could not be obtained
    ├── ExchangeError             the exchange failed; carries code, reason, request_id
    │   ├── BadRequest            INVALID_ARGUMENT      / HTTP 400
    │   ├── Unauthenticated       UNAUTHENTICATED       / HTTP 401
    │   ├── Forbidden             PERMISSION_DENIED     / HTTP 403 (and 404 from the gateway)
    │   ├── RateLimited           RESOURCE_EXHAUSTED    / HTTP 429 (retried once, after
    │   │                                                  ``retry_after``, within the deadline)
    │   ├── Unavailable           UNAVAILABLE           / HTTP 503, connection refused (retried)
    │   ├── DeadlineExceeded      DEADLINE_EXCEEDED     / HTTP 504, client timeout (not retried)
    │   └── ServerError           anything else, including a malformed response
    └── RevokeError               GitHub did not revoke the token

Messages never contain a token: they are built from the server's status
message, which the service guarantees is token-free, and our own text.
"""

from __future__ import annotations


class ClientError(Exception):
    """Root of the client's errors."""


class ConfigError(ClientError):
    """The client is misconfigured (endpoint, CA file)."""


class TokenSourceError(ClientError):
    """The OIDC token could not be read or fetched."""


class ExchangeError(ClientError):
    """The exchange failed.

    ``code`` is the gRPC status name (``"PERMISSION_DENIED"``), ``status``
    the HTTP status when the HTTP gateway was used, ``reason`` the service's
    machine-readable reason when it sent one (``"policy_denied"``), and
    ``request_id`` the id to quote to the operator, ``retry_after`` the seconds
    the service asked the caller to wait before trying again (``Retry-After``).
    """

    default_code = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.code = code or self.default_code
        self.reason = reason
        self.request_id = request_id
        self.status = status
        self.retry_after = retry_after
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [f"{self.code}: {self.message}"]
        if self.reason:
            parts.append(f"reason={self.reason}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        if self.retry_after is not None:
            parts.append(f"retry_after={self.retry_after:g}s")
        return " ".join(parts)


class BadRequest(ExchangeError):
    default_code = "INVALID_ARGUMENT"


class Unauthenticated(ExchangeError):
    default_code = "UNAUTHENTICATED"


class Forbidden(ExchangeError):
    default_code = "PERMISSION_DENIED"


class RateLimited(ExchangeError):
    default_code = "RESOURCE_EXHAUSTED"


class Unavailable(ExchangeError):
    default_code = "UNAVAILABLE"


class DeadlineExceeded(ExchangeError):
    default_code = "DEADLINE_EXCEEDED"


class ServerError(ExchangeError):
    default_code = "INTERNAL"


class RevokeError(ClientError):
    """GitHub refused or could not process ``DELETE /installation/token``."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


_BY_CODE: dict[str, type[ExchangeError]] = {
    "INVALID_ARGUMENT": BadRequest,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": Forbidden,
    "NOT_FOUND": Forbidden,
    "RESOURCE_EXHAUSTED": RateLimited,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}

_BY_HTTP_STATUS: dict[int, type[ExchangeError]] = {
    400: BadRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: Forbidden,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: DeadlineExceeded,
}

_HTTP_STATUS_CODE_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_for_code(
    code: str,
    message: str,
    *,
    reason: str | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> ExchangeError:
    """Build the error for a gRPC status name."""
    cls = _BY_CODE.get(code, ServerError)
    return cls(message, code=code, reason=reason, request_id=request_id, retry_after=retry_after)


def error_for_http_status(
    status: int,
    message: str,
    *,
    code: str | None = None,
    reason: str | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> ExchangeError:
    """Build the error for an HTTP status; the HTTP status decides the class."""
    cls = _BY_HTTP_STATUS.get(status, ServerError)
    return cls(
        message,
        code=code
        or _HTTP_STATUS_CODE_NAMES.get(status, "INTERNAL" if status >= 500 else "UNKNOWN"),
        reason=reason,
        request_id=request_id,
        status=status,
        retry_after=retry_after,
    )
