"""The policy path layout: where trust policies and the issuers file live."""

from __future__ import annotations

import pytest

from octosts.domain.layout import (
    DEFAULT_ORG_POLICY_REPO,
    ISSUERS_FILE,
    in_policy_dir,
    is_org_policy_repo,
    is_trust_policy_path,
    policy_path,
)


def test_the_layout_octo_sts_users_rely_on() -> None:
    assert policy_path("ci") == ".github/chainguard/ci.sts.yaml"
    assert ISSUERS_FILE == ".github/chainguard/trusted-token-issuers.yaml"
    assert DEFAULT_ORG_POLICY_REPO == ".github"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (".github/chainguard/ci.sts.yaml", True),
        (".github/chainguard/a.b-c_d.sts.yaml", True),
        (".github/chainguard/.sts.yaml", False),
        (".github/chainguard/sub/ci.sts.yaml", False),
        (".github/chainguard/ci.sts.yml", False),
        (".github/chainguard/ci.yaml", False),
        ("x/.github/chainguard/ci.sts.yaml", False),
        (".GITHUB/chainguard/ci.sts.yaml", False),
        (ISSUERS_FILE, False),
    ],
)
def test_trust_policy_paths(path: str, expected: bool) -> None:
    assert is_trust_policy_path(path) is expected


def test_policy_dir_and_org_repo() -> None:
    assert in_policy_dir(ISSUERS_FILE)
    assert in_policy_dir(".github/chainguard/sub/x")
    assert not in_policy_dir(".github/chainguard")
    assert not in_policy_dir(".github/chainguardx/a")
    assert is_org_policy_repo(".GitHub", DEFAULT_ORG_POLICY_REPO)
    assert not is_org_policy_repo("github", DEFAULT_ORG_POLICY_REPO)
