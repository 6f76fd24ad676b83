"""The services one run's workers share, in-process versions: per-endpoint limiters and a
response cache (the cluster versions in ``ray.py`` put these same objects inside actors).

The cache's SQLite table has the shape of ``moa eval``'s response cache (``responses``: key,
model, text, finish_reason, tokens, latency, created, and the answer's tool calls as JSON), so
one file can serve both.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from moakit.messages import ToolCall
from moakit.models.base import Completion, Usage


class LocalLimits:
    """A counted limit per endpoint; endpoints without a limit get ``default`` (None: not
    limited). ``holder`` names the worker that took a slot, so a dead worker's slots can be
    given back (``release_holder``) on a cluster."""

    def __init__(self, limits: Mapping[str, int] | None = None, default: int | None = None) -> None:
        self.limits = dict(limits or {})
        self.default = default
        self._in_use: dict[str, int] = dict.fromkeys(self.limits, 0)
        self._held: dict[tuple[str, str], int] = {}
        self._changed = asyncio.Condition()
        self.peak: dict[str, int] = dict.fromkeys(self.limits, 0)

    def _limit(self, endpoint: str) -> int | None:
        return self.limits.get(endpoint, self.default)

    async def acquire(self, endpoint: str, holder: str = "local") -> None:
        limit = self._limit(endpoint)
        if limit is None:
            return
        async with self._changed:
            await self._changed.wait_for(lambda: self._in_use.get(endpoint, 0) < limit)
            self._in_use[endpoint] = self._in_use.get(endpoint, 0) + 1
            self.peak[endpoint] = max(self.peak.get(endpoint, 0), self._in_use[endpoint])
            self._held[(endpoint, holder)] = self._held.get((endpoint, holder), 0) + 1

    async def release(self, endpoint: str, holder: str = "local") -> None:
        if self._limit(endpoint) is None:
            return
        async with self._changed:
            self._give_back(endpoint, holder, 1)

    async def release_holder(self, holder: str) -> int:
        """Give back every slot ``holder`` still holds (it died mid-call)."""
        freed = 0
        async with self._changed:
            for endpoint, who in list(self._held):
                if who == holder:
                    freed += self._give_back(endpoint, holder, self._held[(endpoint, who)])
        return freed

    def _give_back(self, endpoint: str, holder: str, count: int) -> int:
        held = self._held.get((endpoint, holder), 0)
        count = min(count, held)
        if held - count:
            self._held[(endpoint, holder)] = held - count
        else:
            self._held.pop((endpoint, holder), None)
        self._in_use[endpoint] = self._in_use.get(endpoint, 0) - count
        self._changed.notify_all()
        return count


class CacheStore:
    """Completions by key, in memory or in a SQLite file (synchronous; one owner)."""

    def __init__(self, path: str | Path | None = None) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path) if path is not None else ":memory:"
        self._db = sqlite3.connect(self.path, timeout=30.0)
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
            "text TEXT NOT NULL, finish_reason TEXT, prompt_tokens INTEGER NOT NULL, "
            "completion_tokens INTEGER NOT NULL, latency_s REAL NOT NULL, created REAL NOT NULL)"
        )
        self._add_tool_calls_column()
        self._db.commit()

    def _add_tool_calls_column(self) -> None:
        """Migration 2, append-only: an answer's tool calls (JSON; NULL for a text answer), so
        a tool-calling member's answer is stored too. A file written before it keeps its rows."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(responses)")}
        if "tool_calls" in columns:
            return
        try:
            self._db.execute("ALTER TABLE responses ADD COLUMN tool_calls TEXT")
        except sqlite3.OperationalError as error:
            # Another process opening the same file added it between our look and our ALTER.
            if "duplicate column" not in str(error):
                raise

    def get(self, key: str) -> Completion | None:
        row = self._db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, tool_calls "
            "FROM responses WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return Completion(
            text=row[0],
            finish_reason=row[1],
            usage=Usage(prompt_tokens=row[2], completion_tokens=row[3]),
            tool_calls=tuple(
                ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"])
                for c in json.loads(row[4] or "[]")
            ),
        )

    def put(self, key: str, model: str, completion: Completion, latency_s: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO responses (key, model, text, finish_reason, prompt_tokens, "
            "completion_tokens, latency_s, created, tool_calls) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                model,
                completion.text,
                completion.finish_reason,
                completion.usage.prompt_tokens,
                completion.usage.completion_tokens,
                latency_s,
                time.time(),
                _calls_json(completion.tool_calls),
            ),
        )
        self._db.commit()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def _calls_json(calls: tuple[ToolCall, ...]) -> str | None:
    if not calls:
        return None
    return json.dumps([{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls])


class LocalCache:
    """A ``SharedCache`` for the workers of one process (see ``base.SharedCache``).

    ``holder`` names the claimer (a cluster worker), so the claims of a worker that died can
    be given up with ``release_holder`` instead of leaving their waiters hanging."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.store = CacheStore(path)
        self._pending: dict[str, tuple[asyncio.Event, str]] = {}
        self.hits = 0
        self.misses = 0

    async def claim(self, key: str, holder: str = "local") -> Completion | None:
        while (pending := self._pending.get(key)) is not None:
            await pending[0].wait()
        hit = self.store.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        self._pending[key] = (asyncio.Event(), holder)
        return None

    async def put(self, key: str, model: str, completion: Completion, latency_s: float) -> None:
        self.store.put(key, model, completion, latency_s)
        await self.release(key)

    async def release(self, key: str) -> None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            pending[0].set()

    def release_holder(self, holder: str) -> int:
        keys = [k for k, (_, h) in self._pending.items() if h == holder]
        for key in keys:
            self._pending.pop(key)[0].set()
        return len(keys)

    def close(self) -> None:
        self.store.close()
