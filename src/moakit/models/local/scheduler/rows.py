"""Which rows go to ``llama_decode`` together, so that sharing and reuse never change an answer.

ggml picks its CPU kernels by the rows of a call, and they round differently: one row goes
through matrix-vector products, 2 or more through tinyBLAS GEMM (attention and Q5_0/Q8_0
weights), and the repacked Q4_K weights (Qwen2.5) through a GEMM that takes rows 4 at a time and
the remainder one by one. For an answer to be the one a cold run alone gives, bit for bit,
whether its prompt was decoded here, copied from another sequence or found in a kept stream,
every prompt position must reach ``llama_decode`` in the same kind of call as in that cold run:

* a prompt is decoded in the chunks a cold run uses (boundaries at multiples of ``n_batch``),
  all but its last token; the last one, whose logits are sampled, is decoded as a single row;
* a reused or copied prefix ends at a multiple of ``ROW_GROUP`` and never leaves a lone row to
  decode where the cold chunk had more;
* sampled rows (each sequence's next token) go at most ``MAX_SAMPLED_ROWS`` to a call, where
  every kernel treats each as a one-row call would.
"""

from __future__ import annotations

from collections.abc import Sequence

from moakit.models.local.scheduler.sequence import common_prefix

ROW_GROUP = 4
MAX_SAMPLED_ROWS = ROW_GROUP - 1


def prompt_chunk(n_past: int, end: int, n_batch: int) -> int:
    """Prompt tokens to decode next, from position ``n_past`` towards ``end`` (exclusive): up
    to the next boundary of a cold run's chunks."""
    return min(n_batch - n_past % n_batch, end - n_past)


def reusable_prefix(
    prompt: Sequence[int], cached: Sequence[int], cached_prompt: int, n_batch: int
) -> int:
    """How much of a KV stream holding ``cached`` (its first ``cached_prompt`` tokens decoded as
    a prompt, the rest generated one by one) a sequence with ``prompt`` starts from.

    Their common prefix, less the last prompt token (decoded again for its logits). Within the
    cached prompt, cut as above, so the answer is the one a cold run gives. Past it (a partial
    answer continued: a staircase step, a prefill), all of it: those positions were decoded one
    by one, and the continuation is then the answer the first call would have gone on to give.
    """
    end = len(prompt) - 1
    n = min(common_prefix(prompt, cached), end)
    if n > cached_prompt:
        return n
    n -= n % ROW_GROUP
    cold_chunk_end = min((n // n_batch + 1) * n_batch, end)
    if cold_chunk_end - n == 1 and n % n_batch:  # a lone row where a cold run decodes several
        n -= ROW_GROUP
    return n
