"""Which rows go to ``llama_decode`` together, so that sharing and reuse never change an answer.

ggml picks its CPU kernels by the rows of a ``llama_decode`` call and the row count changes how
they round (one row goes through matrix-vector products, several through tinyBLAS GEMM, and the
repacked Q4_K weights of Qwen2.5 through a GEMM over groups of 4 rows; measured here, splitting
a cold run's 426-row prompt chunk into 424 + 2 or 420 + 6 rows changed a sampled answer). For an
answer to be the one a cold run alone gives, bit for bit, whether its prompt was decoded here,
copied from another sequence or found in a kept stream, every prompt position must be computed
in a call of the same rows as in that cold run:

* a prompt is decoded in the chunks a cold run uses (boundaries at multiples of ``n_batch``),
  all but its last token; the last one, whose logits are sampled, as a single row;
* a reused or copied prefix therefore covers the whole prompt but its last token when both
  prompts were decoded to the same end, and otherwise ends at a chunk boundary both runs share;
* sampled rows (each sequence's next token) go at most ``MAX_SAMPLED_ROWS`` to a call, where
  every kernel treats each as a one-row call would.
"""

from __future__ import annotations

from collections.abc import Sequence

from moakit.models.local.scheduler.sequence import common_prefix

ROW_GROUP = 4  # the repacked Q4_K GEMM takes rows 4 at a time
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

    Past the cached prompt (a partial answer continued: a staircase step, a prefill), the whole
    common prefix less the last prompt token: those positions were decoded one by one, and the
    continuation is then the answer the first call would have gone on to give. Within it, as
    the rules above allow, so that the answer is the one a cold run gives.
    """
    end = len(prompt) - 1  # the last prompt token is decoded again, for its logits
    n = min(common_prefix(prompt, cached), end)
    if n > cached_prompt:
        return n
    if n == end and cached_prompt - 1 == end:  # the same prompt: same chunks up to its end
        return n
    return min(n, end, cached_prompt - 1) // n_batch * n_batch
