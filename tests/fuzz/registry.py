"""The fuzz targets: where each lives, what atheris instruments for it, its input bounds.

Kept free of service imports so the runner can read it before atheris starts
instrumenting (a module imported before ``atheris.instrument_imports`` is never
instrumented). Each target module exposes ``one_input(data: bytes) -> None``; an
exception escaping it is a finding. The corpus of target ``name`` is
``tests/fuzz/corpus/<name>/`` (docs/fuzzing.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    # What it feeds and the property it checks: the target module's docstring.
    module: str
    # Module prefixes atheris instruments for coverage feedback: the code under test.
    # Not PyYAML: instrumented, it runs ~15x slower (a 64 KiB policy takes seconds), which
    # costs far more executions than its coverage feedback is worth.
    instrument: tuple[str, ...]
    # libFuzzer's -max_len: a little over the largest input the code accepts, so the
    # size checks are exercised from both sides.
    max_len: int
    # Mutations `make test` runs after replaying the corpus: a second or two each.
    test_runs: int = 1000

    @property
    def corpus(self) -> Path:
        return CORPUS_DIR / self.name


def _target(name: str, instrument: tuple[str, ...], max_len: int, test_runs: int = 1000) -> Target:
    return Target(name, f"tests.fuzz.targets.{name}", instrument, max_len, test_runs)


_TOKENS = ("octosts.transport.metadata", "octosts.adapters.oidc", "octosts.domain.tokens")
_YAML = ("octosts.adapters.policy_yaml", "octosts.domain")
_PINNED = ("octosts.adapters.pinned_keys", "octosts.domain.jwks", "octosts.adapters.oidc")
_GUARD = ("octosts.domain.slash_guard", "octosts.domain.issuers")
_HEADERS = (
    "octosts.transport.metadata",
    "octosts.transport.request_id",
    "octosts.transport.ext_authz",
)
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        _target("bearer", _TOKENS, 20_000),
        _target("claims", (*_TOKENS, "octosts.domain.policy"), 16_000),
        _target("jwks", ("octosts.adapters.oidc", "octosts.domain.jwks"), 110_000, test_runs=300),
        # A key file: MAX_JWKS_FILE_BYTES (64 KiB) and a little more.
        _target("pinned_jwks", _PINNED, 70_000, test_runs=300),
        _target("policy", _YAML, 70_000, test_runs=300),
        _target("issuers", _YAML, 70_000, test_runs=300),
        _target("ceiling", _YAML, 70_000, test_runs=300),
        _target("slash_guard", _GUARD, 8_000, test_runs=600),
        _target("names", ("octosts.domain.names", "octosts.transport.compat"), 400),
        _target("metadata", _HEADERS, 70_000),
        _target("compat", ("octosts.transport.compat", "octosts.domain.exchange"), 20_000),
        # The token endpoint's form: MAX_FORM_BYTES (20 KiB) and a little more.
        _target("oauth", ("octosts.transport.oauth", "octosts.transport.compat"), 22_000),
        _target("protobuf", ("octosts.transport",), 70_000),
        _target("webhook_payload", ("octosts.webhook",), 70_000, test_runs=500),
        _target("webhook_http", ("octosts.webhook",), 80_000, test_runs=500),
    )
}
