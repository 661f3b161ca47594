"""What the daemon and its clients share. Standard library only: the thin client imports this
and nothing heavier (`llmunix -c ps` attached starts in tens of milliseconds).

Messages are JSON objects, one per line (UTF-8; `ensure_ascii`, so a byte that was not UTF-8 in
a command's output, kept as a surrogate escape, crosses intact), each with a type `t`. The first
exchange never changes between versions, so that any two llmunix can tell each other apart:

    client  {"t": "hello", "proto": N, "version": "0.1.0", "token": "...", "mode": ..., ...}
    daemon  {"t": "welcome", "proto": N, "version": ..., "pid": ...}
         or {"t": "refused", "why": "protocol"|"token"|"busy", "message": ..., "proto": ..., "pid": ...}

`PROTOCOL` is an integer, raised whenever a message changes meaning; a daemon refuses any other
number, and the client tells the user to restart the daemon. A different package version under
the same protocol works, with one note on stderr (never stdout: `ps --json` stays valid).

Where things are:

* `<home>/daemon.json` (0600): the daemon's PID and start time, its socket, protocol, version and
  the token a client must present; while it starts, restarts in place or stops, only its PID,
  start time and `state` (clients wait for it: `passing_record`). Whoever can read the home
  may control its daemon, as whoever can write it could already change what it runs.
* the socket: `$XDG_RUNTIME_DIR/llmunix/<hash of the home>.sock`, else
  `/tmp/llmunix-<uid>/...` — a directory that must be yours and mode 0700 (checked on both
  sides: a client never sends its token into a directory someone else could have made), the
  socket bound 0600, and a path under the 108-byte limit of a Unix socket address.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PROTOCOL = 1

DAEMON_FILE = "daemon.json"
HELLO_LIMIT = 64 * 1024  # bytes an unauthenticated peer may send before its hello is complete
HELLO_TIMEOUT = 1.0  # seconds it has to send it
MESSAGE_LIMIT = 32 * 1024 * 1024  # one message from an authenticated client (a command line, a reply)
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, the last a NUL
CHUNK = 64 * 1024  # socket reads

# Environment variables that decide how output is drawn (rich and cmd2 read them): sent by the
# client so the daemon draws for the client's terminal, not its own.
RENDER_ENV = ("TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "TTY_COMPATIBLE",
              "TTY_INTERACTIVE", "EDITOR", "VISUAL")


class DaemonError(Exception):
    """Something about the daemon a user must hear about, in one line."""


class ConnectionLost(DaemonError):
    """The other side went away (a daemon that died, a client that left)."""


class DaemonStopped(ConnectionLost):
    """The daemon said it is stopping (or restarting) and closed the connection."""


class ProtocolError(DaemonError):
    """A message that is not one: too long, not JSON, not an object."""


# ---------------------------------------------------------------------- the home's record


def home_key(home: Path) -> str:
    """A short name for a home that does not depend on how its path was spelt."""
    return hashlib.sha256(os.path.realpath(home).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def read_record(home: Path) -> dict[str, Any] | None:
    """The daemon's record in `home`, or None (no daemon has run there, or it is unreadable)."""
    try:
        with open(Path(home) / DAEMON_FILE, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def _record_lock(home: Path) -> Any:
    """Writers and removers of the record one at a time (an flock on the home directory itself):
    a daemon that has let the home go removes its record while a new one may be writing its own."""
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_record(home: Path, record: dict[str, Any]) -> None:
    """Write the record 0600 (whatever the umask), whole or not at all."""
    path = Path(home) / DAEMON_FILE
    tmp = path.with_name(DAEMON_FILE + ".tmp")
    with _record_lock(home):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, json.dumps(record).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)


def remove_record(home: Path, pid: int) -> None:
    """Remove the record if it is still this process's (a new daemon may have replaced it)."""
    with _record_lock(home):
        record = read_record(home)
        if record is not None and record.get("pid") == pid:
            with contextlib.suppress(OSError):
                os.unlink(Path(home) / DAEMON_FILE)


def passing_record(pid: int, state: str) -> dict[str, Any]:
    """The record of a daemon that is `state` ("starting", also while it restarts in place, or
    "stopping"): written only while it holds the home's lock, so that clients wait for it
    (`waiting_state`) rather than run embedded on a home it has locked, read-only."""
    return {"pid": pid, "start": process_start(pid), "state": state, "protocol": PROTOCOL, "version": version()}


def waiting_state(record: dict[str, Any] | None) -> str | None:
    """"starting" or "stopping" while the daemon the record names is alive and in that state
    (a client waits), else None (it is serving, or it has gone)."""
    if record is None or record.get("state") not in ("starting", "stopping") or not record_alive(record):
        return None
    return str(record["state"])


def process_start(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def record_alive(record: dict[str, Any]) -> bool:
    """Is the process the record names still the daemon that wrote it (same PID, same start)?"""
    pid, start = record.get("pid"), record.get("start")
    return isinstance(pid, int) and pid > 0 and start is not None and process_start(pid) == start


# ---------------------------------------------------------------------- the socket's directory


def runtime_dir() -> Path:
    """Where sockets go: $XDG_RUNTIME_DIR/llmunix when that is a directory of yours, else a
    directory of yours in the temporary directory."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base):
        with contextlib.suppress(OSError):
            st = os.stat(base)
            if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
                return Path(base) / "llmunix"
    return Path(tempfile.gettempdir()) / f"llmunix-{os.getuid()}"


def socket_path(home: Path) -> Path:
    path = runtime_dir() / f"{home_key(home)}.sock"
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:  # an unusually long $XDG_RUNTIME_DIR
        path = Path("/tmp") / f"llmunix-{os.getuid()}" / f"{home_key(home)}.sock"
    return path


def private_dir_problem(directory: Path) -> str | None:
    """Why `directory` cannot hold a socket of ours (not a real directory, another owner, a mode
    that lets others in), or None."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return f"{directory} does not exist"
    except OSError as exc:
        return f"{directory}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{directory} is not a directory"
    if st.st_uid != os.getuid():
        return f"{directory} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})"
    if stat.S_IMODE(st.st_mode) & 0o077:
        return f"{directory} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700"
    return None


def make_private_dir(directory: Path) -> None:
    """Create the socket directory 0700 (an existing one must already be private: it is never
    re-moded, since someone else may have made it), or raise DaemonError."""
    try:
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o700)  # mkdir's mode passes through the umask
    except FileExistsError:
        pass
    except OSError as exc:
        raise DaemonError(f"cannot create {directory}: {exc.strerror}") from None
    problem = private_dir_problem(directory)
    if problem:
        raise DaemonError(f"refusing to put the daemon's socket in {directory}: {problem}; "
                          "remove it (or set XDG_RUNTIME_DIR to a directory of yours)")


def bind_private(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600 from the moment it exists: the umask is set
    to 0177 around bind(), which creates the socket file. (A stale socket left by a daemon that
    died is removed first: the caller holds the home's lock, so no live daemon owns it.)"""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(os.fsencode(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)  # whatever the umask was, even if it was tighter
    sock.listen(128)
    return sock


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED, Linux)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


# ---------------------------------------------------------------------- messages


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


class Channel:
    """Messages over a connected socket: `send` from any thread (one lock), `recv` from one."""

    def __init__(self, sock: socket.socket, limit: int = MESSAGE_LIMIT) -> None:
        self.sock = sock
        self.limit = limit
        self._buf = bytearray()
        self._send_lock = threading.Lock()
        self.closed = False

    def send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self.closed = True
                raise ConnectionLost(str(exc)) from None

    def recv(self, deadline: float | None = None) -> dict[str, Any] | None:
        """The next message; None at end of file. With `deadline` (a time.monotonic() value),
        ProtocolError when it has not come by then."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[:end + 1]
                return decode(line)
            if len(self._buf) > self.limit:
                raise ProtocolError(f"a message longer than {self.limit} bytes")
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ProtocolError("no complete message in time")
                self.sock.settimeout(left)
            try:
                data = self.sock.recv(min(CHUNK, self.limit + 1 - len(self._buf)) or 1)
            except TimeoutError:
                raise ProtocolError("no complete message in time") from None
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                    data = b""
                else:
                    raise
            finally:
                if deadline is not None:
                    with contextlib.suppress(OSError):
                        self.sock.settimeout(None)
            if not data:
                self.closed = True
                return None
            self._buf += data

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        raise ProtocolError("a message that is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ProtocolError("a message that is not an object with a type")
    return message


# ---------------------------------------------------------------------- the client's terminal


def terminal_facts() -> dict[str, Any]:
    """What the daemon needs to draw output exactly as this process would: which standard
    streams are terminals, the terminal's size (looked up as rich does: the first of stdin,
    stdout, stderr that answers), and the environment variables that change drawing."""
    tty = {}
    for name, fd in (("in", 0), ("out", 1), ("err", 2)):
        try:
            tty[name] = os.isatty(fd)
        except OSError:
            tty[name] = False
    return {"tty": tty, "size": terminal_size(),
            "env": {k: os.environ[k] for k in RENDER_ENV if k in os.environ}}


def terminal_size() -> list[int] | None:
    for fd in (0, 1, 2):
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        return [size.columns, size.lines]
    return None


def version() -> str:
    from llmunix import __version__

    return __version__


def say(text: str) -> None:
    """One line for the user on stderr, prefixed as every llmunix message is."""
    try:
        sys.stderr.write(f"llmunix: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
