"""`python -m llmunix`: the same as the `llmunix` command."""

import sys

from llmunix.cli import main

sys.exit(main())
