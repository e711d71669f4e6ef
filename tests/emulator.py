"""Helpers for tests that talk to the GitHub API emulator.

Keys are generated once per test session (RSA key generation is the slow part);
the emulator and the client under test share one ``FakeClock`` that starts at
the real time, so tests can move time forward for both sides.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from octosts.adapters.signer import PemSigner
from octosts.dev.github import GitHubEmulator
from tests.fakes import FakeClock

APP_ID = 4242

REPO_POLICY = b"""issuer: https://token.actions.githubusercontent.com
subject: repo:octo-org/demo:ref:refs/heads/main
permissions:
  contents: read
"""

ORG_POLICY = b"""issuer: https://token.actions.githubusercontent.com
subject_pattern: "repo:octo-org/.*"
permissions:
  contents: read
repositories:
  - demo
"""


@functools.cache
def app_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def pool_key(index: int) -> rsa.RSAPrivateKey:
    """The key of a further GitHub App (``index`` 2, 3, ...; the first App's is ``app_key``)."""
    del index  # one key per index, through the cache
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def other_key() -> rsa.RSAPrivateKey:
    """A key the emulator does not know (a forged or misconfigured app key)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def signer(key: rsa.RSAPrivateKey | None = None) -> PemSigner:
    return PemSigner(key or app_key())


def real_time_clock() -> FakeClock:
    return FakeClock(start=time.time())


def seed_repos(root: Path) -> Path:
    """octo-org (org: demo, other, .github) and octo-user (user: hello)."""
    files = {
        "octo-org/demo/.github/chainguard/ci.sts.yaml": REPO_POLICY,
        "octo-org/demo/README.md": b"# demo\n",
        "octo-org/other/README.md": b"# other\n",
        "octo-org/.github/.github/chainguard/deploy.sts.yaml": ORG_POLICY,
        "octo-user/hello/README.md": b"# hello\n",
        "octo-user/.user": b"",
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def make_emulator(tmp_path: Path, clock: FakeClock | None = None, **kwargs: Any) -> GitHubEmulator:
    """An emulator (not started) over the seed tree, trusting ``app_key()``."""
    return GitHubEmulator(
        app_public_key=app_key().public_key(),
        app_id=APP_ID,
        repos_dir=seed_repos(tmp_path / "repos"),
        clock=clock,
        **kwargs,
    )
