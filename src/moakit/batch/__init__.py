"""``moa batch`` as a library: answer a file of requests with MoA stacks, resumably.

    from moakit.batch import run_batch
    summary = await run_batch("questions.jsonl", "answers.jsonl", default_model="local")

Input and output are OpenAI's Batch formats (see ``formats``); ``executor`` picks where the work
runs (``moakit.executors.LocalExecutor`` by default, ``RayExecutor`` for a cluster).
"""

from __future__ import annotations

from moakit.batch.run import BatchProgress, BatchSummary, run_batch
from moakit.batch.worker import BatchAnswer, BatchRequest, BatchWorker, BatchWorkerSpec

__all__ = [
    "BatchAnswer",
    "BatchProgress",
    "BatchRequest",
    "BatchSummary",
    "BatchWorker",
    "BatchWorkerSpec",
    "run_batch",
]
