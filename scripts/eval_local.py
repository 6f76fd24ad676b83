"""The embedded-model evaluation behind ``docs/eval-local.md`` (``make eval-local``).

GSM8K (the first 100 items of ``gsm8k_train.jsonl``) and HumanEval (the first 40 problems), on
the ``local`` preset: single model, MoA, LLM-Ranker, Self-MoA, majority vote (GSM8K), the
staircase strategy (``local-staircase``, on a subset) and collaborativeness (on a subset).

On two CPU cores the whole run takes hours, so it goes in chunks that alternate between the
datasets (GSM8K to 20 items, HumanEval to 10, GSM8K to 40, ...): stopped at any point, both
datasets have comparable, paired results. Every chunk is a ``moa eval run`` done in-process
with ``moakit.eval.EvalSession`` into ``results/eval-local/`` (resumable: finished items are
skipped), its wall time is logged to ``results/eval-local/runs.jsonl``, and at the end the
reports and the document are rewritten from every record so far. ``--budget-s`` stops the run
(the chunk in flight is cancelled; its finished items are kept) and still writes the
document. The benchmark files are the ones shipped with moakit (``MOAKIT_EVAL_DATA``
overrides), so this runs on a fresh clone.

    .venv/bin/python scripts/eval_local.py                 # run (or resume) to the end
    .venv/bin/python scripts/eval_local.py --budget-s 3600 # at most an hour, then write the doc
    .venv/bin/python scripts/eval_local.py --render-only   # rewrite the doc from the results
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from eval_driver import CACHE, DATA, ROOT, checkpoint_cache, load_jsonl, machine, report, run_chunk

from moakit.eval.session import EvalSettings

RESULTS = ROOT / "results" / "eval-local"
# The `local` and `local-staircase` presets as this page measured them (references in the
# paper's numbered block, which the presets no longer use by default): user presets of the
# same name shadow the shipped ones, so the systems keep their names and their hashes, and the
# run resumes where it stopped.
os.environ["MOAKIT_HOME"] = str(ROOT / "scripts" / "eval-local-stacks")
DOC = ROOT / "docs" / "eval-local.md"
RUNS = RESULTS / "runs.jsonl"

# (dataset, item limit) in the order they run: alternating, so a stop leaves both paired.
PLAN: list[tuple[str, int]] = [
    ("gsm8k", 20),
    ("humaneval", 10),
    ("gsm8k", 40),
    ("humaneval", 20),
    ("gsm8k", 60),
    ("humaneval", 30),
    ("gsm8k", 80),
    ("humaneval", 40),
    ("gsm8k", 100),
]
FULL = {"gsm8k": 100, "humaneval": 40}
# Staircase is compared with MoA on the first 20 GSM8K / 10 HumanEval items; collaborativeness
# (three extra calls per item) on the same subsets. `cache=off` for the systems whose own
# samples a straggler cut would judge against cache hits (see docs/eval.md, "The cache and
# timing"); their new items' requests are new anyway, so it costs nothing.
SYSTEMS: dict[str, list[str]] = {
    "gsm8k": [
        "single:local",
        "moa:local,cache=off",
        "moa:local-staircase,items=20",
        "ranker:local",
        "self-moa:local,cache=off",
        "majority:local",
        "collab:local,items=20",
    ],
    "humaneval": [
        "single:local",
        "moa:local,cache=off",
        "moa:local-staircase,items=10",
        # HumanEval is where 64-token chunks lost items: the chunk-size sweep's next point.
        "moa:local-staircase,chunk=128,items=10",
        "ranker:local",
        "self-moa:local,cache=off",
        "collab:local,items=10",
    ],
}
# Code needs more room than chat-sized answers; a loaded CPU needs longer timeouts.
BUDGETS: dict[str, dict[str, Any]] = {
    "gsm8k": {"timeout_s": 600.0},
    "humaneval": {"max_tokens": 256, "timeout_s": 900.0},
}


def settings(dataset: str, limit: int, *, report_only: bool = False) -> EvalSettings:
    """What ``moa eval run --dataset DATASET --limit LIMIT ...`` says, for one chunk."""
    return EvalSettings(
        out_dir=RESULTS / dataset,
        dataset=dataset,
        limit=limit,
        data_dir=DATA,
        systems=SYSTEMS[dataset],
        cache_path=CACHE,
        report_only=report_only,
        **BUDGETS[dataset],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=None, help="Stop after this long.")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    deadline = None if args.budget_s is None else time.time() + args.budget_s
    if not args.render_only:
        for dataset, limit in PLAN:
            if deadline is not None and time.time() >= deadline:
                break
            chunk = settings(dataset, limit)
            if not run_chunk(chunk, RUNS, deadline, dataset=dataset, limit=limit):
                break
        checkpoint_cache()
    # Reports from every record so far (an interrupted chunk wrote none), then the page.
    for dataset, limit in FULL.items():
        if (RESULTS / dataset / "records").exists():
            report(settings(dataset, limit, report_only=True))
    render()
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


# -- the document ---------------------------------------------------------------------------


def render() -> None:
    from render_eval_local import document  # the document's shape lives beside this script

    DOC.write_text(document(RESULTS, FULL, SYSTEMS, load_jsonl(RUNS), machine()))


if __name__ == "__main__":
    sys.exit(main())
