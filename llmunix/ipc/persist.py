"""Persistent mailboxes: messages kept in the store until acknowledged (at-least-once).

Rows of the `messages` table (schema version 3, `store/sqlite.py`) exist only while a message is
pending or delivered-but-unacknowledged; acknowledging it, or its recipient ending for good,
deletes the row. Writes go through the store's single writer thread (`Store.execute`), in order
with the events; a persistent `send` waits until its row is committed, so a message that `send`
accepted survives a crash of llmunix. Reads at start-up use a read-only connection of their own
(WAL lets it run beside the writer).

Sensitive messages are encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256, from
`cryptography`); the key is `<home>/ipc.key`, made on first use with mode 0600. The events and
the audit trail never carry a message body, so the plaintext of a sensitive message is on disk
nowhere.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmunix.ipc.messages import Envelope
from llmunix.models import LlmunixError
from llmunix.store.sqlite import json_text

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

    from llmunix.store import Store

log = logging.getLogger("llmunix.ipc")

KEY_FILE = "ipc.key"


def load_key(home: Path) -> bytes:
    """The home's message key, made (mode 0600) if there is none; a key others can read is
    tightened to 0600 with a warning in the log."""
    from cryptography.fernet import Fernet

    path = home / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o); set to 0600", path, mode)
            os.chmod(path, 0o600)
        key = path.read_bytes().strip()
        try:
            Fernet(key)
        except ValueError:
            raise LlmunixError(f"{path} is not a message key; move it away to make a new one "
                               "(messages encrypted with it cannot be read then)") from None
        return key
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return key


class MessageStore:
    """The persistent side of the mailboxes, over the kernel's store."""

    def __init__(self, store: Store, home: Path) -> None:
        self.store = store
        self.home = home
        self._fernet: Fernet | None = None

    def _cipher(self) -> Fernet:
        if self._fernet is None:
            from cryptography.fernet import Fernet

            self._fernet = Fernet(load_key(self.home))
        return self._fernet

    def _seal(self, env: Envelope) -> str:
        text = json_text(env.payload)  # a body with any bytes (surrogateescape'd) is kept exactly
        return self._cipher().encrypt(text.encode()).decode("ascii") if env.sensitive else text

    def _open(self, body: str, sensitive: bool) -> Any:
        if sensitive:
            from cryptography.fernet import InvalidToken

            try:
                body = self._cipher().decrypt(body.encode("ascii")).decode()
            except InvalidToken:
                raise LlmunixError("cannot decrypt a sensitive message: ipc.key is not the key it was sealed with") \
                    from None
        return json.loads(body)

    def save(self, env: Envelope) -> None:
        """Queue the row for the writer (the caller waits for durability with `flush`)."""
        self.store.execute(
            "INSERT OR REPLACE INTO messages (id, recipient, sender, type, topic, body, sensitive, sent, deliveries) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (env.id, env.recipient, env.sender, env.type, env.topic, self._seal(env), int(env.sensitive), env.sent,
             env.deliveries))

    def flush(self) -> None:
        if not self.store.flush():
            raise LlmunixError("the store did not commit the message within 30 s")

    def delivered(self, env: Envelope) -> None:
        self.store.execute("UPDATE messages SET deliveries=? WHERE id=?", (env.deliveries, env.id))

    def forget(self, ids: list[str]) -> None:
        """Acknowledged, or the recipient has ended for good: the rows go."""
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            self.store.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(chunk))})", tuple(chunk))

    def pending(self) -> tuple[list[Envelope], list[str]]:
        """Every message still in the store, in the order it was sent, and the ids of those that
        could not be read back (a lost key)."""
        conn = sqlite3.connect(f"file:{self.store.path}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute("SELECT id, recipient, sender, type, topic, body, sensitive, sent, deliveries "
                                "FROM messages ORDER BY rowid").fetchall()
        finally:
            conn.close()
        out, bad = [], []
        for mid, recipient, sender, type_, topic, body, sensitive, sent, deliveries in rows:
            try:
                payload = self._open(body, bool(sensitive))
            except (LlmunixError, ValueError) as exc:
                log.error("persistent message %s to %s cannot be read: %s", mid, recipient, exc)
                bad.append(mid)
                continue
            out.append(Envelope(mid, sender, recipient, type_, payload, topic=topic, sent=sent, persistent=True,
                                sensitive=bool(sensitive), deliveries=deliveries or 0))
        return out, bad
