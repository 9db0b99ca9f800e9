"""Named components contributed by plugins, with duplicate detection.

Two plugins registering the same name is a mistake unless one of them says
``replace=True``; the error names both plugins so the user knows which to remove.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError, PluginError


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    value: Any
    plugin: str
    config: Any = None
    replace: bool = False


class Registry:
    """Registrations of one kind (stage, backend, domain, ...), resolved to one per name."""

    def __init__(self, kind: str, *, takes_config: bool = True, base: type | None = None) -> None:
        self.kind = kind
        #: the class every registered value must subclass (a stage declares itself on ``Stage``)
        self.base = base
        #: whether ``config=`` means something for this kind (it becomes a config group option)
        self.takes_config = takes_config
        self._entries: dict[str, list[Registration]] = {}
        self._resolved: dict[str, Registration] | None = None

    def callback(self, plugin: str) -> Callable[..., None]:
        """The ``register`` function handed to one plugin's hook."""

        def register(name: str, value: Any, config: Any = None, *, replace: bool = False) -> None:
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin!r} registered a {self.kind} with an empty or non-text name")
            if self.base is not None and not (isinstance(value, type) and issubclass(value, self.base)):
                raise PluginError(f"plugin {plugin!r} registered {self.kind} {name!r} as {value!r}, which is not a "
                                  f"subclass of {self.base.__module__}.{self.base.__qualname__}")
            if config is not None and not self.takes_config:
                raise PluginError(f"plugin {plugin!r} registered {self.kind} {name!r} with config=, which a {self.kind} "
                                  f"does not take; its settings belong in the run's config (cfg) it receives")
            self._entries.setdefault(name, []).append(
                Registration(self.kind, name, value, plugin, config, replace)
            )
            self._resolved = None

        return register

    def _resolve(self) -> dict[str, Registration]:
        if self._resolved is not None:
            return self._resolved
        resolved: dict[str, Registration] = {}
        for name, entries in self._entries.items():
            originals = [e for e in entries if not e.replace]
            replacements = [e for e in entries if e.replace]
            if len(originals) > 1:
                who = " and ".join(repr(e.plugin) for e in originals)
                raise PluginError(
                    f"{self.kind} {name!r} is registered by both {who}; remove one, or register "
                    f"with replace=True to replace it on purpose"
                )
            if len(replacements) > 1:
                who = " and ".join(repr(e.plugin) for e in replacements)
                raise PluginError(f"{self.kind} {name!r} is replaced by both {who}; keep only one")
            resolved[name] = replacements[0] if replacements else originals[0]
        self._resolved = resolved
        return resolved

    def names(self) -> list[str]:
        return sorted(self._resolve())

    def __contains__(self, name: str) -> bool:
        return name in self._resolve()

    def entry(self, name: str) -> Registration:
        resolved = self._resolve()
        if name not in resolved:
            options = ", ".join(sorted(resolved)) or "none registered"
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {options}")
        return resolved[name]

    def get(self, name: str) -> Any:
        return self.entry(name).value

    def entries(self) -> list[Registration]:
        return [self._resolve()[n] for n in self.names()]
