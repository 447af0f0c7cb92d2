"""A generic name → object registry with aliases and did-you-mean errors."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from edgeft.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (and aliases) to registered objects; one instance per extension point."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator that registers an object under `name` and its aliases."""

        def add(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return add

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> None:
        """Registers `obj` under `name`; a name may be registered once."""
        if name in self._items or name in self._aliases:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name

    def remove(self, name: str) -> None:
        """Unregisters `name` and its aliases (a plugin that goes away)."""
        del self._items[name]
        self._aliases = {alias: target for alias, target in self._aliases.items() if target != name}

    def canonical(self, name: str) -> str:
        """Returns the registered name for `name` or one of its aliases."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise ConfigError(unknown_name_message(self.kind, name, self.names() + list(self._aliases)))

    def get(self, name: str) -> T:
        """Returns the object for `name`; unknown names fail with close suggestions."""
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered names, in registration order (aliases excluded)."""
        return list(self._items)

    def aliases(self) -> dict[str, str]:
        """Alias → registered name."""
        return dict(self._aliases)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """One-line 'unknown X' message with the closest known names."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    shown = ", ".join(sorted(known)[:12]) + (", …" if len(known) > 12 else "")
    return f"unknown {kind} '{name}'{hint}; known: {shown}"
