"""The BFCL comparison behind ``docs/eval-bfcl.md`` (``make eval-bfcl``).

Five BFCL categories (``bfcl-simple``, ``-multiple``, ``-parallel``, ``-parallel-multiple``,
``-irrelevance``: data, possible answers and AST checker from the ``bfcl-eval`` package), the
first ``--limit`` items of each (10 by default), on the embedded models: the single model
(``single:bfcl-qwen``: Qwen2.5-Coder-0.5B alone, offered the tools), advisory MoA
(``moa:bfcl-mixed``: three different embedded models advise in text, Qwen calls the tools) and
Self-MoA (``self-moa:bfcl-qwen``: three Qwen samples advise, Qwen calls the tools). The stacks
are in ``scripts/eval-bfcl-stacks/``. About 100 s per item for the three systems together on
two CPU cores, so the default (50 items) takes about 1.5 hours.

The items go in chunks that cycle through the categories (5 items of each, then 10, ...), so a
run stopped at any point leaves every category with paired results. Every chunk is a ``moa
eval run`` done in-process (``moakit.eval.EvalSession``) into ``results/eval-bfcl/<dataset>/``
and is resumable: the same command skips finished items. ``--budget-s`` stops the run (the
chunk in flight is cancelled, its finished items kept) and still writes the page.

    .venv/bin/python scripts/eval_bfcl.py                  # run (or resume), then the page
    .venv/bin/python scripts/eval_bfcl.py --limit 20       # a larger subset
    .venv/bin/python scripts/eval_bfcl.py --budget-s 3000  # at most 50 minutes
    .venv/bin/python scripts/eval_bfcl.py --render-only    # rewrite the page from the results
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time

from eval_driver import ROOT, load_jsonl, machine, report, run_chunk

from moakit.eval.bfcl import CATEGORIES
from moakit.eval.session import EvalSettings

RESULTS = ROOT / "results" / "eval-bfcl"
CACHE = RESULTS / "cache.sqlite"
RUNS = RESULTS / "runs.jsonl"
DOC = ROOT / "docs" / "eval-bfcl.md"
STACKS = "scripts/eval-bfcl-stacks"
SYSTEMS = [
    f"single:{STACKS}/bfcl-qwen.toml",
    f"moa:{STACKS}/bfcl-mixed.toml",
    f"self-moa:{STACKS}/bfcl-qwen.toml",
]
STEP = 5
# A loaded CPU answering prompts that carry function docs needs longer than the presets' 120 s.
TIMEOUT_S = 300.0


def settings(dataset: str, limit: int, *, report_only: bool = False) -> EvalSettings:
    """What ``moa eval run --dataset DATASET --limit LIMIT ...`` says, for one chunk."""
    return EvalSettings(
        out_dir=RESULTS / dataset,
        dataset=dataset,
        limit=limit,
        systems=SYSTEMS,
        cache_path=CACHE,
        timeout_s=TIMEOUT_S,
        plots=False,
        report_only=report_only,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=10, help="Items per category.")
    parser.add_argument("--budget-s", type=float, default=None, help="Stop after this long.")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    deadline = None if args.budget_s is None else time.time() + args.budget_s
    if not args.render_only:
        stopped = False
        for limit in [*range(STEP, args.limit, STEP), args.limit]:
            for dataset in CATEGORIES:
                if stopped or (deadline is not None and time.time() >= deadline):
                    stopped = True
                    break
                chunk = settings(dataset, limit)
                stopped = not run_chunk(chunk, RUNS, deadline, dataset=dataset, limit=limit)
        if CACHE.exists():  # fold the WAL into the file
            with sqlite3.connect(CACHE) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for dataset in CATEGORIES:
        if (RESULTS / dataset / "records").exists():
            report(settings(dataset, args.limit, report_only=True))
    from render_eval_bfcl import document  # the page's shape lives beside this script

    DOC.write_text(document(RESULTS, SYSTEMS, load_jsonl(RUNS), machine()))
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
