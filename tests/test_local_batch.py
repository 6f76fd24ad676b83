"""Batched local inference on the real (small) model: sequences decoded together behave exactly
as they do alone, fail and stop alone, and report the tokenizer's counts."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest

from moakit.errors import ModelCallError
from moakit.messages import Message
from moakit.models.base import ChatRequest, Completion
from moakit.models.local import LocalModel
from moakit.models.local.runtime import shared_runtime
from moakit.models.local.scheduler.sequence import common_prefix
from moakit.prompts import inject_references

pytestmark = pytest.mark.embedded

MODEL = "smollm2-135m"
OPTIONS = {"n_ctx": 2048, "n_seq_max": 4}
# A layer's members share the conversation; only their sampling differs.
CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant. " * 6},
    {"role": "user", "content": "List three colours of the rainbow."},
]


def model(**options: Any) -> LocalModel:
    return LocalModel(MODEL, {**OPTIONS, **options})


def greedy(max_tokens: int = 24, **kw: Any) -> ChatRequest:
    return ChatRequest(CONVERSATION, temperature=0.0, max_tokens=max_tokens, **kw)


async def test_batched_outputs_equal_the_same_requests_run_alone() -> None:
    m = model()
    requests = [
        greedy(),
        ChatRequest(CONVERSATION, temperature=0.9, seed=5, max_tokens=24),
        ChatRequest(CONVERSATION, temperature=1.1, seed=9, max_tokens=24, top_p=0.8),
    ]
    alone = [await m.complete(r) for r in requests]
    stats = shared_runtime(m.key).scheduler.stats
    shared_before, reused_before = stats.prompt_tokens_shared, stats.prompt_tokens_reused
    together = await asyncio.gather(*(m.complete(r) for r in requests))
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.usage for c in together] == [c.usage for c in alone]
    assert alone[0].text.strip()
    # The common prompt was not decoded again: the first took over the stream the last lone run
    # left, the other two copied it from the first (all but its last token, each time).
    n_prompt = alone[0].usage.prompt_tokens
    assert stats.prompt_tokens_reused - reused_before == n_prompt - 1
    assert stats.prompt_tokens_shared - shared_before == 2 * (n_prompt - 1)


async def test_prompt_and_counts_match_create_chat_completion() -> None:
    from llama_cpp import Llama

    m = model()
    ours = await m.complete(greedy(max_tokens=20))
    reference = Llama(model_path=str(m.path), n_ctx=512, verbose=False)
    try:
        theirs: Any = reference.create_chat_completion(
            messages=CONVERSATION, temperature=0.0, max_tokens=20
        )
    finally:
        reference.close()
    assert ours.text == theirs["choices"][0]["message"]["content"]
    assert ours.usage.prompt_tokens == theirs["usage"]["prompt_tokens"]
    assert ours.usage.completion_tokens == theirs["usage"]["completion_tokens"]
    # The tokenizer's count, not a word count.
    assert ours.usage.completion_tokens != len(ours.text.split())


async def test_cancelling_one_sequence_leaves_the_others_finishing() -> None:
    m = model()
    expected = await m.complete(greedy(max_tokens=32))
    got_first = asyncio.Event()

    async def cancelled_member() -> None:
        async for chunk in m.stream(
            ChatRequest(CONVERSATION, temperature=0.8, seed=1, max_tokens=200)
        ):
            if chunk.text:
                got_first.set()
                await asyncio.sleep(3600)  # parked mid-stream until cancelled

    victim = asyncio.create_task(cancelled_member())
    others = [asyncio.create_task(m.complete(greedy(max_tokens=32))) for _ in range(2)]
    await got_first.wait()
    victim.cancel()
    results = await asyncio.gather(*others)
    assert [r.text for r in results] == [expected.text, expected.text]
    with pytest.raises(asyncio.CancelledError):
        await victim
    scheduler = shared_runtime(m.key).scheduler
    for _ in range(100):  # the scheduler drops it at its next step
        if not scheduler.live:
            break
        await asyncio.sleep(0.02)
    assert scheduler.live == 0


async def test_a_prompt_too_long_for_the_context_fails_only_that_member() -> None:
    m = model(n_ctx=256)
    long = [{"role": "user", "content": "word " * 400}]
    results = await asyncio.gather(
        m.complete(greedy(max_tokens=8)),
        m.complete(ChatRequest(long, max_tokens=8)),
        m.complete(greedy(max_tokens=8)),
        return_exceptions=True,
    )
    assert isinstance(results[1], ModelCallError) and "n_ctx=256" in str(results[1])
    assert isinstance(results[0], Completion) and isinstance(results[2], Completion)
    assert results[0].text.strip() and results[0].text == results[2].text


async def test_stop_strings_and_max_tokens_apply_per_sequence() -> None:
    m = model()
    free = await m.complete(greedy(max_tokens=24))
    words = free.text.split()
    assert len(words) >= 3
    stop = " " + words[2]
    results = await asyncio.gather(
        m.complete(greedy(max_tokens=5)),
        m.complete(greedy(max_tokens=24, stop=[stop])),
        m.complete(greedy(max_tokens=24)),
    )
    short, stopped, full = results
    assert short.finish_reason == "length" and short.usage.completion_tokens == 5
    assert free.text.startswith(short.text) and len(short.text) < len(free.text)
    assert stopped.finish_reason == "stop" and stopped.text == free.text[: free.text.index(stop)]
    assert full.text == free.text


async def test_more_requests_than_sequences_wait_in_the_queue_instead_of_failing() -> None:
    m = model(n_ctx=512, n_seq_max=2)
    requests = [greedy(max_tokens=16)] * 5
    results = await asyncio.gather(*(m.complete(r) for r in requests))
    assert len({r.text for r in results}) == 1 and results[0].text.strip()
    assert shared_runtime(m.key).scheduler.stats.max_live == 2


async def test_json_schema_output_parses_and_matches_the_schema() -> None:
    m = model()
    schema = {
        "type": "object",
        "properties": {
            "colour": {"type": "string", "maxLength": 16},
            "count": {"type": "integer"},
        },
        "required": ["colour", "count"],
        "additionalProperties": False,
    }
    request = ChatRequest(
        [{"role": "user", "content": "Give a colour and a number as JSON."}],
        temperature=0.0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert LocalModel.profile.response_format
    data = json.loads((await m.complete(request)).text)
    assert set(data) == {"colour", "count"}
    assert isinstance(data["colour"], str) and len(data["colour"]) <= 16
    assert isinstance(data["count"], int)


async def test_json_object_output_parses() -> None:
    m = model()
    request = ChatRequest(
        [{"role": "user", "content": 'Reply with the JSON object {"ok": true}.'}],
        temperature=0.0,
        max_tokens=40,
        response_format={"type": "json_object"},
    )
    completion = await m.complete(request)
    assert completion.finish_reason == "stop", completion.text
    assert isinstance(json.loads(completion.text), dict)


async def test_an_unenforceable_response_format_is_a_clear_error() -> None:
    request = greedy(response_format={"type": "json_schema", "json_schema": {"schema": 3}})
    with pytest.raises(ModelCallError, match=r"response_format\.json_schema\.schema"):
        await model().complete(request)


async def test_a_schema_with_a_remote_ref_is_refused_before_anything_is_fetched() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "http://127.0.0.1:9/s.json"}}}
    request = greedy(response_format={"type": "json_schema", "json_schema": {"schema": schema}})
    with pytest.raises(ModelCallError, match=r"only local \$ref"):
        await model().complete(request)


async def test_concurrent_queries_share_one_batch() -> None:
    # Two callers that know nothing of each other (two stacks, two server requests) build their
    # own LocalModel; the same file and budget give the same scheduler, and they decode together.
    first, second = model(n_seq_max=3), model(n_seq_max=3)
    scheduler = shared_runtime(first.key).scheduler
    assert shared_runtime(second.key).scheduler is scheduler
    steps = scheduler.stats.decode_steps
    a, b = await asyncio.gather(
        first.complete(greedy(max_tokens=12)),
        second.complete(ChatRequest([{"role": "user", "content": "Hi"}], max_tokens=12, seed=3)),
    )
    assert scheduler.stats.max_live == 2
    # Decoded side by side: fewer steps than the two answers' tokens one after the other.
    solo_steps = a.usage.completion_tokens + b.usage.completion_tokens
    assert scheduler.stats.decode_steps - steps < solo_steps


# ~600 tokens of references in the system message, as a layer-2 member sees them.
LONG_CONVERSATION = [
    {
        "role": "system",
        "content": "Use these answers from other assistants.\n"
        + "\n".join(
            f"{i}. Red, orange and yellow are colours of the rainbow; so are green, blue, "
            f"indigo and violet, in that order, from the outside of the arc to the inside. "
            f"Answer {i} adds that light bends by a different angle for each colour."
            for i in range(1, 12)
        ),
    },
    {"role": "user", "content": "List three colours of the rainbow."},
]


async def test_a_long_shared_prefix_is_decoded_once_and_answers_equal_cold_solo_runs() -> None:
    m = model()
    requests = [
        ChatRequest(LONG_CONVERSATION, temperature=0.0, max_tokens=24),
        ChatRequest(LONG_CONVERSATION, temperature=0.9, seed=5, max_tokens=24),
        ChatRequest(LONG_CONVERSATION, temperature=1.1, seed=9, max_tokens=24, top_p=0.8),
    ]
    scheduler = shared_runtime(m.key).scheduler
    stats = scheduler.stats

    def counts() -> tuple[int, int, int]:
        return stats.prompt_tokens_evaluated, stats.prompt_tokens_shared, stats.prompt_tokens_reused

    # Decoded apart: each alone from an empty cache, its whole prompt decoded by itself.
    alone = []
    for request in requests:
        await asyncio.to_thread(scheduler.clear_kept)
        before = counts()
        alone.append(await m.complete(request))
        assert counts()[0] - before[0] == alone[-1].usage.prompt_tokens
    n_prompt = alone[0].usage.prompt_tokens
    assert 512 < n_prompt < 800, n_prompt  # several prefill chunks (n_batch = 256)

    # Together from an empty cache: the prompt is decoded once, the others copy its KV.
    await asyncio.to_thread(scheduler.clear_kept)
    before = counts()
    together = await asyncio.gather(*(m.complete(r) for r in requests))
    evaluated, shared, reused = (a - b for a, b in zip(counts(), before, strict=True))
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.usage for c in together] == [c.usage for c in alone]
    assert evaluated == n_prompt + 2  # each other sequence decodes only its last prompt token
    assert shared + reused == 2 * (n_prompt - 1)

    # A later layer starting the same way reuses the kept streams: nothing decoded again.
    before = counts()
    again = await asyncio.gather(*(m.complete(r) for r in requests))
    evaluated, shared, reused = (a - b for a, b in zip(counts(), before, strict=True))
    assert [c.text for c in again] == [c.text for c in alone]
    assert evaluated == 3 and shared + reused == 3 * (n_prompt - 1)


async def test_the_default_model_answers_as_alone_with_four_sequences_and_a_late_prompt() -> None:
    # Qwen2.5's Q4_K weights are repacked for a tiled GEMM over groups of 4 rows, which rounds
    # unlike the matrix-vector product a lone sequence gets: four sequences generating at once,
    # or tokens sharing a decode with another request's prompt, must not change an answer.
    m = LocalModel("qwen2.5-coder-0.5b", {"n_ctx": 1024, "n_seq_max": 4})
    layer = [
        ChatRequest(CONVERSATION, temperature=0.0, max_tokens=32),
        ChatRequest(CONVERSATION, temperature=0.8, seed=1, max_tokens=32),
        ChatRequest(CONVERSATION, temperature=0.9, seed=2, max_tokens=32),
    ]
    late = ChatRequest(
        [{"role": "user", "content": "Name four planets and one fact about each. " * 8}],
        temperature=1.0,
        seed=3,
        max_tokens=32,
    )
    scheduler = shared_runtime(m.key).scheduler
    alone = []
    for request in [*layer, late]:
        await asyncio.to_thread(scheduler.clear_kept)
        alone.append((await m.complete(request)).text)

    await asyncio.to_thread(scheduler.clear_kept)
    generating = asyncio.Event()

    async def first_member() -> str:
        parts = []
        async for chunk in m.stream(layer[0]):
            if chunk.text:
                generating.set()
                parts.append(chunk.text)
        return "".join(parts)

    async def late_request() -> str:
        await generating.wait()  # its prompt is decoded while the layer generates
        return (await m.complete(late)).text

    together = await asyncio.gather(
        first_member(), *(m.complete(r) for r in layer[1:]), late_request()
    )
    assert [t if isinstance(t, str) else t.text for t in together] == alone
    assert scheduler.stats.max_live == 4


REFERENCE = (
    "Mixture-of-Agents layers several language models: each proposer answers the question, and "
    "an aggregator reads every answer before writing its own. The answers differ in what they get "
    "right, so reading them together lets a model correct one with another, fill gaps, and "
    "notice claims that only one proposer makes. Ensembles in classic machine learning work for "
    "the same reason: errors that are not correlated cancel when predictions are combined. "
)


async def test_a_prompt_that_starts_like_a_kept_one_answers_as_cold() -> None:
    # On Qwen2.5 the rows of a decode call change how a prompt position rounds, so a prompt that
    # resumes from a kept stream must decode the rest in the calls a cold run makes: the whole
    # prompt but its last token for the same prompt, else from a chunk boundary (n_batch).
    # (A layer-2 prompt of bench/local_batch.py: resuming it 2 tokens before its end, at a
    # multiple of 4, changed this answer.)
    m = LocalModel("qwen2.5-coder-0.5b", {"n_ctx": 1024, "n_seq_max": 4})
    references = [f"(answer {i}) " + REFERENCE * 3 for i in range(1, 4)]

    def ask(question: str) -> ChatRequest:
        messages = inject_references([Message.user(question)], references)
        return ChatRequest(messages, temperature=0.7, seed=1, max_tokens=24)

    first = ask(
        "Write a long, detailed essay on why mixtures of language models beat a single model."
    )
    later = ask("In one paragraph: when does a mixture of models lose to its best member?")
    scheduler = shared_runtime(m.key).scheduler
    stats = scheduler.stats
    cold = []
    for request in (first, later):
        await asyncio.to_thread(scheduler.clear_kept)
        cold.append(await m.complete(request))
    n_prompt = cold[0].usage.prompt_tokens
    assert 512 < n_prompt < 1000, n_prompt

    await asyncio.to_thread(scheduler.clear_kept)
    await m.complete(replace(first, max_tokens=1))  # leaves its stream kept
    reused = stats.prompt_tokens_reused
    again = await m.complete(first)
    assert stats.prompt_tokens_reused - reused == n_prompt - 1  # the same prompt: all of it
    reused = stats.prompt_tokens_reused
    resumed = await m.complete(later)
    # Another prompt (it differs in the user message, at the end): the chunks both decode alike.
    render = shared_runtime(m.key).template.render
    same = common_prefix(render(first.messages).tokens, render(later.messages).tokens)
    n_batch = scheduler.budget.n_batch
    assert stats.prompt_tokens_reused - reused == same // n_batch * n_batch >= n_batch
    assert [again.text, resumed.text] == [c.text for c in cold]
