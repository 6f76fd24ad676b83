"""The adaptive-compute grid on the embedded model (issue 24's "offline default").

Two phases, kept apart so the report items are never looked at while choosing:

1. ``choose``: GSM8K train items 0-99 only. The grid: one greedy answer, the shipped ``local``
   preset (full MoA), ``diverse`` (three low-temperature members with different strategies:
   reason step by step, write and run a program, check and correct; then an aggregator) and
   its adaptive forms (``diverse-exit``: early exit on agreement; ``diverse-cascade``: two
   first), and ``samples-cascade`` (the preset's samples at low temperature, as a cascade).
   The choice follows ``RULE`` (written before any of this ran) from the train summary alone,
   and is saved to ``choice.json``.
2. ``report``: GSM8K items 1000-1199 and the first 40 HumanEval problems, for the single greedy
   model, full MoA (``local``), the chosen adaptive policy and its full (non-adaptive) form.
   ``moa eval``'s report has the paired tests (McNemar against the single model, and each
   adaptive system against full MoA) and ``plots/frontier.png``.

Every phase is resumable (finished items are skipped) and ``--budget-s`` stops it.

    .venv/bin/python scripts/eval_adaptive.py choose --budget-s 7200
    .venv/bin/python scripts/eval_adaptive.py report --budget-s 14400
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from eval_driver import DATA, ROOT, report, run_chunk

from moakit.eval.session import EvalSettings

RESULTS = ROOT / "results" / "eval-adaptive"
os.environ["MOAKIT_HOME"] = str(ROOT / "scripts" / "eval-adaptive-stacks")
GRID = [
    "single:greedy",
    "moa:local,cache=off",
    "moa:diverse",
    "moa:diverse-exit",
    "moa:diverse-cascade",
    "moa:samples-cascade",
]
ADAPTIVE = {
    "moa:diverse-exit": "moa:diverse",
    "moa:diverse-cascade": "moa:diverse",
    "moa:samples-cascade": "moa:local,cache=off",
}
RULE = (
    "Among the adaptive systems, the most accurate on GSM8K train items 0-99 whose mean calls "
    "per item are at most half of full MoA's (moa:local); ties go to fewer calls. If none is "
    "that cheap, the cheapest adaptive system. Decided from the train summary only."
)
BUDGETS: dict[str, dict[str, Any]] = {
    "gsm8k": {"timeout_s": 900.0},
    "humaneval": {"max_tokens": 256, "timeout_s": 900.0},
}


def settings(name: str, dataset: str, systems: list[str], offset: int, limit: int) -> EvalSettings:
    return EvalSettings(
        out_dir=RESULTS / name,
        dataset=dataset,
        offset=offset,
        limit=limit,
        data_dir=DATA,
        systems=systems,
        cache_path=RESULTS / "cache.sqlite",
        **BUDGETS[dataset],
    )


def choose(summary: dict[str, Any]) -> str:
    rows = {r["name"]: r for r in summary["systems"]}
    calls = summary["frontier"]["per_item"]
    full = calls["moa:local"]["calls_mean"]
    adaptive = [name.split(",")[0] for name in ADAPTIVE]
    cheap = [n for n in adaptive if calls[n]["calls_mean"] <= full / 2]
    if cheap:
        return max(cheap, key=lambda n: (rows[n]["score"]["mean"], -calls[n]["calls_mean"]))
    return min(adaptive, key=lambda n: calls[n]["calls_mean"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=("choose", "report"))
    parser.add_argument("--budget-s", type=float, default=None)
    args = parser.parse_args(argv)
    deadline = None if args.budget_s is None else time.time() + args.budget_s
    log = RESULTS / "runs.jsonl"
    if args.phase == "choose":
        train = settings("train", "gsm8k", GRID, 0, 100)
        if run_chunk(train, log, deadline, phase="choose"):
            summary = json.loads((train.out_dir / "summary.json").read_text())
            chosen = choose(summary)
            (RESULTS / "choice.json").write_text(
                json.dumps({"rule": RULE, "chosen": chosen}, indent=2) + "\n"
            )
            print(f"chosen: {chosen}")
        return 0
    choice = json.loads((RESULTS / "choice.json").read_text())["chosen"]
    full = next(v for k, v in ADAPTIVE.items() if k.split(",")[0] == choice)
    systems = list(dict.fromkeys(["single:greedy", "moa:local,cache=off", choice, full]))
    for name, dataset, offset, limit in (
        ("gsm8k-heldout", "gsm8k", 1000, 200),
        ("humaneval", "humaneval", 0, 40),
    ):
        chunk = settings(name, dataset, systems, offset, limit)
        if not run_chunk(chunk, log, deadline, phase="report", dataset=dataset):
            break
        report(chunk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
