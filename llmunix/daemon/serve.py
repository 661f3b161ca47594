"""`llmunix serve`: the daemon that owns a home, in the foreground (systemd) or detached.

    llmunix serve                 foreground; Ctrl-C or SIGTERM stops it (processes end Interrupted)
    llmunix serve -d              detached: returns once the daemon is ready, or says why not (exit 2)
    llmunix serve --stop          stop it gracefully (SIGTERM); waits until it has gone
    llmunix serve --restart       stop it and start it again (SIGHUP: it re-executes itself in place,
                                  same PID, new code) recovering what it interrupted; starts one if none
    llmunix serve --print-unit    a systemd user unit (Type=notify, KillMode=mixed)

Signals the daemon takes: SIGTERM and SIGINT stop it; SIGHUP restarts it. Under systemd it says
READY=1 once clients can attach, RELOADING=1 while it restarts, STOPPING=1 as it stops.

Nothing the daemon starts outlives it, however it ends: it is a child subreaper and has the
guardian (reaper.py), as the embedded shell does; the next `serve` on the home reaps what a
killed one left (the home's record of children) and removes its stale socket and record.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llmunix.daemon.protocol import (
    DaemonError,
    passing_record,
    read_record,
    record_alive,
    remove_record,
    say,
    write_record,
)

READY_TIMEOUT = 60.0  # seconds `serve -d` waits for the daemon to load its tools and listen
STOP_TIMEOUT = 60.0  # seconds `--stop` waits for the processes to be interrupted and the daemon to end
LOG_FILE = "serve.log"  # a detached daemon's stdout and stderr (its own log is llmunix.log)


def build_parser() -> argparse.ArgumentParser:
    from llmunix.cli import add_engine_options

    p = argparse.ArgumentParser(
        prog="llmunix serve",
        description="Run the llmunix engine as a daemon that owns the home: every `llmunix` (the shell, -c, "
                    "scripts, stdin) attaches to it, its processes outlive the terminal, and any number of "
                    "shells can watch and steer them at once.",
        epilog="examples:\n  llmunix serve -d                 start it in the background\n"
               "  llmunix -c ps                    (attaches)\n"
               "  llmunix serve --restart          restart it (new code), recovering its processes\n"
               "  llmunix serve --stop\n"
               "  llmunix serve --print-unit > ~/.config/systemd/user/llmunix.service\n"
               "see docs/daemon.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_options(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("-d", "--detach", action="store_true",
                      help="run in the background; return once it is ready (or say why it is not)")
    what.add_argument("--stop", action="store_true", help="stop the daemon serving the home (gracefully)")
    what.add_argument("--restart", action="store_true",
                      help="stop it and start it again, recovering what it interrupted (starts one if none runs)")
    what.add_argument("--print-unit", action="store_true", help="print a systemd user unit for this home")
    p.add_argument("--standby", action="store_true",
                   help="while another llmunix (a shell, a script, a daemon) owns the home, wait for it to stop, "
                        "then become the daemon and recover what it left")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # (serve -d: where the child says it is ready)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from llmunix.paths import home_path

    home = home_path(args.home)
    try:
        if args.print_unit:
            print(unit_text(home, args), end="")
            return 0
        if args.stop:
            return stop(home)
        if args.restart:
            return restart(home, args, argv)
        if args.detach:
            return detach(home, argv)
        return run(args, argv)
    except DaemonError as exc:
        say(str(exc))
        return 2


# ---------------------------------------------------------------------- the daemon itself


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Serve in this process until SIGTERM/SIGINT (stop) or SIGHUP (restart in place)."""
    ready = _ReadyPipe(args.ready_fd)
    from llmunix.cli import StartFailed, start_engine, start_notes
    from llmunix.config import check_setting, load_config, resolve_home
    from llmunix.models import LlmunixError

    try:
        home = resolve_home(args.home)
        config = load_config(home, args.config)
        if args.max_running is not None:
            args.max_running = check_setting("max_running", args.max_running)
    except LlmunixError as exc:
        ready.fail(str(exc))
        return 2
    from llmunix.home import HomeLock

    if HomeLock.ENV not in os.environ:  # (else restarting in place: the lock was handed over to us)
        busy = _take_home(home)
        if busy and not args.standby:
            ready.fail(busy)
            return 2
        if busy:
            from llmunix.cli import wait_for_home

            ready.waiting(f"standby: {busy}; this daemon (pid {os.getpid()}) takes over when it stops")
            args.recover = True  # it continues what the owner it replaces left
            if not wait_for_home(home):
                return 130
    notify = _Notifier.from_environment()
    args.read_only = False  # a daemon owns its home or does not start
    # We hold the home's lock (handed over to the Kernel about to be made): only its holder writes
    # the record, so that a daemon losing a race never overwrites the winner's.
    write_record(home, passing_record(os.getpid(), "starting"))  # clients wait for us from now on
    try:
        kernel, _ = _quiet_start(start_engine, args, home, config, ready)
    except StartFailed as exc:
        remove_record(home, os.getpid())
        return exc.status
    from llmunix.daemon.server import Daemon
    from llmunix.daemon.session import SessionFactory, install_routing
    from llmunix.home import tighten_home

    stop_reason: list[str] = []
    woken = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop_reason.append("restart" if signum == signal.SIGHUP else "stop")
        woken.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    daemon = Daemon(home, SessionFactory(kernel))
    status = 0
    try:
        notes = start_notes(kernel, args.recover)
        install_routing()  # before the first client: its session's stderr is its own
        daemon.start()
        for note in notes:
            ready.note(note)
        ready.done(os.getpid(), home)
        notify.send(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {home}")
        while not woken.wait(1.0):
            pass
    except DaemonError as exc:
        ready.fail(str(exc))
        status = 2
    finally:
        restarting = stop_reason[:1] == ["restart"] and status == 0
        notify.send("RELOADING=1" if restarting else "STOPPING=1")
        daemon.stop("the daemon is restarting; attach again in a moment" if restarting
                    else "the daemon stopped (llmunix serve --stop)", restarting=restarting)
        kernel.shutdown(reason="daemon stopped", hand_over_home=restarting)
        tighten_home(home)
        if not restarting:
            remove_record(home, os.getpid())  # the home is free: clients run embedded again
    if restarting:
        _reexec(argv)
    return status


def _quiet_start(start_engine: Any, args: argparse.Namespace, home: Path, config: Any, ready: _ReadyPipe) -> Any:
    """Start the engine; its one-line complaints go to the launcher of `serve -d` too."""
    if ready.fd is None:
        return start_engine(args, home, config, interactive=True)
    import io

    captured = io.StringIO()
    real = sys.stderr
    sys.stderr = _Tee(real, captured)
    try:
        return start_engine(args, home, config, interactive=True)
    except Exception:
        for line in captured.getvalue().splitlines():
            if line.startswith("llmunix: "):
                ready.fail(line[len("llmunix: "):])
        raise
    finally:
        sys.stderr = real
        for line in captured.getvalue().splitlines():
            if line.startswith("llmunix: ") and not ready.closed:
                ready.note(line[len("llmunix: "):])


class _Tee:
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False


def _reexec(argv: list[str]) -> None:
    """Become a new daemon in this same process (same PID: systemd keeps following it), running
    whatever code is installed now, recovering what the stop interrupted."""
    args = _without(argv, "--ready-fd", takes_value=True)
    if "--recover" not in args:
        args.append("--recover")
    os.execv(sys.executable, [sys.executable, *_boot(), "serve", *args])


def _without(argv: list[str], option: str, *, takes_value: bool = False) -> list[str]:
    """`argv` without `option` (and its value: `--opt V` or `--opt=V`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = takes_value
        elif not (takes_value and arg.startswith(option + "=")):
            out.append(arg)
    return out


def _boot() -> list[str]:
    """How to start this very llmunix in a new Python (whatever its launcher was)."""
    import llmunix

    root = str(Path(llmunix.__file__).resolve().parent.parent)
    return ["-c", f"import sys; sys.path.insert(0, {root!r}); from llmunix.cli import main; sys.exit(main())"]


class _ReadyPipe:
    """How a detached daemon tells `serve -d` it is ready (or why it is not): lines on a pipe."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.closed = fd is None

    def _line(self, text: str) -> None:
        if self.fd is None or self.closed:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, (text.replace("\n", " ") + "\n").encode("utf-8", "replace"))

    def note(self, text: str) -> None:
        if self.fd is None:
            say(text)
        self._line(f"note {text}")

    def fail(self, text: str) -> None:
        if self.fd is None:
            say(text)
        self._line(f"error {text}")
        self._close()

    def waiting(self, text: str) -> None:
        """A standby: it waits for the home; `serve -d` has nothing more to wait for."""
        if self.fd is None:
            say(text)
        self._line(f"waiting {text}")
        self._close()

    def done(self, pid: int, home: Path) -> None:
        if self.fd is None:
            say(f"daemon pid {pid} serves {home}; Ctrl-C or SIGTERM stops it (its processes end Interrupted: "
                "`llmunix serve --recover` continues them)")
        self._line(f"ready {pid}")
        self._close()

    def _close(self) -> None:
        if self.fd is not None and not self.closed:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.closed = True


class _Notifier:
    """systemd's notification socket ($NOTIFY_SOCKET), read once and removed from the
    environment so that no process the daemon starts can speak for it."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    @classmethod
    def from_environment(cls) -> _Notifier:
        address = os.environ.pop("NOTIFY_SOCKET", None)
        return cls(address or None)

    def send(self, state: str) -> None:
        if not self.address:
            return
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(state.encode())


# ---------------------------------------------------------------------- -d, --stop, --restart


def detach(home: Path, argv: list[str], extra: tuple[str, ...] = ()) -> int:
    """Start the daemon in a new session; return 0 once it is ready, else 2 with its reason."""
    from llmunix.config import resolve_home
    from llmunix.models import LlmunixError

    try:
        home = resolve_home(str(home))  # made private, or refused, before anything goes in it
    except LlmunixError as exc:
        raise DaemonError(str(exc)) from None
    args = _without(_without(_without(argv, "-d"), "--detach"), "--restart") + list(extra)
    r, w = os.pipe()
    log_fd = os.open(home / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, *_boot(), "serve", *args, "--ready-fd", str(w)],  # noqa: S603
                                stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=(w,),
                                start_new_session=True)
    finally:
        os.close(w)
        os.close(log_fd)
    reader = os.fdopen(r, "r", encoding="utf-8", errors="replace")
    deadline = time.monotonic() + READY_TIMEOUT
    import select

    buf = ""
    with reader:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([reader], [], [], left)[0]:
                raise DaemonError(f"the daemon (pid {proc.pid}) was not ready after {READY_TIMEOUT:.0f} s; "
                                  f"see {home / LOG_FILE}")
            chunk = reader.readline()
            if not chunk:
                code = proc.poll()
                raise DaemonError(f"the daemon exited (status {code}) before it was ready; see {home / LOG_FILE}")
            buf = chunk.rstrip("\n")
            kind, _, text = buf.partition(" ")
            if kind == "note":
                say(text)
            elif kind == "error":
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                raise DaemonError(text)
            elif kind == "waiting":
                say(text)
                return 0
            elif kind == "ready":
                say(f"daemon pid {text} serves {home}")
                return 0


def stop(home: Path) -> int:
    """SIGTERM the daemon serving `home` and wait until it has gone."""
    record = read_record(home)
    if record is None or not record_alive(record):
        say(f"no daemon serves {home}")
        return 1
    pid = int(record["pid"])
    os.kill(pid, signal.SIGTERM)
    if not _gone(record, STOP_TIMEOUT):
        raise DaemonError(f"the daemon (pid {pid}) did not stop within {STOP_TIMEOUT:.0f} s; "
                          f"`kill -9 {pid}` ends it (its processes with it; `serve --recover` continues them)")
    say(f"stopped the daemon (pid {pid}); its processes were interrupted (`llmunix serve --recover` continues them)")
    return 0


def restart(home: Path, args: argparse.Namespace, argv: list[str]) -> int:
    """The daemon re-executes itself in place (SIGHUP); wait until the new one answers. With no
    daemon running, start one (detached), recovering what was interrupted."""
    record = read_record(home)
    if record is None or not record_alive(record):
        return detach(home, argv, extra=() if args.recover else ("--recover",))
    pid = int(record["pid"])
    old_token = record.get("token")
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + STOP_TIMEOUT + READY_TIMEOUT
    while time.monotonic() < deadline:
        new = read_record(home)
        if new is not None and "state" not in new and new.get("token") != old_token and record_alive(new):
            say(f"restarted the daemon (pid {new['pid']}); it recovers what it interrupted")
            return 0
        if not _alive(pid, record.get("start")) and (new is None or not record_alive(new)):
            raise DaemonError(f"the daemon (pid {pid}) stopped but did not start again; see {home / LOG_FILE}")
        time.sleep(0.05)
    raise DaemonError(f"the daemon (pid {pid}) did not come back within {STOP_TIMEOUT + READY_TIMEOUT:.0f} s")


OWNER_SETTLE = 2.0  # a daemon writes its record within moments of taking the lock


def _take_home(home: Path) -> str | None:
    """Take the home's lock and hand it to the Kernel this process is about to make (as a standby
    does: cli.wait_for_home), or say why `home` cannot be served now (another llmunix owns it:
    which)."""
    import psutil

    from llmunix.home import HomeInUse, HomeLock

    lock = HomeLock(home)
    deadline = time.monotonic() + OWNER_SETTLE + 3.0
    while True:
        try:
            lock.acquire()
        except HomeInUse as exc:
            owner = exc.owner
        else:
            lock.hand_over()
            return None
        # A daemon started at the same moment as this one may hold the lock before it has written
        # its PID in the lock and its record (both follow at once): wait for those, for up to
        # OWNER_SETTLE seconds of the owner's life, before calling it a shell or a script.
        record = read_record(home)
        if record is not None and record_alive(record) and str(record.get("pid")) == owner:
            return f"a daemon (pid {owner}) already serves {home}"
        settled = False
        if owner.isdigit():
            try:
                settled = time.time() - psutil.Process(int(owner)).create_time() > OWNER_SETTLE
            except (psutil.Error, ValueError):
                pass  # it has just gone: try the lock again
        if settled or time.monotonic() > deadline:
            return (f"{home} is in use by llmunix pid {owner} (a shell or a script); quit it first, "
                    "then start the daemon")
        time.sleep(0.02)


def _alive(pid: int, start: Any) -> bool:
    from llmunix.daemon.protocol import process_start

    return process_start(pid) == start


def _gone(record: dict[str, Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not record_alive(record):
            return True
        time.sleep(0.02)
    return False


# ---------------------------------------------------------------------- systemd


def unit_text(home: Path, args: argparse.Namespace) -> str:
    """A systemd user unit that runs this llmunix's daemon for `home`."""
    home = Path(os.path.abspath(home))
    options = [f"--home {shlex.quote(str(home))}"]
    for name in ("config", "max_running", "backend", "scheduler"):
        value = getattr(args, name)
        if value is not None:
            options.append(f"--{name.replace('_', '-')} {shlex.quote(str(value))}")
    options += [f"--tools {shlex.quote(m)}" for m in args.tools]
    boot = _boot()
    start = " ".join([shlex.quote(sys.executable), boot[0], _systemd_quote(boot[1]), "serve", *options, "--recover"])
    return f"""# llmunix daemon for {home}
# Install:  llmunix serve --print-unit > ~/.config/systemd/user/llmunix.service
#           systemctl --user daemon-reload && systemctl --user enable --now llmunix
# Keep it running after you log out (and start it at boot):  loginctl enable-linger "$USER"
[Unit]
Description=llmunix daemon for {home}
Documentation=https://github.com/llmunix/llmunix/blob/main/docs/daemon.md

[Service]
Type=notify
NotifyAccess=main
WorkingDirectory={os.getcwd()}
ExecStart={start}
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM to llmunix alone: it interrupts its processes itself (they can be recovered); whatever
# is left once it has exited is killed.
KillMode=mixed
TimeoutStopSec=90
Restart=on-failure

[Install]
WantedBy=default.target
"""


def _systemd_quote(text: str) -> str:
    """One argument in systemd's command-line syntax: double quotes, with \\ and " escaped and
    % and $ doubled (systemd would expand them)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'
