"""The llmunix daemon: `llmunix serve` owns a home, and every `llmunix` attaches to it.

* `protocol`  what the two sides share (stdlib only): the version, the framing of messages,
              where the socket lives, the daemon's record in the home, the terminal's facts
* `client`    the thin client that `-c`, scripts and stdin use (stdlib only: it starts in
              milliseconds); also what `serve --stop/--restart` and the interactive client share
* `server`    the daemon's socket: who may connect, the connections and their threads, the
              bounded alert queue of each (no cmd2, no rich)
* `session`   one `LlmunixShell` per attached client, its output a stream back to the client
              (the terminal layer, with shell.py and cli.py)
* `attached`  the interactive client: cmd2 for line editing, completion asked of the daemon
* `serve`     the `llmunix serve` command: foreground, detached, stop, restart, systemd unit

docs/architecture.md ("The daemon") draws how they fit; docs/daemon.md is the user's page.
"""
