"""moakit's own providers, registered through the plugin hook like any other. Each adapter
module is imported on first use, so naming a provider never loads an SDK (or llama.cpp) that a
stack does not use."""

from __future__ import annotations

import importlib

from moakit.config import MemberSpec
from moakit.hookspecs import Register, hookimpl
from moakit.models.base import Model
from moakit.models.provider import ResourcePool

_ADAPTERS = {
    "openai": "moakit.models.openai_compat",
    "anthropic": "moakit.models.anthropic",
    "local": "moakit.models.local",
}


class _Lazy:
    """The ``build`` function of an adapter module, imported when first called."""

    def __init__(self, module: str) -> None:
        self.module = module

    def __call__(self, spec: MemberSpec, pool: ResourcePool) -> Model:
        model: Model = importlib.import_module(self.module).build(spec, pool)
        return model


@hookimpl
def register_providers(register: Register) -> None:
    for name, module in _ADAPTERS.items():
        register(name, _Lazy(module))
