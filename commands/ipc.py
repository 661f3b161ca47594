"""Communication commands: `send`, `broadcast`, `mailbox`, `locks`, `shared`, `bus`. Parse, call
one Kernel method, render a snapshot (views in `ipc_views.py`)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from typing import Any

import cmd2
from cmd2 import Choices, CompletionItem

from commands.base import LlmunixArgumentParser, ShellCommandSet, parse_pid
from llmunix.ipc.messages import BUILTIN_TYPES, MESSAGE_TYPES
from llmunix.lazy import lazy_module
from llmunix.models import LlmunixError

views = lazy_module("commands.ipc_views")


def _parser(description: str, epilog: str) -> LlmunixArgumentParser:
    return LlmunixArgumentParser(description=description, epilog=epilog,
                                 formatter_class=cmd2.RawDescriptionCmd2HelpFormatter)


class _MessageParser(LlmunixArgumentParser):
    """Options may come before, among or after the message words (`send 3 --persistent hi`,
    `send 3 hi --persistent`) and the message may be absent (`--file`)."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        return self.parse_intermixed_args(args, namespace)


def _message_parser(description: str, epilog: str) -> LlmunixArgumentParser:
    return _MessageParser(description=description, epilog=epilog,
                          formatter_class=cmd2.RawDescriptionCmd2HelpFormatter)


def parse_message(words: list[str]) -> Any:
    """The message words as JSON if they are JSON (`{"n": 1}`, `42`, `[1,2]`), else as text."""
    text = " ".join(words)
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:  # JSON nested thousands deep: no message needs that
        raise LlmunixError("JSON nested too deeply to pass on") from None


def _delivery(p: argparse.ArgumentParser, type_choices: Any) -> None:
    p.add_argument("-t", "--type", metavar="TYPE", choices_provider=type_choices,
                   help="message type (a registered type is validated; default: json, or text)")
    p.add_argument("-p", "--persistent", action="store_true",
                   help="keep it in the store until acknowledged: survives a restart (at-least-once)")
    p.add_argument("-s", "--sensitive", action="store_true",
                   help="encrypt it at rest and never show its body (the command line itself goes to the "
                        "audit trail: give a secret with --file)")
    p.add_argument("-f", "--file", metavar="FILE",
                   help="read the message from FILE ('-': standard input) instead of the command line")


_MESSAGE_COMMANDS = ("send", "broadcast")
_VALUE_OPTIONS = ("-t", "--type", "-f", "--file")  # options that take a value; the others are flags


def redact_sensitive_message(line: str) -> str:
    """The command line with the message words of `send`/`broadcast --sensitive` replaced by `***`,
    for what is written down (audit trail, log, history): `send 3 -s pw` -> `send 3 -s ***`.
    Other lines are returned as they are."""
    words = line.split(None, 1)
    if not words or words[0] not in _MESSAGE_COMMANDS or "-" not in line:
        return line
    try:
        tokens = shlex.split(line)
    except ValueError:  # an unclosed quote: keep only the command
        return f"{words[0]} ***" if re.search(r"(^|\s)(-s|--sensitive|-[a-z]*s[a-z]*)(\s|$)", line) else line
    kept, positional, sensitive, take_value, rest = [tokens[0]], 0, False, False, False
    masked = False
    for tok in tokens[1:]:
        if take_value:
            kept.append(tok)
            take_value = False
        elif not rest and tok == "--":
            kept.append(tok)
            rest = True
        elif not rest and tok.startswith("--") and len(tok) > 2:
            kept.append(tok)
            name = tok.split("=", 1)[0]
            sensitive = sensitive or "--sensitive".startswith(name) and len(name) > 3
            take_value = "=" not in tok and any(o.startswith(name) for o in _VALUE_OPTIONS if o.startswith("--"))
        elif not rest and re.fullmatch(r"-[a-z]+", tok):
            kept.append(tok)
            for i, ch in enumerate(tok[1:]):
                if ch == "s":
                    sensitive = True
                elif ch in "tf":
                    take_value = i == len(tok) - 2  # `-t json`, not `-tjson`
                    break
        else:
            positional += 1
            if positional == 1:
                kept.append(tok)
            elif not masked:
                kept.append("***")
                masked = True
    return shlex.join(kept).replace("'***'", "***") if sensitive else line


def read_message_file(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read().rstrip("\n")
        with open(path, encoding="utf-8") as f:
            return f.read().rstrip("\n")
    except OSError as exc:
        raise LlmunixError(f"cannot read the message from {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise LlmunixError(f"{path} is not UTF-8 text; a message is JSON or text") from None


class IpcCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Communication commands"

    def type_choices(self) -> Choices:
        return Choices.from_values([*BUILTIN_TYPES, *MESSAGE_TYPES.names()], is_sorted=True)

    def key_choices(self) -> Choices:
        items = [CompletionItem(e.key, display_meta=f"v{e.version}") for e in self.kernel.shared()]
        return Choices(items=items, is_sorted=True)

    def _message(self, args: argparse.Namespace) -> Any:
        if args.file is not None:
            if args.message:
                raise LlmunixError("give the message on the command line or with --file, not both")
            return parse_message([read_message_file(args.file)])
        if not args.message:
            raise LlmunixError("no message; give it after the PID (JSON or text) or with --file")
        return parse_message(args.message)

    send_parser = _message_parser("Send a message to a process's mailbox. The message is JSON if it parses as "
                          "JSON, else text. The process reads it with ctx.recv().",
                          "examples:\n  send 003 hello there\n  send 003 '{\"job\": 7, \"urls\": [\"a\", \"b\"]}'\n"
                          "  send 003 --persistent '{\"order\": 42}'\n  send 003 --sensitive --file secret.txt")
    send_parser.add_argument("pid", metavar="PID", help="process ID, e.g. 003",
                             choices_provider=ShellCommandSet.live_pid_choices)
    send_parser.add_argument("message", nargs="*", metavar="MESSAGE", help="JSON or text")
    _delivery(send_parser, type_choices)

    @cmd2.with_argparser(send_parser)
    def do_send(self, args: argparse.Namespace) -> None:
        """Send a message to a process."""
        try:
            info = self.kernel.send(parse_pid(args.pid), self._message(args), type=args.type,
                                    persistent=args.persistent, sensitive=args.sensitive)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        self.out(f"sent {info.id} to {info.recipient:03d} ({info.type}{', persistent' if info.persistent else ''})")

    broadcast_parser = _message_parser("Send a message to every live process listening to a topic "
                               "(ctx.subscribe_topic). Prints the PIDs it reached.",
                               "examples:\n  broadcast news.weather sunny\n  broadcast jobs '{\"stop\": true}'")
    broadcast_parser.add_argument("topic", metavar="TOPIC", help="topic name, e.g. news.weather")
    broadcast_parser.add_argument("message", nargs="*", metavar="MESSAGE", help="JSON or text")
    _delivery(broadcast_parser, type_choices)

    @cmd2.with_argparser(broadcast_parser)
    def do_broadcast(self, args: argparse.Namespace) -> None:
        """Send a message to a topic's listeners."""
        try:
            pids = self.kernel.broadcast(args.topic, self._message(args), type=args.type,
                                         persistent=args.persistent, sensitive=args.sensitive)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if pids:
            self.out(f"sent to {len(pids)} process(es): " + ", ".join(f"{p:03d}" for p in pids))
        else:
            self.out(f"no live process listens to {args.topic!r}")

    mailbox_parser = _parser("Show the messages waiting for a process: pending ones, and persistent ones "
                             "delivered but not yet acknowledged (unacked). FLAGS: P persistent, S sensitive "
                             "(its body is never shown).",
                             "examples:\n  mailbox 003\n  mailbox 003 --json")
    mailbox_parser.add_argument("pid", metavar="PID", choices_provider=ShellCommandSet.any_pid_choices)
    mailbox_parser.add_argument("--json", action="store_true", help="print a JSON array")

    @cmd2.with_argparser(mailbox_parser)
    def do_mailbox(self, args: argparse.Namespace) -> None:
        """Show a process's waiting messages."""
        try:
            pid = parse_pid(args.pid)
            messages = self.kernel.mailbox(pid)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        now = time.time()
        if args.json:
            self.out_json([m.to_dict() for m in messages])
        elif self.plain:
            self.out(views.mailbox_plain(messages, now))
        else:
            self.out(views.mailbox_table(pid, messages, now))

    locks_parser = _parser("Show the named synchronisation primitives (mutex, semaphore, condition, barrier, "
                           "rwlock): who holds each, who waits and for how long; then the deadlocks found "
                           "and what the deadlock policy did (`set deadlock_policy`).",
                           "examples:\n  locks\n  locks --json")
    locks_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.with_argparser(locks_parser)
    def do_locks(self, args: argparse.Namespace) -> None:
        """Show locks, their holders and waiters, and deadlocks."""
        info = self.kernel.locks()
        now = time.time()
        if args.json:
            self.out_json(info.to_dict())
        elif self.plain:
            self.out(views.locks_plain(info, now))
        else:
            self.out(views.locks_rich(info, now))

    shared_parser = _parser("Show the shared blackboard (versioned keys processes read and write with "
                            "ctx.shared), one key in full, or the shared memory-mapped buffers. With --set, "
                            "write a key (JSON if it parses, else text).",
                            "examples:\n  shared\n  shared 'results/*'\n  shared config\n"
                            "  shared config --set '{\"depth\": 2}'\n  shared --buffers\n  shared --json")
    shared_parser.add_argument("key", nargs="?", metavar="KEY", help="a key, or a glob such as 'results/*'",
                               choices_provider=key_choices)
    shared_parser.add_argument("--set", nargs="+", metavar="VALUE", dest="value", help="write KEY first")
    shared_parser.add_argument("-b", "--buffers", action="store_true", help="list the memory-mapped buffers")
    shared_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.with_argparser(shared_parser)
    def do_shared(self, args: argparse.Namespace) -> None:
        """Show (or set) shared keys and buffers."""
        now = time.time()
        if args.buffers:
            buffers = self.kernel.buffers()
            if args.json:
                self.out_json([b.to_dict() for b in buffers])
            else:
                self.out(views.buffers_plain(buffers) if self.plain else views.buffers_table(buffers))
            return
        try:
            if args.value is not None:
                if args.key is None:
                    raise LlmunixError("--set needs a KEY, e.g. shared config --set 42")
                self.kernel.set_shared(args.key, parse_message(args.value))
            entries = self.kernel.shared(args.key)
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        single = args.key is not None and not any(ch in args.key for ch in "*?[")
        if args.json:
            self.out_json(entries[0].to_dict() if single else [e.to_dict() for e in entries])
        elif single:
            self._cmd.poutput(views.shared_value(entries[0], now))
        elif self.plain:
            self.out(views.shared_plain(entries, now))
        else:
            self.out(views.shared_table(entries, now))

    bus_parser = _parser("Show the event bus: each subscription (the store, the shell's alerts, the log, "
                         "followers, your own), how many events it got, how many wait in its queue and how "
                         "many it dropped because it fell behind.",
                         "examples:\n  bus\n  bus --json")
    bus_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.with_argparser(bus_parser)
    def do_bus(self, args: argparse.Namespace) -> None:
        """Show event bus subscriptions and drops."""
        info = self.kernel.bus_info()
        if args.json:
            self.out_json(info.to_dict())
        elif self.plain:
            self.out(views.bus_plain(info))
        else:
            self.out(views.bus_table(info))
