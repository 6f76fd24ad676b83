"""From a member spec to its model: the provider named by the spec, as registered through the
plugin hook ``register_providers`` (built-ins: ``openai``, ``anthropic``, ``local``)."""

from __future__ import annotations

from typing import Protocol

from moakit.config import DEFAULT_PROVIDER, MemberSpec
from moakit.models.base import Model
from moakit.models.provider import ResourcePool
from moakit.plugins import registry


class ProviderFactory(Protocol):
    def __call__(self, spec: MemberSpec, pool: ResourcePool) -> Model: ...


def provider_names() -> list[str]:
    return registry().providers.names()


def build_model(spec: MemberSpec, pool: ResourcePool) -> Model:
    provider = spec.provider or DEFAULT_PROVIDER
    factory: ProviderFactory = registry().providers.get(provider, field="provider")
    return factory(spec, pool)


__all__ = ["ProviderFactory", "ResourcePool", "build_model", "provider_names"]
