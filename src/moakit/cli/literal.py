"""Untrusted text (model answers, labels, upstream error messages) shown on a terminal as
text: control characters (ESC starts ANSI sequences that recolour, move the cursor or retitle
the window; BEL, backspace, carriage return rewrite what was shown) and bidi overrides are
written as visible escapes. Rich markup is handled separately: untrusted text only ever goes
to Rich inside ``Text`` objects."""

from __future__ import annotations

import json
from typing import Any

_CONTROLS = [*range(0x00, 0x20), *range(0x7F, 0xA0)]
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_TABLE = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in (*_CONTROLS, *_BIDI)
    if chr(code) not in "\n\t"
}


def literal(text: str) -> str:
    """``text`` with every control character but newline and tab made visible."""
    return text.translate(_TABLE)


def one_line(text: str) -> str:
    """``literal``, newlines and tabs included: for text that must stay on one line."""
    return literal(text).replace("\n", "\\n").replace("\t", "\\t")


# json.dumps escapes C0 controls itself; C1 controls (0x9b is CSI on some terminals) and bidi
# overrides it leaves raw with ensure_ascii=False. Their \u escapes are the same JSON data.
_JSON_TABLE = {code: f"\\u{code:04x}" for code in (*range(0x7F, 0xA0), *_BIDI)}


def json_literal(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON (non-ASCII text kept readable) with no character a terminal obeys."""
    return json.dumps(value, ensure_ascii=False, indent=indent).translate(_JSON_TABLE)
