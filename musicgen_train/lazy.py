"""Package names that import their module on first use (PEP 562), so importing a package costs
nothing until one of its names is used: a command that only composes its config never imports
torch or transformers. A utility every layer may use."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module


def lazy_names(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``names`` maps each name to its submodule."""

    def __getattr__(name: str):
        if name in names:
            return getattr(import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
