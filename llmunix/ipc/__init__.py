"""Inter-process communication: the event bus (mailboxes, shared memory and primitives come later)."""

from llmunix.ipc.bus import EventBus, Subscription

__all__ = ["EventBus", "Subscription"]
