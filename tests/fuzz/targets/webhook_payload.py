"""Signed webhook deliveries with hostile JSON payloads.

Input: the first line is the ``X-GitHub-Event`` name (``push``, ``pull_request``,
``check_suite``, ``ping``...), the rest the delivery's body, which the target signs
with the handler's secret so the payload reaches the event handling. Path:
``webhook.handler.WebhookHandler.handle`` (signature, JSON, event dispatch, policy
checks as background tasks, cache invalidation) with fakes (``_webhook``), then
``drain``; then the same body again under a new delivery id.

Property: ``handle`` never raises and answers 200/202/400/401/503 with a JSON
body; background checks never fail silently (each scheduled check posts exactly
one completed run); only well-formed owner and repository names reach GitHub calls
and cache invalidation; an accepted delivery sent again is answered "already
processed" and changes nothing (finding 8), a refused one is refused again.
"""

from __future__ import annotations

from octosts.webhook.handler import WebhookReply
from tests.fuzz.targets._support import run
from tests.fuzz.targets._webhook import Wired, check_effects, check_reply, sign

REPEAT = WebhookReply(200, {"ignored": "delivery already processed"})


async def _deliver(event: str, body: bytes) -> tuple[Wired, list[WebhookReply]]:
    """The delivery, then the same body again under another delivery id (a replay)."""
    wired = Wired()
    headers = {
        "x-github-event": event,
        "x-hub-signature-256": sign(body),
        "x-github-delivery": "fuzz-delivery-1",
        "content-type": "application/json",
    }
    first = await wired.handler.handle(headers, body)
    await wired.handler.drain()
    effects = wired.effects()
    again = await wired.handler.handle({**headers, "x-github-delivery": "fuzz-delivery-2"}, body)
    await wired.handler.drain()
    if 200 <= first.status < 300:
        assert again == REPEAT, again
        assert wired.effects() == effects, "a replayed delivery was acted on"
    else:
        assert again.status == first.status, (first, again)
    return wired, [first, again]


def one_input(data: bytes) -> None:
    event, _, body = data.partition(b"\n")
    wired, replies = run(_deliver(event.decode("utf-8", "replace").strip(), body))
    for reply in replies:
        check_reply(reply)
    check_effects(wired, [reply.body for reply in replies])
