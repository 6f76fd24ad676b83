"""The defenses, registered through the plugin hooks like any third-party extension: the
``fenced`` formatter, the ``cluster`` and ``trust`` transforms, the ``vote`` strategy and the
answer extractors it votes with."""

from __future__ import annotations

from moakit.answers import (
    extract_choice,
    extract_final_number,
    extract_stated_answer,
    normalized_code,
)
from moakit.defenses.cluster import cluster_transform
from moakit.defenses.fence import fenced_formatter
from moakit.defenses.trust import trust_transform
from moakit.defenses.vote import VoteStrategy
from moakit.hookspecs import Register, hookimpl


@hookimpl
def register_reference_formatters(register: Register) -> None:
    register("fenced", fenced_formatter)


@hookimpl
def register_reference_transforms(register: Register) -> None:
    register("cluster", cluster_transform)
    register("trust", trust_transform)


@hookimpl
def register_strategies(register: Register) -> None:
    register("vote", VoteStrategy)


@hookimpl
def register_answer_extractors(register: Register) -> None:
    register("gsm8k", extract_final_number)  # the final number of a worked answer
    register("choice", extract_choice)  # a multiple-choice letter
    register("code", normalized_code)  # the program, as its syntax tree
    register("final", extract_stated_answer)  # the stated final answer, of any kind
