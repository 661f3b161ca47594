"""Durable state: the SQLite store (sqlite.py), its writer (writer.py, which runs in a process
of its own and so imports nothing heavy), and how its rows become snapshots again (rows.py).

The names below are imported when first used (PEP 562): the writer process imports this package
on its way to writer.py, and must not pay for the engine's models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmunix import lazy_exports

__all__ = ["Store", "StoreFailure", "json_text", "row_to_info", "row_to_ps", "storable_text"]

_WHERE = {"Store": "llmunix.store.sqlite", "StoreFailure": "llmunix.store.sqlite",
          "json_text": "llmunix.store.writer", "storable_text": "llmunix.store.writer",
          "row_to_info": "llmunix.store.rows", "row_to_ps": "llmunix.store.rows"}

if TYPE_CHECKING:
    from llmunix.store.rows import row_to_info, row_to_ps
    from llmunix.store.sqlite import Store, StoreFailure
    from llmunix.store.writer import json_text, storable_text


__getattr__ = lazy_exports(globals(), _WHERE)
