"""Which outbound failures are this replica's own fault (readiness) and which are upstream's."""

from __future__ import annotations

import errno

import httpx
import pytest

from octosts.adapters.local_fault import local_fault_cause


def chained(outer: Exception, inner: BaseException) -> Exception:
    """``outer`` raised ``from inner``, as an HTTP library wraps a socket error."""
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.EADDRNOTAVAIL, errno.ENOBUFS])
def test_local_resource_failures_are_the_replicas(code: int) -> None:
    wrapped = chained(httpx.ConnectError("connect failed"), OSError(code, "local"))
    assert local_fault_cause(wrapped) == errno.errorcode[code]
    assert local_fault_cause(OSError(code, "bare")) == errno.errorcode[code]


@pytest.mark.parametrize(
    "exc",
    [
        chained(httpx.ConnectError("refused"), ConnectionRefusedError(errno.ECONNREFUSED, "x")),
        OSError(errno.EHOSTUNREACH, "no route"),
        httpx.ReadTimeout("slow"),
        chained(httpx.ConnectError("reset"), ConnectionResetError(errno.ECONNRESET, "x")),
    ],
)
def test_upstream_failures_are_not(exc: Exception) -> None:
    assert local_fault_cause(exc) is None


def test_a_cycle_in_the_chain_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert local_fault_cause(first) is None
