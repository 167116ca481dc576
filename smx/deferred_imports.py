"""Standard-library modules that libraries import at load time and our processes never use:
each is replaced by a stand-in that imports the real module on first use of one of its names.

On a 1 GB board every process counts (docs/PERFORMANCE.md): `websockets` imports
`importlib.metadata` for a version string it already holds, and `paho-mqtt` and `websockets`
import `urllib.request` for proxy settings our processes never have. Each pulls in `email`,
`zipfile`, `csv`, `http.client` and more: ~2-3 MiB per process that loads them.

`importlib.util.LazyLoader` would do this, but on Python 3.11 an `import` statement reads the
lazy module's `__spec__`, which loads it at once; a plain module with a module `__getattr__`
(PEP 562) answers `__spec__` itself and loads the real module only for a real name.

Importing this module defers `UNUSED`: the SDK imports it first, before any process it serves
loads websockets or paho-mqtt.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

__all__ = ["UNUSED", "defer"]

UNUSED = ("importlib.metadata", "urllib.request")

_lock = threading.Lock()


def defer(name: str) -> None:
    """Put a stand-in for module `name` in `sys.modules` unless it is loaded already. The first
    name read from it (`module.attr`, `from name import attr`, `hasattr`) loads the real module,
    which then takes the stand-in's place in `sys.modules` and on its parent package."""
    if name in sys.modules:
        return
    stand_in = types.ModuleType(name, f"{name}, loaded on first use (smx.deferred_imports)")
    # The real spec (found, not loaded): importlib.util.find_spec and pkgutil then answer for
    # the name as they would for the module itself.
    stand_in.__spec__ = importlib.util.find_spec(name)

    def load(attr: str) -> object:
        with _lock:  # only the swap: the import itself is serialised by Python's own locks
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
        real = importlib.import_module(name)  # also sets it on the parent package
        return getattr(real, attr)

    stand_in.__getattr__ = load  # type: ignore[method-assign]
    sys.modules[name] = stand_in
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(importlib.import_module(parent), child, stand_in)


for _name in UNUSED:
    defer(_name)
