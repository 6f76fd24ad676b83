"""Strings that came off the wire. JSON may encode lone UTF-16 surrogates (``"\\ud800"``), which
Python decodes into a ``str`` no backend can encode; they are the client's error, caught here so
the 400 names the field instead of a backend failing with a 502."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError


def check_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "invalid_unicode", "string contains invalid Unicode (a lone surrogate)"
        ) from None
    return value


Text = Annotated[str, AfterValidator(check_text)]
