"""`cluster`: where process bodies run — the backend, and for Dask its workers, their load and
which processes run on each."""

from __future__ import annotations

import argparse

import cmd2

from commands.base import LlmunixArgumentParser, ShellCommandSet
from llmunix.lazy import lazy_module
from llmunix.models import LlmunixError

views = lazy_module("commands.cluster_views")


class ClusterCommands(ShellCommandSet):
    DEFAULT_CATEGORY = "Monitoring commands"

    cluster_parser = LlmunixArgumentParser(
        description="Show where process bodies run. With the dask backend (--backend dask): the scheduler, "
                    "each worker's threads, memory, CPU, running tasks (anyone's) against its threads, the "
                    "resources it declares, and the llmunix processes whose bodies run there.",
        epilog="examples:\n  cluster\n  cluster --json\n  cluster | awk 'NR>2 {print $1, $8}'",
        formatter_class=cmd2.RawDescriptionCmd2HelpFormatter,
    )
    cluster_parser.add_argument("--json", action="store_true", help="print JSON")

    @cmd2.with_argparser(cluster_parser)
    def do_cluster(self, args: argparse.Namespace) -> None:
        """Show the cluster's workers and what runs on them."""
        try:
            info = self.kernel.cluster()
        except LlmunixError as exc:
            self.fail(str(exc))
            return
        if args.json:
            self.out_json(info.to_dict())
        elif self.plain:
            self.out(views.cluster_plain(info))
        else:
            self.out(views.cluster_table(info))
