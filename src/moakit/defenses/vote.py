"""Dropout-and-vote: the ``vote`` strategy, for closed-form answers.

The layers run as in the paper; then, instead of one aggregator call over every reference, the
aggregator answers over ``vote.samples`` seeded random subsets of the last layer's references
(``vote.subset_size`` each, all but one by default), each answer's closed form is extracted and
the most common one wins (ties: the earliest sample). A single deceptive reference sits in only
some subsets, so it can only sway a minority of the votes. Costs ``samples - 1`` extra
aggregator calls, run concurrently (latency grows little, tokens by about that factor).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Callable, Sequence

from moakit.config import ResolvedMember
from moakit.engine.aggregate import AggregatorChain, aggregate
from moakit.engine.calls import Call, call_with_retries
from moakit.engine.layered import LayeredStrategy
from moakit.engine.run import Run
from moakit.models.base import ChatRequest, Completion
from moakit.plugins import registry
from moakit.references import Reference
from moakit.result import DefenseAction, MemberOutput

Extractor = Callable[[str], str | None]


def draw_subsets(n: int, size: int, samples: int, seed: int) -> list[tuple[int, ...]]:
    """Up to ``samples`` distinct ``size``-subsets of ``range(n)``, seeded, in draw order."""
    combos = list(itertools.combinations(range(n), size))
    rng = random.Random(seed)
    return rng.sample(combos, min(samples, len(combos)))


def majority(answers: Sequence[str | None]) -> int | None:
    """Index of the first answer carrying the most common extracted value, or ``None``."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(i for i, a in enumerate(answers) if a is not None and counts[a] == top)


class VoteStrategy(LayeredStrategy):
    name = "vote"
    # Its answer is a vote over samples' extracted values, not one aggregator's tool calls.
    tools = False

    async def finish(self, run: Run, references: Sequence[Reference]) -> None:
        settings = run.config.vote
        extract: Extractor = registry().extractors.get(settings.extractor, field="vote.extractor")
        n = len(references)
        if n < 2:
            await aggregate(run, references)
            return
        size = min(settings.subset_size or n - 1, n)
        subsets = draw_subsets(n, size, settings.samples, settings.seed)
        layer_no = len(run.config.layers) + 1
        chain = AggregatorChain(run)

        async def sample(number: int, subset: tuple[int, ...]) -> tuple[Call, Completion | None]:
            chosen = [references[i] for i in subset]
            block, actions = run.lineup.references.block_recorded(
                chosen, run.config.aggregate_prompt
            )
            if number == 0:
                run.record_defenses(actions, layer=layer_no)

            def request_for(spec: ResolvedMember) -> ChatRequest:
                return run.member_request(spec, block, final=True)

            call = chain.start(request_for, chosen, position=0)
            return call, await call_with_retries(run, call, deadline_at=run.deadline_at)

        done = await asyncio.gather(*(sample(i, s) for i, s in enumerate(subsets)))
        outputs: list[MemberOutput] = []
        answers: list[str | None] = []
        for call, completion in done:
            if completion is None:
                error = call.error.describe() if call.error else "no answer"
                outputs.append(call.output(run.now(), error=error))
                answers.append(None)
            else:
                outputs.append(call.output(run.now(), text=completion.text, completion=completion))
                answers.append(extract(completion.text))
        winner = majority(answers)
        if winner is None:
            winner = next((i for i, out in enumerate(outputs) if out.ok), None)
        if winner is None:  # every sample failed: the whole chain, fallbacks included
            run.result.aggregators.extend(outputs)
            block, _ = run.lineup.references.block_recorded(references, run.config.aggregate_prompt)
            await chain.answer(block, references)
            return
        # Result.aggregator is the last entry: the sample whose answer won.
        run.result.aggregators.extend(o for i, o in enumerate(outputs) if i != winner)
        tally = Counter(a for a in answers if a is not None)
        run.record_defenses(
            [
                DefenseAction(
                    defense="vote",
                    layer=layer_no,
                    detail=(
                        f"{len(subsets)} subsets of {size}/{n} references; answers "
                        + (", ".join(f"{a}×{c}" for a, c in tally.most_common()) or "none")
                        + f"; chose {answers[winner]}"
                    ),
                    extra_calls=len(subsets) - 1,
                )
            ],
            layer=layer_no,
        )
        chain.answered(outputs[winner], send=True)
