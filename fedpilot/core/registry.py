"""Name -> implementation registries, filled by importing every module of a package.

Adding a strategy, a dataset or a model family is adding one module that calls
``REGISTRY.register("name")``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """A dict of named implementations whose entries register themselves on import."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = item
            return item

        return add

    def check(self, name: str) -> str:
        """``name`` if registered, else a ValueError listing what is (pydantic turns it into a field error)."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self))}")
        return name

    def get_or_fail(self, name: str) -> T:
        return self[self.check(name)]


def import_submodules(package_name: str, packages_only: bool = False) -> None:
    """Import every module of a package so that their ``register`` calls run (``packages_only``: its
    sub-packages only, leaving its plain modules to be imported when needed)."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg or not packages_only:
            importlib.import_module(f"{package_name}.{info.name}")
