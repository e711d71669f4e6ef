"""Per-organization trusted-token-issuers, read from the org policy repository.

``TrustedIssuersStore`` implements ``domain.ports.TrustedIssuersSource``: the file
``domain.layout.ISSUERS_FILE``, read, cached and falling back as every org file is
(``adapters.org_files``, whose module doc has the table of lookup outcomes and the fleet's
second level; an invalid file with no last known good refuses with reason
``trusted_issuers_invalid``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from octosts.adapters.org_files import OrgFile, OrgFileConfig, OrgFileStore
from octosts.adapters.policy_yaml import parse_trusted_issuers
from octosts.domain.issuers import TrustedIssuers
from octosts.domain.layout import DEFAULT_ORG_POLICY_REPO, ISSUERS_FILE

if TYPE_CHECKING:
    from octosts.adapters.shared_cache import SharedCache
    from octosts.domain.ports import Clock, GitHubApp, StageObserver

INVALID_REASON = "trusted_issuers_invalid"
# The settings and tests name it so; every org file's cache has the same knobs.
TrustedIssuersConfig = OrgFileConfig


class TrustedIssuersStore(OrgFileStore[TrustedIssuers]):
    """``TrustedIssuersSource`` over ``GitHubApp.read_file``, cached per org."""

    def __init__(
        self,
        github: GitHubApp,
        *,
        clock: Clock,
        observer: StageObserver,
        org_policy_repo: str = DEFAULT_ORG_POLICY_REPO,
        insecure_issuers: frozenset[str] = frozenset(),
        config: OrgFileConfig | None = None,
        shared: SharedCache | None = None,
    ) -> None:
        file = OrgFile(
            name="trusted_issuers",
            path=ISSUERS_FILE,
            parse=partial(parse_trusted_issuers, insecure_issuers=insecure_issuers),
            unreadable_effect="no issuer restriction for this organization",
        )
        super().__init__(
            file,
            github,
            clock=clock,
            observer=observer,
            org_policy_repo=org_policy_repo,
            config=config,
            shared=shared,
        )

    async def trusted_issuers(self, installation_id: int, owner: str) -> TrustedIssuers | None:
        """See ``TrustedIssuersSource.trusted_issuers``."""
        return await self.lookup(installation_id, owner)
