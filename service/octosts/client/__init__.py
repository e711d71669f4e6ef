"""Octo STS client library: exchange a workload OIDC token for a GitHub token.

    from octosts.client import Client, FileTokenSource

    with Client("https://sts.example.com", ca_file="ca.pem",
                token_source=FileTokenSource("/var/run/secrets/tokens/octo-sts")) as client:
        result = client.exchange("my-org/my-repo", "deploy")
        use(result.token)   # repr(result) never shows the token

``AsyncClient`` / ``aexchange`` are the asyncio forms; ``revoke`` / ``arevoke``
give the token back to GitHub early. Errors: see ``octosts.client.errors``.
"""

from __future__ import annotations

from octosts.client.core import AsyncClient, Client, aexchange, exchange
from octosts.client.errors import (
    BadRequest,
    ClientError,
    ConfigError,
    DeadlineExceeded,
    ExchangeError,
    Forbidden,
    RateLimited,
    RevokeError,
    ServerError,
    TokenSourceError,
    Unauthenticated,
    Unavailable,
)
from octosts.client.models import NO_RETRY, Endpoint, ExchangeResult, RetryPolicy
from octosts.client.revoke import DEFAULT_GITHUB_API, arevoke, revoke
from octosts.client.sources import (
    ActionsTokenSource,
    EnvTokenSource,
    FileTokenSource,
    StaticTokenSource,
    StdinTokenSource,
    TokenSource,
    parse_token_source,
)

__all__ = [
    "DEFAULT_GITHUB_API",
    "NO_RETRY",
    "ActionsTokenSource",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientError",
    "ConfigError",
    "DeadlineExceeded",
    "Endpoint",
    "EnvTokenSource",
    "ExchangeError",
    "ExchangeResult",
    "FileTokenSource",
    "Forbidden",
    "RateLimited",
    "RetryPolicy",
    "RevokeError",
    "ServerError",
    "StaticTokenSource",
    "StdinTokenSource",
    "TokenSource",
    "TokenSourceError",
    "Unauthenticated",
    "Unavailable",
    "aexchange",
    "arevoke",
    "exchange",
    "parse_token_source",
    "revoke",
]
