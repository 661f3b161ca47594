"""Messages between processes: typed bodies, the envelope a mailbox holds, and what `recv` returns.

A message body travels as JSON-shaped data, never as a shared Python object: the sender's value is
encoded on `send` and the receiver gets a fresh copy on `recv`, so two processes never hold the
same mutable object (isolation between process spaces). A pydantic model goes as its JSON dump
and comes back as a validated instance of its class.

Types. Every message has a type name. A pydantic model's is its registered name (by default the
class name); other bodies are `text` (a str) or `json`. `register_message_type(name, schema)`
names a schema — a pydantic model or any type pydantic can validate (`int`, `list[str]`, a
TypedDict...). Bodies of registered types are validated twice: on `send` (the sender hears of a
bad body at once) and again on delivery (a persistent message written by an older version meets
today's schema); one that fails on delivery is rejected with an `ipc.rejected` event and skipped.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmunix.models import LlmunixError, format_pid, iso_time

if TYPE_CHECKING:
    import pydantic

# pydantic is imported when a type is registered (or a model is sent): a kernel that never sends
# a typed message never imports it. Until then nothing can be a pydantic model.


def _is_model(value: Any) -> bool:
    pd = sys.modules.get("pydantic")
    return pd is not None and isinstance(value, pd.BaseModel)


def _is_model_class(value: Any) -> bool:
    pd = sys.modules.get("pydantic")
    return pd is not None and isinstance(value, type) and issubclass(value, pd.BaseModel)


class MessageRejected(LlmunixError):
    """A received message does not validate as its registered type (the receiver rejects it)."""


class MessageTypes:
    """Registered message types: name -> (schema, pydantic adapter). Thread-safe."""

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[Any, pydantic.TypeAdapter[Any]]] = {}
        self._by_schema: dict[Any, str] = {}
        self._lock = threading.Lock()

    def register(self, name: str | type[pydantic.BaseModel], schema: Any = None) -> str:
        """`register("order", Order)`, `register(Order)` (named after the class) or
        `register("count", int)`. Registering the same name again with another schema replaces it."""
        if schema is None:
            if not isinstance(name, type):
                raise LlmunixError("register_message_type needs a schema: register(name, Model) or register(Model)")
            schema, name = name, name.__name__
        name = str(name).strip()
        if not name or name in BUILTIN_TYPES:
            raise LlmunixError(f"bad message type name {name!r}" + (" (built in)" if name in BUILTIN_TYPES else ""))
        try:
            import pydantic

            adapter = pydantic.TypeAdapter(schema)
        except (pydantic.PydanticSchemaGenerationError, TypeError) as exc:
            raise LlmunixError(f"message type {name!r}: pydantic cannot validate {schema!r}: {exc}") from None
        with self._lock:
            self._by_name[name] = (schema, adapter)
            self._by_schema[schema] = name
        return name

    def name_of(self, schema: Any) -> str | None:
        with self._lock:
            return self._by_schema.get(schema)

    def adapter(self, name: str) -> pydantic.TypeAdapter[Any] | None:
        with self._lock:
            entry = self._by_name.get(name)
        return entry[1] if entry is not None else None

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._by_name

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._by_name)


BUILTIN_TYPES = ("text", "json")
MESSAGE_TYPES = MessageTypes()
register_message_type = MESSAGE_TYPES.register


def type_name(wanted: Any) -> str:
    """The type name `recv(type=...)` filters on: a name, or a registered (or pydantic) class."""
    if isinstance(wanted, str):
        return wanted
    name = MESSAGE_TYPES.name_of(wanted)
    if name is not None:
        return name
    if _is_model_class(wanted):
        return MESSAGE_TYPES.register(wanted)
    if wanted is str:
        return "text"
    raise LlmunixError(f"{wanted!r} is not a registered message type; register_message_type(name, schema) first")


def encode(message: Any, type: Any = None) -> tuple[str, Any]:
    """Sender side: (type name, JSON-shaped payload), validated if the type is registered."""
    if type is not None:
        name = type_name(type)
    elif _is_model(message):
        name = type_name(message.__class__)
    elif isinstance(message, str):
        name = "text"
    else:
        name = "json"
    adapter = MESSAGE_TYPES.adapter(name)
    if adapter is not None:
        import pydantic

        try:
            value = adapter.validate_python(message)
            payload = adapter.dump_python(value, mode="json")
        except pydantic.ValidationError as exc:
            raise LlmunixError(f"message is not a valid {name!r}: {_first_error(exc)}") from None
    elif _is_model(message):
        payload = message.model_dump(mode="json")
    elif name == "text" and not isinstance(message, str):
        raise LlmunixError(f"a 'text' message must be a str, not {message.__class__.__name__}")
    elif name not in BUILTIN_TYPES:
        raise LlmunixError(f"unknown message type {name!r}; register_message_type({name!r}, schema) first")
    else:
        payload = message
    try:
        return name, json.loads(json.dumps(payload))
    except (TypeError, ValueError) as exc:
        raise LlmunixError(f"a message must be JSON-serialisable or a pydantic model: {exc}") from None


def decode(name: str, payload: Any) -> Any:
    """Receiver side: a fresh value; registered types validated (MessageRejected if not)."""
    adapter = MESSAGE_TYPES.adapter(name)
    if adapter is None:
        return json.loads(json.dumps(payload))  # a copy: the receiver shares nothing with the sender
    import pydantic

    try:
        return adapter.validate_python(payload)
    except pydantic.ValidationError as exc:
        raise MessageRejected(_first_error(exc)) from None


def _first_error(exc: pydantic.ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]




class Envelope:
    """A message as a mailbox holds it. Mutates under the kernel lock."""

    __slots__ = ("id", "sender", "recipient", "type", "payload", "topic", "sent", "persistent", "sensitive",
                 "deliveries", "size")

    def __init__(self, id: str, sender: int | None, recipient: int, type: str, payload: Any, *,
                 topic: str | None = None, sent: float | None = None, persistent: bool = False,
                 sensitive: bool = False, deliveries: int = 0) -> None:
        self.id = id
        self.sender = sender
        self.recipient = recipient
        self.type = type
        self.payload = payload
        self.topic = topic
        self.sent = time.time() if sent is None else sent
        self.persistent = persistent
        self.sensitive = sensitive
        self.deliveries = deliveries
        self.size = len(json.dumps(payload, ensure_ascii=False))

    def info(self, state: str) -> MessageInfo:
        return MessageInfo(self.id, self.sender, self.recipient, self.type, self.topic, self.sent, self.persistent,
                           self.sensitive, self.deliveries, state, None if self.sensitive else self.payload,
                           self.size)


@dataclass(frozen=True, slots=True)
class Message:
    """What `ctx.recv()` returns. `body` is the validated value (a model instance for model types).
    Persistent messages must be acknowledged with `ack()` once handled, or they are delivered
    again (after a restart, to the recovered process); for in-memory ones `ack()` does nothing."""

    id: str
    sender: int | None
    type: str
    body: Any
    topic: str | None = None
    sent: float = 0.0
    persistent: bool = False
    sensitive: bool = False
    deliveries: int = 1  # 2 or more: delivered before and not acknowledged (at-least-once)
    _ack: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def ack(self) -> None:
        if self._ack is not None:
            self._ack()

    @property
    def redelivered(self) -> bool:
        return self.deliveries > 1


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """A message waiting in a mailbox, as `mailbox PID` shows it (no body if it is sensitive)."""

    id: str
    sender: int | None
    recipient: int
    type: str
    topic: str | None
    sent: float
    persistent: bool
    sensitive: bool
    deliveries: int
    state: str  # "pending", or "unacked": delivered, persistent, not yet acknowledged
    body: Any
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "from": None if self.sender is None else format_pid(self.sender),
                "to": format_pid(self.recipient), "type": self.type, "topic": self.topic, "sent": iso_time(self.sent),
                "persistent": self.persistent, "sensitive": self.sensitive, "deliveries": self.deliveries,
                "state": self.state, "body": "<sensitive>" if self.sensitive else self.body, "bytes": self.size}
