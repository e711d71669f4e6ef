"""Tools for operators of an Octo STS deployment: App registration and probers.

=================  ============================================================================
``manifest``       the GitHub App manifest an instance needs (``octo-sts setup manifest``)
``conversion``     finishing GitHub's manifest flow: code -> App id, key, webhook secret
                   (``octo-sts setup convert``)
``probe``          synthetic exchanges that must be allowed / refused (``octo-sts probe``)
=================  ============================================================================

They sit above the service (they read its permission table and what its parts ask GitHub
for) and use the client library; nothing in the service imports them.
"""
