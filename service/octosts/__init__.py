"""Octo STS: a Security Token Service for GitHub.

Workloads trade an OIDC token for a short-lived GitHub App installation token
whose permissions come from a trust policy kept in the target repository.
"""

__version__ = "0.1.0"
