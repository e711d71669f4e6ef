"""The real Envoy rate-limit service for tests: skipped when not built, except in CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from octosts.dev.ratelimit import RateLimitService, ratelimit_binary
from octosts.dev.redis import RedisServer


def start_ratelimit(workdir: Path, limits: Path, store: RedisServer) -> RateLimitService:
    """A started service counting in ``store``; the caller stops it (in a finaliser)."""
    if ratelimit_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("the ratelimit service is required in CI (make ratelimit)")
        pytest.skip("the ratelimit service is not built (make ratelimit)")
    workdir.mkdir(parents=True, exist_ok=True)
    return RateLimitService(workdir, limits, f"127.0.0.1:{store.port}").start()
