"""The home directory: private to its user, and written by one llmunix at a time.

Privacy. The home holds parameters (API keys included), outputs and the code llmunix runs
(`<home>/tools`), so it is made like ssh's `~/.ssh`: created 0700 whatever the umask (parents
llmunix creates too), its files 0600 and its directories 0700 (`prepare_home`, at start; files
llmunix makes later are created 0600: the database, the log, the lock, the message key). An
existing home that another user could write, or that belongs to another user, is refused: its
contents cannot be trusted. Code and settings llmunix would load — `./tools`, `<home>/tools`,
agent definitions, the config file, a tools module — are refused when someone other than you
(or root) owns them or can change them (`unsafe_reason`), with a one-line error saying how to
fix it (`chmod go-w PATH`).

Ownership. The owner holds an exclusive `flock` on `<home>/lock` (and writes its PID there for
people to read). The kernel releases the lock when it dies, however it dies, so a crash never
leaves a stale lock behind. A second llmunix on the same home opens it read-only instead: it can
list processes, events, logs and the audit trail, but not start or steer processes. A standby
(`llmunix --standby`) waits for the lock and becomes the owner when it is free (`HomeLock`).
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from llmunix.models import LlmunixError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# Entries of the home that hold code or settings: refused when others can change them (by the
# loader and load_config), never silently re-moded, so that a user looks at what may have been planted.
CODE_ENTRIES = frozenset({"tools", "agents", "config.toml"})
HISTORY = "history"


class UnsafePath(LlmunixError):
    """A home, directory or file others could have changed: llmunix will not use it."""


def make_private_dir(path: Path) -> None:
    """Create `path` and every missing parent with mode 0700, whatever the umask."""
    missing = []
    p = Path(path)
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR)
        except FileExistsError:
            continue
        os.chmod(d, PRIVATE_DIR)  # mkdir's mode passes through the umask


def unsafe_reason(path: Path, *, sticky_ok: bool = False) -> str | None:
    """Why code or settings at `path` cannot be trusted — it belongs to another user (root
    excepted), or its group or others may write it — or None. A missing path is safe. With
    `sticky_ok`, a sticky directory (/tmp) others may write is accepted: they cannot replace
    the one file of yours that is read from it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if st.st_uid not in (os.getuid(), 0):
        return f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); move it away or chown it"
    if sticky_ok and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return None
    if st.st_mode & 0o022:
        who = {0o020: "its group", 0o002: "everyone"}.get(st.st_mode & 0o022, "its group and everyone")
        return (f"{path} can be changed by {who} (mode {stat.S_IMODE(st.st_mode):04o}), so another user could "
                f"make llmunix run their code as you; check it, then: chmod go-w {path}")
    return None


def prepare_home(home: Path) -> None:
    """Make `home` private, or raise UnsafePath: created (with missing parents) 0700; an
    existing one must be yours and writable by you alone; what llmunix keeps in it is set to
    0600 (files) and 0700 (directories), code and settings excepted (checked when loaded). The
    shell history is created 0600 here, before the shell writes it with the umask's mode."""
    home = Path(home)
    make_private_dir(home)
    st = os.stat(home)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"cannot use {home} as the llmunix home: it is not a directory")
    if st.st_uid != os.getuid():
        raise UnsafePath(f"refusing to use {home} as the llmunix home: it belongs to uid {st.st_uid}, not to you "
                         f"(uid {os.getuid()}); use a home of your own (--home DIR)")
    if st.st_mode & 0o022:
        raise UnsafePath(f"refusing to use {home} as the llmunix home: others can write it (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}), so they could have planted code or data in it; "
                         f"check it, then: chmod go-w {home}")
    tighten_home(home)
    try:
        os.close(os.open(home / HISTORY, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE))
    except OSError:
        pass  # a read-only home; the shell then has no history file either


def tighten_home(home: Path) -> None:
    """Set what llmunix keeps in `home` to 0600 (files) and 0700 (directories, and the
    workflow run directories under runs/): the home itself, its database and log, pids, lock,
    history, runs/. Links are not followed; code and settings are left as they are."""
    _private(home)
    try:
        entries = list(os.scandir(home))
    except OSError:
        return
    for entry in entries:
        if entry.name in CODE_ENTRIES or entry.is_symlink():
            continue
        if entry.is_dir(follow_symlinks=False):
            _private(Path(entry.path))
            if entry.name == "runs":
                try:
                    runs = list(os.scandir(entry.path))
                except OSError:
                    continue
                for run in runs:
                    if run.is_dir(follow_symlinks=False):
                        _private(Path(run.path))
        elif entry.is_file(follow_symlinks=False):
            _private(Path(entry.path))


def create_private_file(path: Path, flags: int = os.O_RDWR) -> int:
    """Open `path`, creating it 0600 whatever the umask (an existing one is set to 0600)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, PRIVATE_FILE)
    except OSError:
        pass  # not ours to change (a read-only home): it stays as it is
    return fd


def _private(path: Path) -> None:
    """Take the group's and others' bits away (a 0400 file stays 0400)."""
    try:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if mode & 0o077:
            os.chmod(path, mode & ~0o077)
    except OSError:
        pass  # not ours (a read-only home): left as it is


class HomeInUse(LlmunixError):
    def __init__(self, home: Path, owner: str) -> None:
        super().__init__(f"{home} is in use by llmunix pid {owner}; use another --home, or open it read-only")
        self.home = home
        self.owner = owner


class HomeLock:
    """The owner's `flock` on `<home>/lock`.

    Handing it over (hot standby, docs/durable.md): a standby shell that has waited for the lock
    and got it replaces itself with the owner's program (`os.execv`); `hand_over()` lets the
    locked descriptor survive that exec and names it in the environment, and the next
    `acquire()` in the new program adopts it, so that the lock is never free in between (another
    standby cannot slip in). The variable is removed at once and the descriptor made
    close-on-exec again: no process llmunix starts later inherits the lock."""

    ENV = "LLMUNIX_HOME_LOCK_FD"

    def __init__(self, home: Path) -> None:
        self.path = home / "lock"
        self._fd: int | None = None
        self.previous = ""

    def acquire(self, wait: bool = False) -> None:
        """Take the lock (with `wait`, block until it is free) or raise HomeInUse naming the owner."""
        if self._adopt():
            return
        fd = create_private_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise HomeInUse(self.path.parent, self.owner()) from None
        except BaseException:
            os.close(fd)
            raise
        self._own(fd)

    def _own(self, fd: int) -> None:
        self.previous = self.owner()  # who held it last (a standby says whom it took over from)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _adopt(self) -> bool:
        """Take over a lock handed over to this program for this home (see the class docstring)."""
        text = os.environ.get(self.ENV)
        if not text:
            return False
        try:
            fd = int(text)
            same = os.path.samestat(os.fstat(fd), os.stat(self.path))
        except (ValueError, OSError):
            return False
        if not same:
            return False  # handed over for another home: not ours to take
        del os.environ[self.ENV]
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # already ours: the same open file
        except OSError:
            return False
        os.set_inheritable(fd, False)
        self._own(fd)
        return True

    def hand_over(self) -> None:
        """Let the held lock survive an exec of this process (see the class docstring)."""
        if self._fd is None:
            raise LlmunixError("no home lock is held to hand over")
        os.set_inheritable(self._fd, True)
        os.environ[self.ENV] = str(self._fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def owner(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
