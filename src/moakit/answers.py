"""Closed-form answers in free text: the final number of a worked answer, a choice letter, a
program (normalized), and the final answer a reply states, whatever its kind.

A neutral runtime module: the ``vote`` defense (which picks the most common answer at run
time) and the eval's GSM8K/number scorers both read answers with it, so neither imports the
other. Extraction order (first that finds something wins): the last ``#### N`` (GSM8K's own
format), the last ``\\boxed{N}``, the last "answer is N" / "Answer: N", else the last number in
the text. Numbers are normalized before comparison: thousands commas, ``$``, ``%``, unit words,
a unicode minus, trailing zeros and a sentence's final period all go, so ``$1,234.50.`` equals
``1234.5``.
"""

from __future__ import annotations

import ast
import re
from decimal import Decimal, InvalidOperation

# Thousands groups only when they really are groups of three ("1,234" but not "1, 2").
_NUMBER = r"[-−]?\s?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-−]?\.\d+"
_NUMBER_RE = re.compile(rf"(?<![\w.])(?:{_NUMBER})(?:/\d+)?")
_HASHES_RE = re.compile(rf"####\s*\$?\s*({_NUMBER})")
_BOXED_RE = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_IS_RE = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|=|:)\s*:?\s*(?:\*\*)?\s*([^\n]*)", re.IGNORECASE
)


def normalize_number(raw: str) -> str | None:
    """Canonical decimal string of ``raw`` (``"-1,234.50"`` -> ``"-1234.5"``), or None."""
    text = raw.strip().replace("−", "-").replace("$", "").replace(",", "").replace(" ", "")
    text = text.rstrip(".%")
    if "/" in text:  # a simple fraction, e.g. 3/4
        num, _, den = text.partition("/")
        try:
            value = Decimal(num) / Decimal(den)
        except (InvalidOperation, ZeroDivisionError):
            return None
    else:
        try:
            value = Decimal(text)
        except InvalidOperation:
            return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def _last_number(text: str) -> str | None:
    found = _NUMBER_RE.findall(text)
    return normalize_number(found[-1]) if found else None


def extract_final_number(text: str) -> str | None:
    """The final number ``text`` states (see the module docstring for the order), normalized."""
    hashes = _HASHES_RE.findall(text)
    if hashes:
        return normalize_number(hashes[-1])
    boxed = _BOXED_RE.findall(text)
    if boxed:
        inner = boxed[-1].replace("\\$", "").replace("\\%", "").replace("\\!", "")
        inner = re.sub(r"\\(?:text|mathrm)\{[^}]*\}", "", inner)
        frac = re.fullmatch(r"\s*(-?)\\d?frac\{(\d+)\}\{(\d+)\}\s*", inner)
        if frac:
            return normalize_number(f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}")
        number = _last_number(inner)
        if number is not None:
            return number
    stated = _ANSWER_IS_RE.findall(text)
    for tail in reversed(stated):
        found = _NUMBER_RE.findall(tail)
        if found:
            return normalize_number(found[0])
    return _last_number(text)


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    na, nb = normalize_number(a), normalize_number(b)
    return na is not None and na == nb


_FENCE_RE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CHOICE_RE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?\*{0,2}([A-E])\b|^\s*\(?([A-E])[).:]", re.I | re.M
)


def extract_code(text: str) -> str:
    """The first fenced code block, else the whole reply."""
    match = _FENCE_RE.search(text)
    return match.group(1) if match else text


def normalized_code(text: str) -> str | None:
    """The reply's program, normalized (its syntax tree: comments, blank lines and quoting
    do not count), or ``None`` when it is not Python that parses."""
    try:
        return ast.dump(ast.parse(extract_code(text)))
    except (SyntaxError, ValueError):
        return None


def extract_choice(text: str) -> str | None:
    """The last choice letter (A-E) the reply states ("the answer is (B)", a line "C."), upper
    case."""
    found = _CHOICE_RE.findall(text)
    if not found:
        return None
    letter: str = found[-1][0] or found[-1][1]
    return letter.upper()


SHORT_REPLY_WORDS = 8  # a reply this short, on one line, is its own answer


def extract_stated_answer(text: str) -> str | None:
    """The final answer ``text`` states, normalized so that two replies that give the same
    answer in other words compare equal: for any kind of question (early exit on agreement in
    a general-purpose stack).

    - ``#### N`` or ``\\boxed{N}``: the number;
    - else the last "Answer: X" / "the answer is X": the number in X if it has one, else X
      case-folded, with spacing, emphasis and a final period gone;
    - else the program of its first code block (``normalized_code``);
    - else, for a reply of one short line (at most ``SHORT_REPLY_WORDS`` words: "72",
      "Paris."), the reply itself, as above: its number if it has one (none if several), else
      its words;
    - else ``None``: a reply that states no answer cannot agree with another (unlike
      ``extract_final_number``, no fallback to the text's last number, which in a free-form
      reply is rarely its answer).
    """
    if _HASHES_RE.search(text) or _BOXED_RE.search(text):
        return extract_final_number(text)
    for tail in reversed(_ANSWER_IS_RE.findall(text)):
        found = _NUMBER_RE.findall(tail)
        if found:
            return normalize_number(found[0])
        words = " ".join(tail.replace("*", " ").replace("`", " ").split()).rstrip(".").casefold()
        if any(c.isalnum() for c in words):  # not a bare "\\[" opening a formula below
            return words
    if _FENCE_RE.search(text):
        return normalized_code(text)
    reply = text.strip()
    short = "\n" not in reply and len(reply.split()) <= SHORT_REPLY_WORDS
    if reply and short and not _ANSWER_IS_RE.search(reply):  # (an empty "Answer:" says nothing)
        found = _NUMBER_RE.findall(reply)
        if found:  # one number is the answer; several are not one answer
            return normalize_number(found[0]) if len(found) == 1 else None
        words = " ".join(reply.replace("*", " ").replace("`", " ").split()).rstrip(".").casefold()
        return words if any(c.isalnum() for c in words) else None
    return None
