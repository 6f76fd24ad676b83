"""Routers (``moakit.routing``): the built-in kNN router, and the engine calling only the
members a router chose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moakit import ConfigError, Stack, parse_config
from moakit.config import ResolvedMember
from moakit.routing import Example, KnnRouter
from moakit.testing.models import FunctionModel

TRAIN = [
    Example("What is 17 times 23?", {"calc": True, "poet": False}),
    Example("What is 120 divided by 8?", {"calc": True, "poet": False}),
    Example("What is 9 plus 31?", {"calc": True, "poet": False}),
    Example("Write a haiku about autumn leaves", {"calc": False, "poet": True}),
    Example("Write a short poem about the sea", {"calc": False, "poet": True}),
    Example("Write a limerick about a cat", {"calc": False, "poet": True}),
]


def member(label: str) -> ResolvedMember:
    return ResolvedMember(
        model=label, label=label, provider="openai", temperature=0, timeout_s=1, retries=0
    )


def test_the_nearest_examples_choose_the_members() -> None:
    router = KnnRouter(TRAIN, k=3)
    members = [member("calc"), member("poet"), member("new")]
    math = [m.label for m in router.select("What is 45 times 3?", 1, members)]
    verse = [m.label for m in router.select("Write a haiku about winter", 1, members)]
    assert math == ["calc", "new"]  # a member the training never saw is always kept
    assert verse == ["poet", "new"]


def test_margin_and_min_members_keep_more() -> None:
    members = [member("calc"), member("poet")]
    assert len(KnnRouter(TRAIN, k=3, margin=1.0).select("What is 2 times 2?", 1, members)) == 2
    assert len(KnnRouter(TRAIN, k=3, min_members=2).select("What is 2 times 2?", 1, members)) == 2


def test_a_stack_calls_only_the_routed_members(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    path.write_text(json.dumps(KnnRouter(TRAIN).to_json()))
    cfg = parse_config(
        {
            "layers": [[{"model": "calc"}, {"model": "poet"}]],
            "aggregator": {"model": "agg"},
            "router": {"name": "knn", "options": {"file": str(path), "k": 3}},
        }
    )
    models = {
        n: FunctionModel(lambda r, n=n: f"{n} answers", name=n) for n in ("calc", "poet", "agg")
    }

    async def go() -> None:
        async with Stack(cfg, models=models) as stack:
            result = await stack.run([{"role": "user", "content": "What is 6 times 7?"}])
        assert not models["poet"].requests and models["calc"].requests
        (decision,) = result.decisions
        assert decision.kind == "route" and decision.skipped == ["poet"]

    import asyncio

    asyncio.run(go())


def test_a_bad_router_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    for options in ({}, {"file": str(tmp_path / "x.json")}, {"file": "f", "kk": 1}):
        cfg = parse_config(
            {
                "layers": [[{"model": "a"}]],
                "aggregator": {"model": "a"},
                "router": {"name": "knn", "options": options},
            }
        )
        with pytest.raises(ConfigError) as err:
            Stack(cfg, models={"a": FunctionModel(lambda r: "x", name="a")})
        assert err.value.field == "router"
