"""I/O adapters: OIDC issuers, GitHub, YAML, caches.

Foreign exceptions are mapped to domain errors here.
"""
