"""Provider registry: a provider name maps to a factory that turns a ``MemberSpec`` into a
``Model``. Built-ins are imported lazily, so ``import moakit`` never loads llama.cpp or an SDK it
does not use. Plugins and tests add their own with ``register_provider``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from moakit.config import DEFAULT_PROVIDER, MemberSpec
from moakit.errors import ConfigError
from moakit.models.base import Model


class ResourcePool:
    """Clients shared by the members of one stack (one HTTP pool per endpoint), closed with it."""

    def __init__(self) -> None:
        self._items: dict[Any, Any] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def get(
        self,
        key: Any,
        create: Callable[[], Any],
        close: Callable[[Any], Awaitable[None]] | None = None,
    ) -> Any:
        if key not in self._items:
            item = create()
            self._items[key] = item
            if close is not None:
                self._closers.append(lambda: close(item))
        return self._items[key]

    async def aclose(self) -> None:
        closers, self._closers = self._closers, []
        self._items.clear()
        for closer in closers:
            await closer()


class ProviderFactory(Protocol):
    def __call__(self, spec: MemberSpec, pool: ResourcePool) -> Model: ...


_BUILTIN: dict[str, str] = {
    "openai": "moakit.models.openai_compat:build",
    "anthropic": "moakit.models.anthropic:build",
    "local": "moakit.models.local:build",
}
_registered: dict[str, ProviderFactory] = {}


def register_provider(name: str, factory: ProviderFactory) -> None:
    _registered[name] = factory


def provider_names() -> list[str]:
    return sorted({*_BUILTIN, *_registered})


def build_model(spec: MemberSpec, pool: ResourcePool) -> Model:
    provider = spec.provider or DEFAULT_PROVIDER
    factory = _registered.get(provider)
    if factory is None:
        target = _BUILTIN.get(provider)
        if target is None:
            raise ConfigError(
                f"unknown provider {provider!r} for model {spec.model!r} "
                f"(known: {', '.join(provider_names())})",
                field="provider",
            )
        module_name, attr = target.split(":")
        factory = getattr(importlib.import_module(module_name), attr)
    return factory(spec, pool)
