"""A GitHub REST API emulator for development and tests (``octo-sts dev github``).

It speaks the subset Octo STS uses, with GitHub's response shapes and status
codes, so policies can be tried without a real GitHub App:

* App JWT authentication (RS256 against the app's public key; ``iat``/``exp``
  bounds, at most 10 minutes apart; ``iss`` = app id) -> 401 otherwise.
* ``GET /app``, ``GET /app/installations`` (paginated with ``Link``), ``GET
  /app/installations/{id}``, ``GET /orgs/{o}/installation``, ``GET /users/{o}/installation``.
* ``POST /app/installations/{id}/access_tokens`` with permission and repository
  checks (422 beyond the installation); tokens ``ghs_...`` valid 1 hour.
* ``GET /repos/{o}/{r}/contents/{path}`` (JSON+base64 or raw media types,
  ETag / If-None-Match -> 304, which costs no rate limit) and
  ``PUT /repos/{o}/{r}/contents/{path}`` (needs ``contents: write``).
* ``DELETE /installation/token``, ``GET /installation/repositories``, ``GET /rate_limit``.
* Commits and pull requests for webhook tests (``commit``, ``open_pull_request``):
  ``GET /repos/{o}/{r}/contents/{path}?ref=SHA``, ``GET /repos/{o}/{r}/compare/{base}...{head}``,
  ``GET /repos/{o}/{r}/pulls/{n}/files`` (paginated with ``Link``), ``POST
  /repos/{o}/{r}/check-runs`` (needs ``checks: write``) and ``GET
  /repos/{o}/{r}/commits/{ref}/check-runs``. With ``configure_webhook(url,
  secrets)`` every commit and pull request sends a signed delivery
  (``X-Hub-Signature-256``) from a background thread; ``deliveries()`` lists them.
* Rate-limit headers on every answer, a primary limit per budget (an App's JWT,
  or an installation) per hour (or per ``rate_window``), a base latency and random
  failure rate (seeded RNG).
* Several GitHub Apps (``add_app``): each with its own key, installations (ids
  unique across Apps), primary limit and webhook; each sees only its own
  installations. ``GET /_emulator/apps`` lists them.
* Fault rules set at run time (``/_emulator/faults``): an error status, a
  secondary or primary rate limit (``retry-after`` / ``x-ratelimit-reset``), a
  dropped connection or added latency, per path prefix and method, for a
  fraction of requests, ``times`` times or for ``seconds``.
* Registering an App from a manifest (``manifests``): the web form's POST to
  ``/settings/apps/new`` (or an organization's) redirects with a code, ``POST
  /app-manifests/{code}/conversions`` answers the new App, which is served from then on.
* A token ledger (``/_emulator/tokens``): every mint with its id, SHA-256,
  permissions, repositories and state (live, revoked, expired, evicted).
* ``GET /_emulator/calls``, ``POST /_emulator/reset``, ``GET /_emulator/health``:
  control endpoints for tests and tools (no auth: bind to loopback). The user
  documentation of all of them is docs/github-emulator.md.

The repository tree is ``DIR/OWNER/REPO/...``; every owner is one installation
of the first App covering all its repositories, ids assigned in sorted owner
order starting at ``FIRST_INSTALLATION_ID``. An owner is an organization unless its directory
holds a file named ``.user`` (or it is listed in ``user_owners``): organizations
answer on ``/orgs/{o}/installation`` and ``/users/{o}/installation``, users on
``/users/...`` only (as on GitHub). Every repository's default branch is ``main``.

The package, by concern:

=================  ===========================================================================
``emulator``       ``GitHubEmulator``: puts the parts together, the request pipeline, test hooks
``state``          owners, installations, repositories, files, commits, pull requests, check runs
``ledger``         installation tokens minted, still honoured, revoked: the ledger
``auth``           App JWTs, installation tokens, permission levels, repository visibility
``limits``         fault rules, base latency and failure rate, primary rate limits per budget
``routing``        the route table's matcher and dispatch (401 / rate limit / 404 order)
``routes/``        one module per API area: ``apps``, ``installation``, ``contents``, ``checks``
``manifests``      Apps registered from a manifest: codes handed out, converted once
``control``        ``/_emulator/*`` endpoints and the call log
``deliveries``     signed webhook deliveries and the event payloads
``server``         the HTTP(S) server around ``GitHubEmulator.handle``
=================  ===========================================================================
"""

from __future__ import annotations

from octosts.dev.github.auth import ensure_app_key, load_app_public_key
from octosts.dev.github.control import Call
from octosts.dev.github.deliveries import Delivery
from octosts.dev.github.emulator import DEFAULT_INSTALLATION_PERMISSIONS, GitHubEmulator
from octosts.dev.github.ledger import MAX_TOKENS, TOKEN_LIFETIME, token_sha256
from octosts.dev.github.limits import Fault, fault_from_spec
from octosts.dev.github.state import FIRST_INSTALLATION_ID

__all__ = [
    "DEFAULT_INSTALLATION_PERMISSIONS",
    "FIRST_INSTALLATION_ID",
    "MAX_TOKENS",
    "TOKEN_LIFETIME",
    "Call",
    "Delivery",
    "Fault",
    "GitHubEmulator",
    "ensure_app_key",
    "fault_from_spec",
    "load_app_public_key",
    "token_sha256",
]
