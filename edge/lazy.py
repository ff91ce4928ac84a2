"""Names a package re-exports from its modules, imported on first use (PEP 562).

A package whose modules are heavy (Numba kernels, an engine, image libraries) still offers its
names at the top (``from edge.darkfield import Classifier``), while importing one light module of
it (a command's parser, a constant) loads nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], object]:
    """The ``__getattr__`` of ``package``: ``names`` maps each re-exported name to the module
    of the package that defines it. A name is imported once, then kept in the package."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    return __getattr__
