"""Keeping secrets out of the trace store: every text that is written goes through ``Redactor``.

Model outputs and upstream errors are untrusted: a model may echo a key it saw, an error may
quote a header. So the store does not trust that adapters scrubbed: it replaces the value of
every key-like environment variable, and ``authorization``/``api_key`` patterns
(``moakit.secrets.scrub``), in every string it stores. The logic lives in ``moakit.secrets``,
shared with the scrubbing of answers and errors.
"""

from moakit.secrets import Redactor, secret_values

__all__ = ["Redactor", "secret_values"]
