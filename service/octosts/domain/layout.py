"""Where policies live in GitHub repositories: the path layout, defined once.

::

    {owner}/{repo}/.github/chainguard/{identity}.sts.yaml             repository trust policy
    {owner}/{org repo}/.github/chainguard/{identity}.sts.yaml         organization trust policy
    {owner}/{org repo}/.github/chainguard/trusted-token-issuers.yaml  org trusted issuers
    {owner}/{org repo}/.github/chainguard/permission-ceiling.yaml     org permission ceiling
    {owner}/{repo}/.github/chainguard/**/{name}.jwks.json             keys a policy pins (jwks_file)

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
CEILING_FILE_NAME = "permission-ceiling.yaml"
CEILING_FILE = f"{POLICY_DIR}/{CEILING_FILE_NAME}"
JWKS_SUFFIX = ".jwks.json"
MAX_JWKS_PATH = 255
_JWKS_PATH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-/")


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


def jwks_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a policy's key file (``jwks_file``), or None when it can.

    A key file is a ``*.jwks.json`` file under POLICY_DIR (subfolders allowed), named from the
    repository root, in ``[A-Za-z0-9._-/]`` without ``.``/``..`` or empty segments: the App
    reads it like the policy, a push touching it reaches the same cache invalidation, and the
    webhook's check run validates it when a pull request changes it (rotation).
    """
    if not path.startswith(f"{POLICY_DIR}/"):
        return f"must be a file under {POLICY_DIR}/ (named from the repository root)"
    if not path.endswith(JWKS_SUFFIX) or path.rpartition("/")[2] == JWKS_SUFFIX:
        return f"must be named <name>{JWKS_SUFFIX}"
    if len(path) > MAX_JWKS_PATH or not set(path) <= _JWKS_PATH_CHARS:
        return f"at most {MAX_JWKS_PATH} characters of A-Z a-z 0-9 . _ - /"
    if any(segment in {"", ".", ".."} for segment in path.split("/")):
        return "no empty, '.' or '..' path segments"
    return None


def is_jwks_path(path: str) -> bool:
    """Whether ``path`` is a key file a policy may pin (see ``jwks_path_problem``)."""
    return jwks_path_problem(path) is None
