"""``moa eval`` as a library: measure a MoA stack against the single model you use today, on
benchmarks or on your own data, with cost and latency beside quality.

    from moakit.eval import EvalSession, EvalSettings
    session = EvalSession(EvalSettings(out_dir=Path("res"), dataset="gsm8k", limit=20))
    await session.run()
    summary = session.write_report()

Layout: ``session`` (one evaluation: plans work units, writes records, reports), ``worker``
(the work unit, one item for one system, and what answers and scores it), ``executor`` (where
units run: the seam for a cluster executor), ``records`` (typed records and their files),
``results`` (a results directory's manifest), ``datasets`` (loaders; the benchmark files ship
in ``data/``), ``scorers``, ``systems`` / ``kinds`` (what is compared), ``calls`` (how a
system answers), ``cache`` (the response cache), ``stats``, ``readings`` (how a comparison is
read), ``analyses``, ``report`` / ``plots`` (output), ``redteam`` and ``simulation`` (the
robustness tooling). Importing this package loads none of them until a name below is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moakit.eval.executor import EvalExecutor, LocalEvalExecutor
    from moakit.eval.records import EvalRecord, MemberRecord
    from moakit.eval.session import EvalSession, EvalSettings
    from moakit.eval.worker import EvalUnit, WorkerConfig

_LAZY = {
    "EvalSession": "moakit.eval.session",
    "EvalSettings": "moakit.eval.session",
    "EvalRecord": "moakit.eval.records",
    "MemberRecord": "moakit.eval.records",
    "EvalExecutor": "moakit.eval.executor",
    "LocalEvalExecutor": "moakit.eval.executor",
    "EvalUnit": "moakit.eval.worker",
    "WorkerConfig": "moakit.eval.worker",
}
__all__ = [
    "EvalExecutor",
    "EvalRecord",
    "EvalSession",
    "EvalSettings",
    "EvalUnit",
    "LocalEvalExecutor",
    "MemberRecord",
    "WorkerConfig",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moakit.eval' has no attribute {name!r}")
