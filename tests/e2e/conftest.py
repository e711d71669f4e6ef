"""Fixtures that run the real stack (``DevStack``): issuer, GitHub emulator, STS replicas, Envoy.

``stack`` is shared by every test of the session that only sends requests; a test that kills
processes takes ``own_stack`` (its own processes, stopped in the finaliser) so the shared one
stays whole. Both use free loopback ports and a unique Envoy ``base_id``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from octosts.dev.envoy import EnvoyError
from octosts.dev.stack import DevStack, StackError, StackPorts
from tests.e2e.envoy_harness import unique_base_id


def start_stack(
    workdir: Path,
    attempts: int = 2,
    *,
    replicas: int = 2,
    prepare: Callable[[DevStack], None] | None = None,
    timeout: float = 30.0,
    **options: Any,
) -> DevStack:
    """A started stack (two replicas unless told); the caller stops it.

    ``options`` go to ``DevStack``; ``prepare`` sees each stack before it starts (its files).

    Ports are picked free but bound later by the children, so another process on the machine
    can take one in between: a failed start is retried once on fresh ports.
    """
    for attempt in range(1, attempts + 1):
        stack = DevStack(
            workdir=workdir / f"try{attempt}",
            ports=StackPorts.free(replicas),
            base_id=unique_base_id(),
            **options,
        )
        if prepare is not None:
            prepare(stack)
        try:
            # DevStack.start() stops whatever it started when start-up fails.
            return stack.start(timeout)
        except (StackError, EnvoyError):
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    running = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[DevStack]:
    running = start_stack(tmp_path / "stack")
    try:
        yield running
    finally:
        running.stop()
