"""Inter-process communication: the event bus, mailboxes, shared memory and synchronisation.

What tool code uses comes through `ctx` (`ctx.send`, `ctx.recv`, `ctx.shared`, `ctx.lock`, ...);
this package adds the message types, the primitives' errors and the coordination helpers. Its
names are imported when first used (PEP 562): the kernel needs the bus at start-up, not the
message models (pydantic) or the coordination helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmunix import lazy_exports

__all__ = [
    "BrokenBarrier", "EventBus", "Message", "MessageInfo", "SharedBuffer", "SharedEntry", "Subscription",
    "SubscriptionStats", "map_reduce", "pipeline", "register_message_type",
]

_WHERE = {
    "EventBus": "llmunix.ipc.bus", "Subscription": "llmunix.ipc.bus", "SubscriptionStats": "llmunix.ipc.bus",
    "map_reduce": "llmunix.ipc.coordination", "pipeline": "llmunix.ipc.coordination",
    "Message": "llmunix.ipc.messages", "MessageInfo": "llmunix.ipc.messages",
    "register_message_type": "llmunix.ipc.messages",
    "SharedBuffer": "llmunix.ipc.shared", "SharedEntry": "llmunix.ipc.shared",
    "BrokenBarrier": "llmunix.ipc.sync",
}

if TYPE_CHECKING:
    from llmunix.ipc.bus import EventBus, Subscription, SubscriptionStats
    from llmunix.ipc.coordination import map_reduce, pipeline
    from llmunix.ipc.messages import Message, MessageInfo, register_message_type
    from llmunix.ipc.shared import SharedBuffer, SharedEntry
    from llmunix.ipc.sync import BrokenBarrier


__getattr__ = lazy_exports(globals(), _WHERE)
