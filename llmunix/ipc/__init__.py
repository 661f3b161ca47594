"""Inter-process communication: the event bus, mailboxes, shared memory and synchronisation.

What tool code uses comes through `ctx` (`ctx.send`, `ctx.recv`, `ctx.shared`, `ctx.lock`, ...);
this package adds the message types, the primitives' errors and the coordination helpers.
"""

from llmunix.ipc.bus import EventBus, Subscription, SubscriptionStats
from llmunix.ipc.coordination import map_reduce, pipeline
from llmunix.ipc.messages import Message, MessageInfo, register_message_type
from llmunix.ipc.shared import SharedBuffer, SharedEntry
from llmunix.ipc.sync import BrokenBarrier

__all__ = [
    "BrokenBarrier", "EventBus", "Message", "MessageInfo", "SharedBuffer", "SharedEntry", "Subscription",
    "SubscriptionStats", "map_reduce", "pipeline", "register_message_type",
]
