"""Component plugins: installed modules under the entry-point group ``mfdsl.components``.

Loaded explicitly, once, where a program enters mfdsl (:mod:`mfdsl.api` and the CLI), so
the registry itself imports nothing. A plugin that fails to import is reported as a
warning: a broken plugin must not stop every spec from loading.
"""
from __future__ import annotations

import warnings
from typing import List

GROUP = "mfdsl.components"
_loaded: List[str] = []
_done = False


def load_plugins() -> List[str]:
    """Import every installed component plugin (once); returns the names loaded."""
    global _done
    if _done:
        return list(_loaded)
    _done = True
    from importlib.metadata import entry_points

    from . import layers  # noqa: F401 - built-ins first: a plugin may not shadow them by accident

    for ep in entry_points(group=GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            warnings.warn(f"mfdsl: could not load the component plugin {ep.name!r}: {exc}")
            continue
        _loaded.append(ep.name)
    return list(_loaded)
