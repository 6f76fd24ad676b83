"""Parsing untrusted JSON without letting its nesting reach Python's recursion limit.

``json.loads`` itself recurses (a body of 100,000 ``[`` raises ``RecursionError``), and so does
everything that later walks the value (schema checks, re-encoding for a backend). Every route that
reads a request body parses it here, once, with the same bound.
"""

from __future__ import annotations

import json
from typing import Any

# Deeper than any real request (a JSON schema for nested models included), shallow enough that
# recursive code over the body stays far from Python's recursion limit.
MAX_DEPTH = 64


class TooDeep(ValueError):
    """The JSON is nested more than ``MAX_DEPTH`` levels deep."""

    def __init__(self, max_depth: int = MAX_DEPTH) -> None:
        super().__init__(f"nested more than {max_depth} levels deep")


def loads_bounded(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(data)``, or ``TooDeep``; other bad input raises ``ValueError`` (including
    ``UnicodeDecodeError``) as ``json.loads`` does."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise TooDeep(max_depth) from None
    if depth(value, limit=max_depth) > max_depth:
        raise TooDeep(max_depth)
    return value


def depth(value: Any, *, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a JSON value (scalars 0), counted without recursion; stops looking
    below ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level <= limit:
                stack.extend((child, level + 1) for child in item)
    return deepest
