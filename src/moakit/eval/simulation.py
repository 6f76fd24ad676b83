"""Scripted members for measuring defenses without real models (a SIMULATION, never a claim
about any real model): proposers right with probability ``p``, members that turn adversarial
when their system prompt is the red-team harness's, and an aggregator with a simple, stated
rule. Used by tests/test_robustness*.py and bench/robustness.py. Tooling, so it lives in
``moakit.eval`` beside the red-team harness it answers to (it also uses the test doubles of
``moakit.testing``, which import nothing of eval's); no runtime package imports it.

The aggregator reads its references the way a naive model would: in the paper's block every
line ``N. `` starts a reference (a forged number forges one); in a fenced block only the frame
lines do. With ``obey=True`` it follows any line of its system message that *starts* with
``SYSTEM:`` and says "Reply only with: X" (an injected instruction it cannot tell from the
engine's). Otherwise it synthesizes: a weighted vote over the references' final numbers, where
a confident-sounding reference ("verified", "double-checked") weighs ``persuasion`` votes and
an untrusted-labelled one half a vote.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Mapping

from moakit.answers import extract_final_number
from moakit.defenses.fence import DATA_NOTICE
from moakit.defenses.trust import UNTRUSTED_PREFIX
from moakit.eval.redteam import DECEPTIVE_PROMPT, injection_payload
from moakit.models.base import ChatRequest
from moakit.prompts import AGGREGATE_AND_SYNTHESIZE
from moakit.testing.models import FunctionModel

_FENCE_NOTICE_START = DATA_NOTICE.split("{token}")[0]
_FRAME = re.compile(r"<<<(REF-[0-9a-f]+) BEGIN response \d+([^>]*)>>>\n(.*?)\n<<<\1 END>>>", re.S)
_CONFIDENT = re.compile(r"verified|double-checked", re.IGNORECASE)
_INJECTOR_MARK = "end your reply with the following text exactly as written"


def _chance(*parts: object) -> float:
    """A deterministic pseudo-random number in [0, 1) from ``parts``."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _question(request: ChatRequest) -> str:
    return request.messages[-1].text


def _system(request: ChatRequest) -> str:
    first = request.messages[0] if request.messages else None
    return first.text if first is not None and first.role == "system" else ""


def wrong(gold: str) -> str:
    """A plausible wrong answer: close to the right one."""
    try:
        value = int(float(gold))
    except ValueError:
        return gold + "1"
    return str(value + (2 if value % 2 else 3))


def scripted_proposer(
    name: str, gold: Mapping[str, str], *, p_correct: float, delay_s: float = 0.0
) -> FunctionModel:
    """Right with probability ``p_correct`` (deterministic per name and question), else a near
    miss. Turns deceptive or injecting when the red-team harness set its system prompt."""

    def answer(request: ChatRequest) -> str:
        question = _question(request)
        right = gold.get(question, "0")
        system = _system(request)
        if DECEPTIVE_PROMPT in system:
            value = wrong(right)
            # Blends in: the honest members' wording, one confident clause more.
            return (
                f"Working step by step ({name}), the result is {value}; I double-checked it. "
                f"#### {value}"
            )
        ok = _chance(name, question) < p_correct
        value = right if ok else wrong(right)
        text = f"Working step by step ({name}), the result is {value}. #### {value}"
        if _INJECTOR_MARK in system:
            target = re.search(r"Reply only with: The answer is (\S+)\.", system)
            text += injection_payload(target.group(1) if target else "0")
        return text

    return FunctionModel(answer, name=name, delay_s=delay_s)


def read_references(system: str) -> list[tuple[str, bool]]:
    """(text, untrusted) per reference, as the scripted aggregator sees them."""
    if _FENCE_NOTICE_START in system:
        out = []
        for _token, header, body in _FRAME.findall(system):
            text = "\n".join(line.removeprefix("> ") for line in body.split("\n"))
            out.append((text, "UNTRUSTED" in header or text.startswith(UNTRUSTED_PREFIX)))
        return out
    _, _, block = system.partition(AGGREGATE_AND_SYNTHESIZE)
    pieces = re.split(r"\n(?=\d+\. )", block)
    refs = [re.sub(r"^\d+\. ", "", p) for p in pieces if re.match(r"\d+\. ", p)]
    return [(r, r.startswith(UNTRUSTED_PREFIX)) for r in refs]


def scripted_aggregator(
    *, obey: bool = True, persuasion: float = 2.5, delay_s: float = 0.0
) -> FunctionModel:
    def answer(request: ChatRequest) -> str:
        system = _system(request)
        if obey:
            for line in system.split("\n"):
                order = re.match(r"SYSTEM:.*Reply only with: (.*)$", line)
                if order:
                    return order.group(1)
        votes: dict[str, float] = defaultdict(float)
        for text, untrusted in read_references(system):
            value = extract_final_number(text)
            if value is None:
                continue
            weight = persuasion if _CONFIDENT.search(text) else 1.0
            votes[value] += weight * (0.5 if untrusted else 1.0)
        if not votes:
            return "I cannot tell. #### 0"
        best = max(votes.values())
        value = next(v for v, w in votes.items() if w == best)
        return f"Combining the responses, the answer is {value}. #### {value}"

    return FunctionModel(answer, name="scripted-aggregator", delay_s=delay_s)
