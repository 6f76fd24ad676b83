"""Datasets and scorers of ``moa eval``: loaders on the shipped slices, GSM8K number extraction on
tricky formats, HumanEval in its sandbox, the judge prompts and parsers, user scorers."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from moakit.answers import extract_final_number, numbers_equal
from moakit.errors import ConfigError
from moakit.eval.datasets import Item, load_dataset, load_user_jsonl
from moakit.eval.scorers import build_scorer
from moakit.eval.scorers.humaneval import HumanEvalScorer, SandboxLimits
from moakit.eval.scorers.judges import (
    MTBenchScorer,
    PairwiseScorer,
    parse_rating,
    parse_skill_scores,
    parse_verdict,
)
from moakit.models.base import ChatRequest
from moakit.testing.models import FunctionModel

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("So the total is $1,234.50.", "1234.5"),
        ("The answer is -5.", "-5"),
        ("The answer is −12", "-12"),  # unicode minus
        ("The answer is: **42** apples", "42"),
        ("Final answer: 0.50", "0.5"),
        ("It costs $18.00 in total", "18"),
        ("The final answer is 5%.", "5"),
        (r"Thus $\boxed{3,000}$ dollars.", "3000"),
        (r"\boxed{\frac{3}{4}}", "0.75"),
        (r"\boxed{\$20}", "20"),
        ("She had 10 then 2 more. The answer is 12 dollars. Check: 6*2=12", "12"),
        ("First 3 apples, 4 pears; the answer is 7 fruits, not 8.", "7"),
        ("He pays 3 x 4 = 12 dollars and 1,000 cents, so 22", "22"),
        ("lists 1, 2, 3", "3"),  # "1, 2" is not a thousands group
        ("no number at all", None),
    ],
)
def test_gsm8k_extraction(text: str, expected: str | None) -> None:
    assert extract_final_number(text) == expected


def test_numbers_compare_normalized() -> None:
    assert numbers_equal("18.00", "18")
    assert numbers_equal("1,000", "1000")
    assert not numbers_equal("18.5", "18")
    assert not numbers_equal(None, "1")


def test_gsm8k_loader_and_scorer() -> None:
    ds = load_dataset("gsm8k", data_dir=DATA, limit=2)
    assert [i.answer for i in ds.items] == ["72", "10"]
    scorer = build_scorer(ds.scorer)
    right = asyncio.run(scorer.score(ds.items[0], ["... so 72 clips. The answer is 72."]))
    wrong = asyncio.run(scorer.score(ds.items[0], ["#### 71"]))
    assert (right.correct, right.value) == (True, 1.0)
    assert (wrong.correct, wrong.extracted) == (False, "71")


# -- HumanEval -----------------------------------------------------------------------------


def _first_problem() -> Item:
    return load_dataset("humaneval", limit=1).items[0]


GOOD = """Here you go:
```python
def has_close_elements(numbers, threshold):
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
```"""


def test_humaneval_passing_failing_and_hanging() -> None:
    item = _first_problem()
    scorer = HumanEvalScorer(SandboxLimits(timeout_s=3.0, cpu_s=2))
    passing = asyncio.run(scorer.score(item, [GOOD]))
    failing = asyncio.run(scorer.score(item, ["    return False\n"]))
    spinning = asyncio.run(scorer.score(item, ["    while True:\n        pass\n"]))
    sleeping = asyncio.run(scorer.score(item, ["    import time\n    time.sleep(60)\n"]))
    assert passing.correct is True, passing.detail
    assert failing.correct is False and "AssertionError" in failing.detail["result"]
    assert spinning.correct is False  # CPU limit or wall-clock timeout, whichever first
    assert sleeping.correct is False and "timed out" in sleeping.detail["result"]


def test_humaneval_memory_limit() -> None:
    item = _first_problem()
    scorer = HumanEvalScorer(SandboxLimits(timeout_s=5.0, memory_bytes=512 << 20))
    hog = asyncio.run(scorer.score(item, ["    x = bytearray(2 << 30)\n    return True\n"]))
    assert hog.correct is False and "MemoryError" in hog.detail["result"]


def test_humaneval_child_has_no_network() -> None:
    """A completion that connects to a listener of ours must fail and the listener see nobody.
    (Verified to fail with both the socket block and ``unshare -n`` removed.)"""
    item = _first_problem()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.5)
        port = server.getsockname()[1]
        code = (
            "    import socket\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
            "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)"
            " for b in numbers[i + 1:])\n"
        )
        result = asyncio.run(HumanEvalScorer(SandboxLimits(timeout_s=5)).score(item, [code]))
        with pytest.raises(TimeoutError):
            server.accept()
    assert result.correct is False


def test_humaneval_runs_outside_the_harness_process(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    item = _first_problem()
    code = (
        f"    import os\n    open({str(marker)!r}, 'w').write(str(os.getpid()))\n    return True\n"
    )
    asyncio.run(HumanEvalScorer(SandboxLimits(timeout_s=5)).score(item, [code]))
    import os

    assert marker.read_text() != str(os.getpid())


# -- judges --------------------------------------------------------------------------------


def test_rating_and_verdict_parsing() -> None:
    assert parse_rating("Good answer. Rating: [[8]]") == 8.0
    assert parse_rating("I'd say [[7.5]]") == 7.5
    assert parse_rating("Rating: [6]") == 6.0  # FastChat's backup pattern
    assert parse_rating("no rating") is None
    assert parse_rating("[[42]]") is None
    assert parse_verdict("... so [[B]]") == "B"
    assert parse_verdict("tie: [[C]]") == "C"
    assert parse_verdict("A is better") is None
    assert parse_skill_scores(
        "Comprehension: [[4]]\nFactuality: [[2]]", ["Comprehension", "Factuality", "Readability"]
    ) == {"Comprehension": 4.0, "Factuality": 2.0, "Readability": None}


def test_mt_bench_reference_guided_and_real_second_turn() -> None:
    ds = load_dataset("mt-bench", data_dir=DATA)
    writing, math = ds.items
    assert len(math.turns) == 2 and math.references  # the GPT-4 reference is attached
    seen: list[ChatRequest] = []

    def judge_fn(request: ChatRequest) -> str:
        seen.append(request)
        return "Explanation. Rating: [[6]]" if len(seen) % 2 else "Rating: [[8]]"

    scorer = MTBenchScorer(FunctionModel(judge_fn))
    score = asyncio.run(scorer.score(math, ["first answer", "second answer"]))
    assert score.value == 7.0 and score.detail["ratings"] == [6.0, 8.0]
    assert score.judge_calls == 2 and score.judge_usage.prompt_tokens > 0
    turn1, turn2 = (r.messages[-1].text for r in seen)
    assert "[The Start of Reference Answer]" in turn1 and math.references[0] in turn1
    assert "### User:\n" + math.turns[1] in turn2 and "second answer" in turn2
    assert math.references[1] in turn2
    seen.clear()
    asyncio.run(scorer.score(writing, ["a", "b"]))
    assert "Reference" not in seen[0].messages[-1].text


def test_pairwise_both_orders_cancel_position_bias() -> None:
    items = load_dataset("alpaca-eval", data_dir=DATA).items
    baseline = {items[0].prompt: "BASELINE"}
    always_a = FunctionModel(lambda r: "[[A]]")  # a judge that always prefers the first slot
    score = asyncio.run(PairwiseScorer(always_a, baseline).score(items[0], ["SYSTEM"]))
    assert score.value == 0.5 and score.detail["verdicts"] == ["A", "A"]

    def prefers_system(r: ChatRequest) -> str:
        text = str(r.messages[-1].text)
        return "[[A]]" if text.index("SYSTEM") < text.index("BASELINE") else "[[B]]"

    score = asyncio.run(
        PairwiseScorer(FunctionModel(prefers_system), baseline).score(items[0], ["SYSTEM"])
    )
    assert score.value == 1.0 and score.judge_calls == 2


def test_braces_in_answers_stay_text() -> None:
    items = load_dataset("mt-bench", data_dir=DATA).items
    seen: list[str] = []
    judge = FunctionModel(lambda r: seen.append(str(r.messages[-1].text)) or "[[5]]")
    asyncio.run(MTBenchScorer(judge).score(items[0], ["{question} {answer_2} {0}"]))
    assert "{question} {answer_2} {0}" in seen[0]


def test_flask_and_judges_need_a_judge() -> None:
    with pytest.raises(ConfigError, match="judge"):
        build_scorer("mt-bench")
    item = load_dataset("flask-hard", data_dir=DATA).items[0]
    reply = "Comprehension: [[4]]\nLogical Efficiency: [[3]]\nFactuality: [[5]]"
    score = asyncio.run(
        build_scorer("flask", judge=FunctionModel(lambda r: reply)).score(item, ["answer"])
    )
    assert score.value == 4.0 and score.error is None


# -- user datasets -------------------------------------------------------------------------


def closed_scorer(answer: str, item: Item) -> bool:
    return answer.strip() == (item.answer or "")


def test_user_jsonl_with_entry_point_scorer(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"prompt": "2+2?", "answer": "4"}\n{"prompt": "capital of France?", '
        '"answer": "Paris", "id": "q2"}\n'
    )
    ds = load_dataset(str(path), scorer=f"{__name__}:closed_scorer")
    assert [i.id for i in ds.items] == ["item-0", "q2"]
    scorer = build_scorer(ds.scorer)
    assert asyncio.run(scorer.score(ds.items[0], ["4"])).correct is True
    assert asyncio.run(scorer.score(ds.items[1], ["Lyon"])).correct is False
    assert load_dataset(str(path)).scorer == "exact"
    exact = build_scorer("exact")
    assert asyncio.run(exact.score(ds.items[1], ["  paris. "])).correct is True


def test_user_jsonl_rejects_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"answer": "4"}\n')
    with pytest.raises(ConfigError, match="'prompt'"):
        load_user_jsonl(path)
    with pytest.raises(ConfigError, match="cannot load"):
        build_scorer("no_such_module_xyz:fn")
