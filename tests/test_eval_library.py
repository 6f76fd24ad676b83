"""``moakit.eval`` as a library: typed records (old files included), the reading rule, the
engine's retry loop for calls outside a stack, and the executor seam of ``EvalSession``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from moakit.config import MemberSpec
from moakit.engine.solo import call_alone
from moakit.errors import ConfigError, ModelCallError
from moakit.eval.calls import solo_member
from moakit.eval.datasets import Item, default_user_scorer
from moakit.eval.executor import LocalEvalExecutor
from moakit.eval.readings import direction, side
from moakit.eval.records import EvalRecord, RecordsFile, read_records
from moakit.eval.scorers import ExactScorer
from moakit.eval.session import EvalSession, EvalSettings
from moakit.eval.stats import Comparison
from moakit.eval.worker import EvalUnit, UnitActivity, WorkerConfig
from moakit.models.base import ChatRequest
from moakit.testing.models import FunctionModel
from moakit.testing.plugins import register_provider

# One line of a records file as moakit wrote them before records were typed (no scorer, no
# truncated, no defenses): it must still load.
OLD_LINE = (
    '{"item_id": "gsm8k-0", "system": "single:local", "kind": "single", "system_hash": '
    '"e88d48402a0a", "error": null, "finals": ["#### 72"], "final": "#### 72", "score": '
    '{"value": 1.0, "correct": true, "extracted": "72", "error": null, "judge_usage": '
    '{"prompt_tokens": 0, "completion_tokens": 0}, "judge_calls": 0, "detail": {}}, "usage": '
    '{"prompt_tokens": 90, "completion_tokens": 4}, "cost_usd": 0.0, "judge_cost_usd": null, '
    '"latency_s": 1.5, "ttft_s": null, "answer_chars": 7, "answer_words": 2, "calls": 1, '
    '"cache_hits": 0, "layers": [], "extra": {}, "started_at": 1.0, "finished_at": 2.5}'
)


def test_an_older_record_loads_with_unknowns_left_unknown(tmp_path: Path) -> None:
    path = tmp_path / "single_local.e88d48402a0a.jsonl"
    path.write_text(OLD_LINE + "\n")
    seen: list[str] = []
    (record,) = read_records(path, seen.append)
    assert record.right is True and record.usage.prompt_tokens == 90
    assert record.scorer is None and record.truncated is None and record.defenses == []
    assert seen == []


def test_a_cut_last_line_is_skipped_with_a_warning_and_cut_before_the_next_append(
    tmp_path: Path,
) -> None:
    file = RecordsFile(tmp_path, "single:local", "e88d48402a0a")
    file.path.write_text(OLD_LINE + "\n" + OLD_LINE[:57])
    seen: list[str] = []
    assert len(list(read_records(file.path, seen.append))) == 1
    assert len(seen) == 1 and "line 2 is cut short" in seen[0]
    file.append(EvalRecord(item_id="gsm8k-1", system="single:local"))
    lines = file.path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["item_id"] == "gsm8k-1"


def test_a_bad_line_inside_a_records_file_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.abc.jsonl"
    path.write_text(OLD_LINE + "\n{not json\n" + OLD_LINE + "\n")
    with pytest.raises(ConfigError, match=r"x\.abc\.jsonl: line 2 is not an eval record"):
        list(read_records(path, lambda message: None))


def _comparison(low: float, high: float, p: float) -> Comparison:
    return Comparison("mcnemar-exact", (low + high) / 2, low, high, p, 100)


@pytest.mark.parametrize(
    ("low", "high", "p", "way", "agreed", "words"),
    [
        (0.05, 0.2, 0.01, "ahead", True, "ahead"),
        (-0.2, -0.05, 0.01, "behind", True, "behind"),
        (-0.2, -0.01, 0.08, "behind", False, "leaning behind"),
        (0.01, 0.2, 0.2, "ahead", False, "leaning ahead"),
        (-0.1, 0.1, 0.01, None, False, "no measurable difference"),
    ],
)
def test_a_direction_needs_the_ci_and_the_test(
    low: float, high: float, p: float, way: str | None, agreed: bool, words: str
) -> None:
    c = _comparison(low, high, p)
    assert direction(c) == (way, agreed)
    assert side(c).startswith(words)


def test_default_scorer_suits_the_answers() -> None:
    def items(*answers: str | None) -> list[Item]:
        return [Item(id=str(i), turns=("q",), answer=a) for i, a in enumerate(answers)]

    assert default_user_scorer(items("18", "-2.5", "1,234"))[0] == "number"
    assert default_user_scorer(items("Paris", "18"))[0] == "exact"
    assert default_user_scorer(items(None, None))[0] == "judge"


async def test_exact_compares_the_stated_answer_or_the_whole_reply() -> None:
    scorer = ExactScorer()
    item = Item(id="q", turns=("q",), answer="Paris")
    stated = await scorer.score(item, ["Let me think. France's capital...\nAnswer: **Paris**."])
    assert stated.correct and not scorer.unparsed(stated)
    assert (await scorer.score(item, ["paris"])).correct
    prose = await scorer.score(item, ["It is Paris, of course."])
    assert not prose.correct and scorer.unparsed(prose)


# -- the engine's retry loop for a call outside any stack -----------------------------------


async def test_a_solo_call_retries_as_its_spec_says_and_records_each_attempt() -> None:
    replies: list[str | Exception] = [ModelCallError("busy", kind="http", status=503), "fine"]
    flaky = FunctionModel(lambda r: replies.pop(0))
    request = ChatRequest(messages=[{"role": "user", "content": "x"}])
    answer = await call_alone(flaky, solo_member(MemberSpec(model="m", retries=2)), request)
    assert answer.completion is not None and answer.completion.text == "fine"
    assert [a.error is None for a in answer.output.attempts] == [False, True]
    never = FunctionModel(lambda r: ModelCallError("busy", kind="http", status=503))
    answer = await call_alone(never, solo_member(MemberSpec(model="m", retries=0)), request)
    assert answer.completion is None and answer.error is not None and answer.error.status == 503
    assert len(never.requests) == 1 and answer.output.error is not None


# -- the executor seam ----------------------------------------------------------------------

register_provider(
    "libfake",
    lambda spec, pool: FunctionModel(lambda r: "The answer is 1", name=spec.model, delay_s=0.05),
)
STACK = """
name = "lib"
[defaults]
provider = "libfake"
[[layers]]
members = [{ model = "m", n = 2, seed = 1 }]
[aggregator]
model = "m"
"""


def _settings(tmp_path: Path, **more: object) -> EvalSettings:
    stack = tmp_path / "lib.toml"
    stack.write_text(STACK)
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "answer": "1"}) + "\n" for i in range(4))
    )
    systems = [f"single:{stack}", f"moa:{stack}", f"majority:{stack}"]
    return EvalSettings(out_dir=tmp_path / "out", dataset=str(data), systems=systems, **more)  # type: ignore[arg-type]


class CountingExecutor(LocalEvalExecutor):
    """What a cluster executor sees: work units in, one typed record per unit out."""

    seen: ClassVar[list[tuple[str, str]]] = []

    async def run(
        self,
        units: Sequence[EvalUnit],
        *,
        parallel: int,
        on_activity: UnitActivity | None = None,
    ) -> AsyncGenerator[EvalRecord, None]:
        CountingExecutor.seen += [(u.system.name, u.item.id) for u in units]
        async for record in super().run(units, parallel=parallel, on_activity=on_activity):
            assert isinstance(record, EvalRecord)
            yield record


async def test_a_session_hands_one_unit_per_item_and_system_to_its_executor(
    tmp_path: Path,
) -> None:
    CountingExecutor.seen = []
    session = EvalSession(_settings(tmp_path), executor=CountingExecutor)
    await session.run()
    names = ["single:lib", "moa:lib", "majority:lib"]
    assert sorted(CountingExecutor.seen) == sorted(
        (n, f"item-{i}") for n in names for i in range(4)
    )
    # The vote ran after the system it votes over, whatever the order given.
    assert [n for n, _ in CountingExecutor.seen][-4:] == ["majority:lib"] * 4
    summary = session.write_report()
    assert [r["scored"] for r in summary["systems"]] == [4, 4, 4]
    # The worker's recipe is plain data: a cluster executor ships it to its nodes.
    assert isinstance(session.worker_config(), WorkerConfig)
    CountingExecutor.seen = []
    await EvalSession(_settings(tmp_path), executor=CountingExecutor).run()
    assert CountingExecutor.seen == []  # resumed: nothing left to run


async def test_a_deadline_keeps_every_finished_record_and_the_next_run_continues(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, parallel=1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.25):
            await EvalSession(settings).run()
    files = list((tmp_path / "out" / "records").glob("*.jsonl"))
    kept = sum(len(list(read_records(p, lambda m: None))) for p in files)
    assert 0 < kept < 12
    CountingExecutor.seen = []
    await EvalSession(settings, executor=CountingExecutor).run()
    assert len(CountingExecutor.seen) == 12 - kept
