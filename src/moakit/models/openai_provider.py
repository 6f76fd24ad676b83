"""The OpenAI-compatible provider: one base URL, one key, one aiohttp pool.

Shared by every member of a stack on the endpoint (``ResourcePool``); the wire format is
``openai_compat.OpenAIChatModel``'s business.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp.helpers import BasicAuth, get_env_proxy_for_url
from yarl import URL

from moakit.config import MemberSpec
from moakit.models.provider import Provider, read_key
from moakit.version import __version__

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider(Provider):
    """The session is created on first use, inside the running loop (aiohttp binds a session to
    its loop), and replaced if a later call runs on another loop. No connection cap: how many
    calls run at once is the engine's business (layer width x queries in flight), and a cap here
    would queue calls silently behind their timeout."""

    name = "openai"

    def __init__(self, base_url: str | None = None, api_key: str | None = None) -> None:
        self.base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self._url = URL(self.url)  # parsed once, not by aiohttp on every request
        # The key, so that adapters can scrub it from any upstream text they pass on.
        self.key = api_key or ""
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": f"moakit/{__version__}",
        }
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        # HTTP(S)_PROXY / NO_PROXY (and the proxy's netrc entry), honoured the way the official
        # SDKs do, but read once here: aiohttp's trust_env looks them up (and netrc) in a worker
        # thread on every request, two thread hops per call that showed in the profile.
        self.proxy: URL | None = None
        self.proxy_auth: BasicAuth | None = None
        with contextlib.suppress(LookupError):
            self.proxy, self.proxy_auth = get_env_proxy_for_url(self._url)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def for_member(cls, spec: MemberSpec) -> OpenAIProvider:
        """A self-hosted endpoint (vLLM, Ollama, llama.cpp server) given by ``base_url``
        usually wants no key; OpenAI itself does (``config.key_env_for``)."""
        env = spec.endpoint.api_key_env
        key = read_key(env, who=f"model {spec.model!r}") if env else None
        return cls(spec.base_url, key)

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(
                # Idle connections are dropped after 4 s, before uvicorn's 5 s keep-alive (what
                # vLLM, llama-cpp-python's server and LiteLLM run on) closes them under us:
                # reusing a connection the server is closing fails with "Server disconnected".
                # Servers with shorter keep-alives still race; the engine retries those.
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0),
                # No aiohttp timeouts: the engine's per-call timeout cancels the call.
                timeout=aiohttp.ClientTimeout(total=None),
                # The environment's proxy is in self.proxy (read once, see __init__).
                trust_env=False,
                # Sent with every request, so that a request passes none of its own (aiohttp
                # merges a request's headers into a copy of these, key by key).
                headers=self.headers,
            )
            self._loop = loop
        return self._session

    def post(
        self, body: bytes, headers: dict[str, str] | None = None
    ) -> aiohttp.client._RequestContextManager:
        """One Chat Completions request with ``self.headers`` and any extra ``headers``
        (through the environment's proxy, if any)."""
        return self.session().post(
            self._url, data=body, headers=headers, proxy=self.proxy, proxy_auth=self.proxy_auth
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed and self._loop is asyncio.get_running_loop():
            await session.close()


__all__ = ["OPENAI_BASE_URL", "OpenAIProvider"]
