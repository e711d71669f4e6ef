"""Where policies live in GitHub repositories: the path layout, defined once.

::

    {owner}/{repo}/.github/chainguard/{identity}.sts.yaml             repository trust policy
    {owner}/{org repo}/.github/chainguard/{identity}.sts.yaml         organization trust policy
    {owner}/{org repo}/.github/chainguard/trusted-token-issuers.yaml  org trusted issuers

``{org repo}`` is the deployment's ``ORG_POLICY_REPO``, by default ``.github``
(GitHub's own name for an organization-wide repository). The exchange, the
policy and issuers stores, the webhook and ``octo-sts policy lint`` all read
the layout from here.
"""

from __future__ import annotations

DEFAULT_ORG_POLICY_REPO = ".github"
POLICY_DIR = ".github/chainguard"
POLICY_SUFFIX = ".sts.yaml"
ISSUERS_FILE_NAME = "trusted-token-issuers.yaml"
ISSUERS_FILE = f"{POLICY_DIR}/{ISSUERS_FILE_NAME}"


def policy_path(identity: str) -> str:
    """The path of the trust policy named ``identity`` (already a valid identity)."""
    return f"{POLICY_DIR}/{identity}{POLICY_SUFFIX}"


def is_trust_policy_path(path: str) -> bool:
    """Whether ``path`` is a trust policy file: ``{identity}.sts.yaml`` directly in POLICY_DIR."""
    directory, _, name = path.rpartition("/")
    return (
        directory == POLICY_DIR and len(name) > len(POLICY_SUFFIX) and name.endswith(POLICY_SUFFIX)
    )


def in_policy_dir(path: str) -> bool:
    """Whether ``path`` is anywhere under POLICY_DIR."""
    return path.startswith(f"{POLICY_DIR}/")


def is_org_policy_repo(repo: str, org_policy_repo: str) -> bool:
    """GitHub repository names are case-insensitive: ``owner/.GITHUB`` is the org policy repo."""
    return repo.lower() == org_policy_repo.lower()
