"""Member trust: the ``trust`` transform.

A stack that mixes endpoints it runs itself with third-party ones marks the latter
``trust = "untrusted"``. Their references are then labelled as such to the next layer (the text
is prefixed, and the ``fenced`` formatter says so in the frame), or, in ``drop`` mode, left out
whenever at least ``quorum`` trusted members of the layer answered (labelled otherwise: a layer
with too few trusted answers still needs the rest).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from moakit.config import StackConfig
from moakit.references import Filtered, Reference, ReferenceTransform
from moakit.result import DefenseAction

UNTRUSTED_PREFIX = "[from an untrusted member] "


def trust_transform(config: StackConfig) -> ReferenceTransform:
    untrusted = {
        (position + 1, member.label)
        for position in range(len(config.layers))
        for member in config.layer_members(position)
        if member.trust == "untrusted"
    }
    settings = config.references.trust

    def apply(references: Sequence[Reference]) -> Filtered:
        flagged = [r for r in references if (r.layer, r.label) in untrusted]
        if not flagged:
            return Filtered(references)
        trusted = len(references) - len(flagged)
        if settings.mode == "drop" and trusted >= settings.quorum:
            kept = [r for r in references if (r.layer, r.label) not in untrusted]
            action = DefenseAction(
                defense="trust",
                layer=0,
                detail=f"dropped {len(flagged)} untrusted references ({trusted} trusted answered)",
                dropped=[r.label for r in flagged],
            )
            return Filtered(kept, (action,))
        out = [
            dataclasses.replace(r, text=UNTRUSTED_PREFIX + r.text, untrusted=True)
            if (r.layer, r.label) in untrusted
            else r
            for r in references
        ]
        action = DefenseAction(
            defense="trust",
            layer=0,
            detail=f"labelled {len(flagged)} untrusted references",
            labelled=[r.label for r in flagged],
        )
        return Filtered(out, (action,))

    return apply
