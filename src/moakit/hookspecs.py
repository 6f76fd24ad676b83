"""The hooks a moakit plugin implements (pluggy, as ``llm`` does).

A plugin is a module or object with functions marked ``@moakit.hookimpl``; a package makes
one discoverable with an entry point in the ``moakit`` group::

    [project.entry-points.moakit]
    hello = "moakit_hello"

Each ``register_*`` hook receives a ``register(name, thing)`` callable. moakit's own built-ins
are plugins too (``moakit.plugins.BUILTIN_PLUGINS``), registered through these same hooks; a
third-party plugin registered later may replace one of them by name, and ``moa plugins`` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("moakit")
hookimpl = HookimplMarker("moakit")

Register = Callable[[str, Any], None]


@hookspec
def register_providers(register: Register) -> None:
    """``register(name, factory)``: ``factory(spec: ResolvedMember, pool: ResourcePool) ->
    Model`` builds the model of a member whose ``provider`` is ``name``. Share one ``Provider``
    per endpoint through ``pool.provider(spec.endpoint, create)``."""


@hookspec
def register_strategies(register: Register) -> None:
    """``register(name, factory)``: ``factory() -> Strategy`` (``moakit.engine.Strategy``) runs
    a stack whose ``strategy`` is ``name``."""


@hookspec
def register_reference_transforms(register: Register) -> None:
    """``register(name, factory)``: ``factory(config: StackConfig) -> transform``, where
    ``transform(references) -> references | Filtered`` (may be async); named in
    ``[references] transforms``."""


@hookspec
def register_reference_formatters(register: Register) -> None:
    """``register(name, formatter)``: ``formatter(references, prompt) -> str | Formatted``,
    named by ``[references] formatter``."""


@hookspec
def register_answer_extractors(register: Register) -> None:
    """``register(name, extract)``: ``extract(text) -> str | None``, the closed-form answer of a
    text (a number, a choice letter), used by the vote strategy and agreement rules."""


@hookspec
def register_datasets(register: Register) -> None:
    """``register(name, loader)``: a ``moa eval`` dataset (see ``moakit.eval.datasets``)."""


@hookspec
def register_scorers(register: Register) -> None:
    """``register(name, factory)``: a ``moa eval`` scorer (see ``moakit.eval.scorers``)."""


@hookspec
def register_trace_stores(register: Register) -> None:
    """``register(scheme, opener)``: ``opener(url) -> TraceStore`` for ``--trace-db
    scheme://...`` (see ``moakit.trace``)."""


@hookspec
def register_routers(register: Register) -> None:
    """``register(name, factory)``: ``factory(options) -> router``, whose
    ``select(query, layer, members)`` returns the members worth calling for that query (see
    ``moakit.routing``); a stack names it in ``[router]``."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``moa`` click group ``cli``."""
