"""The ``final`` extractor: the final answer a reply states, whatever the kind of question,
for early exit on agreement in a general-purpose stack."""

from __future__ import annotations

import pytest

from moakit.answers import extract_stated_answer
from moakit.plugins import registry


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("So she pays 3 * 6 = 18.\nAnswer: $18", "The answer is 18 dollars."),
        ("#### 1,234.50", "Answer: **1234.5**"),
        ("Paris is the capital.\nAnswer: Paris.", "I think...\nFinal answer: **paris**"),
        (
            "```python\ndef f(x):\n    return x+1\n```",
            "```python\ndef f(x):\n  return (x + 1)  # inc\n```",
        ),
        ("Answer: the Treaty of   Versailles", "answer: The treaty of Versailles"),
        # A reply that is nothing but a short answer (a member that ran a program and
        # answered with its output) states it.
        ("72", "Step by step: 48 + 24 = 72.\nAnswer: 72 clips"),
        ("Paris.", "Answer: paris"),
    ],
)
def test_the_same_answer_in_other_words_agrees(a: str, b: str) -> None:
    assert extract_stated_answer(a) is not None
    assert extract_stated_answer(a) == extract_stated_answer(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Answer: 18", "Answer: 19"),
        ("Answer: Paris", "Answer: Lyon"),
        ("```python\ndef f(x):\n    return x+1\n```", "```python\ndef f(x):\n    return x-1\n```"),
    ],
)
def test_different_answers_differ(a: str, b: str) -> None:
    assert extract_stated_answer(a) != extract_stated_answer(b)


@pytest.mark.parametrize(
    "text",
    [
        "There were 3 apples and 4 pears, so 7 fruits in all.",  # no stated answer
        "First 3 apples, then 4 pears: 7.",  # short, but more than one number
        "...",
        "",
        "Answer:",
    ],
)
def test_a_reply_that_states_no_answer_agrees_with_nothing(text: str) -> None:
    # The GSM8K extractor would take the text's last number; a general stack must not.
    assert extract_stated_answer(text) is None


def test_it_is_the_registered_final_extractor() -> None:
    extract = registry().extractors.get("final", field="adaptive.early_exit")
    assert extract("Answer: 42") == "42"


def test_an_answer_line_with_nothing_but_markup_is_skipped() -> None:
    # "Answer:" then a formula on the next lines: the line itself says nothing.
    assert extract_stated_answer("The answer is 7.\nAnswer: \\[") == "7"
