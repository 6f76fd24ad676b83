"""Providers (pydantic-ai's split): who a member talks to, apart from how it talks.

A ``Provider`` owns the endpoint: its base URL, its API key (read from the environment, the
operator's, never from a request) and its client or connection pool. A ``Model`` adapter owns the
wire format and holds a provider; every member of a stack on one endpoint shares one provider,
so one pool serves them and one ``aclose`` releases it.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from moakit.config import EndpointId, MemberSpec
from moakit.errors import MissingKeyError


def read_key(env: str, *, who: str) -> str:
    """The value of key variable ``env``; the one place moakit reads an API key."""
    value = os.environ.get(env)
    if not value:
        raise MissingKeyError(env, who=who)
    return value


class Provider(ABC):
    name: str
    base_url: str | None

    @abstractmethod
    async def aclose(self) -> None:
        """Release the client and its connections."""


ProviderFactory = Callable[[MemberSpec], Provider]


class ResourcePool:
    """The providers of one stack, one per endpoint (provider, base URL, key variable), closed
    with the stack. ``get`` also holds other shared clients keyed the same way."""

    def __init__(self) -> None:
        self._items: dict[Any, Any] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def provider(self, endpoint: EndpointId, create: Callable[[], Provider]) -> Provider:
        provider: Provider = self.get(endpoint, create, lambda p: p.aclose())
        return provider

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


__all__ = ["Provider", "ProviderFactory", "ResourcePool", "read_key"]
