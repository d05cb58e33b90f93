"""timm-style registries for the pluggable parts (datasets, backbones, defenses, attacks, suites).

A registry maps a stable id (the CLI and leaderboard key) to a factory. Third-party packages add entries
through the entry-point group ``dmlbench.<kind>s`` (for example ``dmlbench.defenses``), loaded lazily on
first lookup; a plugin id that is already built in is a one-line error, never silently ignored.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

from robustbench_dml.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named id -> factory map with glob listing and close-match suggestions."""

    def __init__(self, kind: str, builtin_modules: tuple[str, ...] = ()):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._builtin_modules = builtin_modules
        self._loaded = False

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("id")`` on a class or factory function."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = factory
            return factory

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        import importlib

        for module in self._builtin_modules:
            importlib.import_module(module)
        for ep in metadata.entry_points(group=f"dmlbench.{self.kind}s"):
            if ep.name in self._entries:
                self._loaded = False  # every lookup says it again until the plugin is fixed or removed
                raise UserError(f"the plugin {ep.value} (entry point group dmlbench.{self.kind}s) registers "
                                f"{self.kind} {ep.name!r}, which is built in; give it another id")
            self._entries[ep.name] = ep.load()

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted ids matching the fnmatch ``pattern`` (e.g. ``"*hm*"``)."""
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def get(self, name: str) -> Callable[..., T]:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(
                f"unknown {self.kind} {name!r}{hint}; known: {', '.join(sorted(self._entries))}"
            ) from None

    def create(self, name: str, **cfg: Any) -> T:
        return self.get(name)(**cfg)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries
