"""BFCL, the Berkeley Function Calling Leaderboard, through the ``bfcl-eval`` package: its
data, its possible answers, its function-doc conversion and its AST checker. Nothing of BFCL's
scoring is written here; this module loads the package and speaks moakit's types to it.

What is used, and where it lives in ``bfcl-eval`` (the version pinned in requirements.lock):

- the items: ``bfcl_eval.utils.load_dataset_entry(category)`` (``data/BFCL_v4_<category>.json``,
  function docs with the package's "Note that the provided function is in Python 3 syntax."
  hint, which is what its own inference sends), and the same without the hint for the checker,
  as its ``eval_runner`` does;
- the possible answers: ``bfcl_eval.utils.load_ground_truth_entry(category)``
  (``data/possible_answer/BFCL_v4_<category>.json``);
- the tools a model is offered: ``bfcl_eval.model_handler.utils.convert_to_tool`` with
  ``GORILLA_TO_OPENAPI`` and ``ModelStyle.OPENAI_COMPLETIONS``: BFCL's own OpenAI handler's
  conversion (``dict`` -> ``object``, ``float`` -> ``number``, ``tuple`` -> ``array``, ``any``
  -> ``string``; ``.`` in a function name -> ``_``, which OpenAI's names do not allow);
- the verdict: ``bfcl_eval.eval_checker.ast_eval.ast_checker.ast_checker`` for the AST
  categories, and for ``irrelevance`` its rule that an answer is right when it decodes to no
  function call (``bfcl_eval.utils.is_empty_output``, as ``eval_runner`` applies it).

Two things make the package importable without its dependency list (which pins numpy 1.26
and pulls torch, faiss and a dozen cloud SDKs; see docs/eval-bfcl.md):

- ``ast_checker`` imports ``bfcl_eval.constants.model_config`` only to ask, per model, whether
  its handler replaced ``.`` by ``_`` in function names; that module imports every model
  handler and their SDKs. It is given a one-entry stand-in saying "yes" for moakit, which is
  true: the tools moakit sends are the OpenAI handler's, names rewritten.
- ``bfcl_eval.constants.eval_config`` creates ``result/``, ``score/`` and ``.file_locks/``
  under ``BFCL_PROJECT_ROOT`` (default: the site-packages directory) on import: moakit points
  that variable, unless already set, at its own cache directory.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moakit.errors import ConfigError
from moakit.messages import ToolCall, ToolSpec

# The categories moakit runs (BFCL's names), and the `moa eval` dataset that runs each one.
CATEGORIES: dict[str, str] = {
    "bfcl-simple": "simple_python",
    "bfcl-multiple": "multiple",
    "bfcl-parallel": "parallel",
    "bfcl-parallel-multiple": "parallel_multiple",
    "bfcl-irrelevance": "irrelevance",
}
# The model name handed to the checker: only its "names rewritten" setting is read.
CHECKER_MODEL = "moakit"
INSTALL_HINT = (
    "the BFCL datasets need the bfcl-eval package without its own dependencies (they pin "
    "numpy 1.26 and pull torch): `make install` does it, or `pip install --no-deps -c "
    "requirements.lock bfcl-eval tree-sitter tree-sitter-java tree-sitter-javascript`"
)


@dataclass(frozen=True)
class _NamesRewritten:
    """What ``ast_checker`` reads of a model's config: whether ``.`` became ``_``."""

    underscore_to_dot: bool = True


@functools.cache
def package() -> types.SimpleNamespace:
    """The parts of ``bfcl-eval`` moakit uses, imported once."""
    if "BFCL_PROJECT_ROOT" not in os.environ:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("moakit")) / "bfcl"
        root.mkdir(parents=True, exist_ok=True)
        os.environ["BFCL_PROJECT_ROOT"] = str(root)
    try:
        import bfcl_eval.constants  # noqa: F401  (the package must exist before its stand-in)
    except ImportError:
        raise ConfigError(INSTALL_HINT, field="dataset") from None
    name = "bfcl_eval.constants.model_config"
    loaded = sys.modules.get(name)
    if loaded is None:
        stand_in = types.ModuleType(name)
        stand_in.MODEL_CONFIG_MAPPING = {CHECKER_MODEL: _NamesRewritten()}  # type: ignore[attr-defined]
        sys.modules[name] = stand_in
    else:  # the whole package is installed and was imported: add moakit to its table
        loaded.MODEL_CONFIG_MAPPING.setdefault(CHECKER_MODEL, _NamesRewritten())
    try:
        from bfcl_eval.constants.enums import Language, ModelStyle
        from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
        from bfcl_eval.model_handler.utils import convert_to_tool
        from bfcl_eval.utils import (
            is_empty_output,
            is_function_calling_format_output,
            load_dataset_entry,
            load_ground_truth_entry,
        )
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} ({exc})", field="dataset") from None
    return types.SimpleNamespace(
        Language=Language,
        ModelStyle=ModelStyle,
        GORILLA_TO_OPENAPI=GORILLA_TO_OPENAPI,
        ast_checker=ast_checker,
        convert_to_tool=convert_to_tool,
        is_empty_output=is_empty_output,
        is_function_calling_format_output=is_function_calling_format_output,
        load_dataset_entry=load_dataset_entry,
        load_ground_truth_entry=load_ground_truth_entry,
    )


@dataclass(frozen=True)
class BFCLItem:
    """One BFCL item: the user's question, the tools offered, and what the checker needs."""

    id: str
    category: str
    question: str
    tools: tuple[ToolSpec, ...]
    functions: list[dict[str, Any]]  # the function docs as the checker reads them (no hint)
    ground_truth: list[dict[str, Any]] | None  # None for irrelevance: no call is right


def tool_specs(functions: Sequence[dict[str, Any]]) -> tuple[ToolSpec, ...]:
    """BFCL function docs as the tools BFCL's OpenAI handler offers (its own conversion)."""
    bfcl = package()
    tools = bfcl.convert_to_tool(
        list(functions), bfcl.GORILLA_TO_OPENAPI, bfcl.ModelStyle.OPENAI_COMPLETIONS
    )
    return tuple(
        ToolSpec(
            name=tool["function"]["name"],
            description=tool["function"].get("description"),
            parameters=tool["function"]["parameters"],
        )
        for tool in tools
    )


@functools.cache
def entries(category: str) -> tuple[BFCLItem, ...]:
    """Every item of ``category`` in the package's order (``simple_python_0``, ``_1``...)."""
    bfcl = package()
    hinted = bfcl.load_dataset_entry(category, include_prereq=False)
    plain = bfcl.load_dataset_entry(
        category, include_prereq=False, include_language_specific_hint=False
    )
    truth: dict[str, Any] = {}
    if category != "irrelevance":
        truth = {row["id"]: row["ground_truth"] for row in bfcl.load_ground_truth_entry(category)}
    out = []
    for offered, checked in zip(hinted, plain, strict=True):
        turns = offered["question"]
        if len(turns) != 1 or [m["role"] for m in turns[0]] != ["user"]:
            raise ConfigError(
                f"BFCL item {offered['id']}: expected one user message, got another shape",
                field="dataset",
            )
        out.append(
            BFCLItem(
                id=offered["id"],
                category=category,
                question=turns[0][0]["content"],
                tools=tool_specs(offered["function"]),
                functions=checked["function"],
                ground_truth=truth.get(offered["id"]) if truth else None,
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class Verdict:
    valid: bool
    error_type: str | None = None
    error: str | None = None
    decoded: list[Any] | None = None


def decode(calls: Sequence[ToolCall]) -> list[Any]:
    """The checker's input, ``[{name: {arg: value}}, ...]``: what BFCL's OpenAI handler's
    ``decode_ast`` makes of function calls (``json.loads`` of each call's arguments).
    ``ValueError`` when arguments are not JSON."""
    return [{call.name: json.loads(call.arguments or "{}")} for call in calls]


def check(
    category: str,
    functions: list[dict[str, Any]],
    ground_truth: list[dict[str, Any]] | None,
    calls: Sequence[ToolCall],
) -> Verdict:
    """BFCL's verdict on an answer made of ``calls`` (none: the answer was text)."""
    bfcl = package()
    try:
        decoded = decode(calls)
    except ValueError as exc:
        decoded = None
        decode_error = f"arguments are not JSON: {exc}"
    if category == "irrelevance":
        # eval_runner's relevance rule: right when the output does not decode to a call.
        if decoded is None or bfcl.is_empty_output(decoded):
            return Verdict(True, decoded=decoded)
        return Verdict(
            False, "irrelevance_error:decoder_success", "called a function", decoded=decoded
        )
    if decoded is None:
        return Verdict(False, "ast_decoder:decoder_failed", decode_error)
    if not calls:
        return Verdict(False, "no_tool_call", "answered in text, made no call", decoded=[])
    if not bfcl.is_function_calling_format_output(decoded):
        return Verdict(
            False,
            "ast_decoder:decoder_wrong_output_format",
            "arguments are not an object",
            decoded=decoded,
        )
    result = bfcl.ast_checker(
        functions, decoded, ground_truth, bfcl.Language.PYTHON, category, CHECKER_MODEL
    )
    if result["valid"]:
        return Verdict(True, decoded=decoded)
    return Verdict(False, result.get("error_type"), _first_error(result.get("error")), decoded)


def _first_error(errors: Any) -> str:
    first = errors[0] if isinstance(errors, list) and errors else errors
    text = first if isinstance(first, str) else json.dumps(first, default=str)
    return text[:300]
