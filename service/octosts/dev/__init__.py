"""Development servers shipped with the product: GitHub API emulator and a dev OIDC issuer."""
