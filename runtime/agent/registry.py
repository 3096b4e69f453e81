"""A small registry: the modules of a package that declare a ``KEY``, found by listing the
package (``discover``), or one of them by its key, which is its file's name (``load``: only that
module is imported; a camera's start does not pay for the MCU's serial library). Adding a
source, decision or sink is adding a file; one that fails to import disables only itself, said
in the log (``failed`` keeps why)."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from types import ModuleType

log = logging.getLogger("edgeloop.agent")

failed: dict[str, str] = {}  # module -> why it is not available


def discover(package: str) -> dict[str, ModuleType]:
    """``{KEY: module}`` for the modules of ``package`` (names starting with _ are skipped)."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if info.name.startswith("_"):
            continue
        name = f"{package}.{info.name}"
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # one broken plug-in disables itself, not the agent
            failed[name] = f"{type(exc).__name__}: {exc}"
            log.warning("%s is disabled: it cannot be imported (%s)", name, failed[name])
            continue
        key = getattr(module, "KEY", None)
        if key:
            found[key] = module
    return found


def load(package: str, key: str) -> ModuleType | None:
    """The module of ``package`` whose ``KEY`` is ``key`` (its file is ``key``, '-' as '_')."""
    name = f"{package}.{key.replace('-', '_')}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # the module exists; something it needs does not
            failed[name] = f"{type(exc).__name__}: {exc}"
            log.warning("%s is disabled: it cannot be imported (%s)", name, failed[name])
        return None
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
        log.warning("%s is disabled: it cannot be imported (%s)", name, failed[name])
        return None
    return module if getattr(module, "KEY", None) == key else None
