"""The reference pipeline: how one layer's answers reach the next layer's prompt.

    layer outputs ─▶ [Reference records] ─▶ transform ─▶ transform ... ─▶ formatter ─▶ prompt block

References are records, not bare strings, so that a transform can decide by who said what
(fencing, outlier filtering, trust labels). The chain is empty (identity) by default and the
default formatter writes the paper's byte-exact block (``moakit.prompts.references_block``).
Transforms and formatters are plugins (hooks ``register_reference_transforms`` and
``register_reference_formatters``) named by a stack config; a ``Stack`` also accepts a
``ReferencePipeline`` object directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from moakit.config import StackConfig
from moakit.hookspecs import Register, hookimpl
from moakit.plugins import registry
from moakit.policies import ReferencesConfig
from moakit.prompts import references_block
from moakit.result import DefenseAction, MemberOutput


@dataclass(frozen=True)
class Reference:
    """One answer passed on as a reference."""

    text: str
    label: str
    model: str
    layer: int  # 1-based layer that produced it
    index: int  # 0-based position in that layer
    truncated: bool = False  # the answer hit max_tokens: kept, but marked
    untrusted: bool = False  # set by the ``trust`` defense for an untrusted member's answer


@dataclass(frozen=True)
class Filtered:
    """What a transform returns when it wants its action recorded in ``Result.defenses``."""

    references: Sequence[Reference]
    actions: Sequence[DefenseAction] = ()


@dataclass(frozen=True)
class Formatted:
    """What a formatter returns when it wants its action recorded in ``Result.defenses``."""

    text: str
    actions: Sequence[DefenseAction] = ()


# A transform may be async (e.g. one that calls an embeddings endpoint).
ReferenceTransform = Callable[
    [Sequence[Reference]],
    Sequence[Reference] | Filtered | Awaitable[Sequence[Reference] | Filtered],
]
# A transform that needs the stack (its members' trust, its settings) is built from it.
TransformFactory = Callable[[StackConfig], ReferenceTransform]
# (references, the stack's aggregate prompt) -> the block appended to the system message.
ReferenceFormatter = Callable[[Sequence[Reference], str], str | Formatted]


def paper_formatter(references: Sequence[Reference], prompt: str) -> str:
    """The reference implementation's block: the prompt, then ``\\n{i}. {text}`` from 1."""
    return references_block([r.text for r in references], prompt)


@hookimpl
def register_reference_formatters(register: Register) -> None:
    register("paper", paper_formatter)


def from_outputs(members: Sequence[MemberOutput]) -> list[Reference]:
    """The answers of a layer that answered, in member order, as references."""
    return [
        Reference(
            text=m.output,
            label=m.label,
            model=m.model,
            layer=m.layer,
            index=m.index,
            truncated=m.truncated,
        )
        for m in members
        if m.ok and m.output is not None
    ]


@dataclass(frozen=True)
class ReferencePipeline:
    transforms: tuple[ReferenceTransform, ...] = ()
    formatter: ReferenceFormatter = paper_formatter

    @classmethod
    def from_config(
        cls, config: ReferencesConfig, stack: StackConfig | None = None
    ) -> ReferencePipeline:
        """``stack`` is passed to transform factories (the ``trust`` defense reads its members'
        trust from it); without it they see an empty one-member stack."""
        plugins = registry()
        transforms = []
        for i, name in enumerate(config.transforms):
            factory: TransformFactory = plugins.transforms.get(
                name, field=f"references.transforms.{i}"
            )
            transforms.append(factory(stack or _bare_stack(config)))
        formatter: ReferenceFormatter = plugins.formatters.get(
            config.formatter, field="references.formatter"
        )
        return cls(tuple(transforms), formatter)

    async def apply(self, references: Sequence[Reference]) -> list[Reference]:
        return (await self.apply_recorded(references))[0]

    async def apply_recorded(
        self, references: Sequence[Reference]
    ) -> tuple[list[Reference], list[DefenseAction]]:
        """The transformed references and what each defense among the transforms did."""
        out = list(references)
        actions: list[DefenseAction] = []
        for transform in self.transforms:
            produced = transform(out)
            if inspect.isawaitable(produced):
                produced = await produced
            if isinstance(produced, Filtered):
                actions.extend(produced.actions)
                produced = produced.references
            out = list(produced)
        return out, actions

    def block(self, references: Sequence[Reference], prompt: str) -> str | None:
        """The formatted block, or ``None`` when there is nothing to inject (layer 1)."""
        return self.block_recorded(references, prompt)[0]

    def block_recorded(
        self, references: Sequence[Reference], prompt: str
    ) -> tuple[str | None, list[DefenseAction]]:
        if not references:
            return None, []
        produced = self.formatter(references, prompt)
        if isinstance(produced, Formatted):
            return produced.text, list(produced.actions)
        return produced, []


def _bare_stack(config: ReferencesConfig) -> StackConfig:
    return StackConfig.model_validate(
        {"layers": [[{"model": "-"}]], "aggregator": {"model": "-"}, "references": config}
    )
