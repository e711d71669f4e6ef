"""GitHub webhook receiver: validates trust policies on pull requests, invalidates caches on push.

See docs/webhook.md. ``server.WebhookServer`` is a small HTTP/1.1 listener on its
own port (routed by Envoy at ``/webhook``); ``handler.WebhookHandler`` does the work.
"""
