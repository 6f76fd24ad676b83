"""The one plugin registry: every provider, strategy, reference transform and formatter, answer
extractor, dataset, scorer and trace store moakit knows comes from a plugin's hook.

pluggy with a ``moakit`` entry-point group, as ``llm`` does: pluggy is the well-kept library for
exactly this (hook specifications checked against implementations, entry-point discovery, a
plugin listing), and a third-party package needs nothing but an entry point to add something.
The built-ins are plugins named here by module path and imported only when the registry is
first needed, so the engine imports no plug-in package and ``import moakit`` loads none.

Names are collected once into a ``Registry`` (rebuilt when a plugin is registered or removed at
run time, as tests do); lookups never call hooks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pluggy

from moakit import hookspecs
from moakit.errors import ConfigError

ENTRY_POINT_GROUP = "moakit"

BUILTIN_PLUGINS = (
    "moakit.models.builtin",
    "moakit.engine.strategies",
    "moakit.references",
    "moakit.defenses.plugin",
    "moakit.trace.open",
    "moakit.eval.plugin",
    "moakit.routing",
)

# Hook name -> what the registry calls that kind (in errors and ``moa plugins``).
KINDS = {
    "register_providers": "provider",
    "register_strategies": "strategy",
    "register_reference_transforms": "reference transform",
    "register_reference_formatters": "reference formatter",
    "register_answer_extractors": "answer extractor",
    "register_datasets": "dataset",
    "register_scorers": "scorer",
    "register_trace_stores": "trace store",
    "register_routers": "router",
}


@dataclass
class Entry:
    value: Any
    plugin: str
    replaced: str | None = None  # the plugin whose entry of the same name this one replaced


@dataclass
class Kind:
    """Everything registered under one hook, by name."""

    hook: str
    label: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def get(self, name: str, *, field: str) -> Any:
        entry = self.entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self.entries)) or "none registered"
            raise ConfigError(
                f"{field}: unknown {self.label} {name!r} (known: {known})", field=field
            )
        return entry.value

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries


class Registry:
    """The names every registered plugin contributed, per kind. Built-ins register first, so a
    later plugin of the same name replaces a built-in (recorded in ``Entry.replaced``)."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.kinds = {hook: Kind(hook, label) for hook, label in KINDS.items()}
        for hook, kind in self.kinds.items():
            caller = getattr(manager.hook, hook)
            # In registration order (pluggy lists them so; it calls them in reverse), so the
            # latest registration of a name wins.
            for impl in caller.get_hookimpls():
                plugin = manager.get_name(impl.plugin) or repr(impl.plugin)
                impl.function(**{"register": _collector(kind, plugin)})

    @property
    def providers(self) -> Kind:
        return self.kinds["register_providers"]

    @property
    def strategies(self) -> Kind:
        return self.kinds["register_strategies"]

    @property
    def transforms(self) -> Kind:
        return self.kinds["register_reference_transforms"]

    @property
    def formatters(self) -> Kind:
        return self.kinds["register_reference_formatters"]

    @property
    def extractors(self) -> Kind:
        return self.kinds["register_answer_extractors"]

    @property
    def datasets(self) -> Kind:
        return self.kinds["register_datasets"]

    @property
    def scorers(self) -> Kind:
        return self.kinds["register_scorers"]

    @property
    def trace_stores(self) -> Kind:
        return self.kinds["register_trace_stores"]

    @property
    def routers(self) -> Kind:
        return self.kinds["register_routers"]

    def contributions(self, plugin: str) -> Iterator[tuple[str, str]]:
        """``(kind label, name)`` of everything ``plugin`` registered."""
        for kind in self.kinds.values():
            for name, entry in sorted(kind.entries.items()):
                if entry.plugin == plugin:
                    yield kind.label, name


def _collector(kind: Kind, plugin: str) -> Callable[[str, Any], None]:
    def register(name: str, value: Any) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"plugin {plugin!r} registered a {kind.label} without a name")
        previous = kind.entries.get(name)
        replaced = previous.plugin if previous is not None and previous.plugin != plugin else None
        kind.entries[name] = Entry(value, plugin, replaced)

    return register


class _State:
    manager: pluggy.PluginManager | None = None
    registry: Registry | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The plugin manager: built-ins, then every installed ``moakit`` entry point."""
    if _State.manager is None:
        manager = pluggy.PluginManager("moakit")
        manager.add_hookspecs(hookspecs)
        for path in BUILTIN_PLUGINS:
            manager.register(importlib.import_module(path), name=path)
        manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        _State.manager = manager
    return _State.manager


def registry() -> Registry:
    if _State.registry is None:
        _State.registry = Registry(plugin_manager())
    return _State.registry


def register(plugin: object, name: str | None = None) -> str:
    """Register a plugin at run time (a test double, an application's own provider); its names
    replace earlier ones. Returns the name it is registered under."""
    registered = plugin_manager().register(plugin, name=name)
    _State.registry = None
    return registered or (name or repr(plugin))


def unregister(plugin: object | None = None, *, name: str | None = None) -> None:
    plugin_manager().unregister(plugin, name=name)
    _State.registry = None


@contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[str]:
    """``plugin`` registered for the duration of a ``with`` block (tests, scoped overrides)."""
    key = register(plugin, name)
    try:
        yield key
    finally:
        unregister(name=key)


def add_plugin_commands(cli: Any) -> None:
    """Let every installed plugin add ``moa`` commands to ``cli``. Only the installed
    (entry-point) plugins are asked: moakit's own add none, so ``moa --help`` imports no
    built-in plugin module (the engine, the eval) to list them."""
    manager = pluggy.PluginManager("moakit")
    manager.add_hookspecs(hookspecs)
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    manager.hook.register_commands(cli=cli)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    builtin: bool
    distribution: str | None  # the installed package that declared it (entry points)
    version: str | None
    registered: list[tuple[str, str]]  # (kind, name)
    replaces: list[tuple[str, str, str]]  # (kind, name, the plugin replaced)
    commands: bool  # adds ``moa`` commands


def plugins() -> list[PluginInfo]:
    """Every registered plugin with what it contributed, built-ins first."""
    manager = plugin_manager()
    reg = registry()
    dists = {id(plugin): dist for plugin, dist in manager.list_plugin_distinfo()}
    out = []
    for name, plugin in manager.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        replaces = [
            (kind.label, entry_name, entry.replaced)
            for kind in reg.kinds.values()
            for entry_name, entry in sorted(kind.entries.items())
            if entry.plugin == name and entry.replaced is not None
        ]
        out.append(
            PluginInfo(
                name=name,
                builtin=name in BUILTIN_PLUGINS,
                distribution=dist.project_name if dist is not None else None,
                version=dist.version if dist is not None else None,
                registered=list(reg.contributions(name)),
                replaces=replaces,
                commands=hasattr(plugin, "register_commands"),
            )
        )
    out.sort(key=lambda p: (not p.builtin, p.name))
    return out


__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "Registry",
    "add_plugin_commands",
    "plugin_manager",
    "plugins",
    "register",
    "registered",
    "registry",
    "unregister",
]
