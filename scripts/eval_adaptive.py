"""The adaptive-compute grid on the embedded model (issue 24's "offline default").

Two phases, kept apart so the report items are never looked at while choosing:

1. ``choose``: GSM8K train items 0-39 only (the first 40 of the 0-99 the issue allows: what
   2 CPU cores answer in about half an hour). The grid: the single greedy model (``greedy``),
   ``diverse`` (three low-temperature members with different strategies: reason step by step,
   write and run a program, check and correct; then an aggregator) and its adaptive forms,
   ``diverse-exit`` (early exit when the three state the same final answer) and
   ``diverse-cascade`` (reason and program first; the rest only if they disagree). Every
   instruction is general-purpose (no GSM8K format): the chosen policy becomes the ``local``
   preset. The choice follows ``RULE`` (written before any of this ran) from the train summary
   alone, and is saved to ``choice.json``.
2. ``report``: GSM8K items 1000-1199 and the first 40 HumanEval problems (in chunks of 20,
   every system on the same items, the next chunk to the dataset least covered so far, as far
   as ``--budget-s`` allows), for the single greedy model, the chosen adaptive policy and its
   full (non-adaptive) form. ``moa eval``'s report
   has the paired tests (McNemar against the single model, and the adaptive system against
   full MoA) and ``plots/frontier.png``.

Two items are in flight at once (``PARALLEL``): the embedded scheduler decodes their sequences
together, which on 2 cores answers more items per hour; per-item latencies are therefore
latencies under that load, alike for every system. Every phase is resumable (finished items
are skipped) and ``--budget-s`` stops it.

    .venv/bin/python scripts/eval_adaptive.py choose --budget-s 3000
    .venv/bin/python scripts/eval_adaptive.py report --budget-s 6000
    .venv/bin/python scripts/eval_adaptive.py all          # both (``make eval-adaptive``)
    .venv/bin/python scripts/eval_adaptive.py render       # the page from what is there
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from eval_driver import DATA, ROOT, machine, report, run_chunk

from moakit.eval.session import EvalSettings

RESULTS = ROOT / "results" / "eval-adaptive"
DOC = ROOT / "docs" / "eval-adaptive.md"
os.environ["MOAKIT_HOME"] = str(ROOT / "scripts" / "eval-adaptive-stacks")
GRID = ["single:greedy", "moa:diverse", "moa:diverse-exit", "moa:diverse-cascade"]
FULL = "moa:diverse"  # the adaptive systems' full (non-adaptive) form
ADAPTIVE = ("moa:diverse-exit", "moa:diverse-cascade")
TRAIN = (0, 40)
HELDOUT = (1000, 200)
HUMANEVAL = (0, 40)  # the 40 problems of the earlier evaluations (docs/eval-local.md)
CHUNK = 20
PARALLEL = 2
RULE = (
    "Among the adaptive systems, the most accurate on the train items whose mean calls per item "
    "are at most half of their full form's (moa:diverse); ties go to fewer calls. If neither is "
    "that cheap, the most accurate of them, ties to fewer calls. Decided from the train summary "
    "only."
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
        parallel=PARALLEL,
        **BUDGETS[dataset],
    )


def choose(summary: dict[str, Any]) -> str:
    rows = {r["name"]: r for r in summary["systems"]}
    calls = summary["frontier"]["per_item"]
    full = calls[FULL]["calls_mean"]
    cheap = [n for n in ADAPTIVE if calls[n]["calls_mean"] <= full / 2]
    return max(cheap or ADAPTIVE, key=lambda n: (rows[n]["score"]["mean"], -calls[n]["calls_mean"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=("choose", "report", "all", "render"))
    parser.add_argument("--budget-s", type=float, default=None)
    args = parser.parse_args(argv)
    deadline = None if args.budget_s is None else time.time() + args.budget_s
    log = RESULTS / "runs.jsonl"
    if args.phase in ("choose", "all") and not (RESULTS / "choice.json").exists():
        train = settings("train", "gsm8k", GRID, *TRAIN)
        if run_chunk(train, log, deadline, phase="choose"):
            summary = json.loads((train.out_dir / "summary.json").read_text())
            chosen = choose(summary)
            (RESULTS / "choice.json").write_text(
                json.dumps({"rule": RULE, "chosen": chosen}, indent=2) + "\n"
            )
            print(f"chosen: {chosen}")
    if args.phase in ("report", "all") and (RESULTS / "choice.json").exists():
        run_report(deadline, log)
    render()
    return 0


def run_report(deadline: float | None, log: Path) -> None:
    """The report items in chunks. The next chunk goes to the dataset least covered so far (as
    a share of its items; ties to GSM8K), so a deadline leaves both covered in proportion."""
    choice = json.loads((RESULTS / "choice.json").read_text())["chosen"]
    systems = ["single:greedy", FULL, choice]
    plans = {  # dataset -> (results folder, first item, items)
        "gsm8k": ("gsm8k-heldout", *HELDOUT),
        "humaneval": ("humaneval", *HUMANEVAL),
    }
    done = dict.fromkeys(plans, 0)
    while True:
        left = [d for d in plans if done[d] < plans[d][2]]
        if not left:
            return
        dataset = min(left, key=lambda d: done[d] / plans[d][2])
        folder, first, total = plans[dataset]
        upto = min(done[dataset] + CHUNK, total)
        chunk = settings(folder, dataset, systems, first, upto)
        finished = run_chunk(chunk, log, deadline, phase="report", dataset=dataset)
        report(chunk)
        if not finished:
            return
        done[dataset] = upto


def render() -> None:
    from render_eval_adaptive import render as write  # the page's shape lives beside this script

    if RESULTS.exists():
        write(RESULTS, RULE, DOC, machine())
        print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
