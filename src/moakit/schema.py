"""A client's JSON Schema (``response_format``, a tool's ``parameters``), checked and applied
without letting it stall the server (or the engine, which checks tool-call arguments with it).

A schema is untrusted input that makes the server compute. Three ways it could stall it, and what
stops each:

- **catastrophic regular expressions** (``"pattern": "^(a+)+$"`` against ``"aaaa…!"`` doubles
  its time per character, and Python's ``re`` holds the GIL while it runs, so no other request
  moves): every ``pattern``/``patternProperties`` is run by RE2 (``google-re2``), whose time is
  linear in the text; a pattern RE2 cannot compile (backreferences, lookaround) is a 400;
- **``$ref`` cycles** (``{"$ref": "#"}``, ``A → B → A``) that recurse without consuming the
  instance: found before any model is called (a 400), as are reference graphs whose in-place
  expansion is huge (``anyOf`` of ``anyOf`` of … through ``$defs``: exponential work);
- **everything else**: checks and validation run in a worker thread (never on the event loop),
  at most ``WORKERS`` at once, each under a time budget enforced at every keyword jsonschema
  applies; a schema that exhausts it is refused.

The documented way to change a keyword's behaviour is ``jsonschema.validators.extend``; the
keywords that evaluate client regexes are replaced by RE2 versions of the same logic.
"""

from __future__ import annotations

import contextvars
import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import anyio
import anyio.to_thread
import jsonschema
import referencing.exceptions
from jsonschema.protocols import Validator

from moakit.schema_re2 import RE2_KEYWORDS, SchemaRefused, compile_pattern

# Every check or validation is given this long, measured at each keyword application.
TIME_BUDGET_S = 2.0
# Schema checks and output validations running at once (worker threads); more wait their turn.
WORKERS = 4
# A schema with more subschemas than this is not one a client needs (OpenAI caps at 5,000
# properties and 10 levels of nesting).
MAX_NODES = 5_000
# Subschemas applied to one instance value through in-place applicators ($ref, allOf, anyOf,
# oneOf, not, if/then/else, dependentSchemas), counting repeats: bounds the work per value.
MAX_EXPANSION = 20_000

# Keywords whose value is one subschema / a list of subschemas / a map of name -> subschema.
_ONE = (
    "additionalProperties",
    "additionalItems",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contains",
    "propertyNames",
    "not",
    "if",
    "then",
    "else",
    "items",
)
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_MAP = (
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
    "dependencies",
)
# Applicators that apply their subschemas to the same instance value (a cycle through them
# never ends), as opposed to those that descend into a property or an item.
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")
# Keywords that would move where "#/..." points, or resolve references some other way: the
# cycle check could not follow them, so they are refused.
_UNSUPPORTED = (
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
    "unevaluatedProperties",
)


__all__ = ["OutputInvalid", "SchemaRefused", "check_answer", "check_schema"]


class OutputInvalid(Exception):
    """The answer does not match the schema; the message says where (for a 502)."""


_deadline: contextvars.ContextVar[float] = contextvars.ContextVar(
    "schema_deadline", default=float("inf")
)
_limiter: anyio.CapacityLimiter | None = None


def _workers() -> anyio.CapacityLimiter:
    # Created on first use: a CapacityLimiter belongs to the running event loop's library.
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(WORKERS)
    return _limiter


async def check_schema(schema: Any) -> None:
    """Raise ``SchemaRefused`` unless ``schema`` is a schema this server can apply safely."""
    await _off_loop(_check_schema, schema, too_deep=SchemaRefused)


async def check_answer(text: str, response_format: Mapping[str, Any]) -> None:
    """Raise ``OutputInvalid`` unless ``text`` is what ``response_format`` asked for (its schema
    already passed ``check_schema``)."""
    await _off_loop(_check_answer, text, response_format, too_deep=OutputInvalid)


async def check_value(value: Any, schema: Any) -> None:
    """Raise ``OutputInvalid`` unless ``value`` matches ``schema`` (which passed
    ``check_schema``): a tool call's parsed arguments against its tool's parameters."""
    await _off_loop(_validate, value, schema, too_deep=OutputInvalid)


async def _off_loop(fn: Callable[..., None], *args: Any, too_deep: type[Exception]) -> None:
    def run() -> None:
        _deadline.set(time.monotonic() + TIME_BUDGET_S)
        try:
            fn(*args)
        except RecursionError:
            raise too_deep("nested too deeply to check against the schema") from None

    await anyio.to_thread.run_sync(run, limiter=_workers())


# -- the checks before any call -----------------------------------------------------------


def _check_schema(schema: Any) -> None:
    if not isinstance(schema, dict | bool):
        raise SchemaRefused("a JSON Schema is an object (or a boolean)")
    # Bounded structural checks first (size, references, patterns), then the metaschema.
    graph = _Graph(schema)
    graph.walk()
    graph.check_in_place()
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)  # type: ignore[arg-type]
    except jsonschema.SchemaError as exc:
        raise SchemaRefused(f"is not a valid JSON Schema: {exc.message}") from None


def _unescape(token: str) -> str:
    from urllib.parse import unquote

    return unquote(token).replace("~1", "/").replace("~0", "~")


class _Graph:
    """The schema's subschemas by JSON pointer, and which apply in place to the same value."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.in_place: dict[str, list[str]] = {}

    def resolve(self, ref: str) -> tuple[str, Any]:
        if ref == "#":
            return "", self.root
        if not ref.startswith("#/"):
            raise SchemaRefused(
                f"only local JSON-pointer $ref ('#' or '#/...') are supported, got {ref[:80]!r}"
            )
        node: Any = self.root
        for token in ref[2:].split("/"):
            key = _unescape(token)
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise SchemaRefused(f"$ref {ref[:80]!r} points at nothing in the schema")
        return "/" + "/".join(ref[2:].split("/")), node

    def walk(self) -> None:
        todo: list[tuple[str, Any]] = [("", self.root)]
        seen: set[str] = set()
        while todo:
            pointer, node = todo.pop()
            if pointer in seen:
                continue
            seen.add(pointer)
            if len(seen) > MAX_NODES:
                raise SchemaRefused(f"the schema has more than {MAX_NODES} subschemas")
            if not isinstance(node, dict):
                continue  # a boolean schema (or a value jsonschema ignores)
            edges: list[str] = []
            for keyword in _UNSUPPORTED:
                if keyword in node:
                    raise SchemaRefused(f"the keyword {keyword!r} is not supported")
            if pointer and isinstance(node.get("$id", node.get("id")), str):
                raise SchemaRefused("'$id' is only supported at the top of the schema")
            ref = node.get("$ref")
            if isinstance(ref, str):
                target, value = self.resolve(ref)
                edges.append(target)
                todo.append((target, value))
            for pattern in _patterns(node):
                compile_pattern(pattern)
            for child, sub in _children(pointer, node):
                todo.append((child, sub))
                if _is_in_place(child, pointer):
                    edges.append(child)
            self.in_place[pointer] = edges

    def check_in_place(self) -> None:
        """No cycle through in-place applicators, and a bounded expansion per value."""
        expansion: dict[str, int] = {}
        visiting: set[str] = set()

        def size(pointer: str) -> int:
            if pointer in expansion:
                return expansion[pointer]
            if pointer in visiting:
                raise SchemaRefused(
                    f"the schema's $ref at {pointer or '#'} refers back to itself without "
                    "descending into a property or item (it would never finish)"
                )
            visiting.add(pointer)
            total = 1 + sum(size(nxt) for nxt in self.in_place.get(pointer, ()))
            visiting.discard(pointer)
            if total > MAX_EXPANSION:
                raise SchemaRefused(
                    "the schema applies too many subschemas to one value through $ref and "
                    f"allOf/anyOf/oneOf (more than {MAX_EXPANSION})"
                )
            expansion[pointer] = total
            return total

        # Iterative over roots; each DFS is as deep as the in-place chain (bounded by MAX_NODES,
        # and a RecursionError is reported as too deep by the caller).
        for pointer in list(self.in_place):
            size(pointer)


def _children(pointer: str, node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for keyword in _ONE:
        sub = node.get(keyword)
        if isinstance(sub, dict | bool):
            yield f"{pointer}/{keyword}", sub
    for keyword in _MANY:
        subs = node.get(keyword)
        if isinstance(subs, list):
            for i, sub in enumerate(subs):
                yield f"{pointer}/{keyword}/{i}", sub
    for keyword in _MAP:
        subs = node.get(keyword)
        if isinstance(subs, dict):
            for name, sub in subs.items():
                if isinstance(sub, dict | bool):
                    escaped = str(name).replace("~", "~0").replace("/", "~1")
                    yield f"{pointer}/{keyword}/{escaped}", sub


def _is_in_place(child: str, parent: str) -> bool:
    keyword = child[len(parent) + 1 :].split("/", 1)[0]
    return (
        keyword in _IN_PLACE_ONE
        or keyword in _IN_PLACE_MANY
        or keyword
        in (
            "dependentSchemas",
            "dependencies",
        )
    )


def _patterns(node: dict[str, Any]) -> Iterator[str]:
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        yield pattern
    props = node.get("patternProperties")
    if isinstance(props, dict):
        yield from (str(p) for p in props)


# -- validating the answer ------------------------------------------------------------------


def _budgeted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(keyword)
    def apply(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        if time.monotonic() > _deadline.get():
            raise SchemaRefused(
                f"validating against this schema took longer than {TIME_BUDGET_S:g} s"
            )
        return keyword(validator, value, instance, schema)

    return apply


@functools.lru_cache(maxsize=16)
def _validator_class(base: type[Validator]) -> type[Validator]:
    keywords = {
        **base.VALIDATORS,
        **{k: v for k, v in RE2_KEYWORDS.items() if k in base.VALIDATORS},
    }
    extended: type[Validator] = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        base, {name: _budgeted(fn) for name, fn in keywords.items()}
    )
    return extended


def _validate(value: Any, schema: Any) -> None:
    cls = _validator_class(jsonschema.validators.validator_for(schema))
    try:
        error = jsonschema.exceptions.best_match(cls(schema).iter_errors(value))
    except referencing.exceptions.Unresolvable as exc:
        raise SchemaRefused(f"the schema has an unresolvable $ref: {exc}") from None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        at = f" at {where}" if where else ""
        raise OutputInvalid(f"{error.message}{at}")


def _check_answer(text: str, response_format: Mapping[str, Any]) -> None:
    try:
        value = json.loads(text)
    except ValueError:
        raise OutputInvalid("the aggregator's answer is not valid JSON") from None
    if response_format.get("type") == "json_object":
        if not isinstance(value, dict):
            raise OutputInvalid("the aggregator's answer is JSON but not an object")
        return
    schema = (response_format.get("json_schema") or {}).get("schema")
    if schema is not None:
        try:
            _validate(value, schema)
        except OutputInvalid as exc:
            raise OutputInvalid(
                f"the aggregator's answer does not match the schema: {exc}"
            ) from None
