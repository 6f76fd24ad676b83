"""Continuous batching for one llama.cpp context: many sequences, one decode per step."""

from moakit.models.local.scheduler.batch import BatchScheduler
from moakit.models.local.scheduler.budget import KVBudget
from moakit.models.local.scheduler.sequence import (
    Delta,
    Failed,
    Finished,
    SequenceEvent,
    SequenceRequest,
)

__all__ = [
    "BatchScheduler",
    "Delta",
    "Failed",
    "Finished",
    "KVBudget",
    "SequenceEvent",
    "SequenceRequest",
]
