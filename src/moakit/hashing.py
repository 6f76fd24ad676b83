"""Content hashes: one canonical JSON text, one digest, so a stack's config hash (``RunStarted``,
the trace store, eval records) and a record's content hashes agree wherever they are computed."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """Stable text for hashing: sorted keys, no whitespace, non-ASCII kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(value: Any) -> str:
    """``sha256:<hex>`` of ``value``'s canonical JSON (a string hashes as its JSON string)."""
    return "sha256:" + hashlib.sha256(canonical_json(value).encode()).hexdigest()


__all__ = ["canonical_json", "content_hash"]
