"""What a scheduler may hold (its KV budget), what it keeps between requests, what it counts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KVBudget:
    n_ctx: int  # KV cells of each sequence: its prompt plus its answer
    n_seq_max: int  # live sequences at most (one KV stream each)
    n_batch: int  # prompt tokens per llama_decode at most


@dataclass
class KeptStream:
    """The KV stream of an ended sequence, kept for reuse: ``tokens[i]`` sits at position i."""

    seq_id: int
    tokens: list[int]
    n_prompt: int  # tokens[:n_prompt] were decoded as a prompt, the rest one by one


@dataclass
class SchedulerStats:
    decode_steps: int = 0  # llama_decode calls
    prompt_tokens_evaluated: int = 0
    prompt_tokens_shared: int = 0  # copied from a live sequence's stream
    prompt_tokens_reused: int = 0  # found in a kept stream of an ended sequence
    tokens_generated: int = 0
    max_live: int = 0  # most sequences live at once
    decode_seconds: float = 0.0  # inside llama_decode (the rest is sampling and bookkeeping)
