"""Plugins made on the spot, for tests: ``plugin(register_providers={"fake": build})`` is a
plugin object whose ``register_providers`` hook registers ``fake``. Register it with
``moakit.plugins.register`` (or the ``registered`` context manager) like any plugin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moakit.hookspecs import Register, hookimpl
from moakit.plugins import KINDS


def plugin(name: str = "test-plugin", **hooks: Mapping[str, Any]) -> object:
    """A plugin registering ``hooks[hook_name]`` (name -> thing) under each hook named."""
    namespace: dict[str, Any] = {}
    for hook, entries in hooks.items():
        if hook not in KINDS:
            raise ValueError(f"unknown hook {hook!r} (known: {', '.join(sorted(KINDS))})")
        namespace[hook] = hookimpl(_impl(hook, dict(entries)))
    return type(name, (), namespace)()


def _impl(hook: str, entries: dict[str, Any]) -> Any:
    def impl(self: object, register: Register) -> None:
        for entry_name, value in entries.items():
            register(entry_name, value)

    impl.__name__ = hook
    return impl


def register_provider(name: str, factory: Any) -> str:
    """Register a one-provider plugin for the rest of the process (a test module's fake
    backend): ``factory(spec, pool) -> Model``. Returns the plugin's name."""
    from moakit.plugins import plugin_manager, register, unregister

    key = f"test:{name}"
    if plugin_manager().has_plugin(key):  # registered again (a fixture): the new one wins
        unregister(name=key)
    return register(plugin(f"provider-{name}", register_providers={name: factory}), key)


__all__ = ["plugin", "register_provider"]
