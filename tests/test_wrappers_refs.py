"""Model wrappers (the wrap= hook, per-endpoint concurrency limits) and the reference pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import pytest

from moakit import ConfigError, Stack, parse_config
from moakit.config import ResolvedMember
from moakit.models.base import ChatRequest, Chunk, Model
from moakit.models.profile import ModelProfile
from moakit.models.wrappers import ConcurrencyLimitedModel, WrapperModel
from moakit.plugins import registered
from moakit.prompts import AGGREGATE_AND_SYNTHESIZE
from moakit.references import Reference, ReferencePipeline
from moakit.testing.models import echo_model
from moakit.testing.plugins import plugin

CONV = [{"role": "user", "content": "q"}]


class Gauge(Model):
    """Answers after a short sleep, recording how many calls were in flight at once."""

    def __init__(self, name: str, counter: dict[str, int]) -> None:
        self.name = name
        self.counter = counter

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        c = self.counter
        c["now"] += 1
        c["max"] = max(c["max"], c["now"])
        try:
            await asyncio.sleep(0.02)
            yield Chunk(text=f"{self.name} ok", finish_reason="stop")
        finally:
            c["now"] -= 1


def wide(**member: Any) -> Any:
    return parse_config(
        {
            "layers": [[{"model": f"m{i}", **member} for i in range(6)]],
            "aggregator": {"model": "agg"},
        }
    )


@pytest.mark.parametrize(("limit", "expected"), [(2, 2), (None, 6)])
async def test_max_concurrency_caps_one_endpoint(limit: int | None, expected: int) -> None:
    counter = {"now": 0, "max": 0}
    models: dict[str, Model] = {f"m{i}": Gauge(f"m{i}", counter) for i in range(6)}
    models["agg"] = echo_model("agg")
    member = {"max_concurrency": limit} if limit else {}
    async with Stack(wide(**member), models=models) as stack:
        result = await stack.run(CONV)
    assert result.layers[0].answered == 6
    assert counter["max"] == expected


async def test_one_limiter_is_shared_by_concurrent_queries() -> None:
    counter = {"now": 0, "max": 0}
    models: dict[str, Model] = {f"m{i}": Gauge(f"m{i}", counter) for i in range(6)}
    models["agg"] = echo_model("agg")
    config = parse_config(
        {
            "defaults": {"max_concurrency": 3},
            "layers": [[{"model": f"m{i}"} for i in range(6)]],
            "aggregator": {"model": "agg"},
        }
    )
    async with Stack(config, models=models) as stack:
        await asyncio.gather(*(stack.run(CONV) for _ in range(4)))
    assert counter["max"] == 3


async def test_wrap_hook_sees_every_member_and_its_resolved_spec() -> None:
    class Recorder(WrapperModel):
        log: ClassVar[list[str]] = []

        async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
            Recorder.log.append(self.name)
            async for chunk in self.wrapped.stream(request):
                yield chunk

    specs: list[ResolvedMember] = []

    def wrap(model: Model, spec: ResolvedMember) -> Model:
        specs.append(spec)
        return Recorder(model)

    models = {n: echo_model(n) for n in ("a", "b", "agg")}
    config = parse_config(
        {"layers": [[{"model": "a"}, {"model": "b"}]], "aggregator": {"model": "agg"}}
    )
    async with Stack(config, models=models, wrap=wrap) as stack:
        result = await stack.run(CONV)
    assert [s.label for s in specs] == ["a", "b", "agg"]
    assert all(isinstance(s, ResolvedMember) for s in specs)
    assert sorted(Recorder.log) == ["a", "agg", "b"]
    assert result.final == "agg: q"


def test_wrappers_report_the_wrapped_models_capabilities() -> None:
    class Structured(Model):
        name = "s"
        profile = ModelProfile(response_format=True)

        async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
            yield Chunk(text="x")

    sem = asyncio.Semaphore(1)
    wrapped = ConcurrencyLimitedModel(Structured(), sem)
    assert wrapped.profile.response_format and not wrapped.profile.prefill
    assert wrapped.name == "s" and wrapped.loaded()


# -- references --------------------------------------------------------------------------------


def refs_stack(models: dict[str, Model], **extra: Any) -> Stack:
    config = parse_config(
        {"layers": [[{"model": "a"}, {"model": "b"}]], "aggregator": {"model": "agg"}, **extra}
    )
    return Stack(config, models=models)


async def test_the_paper_formatter_writes_the_papers_block() -> None:
    models = {n: echo_model(n) for n in ("a", "b", "agg")}
    async with refs_stack(models, references={"formatter": "paper"}) as stack:
        await stack.run(CONV)
    system = models["agg"].requests[0].messages[0].text
    assert system == AGGREGATE_AND_SYNTHESIZE + "\n1. a: q\n2. b: q"


async def test_configured_transforms_run_in_order_on_reference_records() -> None:
    seen: list[Reference] = []

    def drop_b(refs: Sequence[Reference]) -> list[Reference]:
        seen.extend(refs)
        return [r for r in refs if r.label != "b"]

    def shout(refs: Sequence[Reference]) -> list[Reference]:
        return [Reference(**{**r.__dict__, "text": r.text.upper()}) for r in refs]

    transforms = {"test-drop-b": lambda _config: drop_b, "test-shout": lambda _config: shout}
    models = {n: echo_model(n) for n in ("a", "b", "agg")}
    with registered(plugin(register_reference_transforms=transforms)):
        refs = {"transforms": ["test-drop-b", "test-shout"], "formatter": "paper"}
        async with refs_stack(models, references=refs) as st:
            await st.run(CONV)
    assert [(r.label, r.model, r.layer, r.index, r.truncated) for r in seen] == [
        ("a", "a", 1, 0, False),
        ("b", "b", 1, 1, False),
    ]
    assert models["agg"].requests[0].messages[0].text.endswith("\n1. A: Q")


async def test_the_formatter_is_one_replaceable_step() -> None:
    def tagged(refs: Sequence[Reference], prompt: str) -> str:
        return "REFS:" + "".join(f"\n<{r.label}>{r.text}</{r.label}>" for r in refs)

    models = {n: echo_model(n) for n in ("a", "b", "agg")}
    config = parse_config(
        {"layers": [[{"model": "a"}, {"model": "b"}]], "aggregator": {"model": "agg"}}
    )
    pipeline = ReferencePipeline(formatter=tagged)
    async with Stack(config, models=models, references=pipeline) as stack:
        await stack.run(CONV)
    assert models["agg"].requests[0].messages[0].text == "REFS:\n<a>a: q</a>\n<b>b: q</b>"


def test_unknown_transform_names_the_field() -> None:
    config = parse_config(
        {
            "references": {"transforms": ["nope"]},
            "layers": [[{"model": "a"}]],
            "aggregator": {"model": "a"},
        }
    )
    with pytest.raises(ConfigError, match="unknown reference transform 'nope'") as info:
        Stack(config, models={"a": echo_model("a")})
    assert info.value.field == "references.transforms.0"
