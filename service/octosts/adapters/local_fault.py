"""Telling this replica's own faults from an upstream's, for outbound calls.

An outbound call fails for one of two kinds of reason: the other end (down,
slow, refusing, answering 5xx) or this process (no file descriptor, no local
port, no buffer memory). Only the second says anything about this replica's
readiness (``domain.ports.ReplicaHealth``): every replica sees an issuer that
is down, but only this one is out of file descriptors.
"""

from __future__ import annotations

import errno

# Failures a socket call can only have because of this host or process.
LOCAL_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}
)


def local_fault_cause(exc: BaseException) -> str | None:
    """The errno name (``EMFILE``...) when ``exc`` or what caused it is a local fault, else None.

    HTTP libraries wrap the ``OSError`` (httpx's ``ConnectError`` chains it), so the whole
    ``__cause__`` / ``__context__`` chain is searched.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in LOCAL_ERRNOS:
            return errno.errorcode[current.errno]
        current = current.__cause__ or current.__context__
    return None
