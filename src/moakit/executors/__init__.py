"""Where work runs: this process (``LocalExecutor``) or a Ray cluster (``RayExecutor``, from
``moakit.executors.ray``; needs ``moakit[ray]``). See ``base`` for the work-unit seam that
``moa batch`` uses and ``moa eval`` can reuse."""

from __future__ import annotations

from moakit.executors.base import (
    EndpointLimits,
    Executor,
    Outcome,
    Services,
    SharedCache,
    WorkerFactory,
    WorkUnit,
)
from moakit.executors.local import LocalExecutor

__all__ = [
    "EndpointLimits",
    "Executor",
    "LocalExecutor",
    "Outcome",
    "Services",
    "SharedCache",
    "WorkUnit",
    "WorkerFactory",
]
