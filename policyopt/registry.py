"""Named registries, one per box of the pipeline (advantages, policy losses, aggregations, ...).

A new loss is a function plus ``@POLICY_LOSSES.register("name")``; configs select it by name.
Entries may carry metadata (``register("kl_proximal", needs=("kl_old",))``) that trainers read with
:meth:`Registry.meta` instead of special-casing names: what inputs an entry needs, which
hyper-parameters it reads, whether it works on groups, and so on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from policyopt.errors import UnknownChoice

T = TypeVar("T")


class Registry(Generic[T]):
    """``name -> entry`` with optional per-entry metadata; ``T`` is the box's signature (a Protocol)."""

    def __init__(self, kind: str, **meta_defaults: Any):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, Mapping[str, Any]] = {}
        self._meta_defaults = dict(meta_defaults)

    def register(self, name: str, obj: T | None = None, **meta: Any):
        """Register ``obj`` under ``name`` with metadata ``meta``; usable as a decorator.
        Re-registering a name with another object raises."""
        unknown = set(meta) - set(self._meta_defaults)
        if unknown and self._meta_defaults:
            raise TypeError(
                f"{self.kind} {name!r}: unknown metadata {sorted(unknown)}; known: {sorted(self._meta_defaults)}"
            )

        def add(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            self._meta[name] = MappingProxyType({**self._meta_defaults, **meta})
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for interactive sessions that re-import a module defining an entry)."""
        self.get(name)
        del self._items[name], self._meta[name]

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownChoice(self.kind, name, self._items) from None

    def meta(self, name: str) -> Mapping[str, Any]:
        """The metadata of ``name`` (the registry's defaults for keys the entry did not set)."""
        self.get(name)
        return self._meta[name]

    def check(self, name: str) -> str:
        self.get(name)
        return name

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def doc_line(obj: Callable | object) -> str:
    """First line of an object's docstring (for ``policyopt list``)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
