"""The plugin manager: built-in and third-party plugins go through the same hooks.

Built-ins are listed in ``DEFAULT_PLUGINS``; third-party plugins are found through the
``litecoder`` entry-point group (set ``LITECODER_LOAD_ENTRYPOINTS=0`` to skip them, e.g. in
tests). Loading is idempotent. Registries are rebuilt whenever a plugin is added or
removed, and component configs are mirrored into Hydra's ConfigStore so that a backend
registered in Python is an option of ``backend=`` like any YAML file.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import is_dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import pluggy
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from . import hookspecs
from .errors import PluginError
from .registry import Registry

DEFAULT_PLUGINS = (
    "litecoder.domains",
    "litecoder.stages.sample",
    "litecoder.stages.judge",
    "litecoder.stages.environment",
    "litecoder.stages.trajectory",
    "litecoder.stages.eval",
    "litecoder.stages.ingest",
    "litecoder.stages.export",
    "litecoder.stages.report",
    "litecoder.stages.image",
    "litecoder.backends.openai_compat",
    "litecoder.backends.vllm",
    "litecoder.sandboxes.docker",
    "litecoder.sandboxes.base_image",
    "litecoder.agents.terminus",
    "litecoder.agents.preparer",
    "litecoder.agents.bash_tool",
    "litecoder.exporters.chat",
    "litecoder.exporters.harbor",
    "litecoder.executors.local",
    "litecoder.executors.ray",
)

#: registry kind -> (hook name, config group that mirrors its configs). A stage's config is
#: the run config's node of the stage's name, an exporter's the ``export`` node's of its name.
KINDS = {
    "stage": ("litecoder_register_stages", "."),
    "backend": ("litecoder_register_backends", "backend"),
    "domain": ("litecoder_register_domains", "domain"),
    "sandbox": ("litecoder_register_sandboxes", "sandbox"),
    "image_builder": ("litecoder_register_image_builders", None),
    "agent": ("litecoder_register_agents", "agent"),
    "exporter": ("litecoder_register_exporters", "export."),
    "executor": ("litecoder_register_executors", "executor"),
}


class Plugins:
    """Owns the pluggy manager and the registries built from it."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("litecoder")
        self.pm.add_hookspecs(hookspecs)
        #: entry-point plugins: name -> "distribution version"
        self.sources: dict[str, str] = {}
        #: entry-point plugins that failed to import (only with ``load(strict=False)``)
        self.failed: dict[str, str] = {}
        self._loaded = False
        self._registries: dict[str, Registry] | None = None
        self._search_paths: list[tuple[str, str]] | None = None
        self._stored: list[tuple[str, str]] = []

    # -- loading ---------------------------------------------------------------------------
    def load(self, *, strict: bool = True) -> "Plugins":
        """Register the built-ins and the entry-point plugins. A plugin that fails to import
        is an error naming it; with ``strict=False`` it is recorded in ``failed`` instead."""
        if self._loaded:
            return self
        for name in DEFAULT_PLUGINS:
            if self.pm.get_plugin(name) is None:
                self.pm.register(importlib.import_module(name), name)
        if os.environ.get("LITECODER_LOAD_ENTRYPOINTS", "1") != "0":
            self._load_entry_points(strict)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"a litecoder plugin has a hook that does not exist: {exc}") from exc
        self._loaded = True
        self.refresh()
        return self

    def _load_entry_points(self, strict: bool) -> None:
        for entry in importlib.metadata.entry_points(group="litecoder"):
            if self.pm.get_plugin(entry.name) is not None or self.pm.is_blocked(entry.name):
                continue
            dist = f"{entry.dist.name} {entry.dist.version}" if entry.dist else "unknown distribution"
            try:
                plugin = entry.load()
            except Exception as exc:  # noqa: BLE001 - reported with its plugin's name, never hidden
                error = f"{type(exc).__name__}: {exc}"
                if strict:
                    raise PluginError(f"plugin {entry.name!r} ({dist}, {entry.value}) failed to import: {error}") from exc
                self.failed[entry.name] = f"{dist}, {entry.value}: {error}"
                continue
            self.pm.register(plugin, name=entry.name)
            self.sources[entry.name] = dist

    def describe(self) -> list[dict]:
        """Every loaded plugin with where it comes from and what it registers."""
        found: dict[str, dict] = {}
        for name, _ in self.pm.list_name_plugin():
            name = str(name)
            found[name] = {"name": name, "source": self.sources.get(name, "built-in"), "registers": [], "hooks": []}
        for kind, registry in self.registries.items():
            for entry in registry.entries():
                if entry.plugin in found:
                    found[entry.plugin]["registers"].append(f"{kind} {entry.name}" + (" (replaces)" if entry.replace else ""))
        for plugin, path in self.search_paths_by_plugin():
            found[plugin]["registers"].append(f"config path {path}")
        for plugin_name, hooked in self.pm.list_name_plugin():
            found[str(plugin_name)]["hooks"] = sorted(impl.name for impl in self.pm.get_hookcallers(hooked) or [])
        return list(found.values())

    def register(self, plugin: object, name: str | None = None) -> str:
        """Add a plugin object (a module or an instance with hookimpls) at run time."""
        self.load()
        registered = self.pm.register(plugin, name)
        if registered is None:
            raise PluginError(f"plugin {name or plugin!r} is already registered")
        try:
            self.pm.check_pending()
            self.refresh()
        except (pluggy.PluginValidationError, PluginError) as exc:
            self.pm.unregister(name=registered)
            self.refresh()
            raise PluginError(f"plugin {registered!r} cannot be used: {exc}") from exc
        return registered

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.refresh()

    def refresh(self) -> None:
        self._registries = None
        self._search_paths = None
        self._sync_config_store()

    # -- registries ------------------------------------------------------------------------
    def _impls(self, hook_name: str):
        # pluggy calls later-registered plugins first; sort by registration order instead so
        # errors and listings are stable. Attribution needs one call per implementation.
        order = {plugin: i for i, (_, plugin) in enumerate(self.pm.list_name_plugin())}
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        return sorted(impls, key=lambda impl: order.get(impl.plugin, 0))

    @property
    def registries(self) -> dict[str, Registry]:
        if self._registries is None:
            from .exporters.base import Exporter
            from .stage import Stage

            bases: dict[str, type] = {"stage": Stage, "exporter": Exporter}
            registries = {kind: Registry(kind, takes_config=group is not None, base=bases.get(kind))
                          for kind, (_, group) in KINDS.items()}
            for kind, (hook_name, _) in KINDS.items():
                for impl in self._impls(hook_name):
                    impl.function(register=registries[kind].callback(impl.plugin_name))
            for plugin, path in self.search_paths_by_plugin():
                directory = _local_dir(path)
                if directory is not None and (directory / "domain").is_dir():
                    register = registries["domain"].callback(plugin)
                    for file in sorted((directory / "domain").glob("*.yaml")):
                        register(file.stem, file)
            for registry in registries.values():
                registry.names()  # resolve now so duplicates fail early
            self._registries = registries
        return self._registries

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def search_paths_by_plugin(self) -> list[tuple[str, str]]:
        if self._search_paths is None:
            found: list[tuple[str, str]] = []
            for impl in self._impls("litecoder_config_search_paths"):
                for path in impl.function() or []:
                    found.append((impl.plugin_name, str(path)))
            self._search_paths = found
        return self._search_paths

    def search_paths(self) -> list[str]:
        return [path for _, path in self.search_paths_by_plugin()]

    def _sync_config_store(self) -> None:
        """Mirror registered config nodes into Hydra's ConfigStore (and drop stale ones)."""
        store = ConfigStore.instance()
        for group, name in self._stored:
            store.repo.get(group, {}).pop(f"{name}.yaml", None)
        self._stored = []
        if not self._loaded:
            return
        store.store(name="litecoder_schema", node=self._root_schema(), provider="litecoder")
        for kind, (_, config_group) in KINDS.items():
            if config_group is None or config_group.endswith("."):
                continue
            for entry in self.registries[kind].entries():
                node = entry.config if kind != "domain" else entry.value
                if node is None or isinstance(node, (str, Path)):
                    continue  # YAML-backed: found through the search path
                if not (is_dataclass(node) or OmegaConf.is_config(node) or isinstance(node, dict)):
                    raise PluginError(
                        f"{kind} {entry.name!r} from {entry.plugin!r}: config must be a dataclass, got {type(node).__name__}"
                    )
                # A YAML file of the same option (e.g. conf/agent/terminus.yaml with its prompt
                # texts) layers itself on the schema through ``defaults: [<name>_schema]``.
                name = f"{entry.name}_schema" if self._has_yaml(config_group, entry.name) else entry.name
                store.store(group=config_group, name=name, node=node, provider=entry.plugin)
                self._stored.append((config_group, name))

    def _root_schema(self) -> type:
        """The run config's schema with each registered stage's and exporter's node."""
        from .config import root_schema

        def nodes(kind: str) -> dict[str, type]:
            found: dict[str, type] = {}
            for entry in self.registries[kind].entries():
                if entry.config is not None and not is_dataclass(entry.config):
                    raise PluginError(f"{kind} {entry.name!r} from {entry.plugin!r}: config must be a dataclass, "
                                      f"got {type(entry.config).__name__}")
                if isinstance(entry.config, type):
                    found[entry.name] = entry.config
            return found

        return root_schema(nodes("stage"), nodes("exporter"))

    def _has_yaml(self, group: str, name: str) -> bool:
        from .paths import core_conf_dir

        directories = [Path(core_conf_dir())]
        directories += [d for d in (_local_dir(p) for _, p in self.search_paths_by_plugin()) if d is not None]
        return any((d / group / f"{name}.yaml").is_file() for d in directories)


def _local_dir(path: str) -> Path | None:
    """Resolve a ``pkg://`` or ``file://`` search path to a directory, if it is one."""
    parsed = urlparse(path)
    if parsed.scheme == "pkg":
        module = (parsed.netloc + parsed.path).strip("/").replace("/", ".")
        try:
            return Path(str(resources.files(module)))
        except (ModuleNotFoundError, TypeError):
            return None
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "":
        return Path(path)
    return None


_plugins: Plugins | None = None


def get_plugins(*, strict: bool = True) -> Plugins:
    """The process-wide plugin host, loaded on first use."""
    global _plugins
    if _plugins is None:
        _plugins = Plugins()
    return _plugins.load(strict=strict)


LIFECYCLE_HOOKS = ("litecoder_before_stage", "litecoder_after_stage")


def plugin_report(plugins: Plugins) -> str:
    """What ``python -m litecoder --info plugins`` prints."""
    described = plugins.describe()
    lines = [f"litecoder plugins: {len(described)} loaded, {len(plugins.failed)} failed to import"]
    for plugin in described:
        lines.append(f"{plugin['name']}  [{plugin['source']}]")
        lines += [f"    {item}" for item in plugin["registers"]]
        lifecycle = [h for h in plugin["hooks"] if h in LIFECYCLE_HOOKS]
        if lifecycle:
            lines.append(f"    hooks {', '.join(lifecycle)}")
    for name, error in plugins.failed.items():
        lines.append(f"{name}  [FAILED to import: {error}]")
    return "\n".join(lines)
