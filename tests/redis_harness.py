"""A real ``redis-server`` for tests: skipped when missing, except in CI, where it must exist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from octosts.dev.redis import RedisServer, redis_binary


def start_redis(workdir: Path) -> RedisServer:
    """A started server on a free port; the caller stops it (in a finaliser)."""
    if redis_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI (Debian package redis-server)")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    return RedisServer(workdir).start()
