"""``X-Hub-Signature-256`` verification against one or more secrets (rotation)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

PREFIX = "sha256="


def signature_valid(body: bytes, header: str | None, secrets: Sequence[bytes]) -> bool:
    """True when ``header`` is ``sha256=<hex HMAC of body>`` under any of ``secrets``.

    Every secret is compared in constant time and all are tried, so timing
    says nothing about which secret (or how much of a digest) matched.
    """
    if not header or not header.startswith(PREFIX) or not secrets:
        return False
    given = header[len(PREFIX) :].strip().lower().encode("ascii", "replace")
    matched = False
    for secret in secrets:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        matched |= hmac.compare_digest(expected, given)
    return matched
