"""Structured logging (structlog) with secret redaction on every event.

``configure_logging`` sets up structlog and routes the standard library's
``logging`` (grpc, httpx, ...) through the same processors, so library log
lines are JSON and redacted too. Request-scoped values (request id, rpc, iss,
sub) are bound with ``structlog.contextvars`` by the transport and merged into
every event.

``redact`` is the last line of defence: code must not log secrets, but if a
JWT, a GitHub token, a PEM private key or an Authorization value reaches an
event (in a nested value, a key, or an exception's text) it is replaced.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TextIO

import structlog

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys, also when truncated (no END line).
    (
        re.compile(
            r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?:.*?-----END[A-Z ]*PRIVATE KEY-----|.*)",
            re.DOTALL,
        ),
        "[REDACTED_PRIVATE_KEY]",
    ),
    # JWS compact serialisation: base64url JSON header and payload start "eyJ".
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"), "[REDACTED_JWT]"),
    # GitHub tokens: ghp_ ghs_ gho_ ghu_ ghr_ and fine-grained PATs.
    (
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,})"),
        "[REDACTED_GITHUB_TOKEN]",
    ),
    # "Authorization: Bearer x", "authorization=x", JSON-ish "authorization": "x".
    (
        re.compile(
            r"""(?i)(\bauthorization["']?\s*[:=]\s*["']?)(?:(?:bearer|basic|token)\s+)?[^\s"',;]+"""
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
)

# A substring every pattern above needs: text without any of them is returned as it is
# after one scan (most log values: ids, hashes, names), instead of one per pattern.
_MAY_HOLD_SECRET = re.compile(
    r"-----BEGIN|eyJ|gh[pousr]_|github_pat_|(?i:authorization|bearer|basic)"
)

# Keys whose values are secrets whatever they look like ("-" and "_" ignored).
_SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxyauthorization",
        "token",
        "accesstoken",
        "idtoken",
        "bearer",
        "privatekey",
        "clientsecret",
        "password",
        "secret",
        "cookie",
    }
)
_MAX_DEPTH = 8


def scrub(text: str) -> str:
    """``text`` with anything that looks like a secret replaced."""
    if _MAY_HOLD_SECRET.search(text) is None:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("-", "").replace("_", "") in _SECRET_KEYS


def redact_value(value: Any, depth: int = 0) -> Any:  # noqa: PLR0911 -- one branch per type
    """A copy of ``value`` with secrets scrubbed from strings, keys and reprs."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bytes):
        return scrub(value.decode("utf-8", "replace"))
    if depth >= _MAX_DEPTH:
        return "[TRUNCATED]"
    if isinstance(value, Mapping):
        return {
            scrub(str(k)): REDACTED if _is_secret_key(k) else redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, depth + 1) for v in value]
    if isinstance(value, BaseException):
        # The type and scrubbed message; an exception's args may hold anything.
        return scrub(f"{type(value).__name__}: {value}")
    return scrub(repr(value))


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: scrub every key and value of the event."""
    out: EventDict = {}
    for key, value in event_dict.items():
        if key == "exc_info":
            # Left for the exception formatter placed before us; never rendered raw.
            out[key] = value
        elif _is_secret_key(key):
            out[key] = REDACTED
        else:
            out[scrub(key)] = redact_value(value)
    return out


LogFormat = Literal["json", "console"]


def processors(fmt: LogFormat) -> list[Processor]:
    """The processor chain: context, level, time, exception text, redaction, renderer."""
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Exceptions become text/dicts BEFORE redaction so tracebacks are scrubbed.
        structlog.processors.dict_tracebacks
        if fmt == "json"
        else structlog.processors.format_exc_info,
        redact,
    ]
    if fmt == "json":
        chain.append(structlog.processors.JSONRenderer(sort_keys=False))
    else:
        chain.append(structlog.dev.ConsoleRenderer(colors=False))
    return chain


def configure_logging(
    *, level: str = "info", fmt: LogFormat = "json", stream: TextIO | None = None
) -> None:
    """Configure structlog and stdlib logging process-wide (call once, from the wiring).

    Raises ValueError for an unknown level or format.
    """
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be 'json' or 'console', not {fmt!r}")
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    out = stream if stream is not None else sys.stderr
    chain = processors(fmt)
    structlog.configure(
        processors=chain,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    # Library logs through the same redaction and renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=chain[:-3],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *chain[-3:],
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Library DEBUG logs (hpack, httpcore) print request headers: never below INFO.
    root.setLevel(max(numeric, logging.INFO))
    for noisy in ("hpack", "httpcore", "httpx"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
