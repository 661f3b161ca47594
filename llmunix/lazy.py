"""Modules imported when first used: start-up pays only for what a command needs (issue 15).

`views = lazy_module("commands.workflow_views")` binds a module object at once, but runs the
module's code the first time one of its attributes is read (importlib's LazyLoader). Use it for
a module that is only needed inside functions; a name needed while a module is being defined
(a parser's choices) must be imported as usual.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType

_lock = threading.Lock()


def lazy_module(name: str) -> ModuleType:
    """`name`, imported on first attribute access (the module itself if it is imported already)."""
    with _lock:
        module = sys.modules.get(name)
        if module is not None:
            return module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ImportError(f"no module named {name!r}")
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        return module
