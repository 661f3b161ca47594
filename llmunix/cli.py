"""The `llmunix` command: interactive shell, `-c` commands, a script file, or commands on stdin."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from llmunix import __version__

# Nothing heavy at import: `llmunix --version` and `--help` answer before the engine, pydantic or
# the shell are imported (issue 15's start-up budget).


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmunix",
        description="A process manager for LLM work. With no arguments on a terminal, opens the "
                    "llmunix$ shell; otherwise runs commands from -c, a script file, or stdin. When a "
                    "daemon serves the home (`llmunix serve`), attaches to it.",
        epilog="examples:\n  llmunix\n  llmunix -c 'run sleep seconds=2' -c wait -c 'ps -a'\n"
               "  llmunix jobs.llmunix\n  echo ps | llmunix\n  llmunix serve -d       (the daemon: "
               "`llmunix serve --help`)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("script", nargs="?", metavar="FILE", help="run the commands in FILE (one per line, # comments)")
    p.add_argument("-c", "--command", action="append", dest="commands", metavar="CMD",
                   help="run CMD and exit (repeatable; run in order)")
    add_engine_options(p)
    p.add_argument("--standby", action="store_true",
                   help="hot standby: while another llmunix owns the home, wait for it to stop (a read-only "
                        "shell meanwhile, or before running -c/script commands), then take over as the owner "
                        "and recover its interrupted processes")
    p.add_argument("-k", "--keep-going", action="store_true",
                   help="in scripts and -c, go on after a failed command")
    p.add_argument("--version", action="version", version=f"llmunix {__version__}")
    return p


ENGINE_OPTIONS = ("config", "tools", "max_running", "backend", "scheduler", "recover")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """The options that make the engine: the shell's own, and `llmunix serve`'s."""
    p.add_argument("--home", metavar="DIR", help="state directory (default: $LLMUNIX_HOME, else "
                                                 "$XDG_STATE_HOME/llmunix)")
    p.add_argument("--config", metavar="FILE", help="configuration file (default: HOME/config.toml)")
    p.add_argument("--tools", action="append", default=[], metavar="MODULE",
                   help="import MODULE for its @tool functions (repeatable)")
    p.add_argument("--max-running", metavar="N", help="processes allowed to run at once, or auto (follows CPU "
                                                      "and memory headroom)")
    p.add_argument("--backend", choices=("threads", "dask"),
                   help="where bodies of remote tools run: threads (this machine, the default) or dask "
                        "(a Dask cluster; see docs/cluster.md)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="the Dask scheduler for --backend dask, e.g. tcp://10.0.0.5:8786 "
                        "(default: a local cluster)")
    p.add_argument("--recover", action="store_true",
                   help="at start, continue processes interrupted when llmunix last stopped")


def main(argv: list[str] | None = None) -> int:
    _byte_safe_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    serve_argv = _serve_argv(argv)
    if serve_argv is not None:
        from llmunix.daemon.serve import main as serve

        return serve(serve_argv)
    args = build_parser().parse_args(argv)
    try:
        script_lines = _read_script(args.script) if args.script else None
    except ScriptError as exc:
        print(f"llmunix: {exc}", file=sys.stderr)
        return 2
    stdin_is_tty = sys.stdin is not None and sys.stdin.isatty()
    interactive = args.commands is None and script_lines is None and stdin_is_tty
    attached = _attached(args, script_lines, interactive)
    if attached is not None:
        return attached
    from llmunix.config import check_setting, load_config, resolve_home
    from llmunix.home import tighten_home
    from llmunix.models import LlmunixError

    try:
        home = resolve_home(args.home)
        config = load_config(home, args.config)
        if args.max_running is not None:
            args.max_running = check_setting("max_running", args.max_running)
    except LlmunixError as exc:
        print(f"llmunix: {exc}", file=sys.stderr)
        return 2
    if args.standby:
        args.recover = True  # a standby that becomes the owner continues what the old owner left
        if not interactive and not wait_for_home(home):
            return 130
    try:
        kernel, notes = start_engine(args, home, config, interactive=interactive)
    except StartFailed as exc:
        return exc.status
    from llmunix.shell import LlmunixShell

    shell = LlmunixShell(kernel, interactive=interactive, home=home, notes=notes, lazy=not interactive)
    if not interactive:
        # Scripts stop cleanly on SIGTERM/SIGHUP too: the finally below stops the processes.
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
        signal.signal(signal.SIGHUP, lambda signum, _frame: sys.exit(128 + signum))
    status = 0
    try:
        for line in start_notes(kernel, args.recover, standby=args.standby):
            print(f"llmunix: {line}", file=sys.stderr)
        if args.standby and kernel.read_only:
            _start_standby(kernel, home)
        if args.commands is not None:
            status = shell.run_lines(args.commands, keep_going=args.keep_going)
        elif script_lines is not None:
            status = shell.run_lines(script_lines, keep_going=args.keep_going, source=args.script)
        elif not interactive:
            status = shell.run_lines(sys.stdin or (), keep_going=args.keep_going, source="<stdin>")
        else:
            status = shell.cmdloop()
    except KeyboardInterrupt:
        status = 130
    finally:
        stopped = kernel.shutdown(reason="shell exited")
        if not kernel.read_only:
            tighten_home(home)  # what this session made with the umask's mode (pids, runs/) becomes private
        if stopped and not interactive:
            shown = [i.process_id for i in stopped[:10]]
            pids = ", ".join(shown) + (f" and {len(stopped) - len(shown)} more" if len(stopped) > len(shown) else "")
            if kernel.store is not None:
                print(f"llmunix: interrupted {len(stopped)} live process(es) on exit ({pids}); "
                      "`recover` continues them", file=sys.stderr)
            else:
                print(f"llmunix: stopped {len(stopped)} live process(es) on exit ({pids}); "
                      "end a script with `wait` to let them finish", file=sys.stderr)
    return status


# Options of the main parser that take a value (so that `llmunix --home DIR serve` is found).
_VALUED = frozenset({"-c", "--command", "--home", "--config", "--tools", "--max-running", "--backend", "--scheduler"})


def _serve_argv(argv: list[str]) -> list[str] | None:
    """`llmunix [OPTIONS] serve [OPTIONS]`: the arguments for `serve` (the options on both sides of
    the word), or None when the first word that is not an option is not `serve` (a script file
    named serve runs as ./serve)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return None
        if not arg.startswith("-") or arg == "-":
            return argv[:i] + argv[i + 1:] if arg == "serve" else None
        i += 2 if arg in _VALUED else 1
    return None


def _attached(args: argparse.Namespace, script_lines: list[str] | None, interactive: bool) -> int | None:
    """When a daemon serves the home, run there (its exit status); None: no daemon, run embedded.
    Only the standard library is imported on this path (daemon/client.py)."""
    from llmunix.daemon.client import attach, run_attached
    from llmunix.daemon.protocol import DaemonError, say
    from llmunix.paths import home_path

    home = home_path(args.home)
    try:
        link = attach(home, "shell" if interactive else "run")
    except DaemonError as exc:
        say(str(exc))
        return 2
    if link is None:
        return None
    # (a standby makes no sense here: the daemon owns the home, and the client has full control)
    given = [f"--{name.replace('_', '-')}" for name in ENGINE_OPTIONS
             if getattr(args, name) not in (None, False, [])]
    if given:
        link.close()
        say(f"{', '.join(given)} {'sets' if len(given) == 1 else 'set'} up the engine, which the daemon "
            f"(pid {link.pid}) runs for {home}; give {'it' if len(given) == 1 else 'them'} to `llmunix serve` "
            "(or stop the daemon: llmunix serve --stop)")
        return 2
    if interactive:
        from llmunix.daemon.attached import run_interactive

        return run_interactive(link, home)
    # As embedded: SIGTERM/SIGHUP end a script; here they only detach (the daemon's processes go on).
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    signal.signal(signal.SIGHUP, lambda signum, _frame: sys.exit(128 + signum))
    if args.commands is not None:
        return run_attached(link, lines=args.commands, source="", keep_going=args.keep_going)
    if script_lines is not None:
        return run_attached(link, lines=script_lines, source=args.script, keep_going=args.keep_going)
    return run_attached(link, lines=None, source="<stdin>", keep_going=args.keep_going)


class StartFailed(Exception):
    """The engine could not start; what went wrong has been printed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def start_engine(args: argparse.Namespace, home: Path, config: Any, *, interactive: bool) -> tuple[Any, list[str]]:
    """Build the Kernel as `args` and `config` say, with tools loaded (the embedded shell's start
    and the daemon's), or raise StartFailed after printing why. Returns it and the list the
    shell prints notes from: agents and markdown definitions are read now when `interactive`
    (their load errors printed before the first prompt), else when first needed (a tool looked
    up or listed, an agent command), their load errors printed after that command."""
    from llmunix.models import LlmunixError

    _setup_logging(home, config)
    from llmunix.config import activate

    activate(config)  # tools and agents read their settings from it

    from llmunix.kernel import Kernel
    from llmunix.observe.logging import log_events
    from llmunix.reaper import GUARDIAN, become_subreaper

    # Nothing left behind (reaper.py): descendants that lose their parent stay ours while we run,
    # and the guardian kills every descendant of this llmunix when it ends, however it ends.
    become_subreaper()
    GUARDIAN.scan_all = True
    from llmunix.tools.loader import load_user_tools

    dirs = [Path.cwd() / "tools", home / "tools", *(Path(p).expanduser() for p in config.tool_paths)]
    load_errors = load_user_tools(dirs, [*config.tool_modules, *args.tools])
    named = {f"module {m}" for m in [*config.tool_modules, *args.tools]}
    for err in load_errors:
        print(f"llmunix: could not load tools from {err}", file=sys.stderr)
    if any(err.source in named for err in load_errors):  # asked for by name: nothing runs without it
        raise StartFailed(2)

    backend = None
    try:
        backend = _backend(args, config)
        kernel = Kernel(
            home,
            max_running=args.max_running or config.max_running,
            max_running_auto=config.max_running_auto.auto_settings(),
            max_threads=config.max_threads,
            kill_grace=config.kill_grace,
            time_slice=config.time_slice,
            aging_interval=config.aging_interval,
            monitor_interval=config.monitor_interval,
            retention_days=config.retention_days,
            retention_count=config.retention_count,
            limits=config.limits,
            memory_pressure_mb=config.memory_pressure_mb,
            pause_idle_under_pressure=config.pause_idle_under_pressure,
            deadlock_policy=config.deadlock_policy,
            scheduling=config.scheduling,
            **config.resilience(),  # breakers, watchdog, chaos, health (docs/resilience.md)
            backend=backend,
            isolation=config.isolation,
            tool_settings={name: t.model_dump(exclude_none=True) for name, t in config.tools.items()},
            read_only=getattr(args, "read_only", None),
            # A one-shot command writes on a thread unless it writes a lot (no writer process to
            # start, and wait for, for a `ps`); a shell, a script or the daemon start one at once.
            store_writer="auto" if getattr(args, "commands", None) is not None else None,
        )
    except LlmunixError as exc:
        if backend is not None:
            backend.close()
        print(f"llmunix: {exc}", file=sys.stderr)
        raise StartFailed(2) from None
    notes: list[str] = []
    reported = {str(e) for e in load_errors}

    def make_agents() -> Any:
        from llmunix.agents.service import AgentService, default_directories
        from llmunix.tools.loader import refused

        definitions = []
        for directory, kind in default_directories(home, Path.cwd()):
            err = refused(directory)
            if err is None:
                definitions.append((directory, kind))
            elif str(err) not in reported:
                reported.add(str(err))
                notes.append(f"llmunix: could not load definitions from {err}")
        service = AgentService(kernel, config, directories=definitions)
        for err in service.errors:
            if str(err) not in reported:
                reported.add(str(err))
                notes.append(f"llmunix: could not load {err}")
        return service

    kernel.attach_agents_later(make_agents)
    if interactive:
        kernel.agents  # noqa: B018 (made now: its load errors are seen before the first prompt)
        for note in notes:
            print(note, file=sys.stderr)
        notes.clear()
    for module, err in kernel.preload(config.preload):  # what tools import lazily, paid for now
        if err is not None:
            print(f"llmunix: could not preload {module}: {err}", file=sys.stderr)
    overridden = kernel.registry.overrides() if kernel.registry.has_user_tools() else []
    for t in overridden:  # said once, at start; `tools` marks them too (no user tools: nothing to load)
        replaced = "the built-in one" if t.overrides == "builtin" else f"the one from {t.overrides}"
        print(f"llmunix: tool {t.name!r} from {t.source} overrides {replaced}", file=sys.stderr)
    log_events(kernel)
    if interactive and any(kernel.tool_isolation(t) == "process" for t in kernel.registry):
        kernel.isolation.pool.warm()  # the pool process imports the tools while the user reads the prompt
    # Everything imported and built so far lives as long as llmunix does: move it out of the
    # garbage collector's reach, so that a full collection walks only what the engine made
    # since (with the startup heap, one took ~35 ms and ran every few thousand processes).
    gc.freeze()
    return kernel, notes


def _byte_safe_streams() -> None:
    """Bytes that were not UTF-8 (a parameter, a command's output, kept as surrogateescape'd
    text) go out as they came in, as `cat` would, whatever the locale: never a UnicodeEncodeError
    half way through `log` or `ps --json`."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None and getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")


def start_notes(kernel: Any, recover: bool, standby: bool = False) -> list[str]:
    """What a user should know as llmunix starts: read-only mode, a standby, a takeover, what an
    earlier llmunix left running (reaped now), interrupted work."""
    notes = []
    took_over = os.environ.pop(TAKEOVER_ENV, "")
    if kernel.reaped:
        groups = kernel.reaped
        shown = ", ".join(r.label or f"pgid {r.pgid}" for r in groups[:5]) + (" ..." if len(groups) > 5 else "")
        procs = sum(r.processes for r in groups)
        notes.append(f"reaped {procs} OS process(es) in {len(groups)} group(s) that an earlier llmunix left running "
                     f"when it was killed ({shown})")
    if kernel.read_only and standby:
        notes.append(f"standby: {kernel.home} is in use by llmunix pid {kernel.home_owner}; read-only until it "
                     "stops, then this shell takes over as the owner and recovers its processes")
    elif kernel.read_only:
        notes.append(f"{kernel.home} is in use by llmunix pid {kernel.home_owner}; opened read-only "
                     "(ps, log, events and audit work; use another --home to run processes)")
    if not kernel.read_only and recover:
        infos = kernel.recover()
        ok = [i.process_id for i in infos if i.state != "Failed"]
        bad = [i.process_id for i in infos if i.state == "Failed"]
        if took_over:
            owner, _, since = took_over.partition(":")
            notes.append(f"took over {kernel.home} from llmunix pid {owner} "
                         f"{time.time() - float(since or time.time()):.3f}s after it stopped")
        if ok:
            notes.append(f"recovered {len(ok)} interrupted process(es): {', '.join(ok)}")
        if bad:
            notes.append(f"{len(bad)} interrupted process(es) could not be resumed: {', '.join(bad)} "
                         "(see `ps -l PID`)")
    else:
        rows = kernel.ps(all=True, state="interrupted") if kernel.interrupted_at_start else []
        if rows:
            pids = ", ".join(i.process_id for i in rows[:10]) + (" ..." if len(rows) > 10 else "")
            notes.append(f"{len(rows)} process(es) were interrupted when llmunix last stopped ({pids}); "
                         "`recover` continues them, `ps -a --state interrupted` lists them")
    return notes


TAKEOVER_ENV = "LLMUNIX_TOOK_OVER"  # "OWNER:TIME" the standby got the lock, for the new program's note


def wait_for_home(home: Path) -> bool:
    """A standby running commands: wait (blocking) until the home is free, take its lock and
    hand it to the Kernel about to be made. False if interrupted (Ctrl-C)."""
    from llmunix.home import HomeInUse, HomeLock

    lock = HomeLock(home)
    try:
        try:
            lock.acquire()
        except HomeInUse as exc:
            print(f"llmunix: standby: waiting for llmunix pid {exc.owner} to release {home}", file=sys.stderr)
            lock.acquire(wait=True)
            os.environ[TAKEOVER_ENV] = f"{lock.previous or exc.owner}:{time.time()}"
    except KeyboardInterrupt:
        lock.release()
        return False
    lock.hand_over()
    return True


def _start_standby(kernel: Any, home: Path) -> None:
    """An interactive standby: a thread waits for the home lock; when the owner stops, it hands
    the lock over and replaces this program with the owner's (the same command line, without
    --standby, with --recover). Why exec and not a new Kernel in this process: the owner's
    start is one path (tools, agents, backend, settings, alerts, the shell's settables bound to
    the kernel), and a fresh program runs exactly it; a read-only kernel swapped under a live
    prompt would leave half of that pointing at the old one."""
    import threading

    from llmunix.home import HomeLock

    saved = _terminal_mode()

    def watch() -> None:
        lock = HomeLock(home)
        lock.acquire(wait=True)
        got = time.time()
        owner = lock.previous or kernel.home_owner  # the last owner (a standby before us may have become it)
        lock.hand_over()
        os.environ[TAKEOVER_ENV] = f"{owner}:{got}"
        try:
            kernel.shutdown(timeout=1.0)  # the read-only store and threads; it runs nothing
        except Exception:  # noqa: BLE001 - the exec below replaces everything anyway
            pass
        _restore_terminal(saved)
        # Straight to the descriptor: the prompt may be holding sys.stderr in a proxy the exec discards.
        os.write(2, f"\r\nllmunix: llmunix pid {owner} has stopped; taking over {home}\r\n".encode())
        argv = _owner_argv()
        os.execv(sys.executable, argv)

    threading.Thread(target=watch, name="llmunix-standby", daemon=True).start()


def _owner_argv() -> list[str]:
    """This program's command line as the owner: without --standby, with --recover."""
    orig = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    own = sys.argv[1:]
    prefix = orig[: len(orig) - len(own)]
    args = [a for a in own if a != "--standby"]
    return [*prefix, *args, *([] if "--recover" in args else ["--recover"])]


def _terminal_mode() -> Any:
    try:
        import termios

        return termios.tcgetattr(sys.stdin.fileno())
    except Exception:  # noqa: BLE001 - not a terminal
        return None


def _restore_terminal(mode: Any) -> None:
    """Put the terminal back as it was before the prompt took it (raw mode survives an exec)."""
    if mode is None:
        return
    try:
        import termios

        termios.tcsetattr(sys.stdin.fileno(), termios.TCSANOW, mode)
        sys.stdout.write("\x1b[?2004l\x1b[?25h")  # bracketed paste off, cursor shown
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass


def _backend(args: argparse.Namespace, config: Any) -> Any:
    """The backend from --backend/--scheduler, else the config; `--scheduler` alone means dask.
    A cluster library's own log lines go to llmunix.log, not over the shell."""
    from llmunix.backends import make_backend
    from llmunix.models import LlmunixError
    from llmunix.observe.logging import capture_library_logs

    name = args.backend or ("dask" if args.scheduler else config.backend)
    if args.scheduler and name != "dask":
        raise LlmunixError("--scheduler only applies to --backend dask")
    adapt = (config.dask_adapt.minimum, config.dask_adapt.maximum) if config.dask_adapt is not None else None
    backend = make_backend(name, scheduler=(args.scheduler or config.dask_scheduler) if name == "dask" else None,
                           adapt=adapt if name == "dask" else None)
    if name == "dask":
        capture_library_logs("distributed")
    return backend


class ScriptError(Exception):
    """A script file that cannot be read (said in one line)."""


def _read_script(path: str) -> list[str]:
    try:
        # Bytes that are not UTF-8 travel as they do from -c and stdin (surrogateescape'd, stored
        # and shown escaped), rather than refusing a whole script for one parameter.
        return Path(path).read_text(errors="surrogateescape").splitlines()
    except FileNotFoundError:
        raise ScriptError(f"no such script file: {path}") from None
    except IsADirectoryError:
        raise ScriptError(f"{path} is a directory, not a script file") from None
    except OSError as exc:
        raise ScriptError(f"cannot read script {path}: {exc.strerror or exc}") from None


def _setup_logging(home: Path, config: Any) -> None:
    """Engine and shell log JSON lines to `<home>/llmunix.log`, never to the terminal."""
    from llmunix.observe.logging import setup_logging

    setup_logging(home, level=config.log_level, max_bytes=config.log_max_bytes, backups=config.log_backups)


if __name__ == "__main__":
    sys.exit(main())
