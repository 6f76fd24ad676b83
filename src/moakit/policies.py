"""The run policies a stack config is made of, apart from its members: the strict base every
config model shares, straggler cut-off, retries, the reference pipeline and its defenses, and
the options of the vote and staircase strategies. ``moakit.config`` re-exports every name."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StrictModel(BaseModel):
    # extra="forbid" turns a typo such as ``temprature`` into an error naming it.
    model_config = ConfigDict(extra="forbid", frozen=True)


class StragglerPolicy(StrictModel):
    """Early aggregation: once ``min_successful`` members of a layer have answered, wait at most
    ``grace_s`` seconds, or ``grace_factor`` × the slowest finished member's latency, for the
    rest; then cancel them and move on. With both set, the later cut-off wins."""

    grace_s: float | None = Field(default=None, ge=0)
    grace_factor: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_needed(self) -> StragglerPolicy:
        if self.grace_s is None and self.grace_factor is None:
            raise ValueError("set grace_s or grace_factor")
        return self


class RetryPolicy(StrictModel):
    """The one retry policy (openai-python's): exponential backoff from ``initial_s`` to
    ``max_s`` with jitter, honouring Retry-After; SDK-level retries are switched off."""

    retries: int = Field(default=2, ge=0, le=10)
    initial_s: float = Field(default=0.5, ge=0)
    max_s: float = Field(default=8.0, ge=0)
    # Never wait longer than this for a server's Retry-After; beyond it the member just fails.
    max_retry_after_s: float = Field(default=60.0, ge=0)


class EmbeddingsEndpoint(StrictModel):
    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    timeout_s: float = Field(default=30.0, gt=0)


class ClusterFilterConfig(StrictModel):
    """Settings of the ``cluster`` transform (``moakit.defenses.cluster``): embed a layer's
    references, split them in two, keep the majority when the split is clear."""

    # Below this many references there is no majority worth trusting: keep all.
    min_references: int = Field(default=3, ge=3)
    # The majority cluster must hold at least this share of the references.
    min_majority: float = Field(default=0.6, gt=0.5, le=1.0)
    # A split is "clear" only when the two clusters' centroids are at most this cosine-similar
    # (near-identical answers split at random otherwise).
    max_centroid_similarity: float = Field(default=0.9, ge=0.0, le=1.0)
    # "tfidf": offline (scikit-learn, the ``eval`` extra). "endpoint": an OpenAI-compatible
    # ``POST {base_url}/embeddings`` the operator declares here (key from ``api_key_env``).
    embedder: Literal["tfidf", "endpoint"] = "tfidf"
    endpoint: EmbeddingsEndpoint | None = None

    @model_validator(mode="after")
    def _endpoint_given(self) -> ClusterFilterConfig:
        if self.embedder == "endpoint" and self.endpoint is None:
            raise ValueError("embedder 'endpoint' needs an endpoint table")
        return self


class TrustConfig(StrictModel):
    """Settings of the ``trust`` transform: ``label`` untrusted references, or ``drop`` them
    when at least ``quorum`` trusted members of the layer answered (else they are labelled)."""

    mode: Literal["label", "drop"] = "label"
    quorum: int = Field(default=2, ge=1)


class ReferencesConfig(StrictModel):
    """How one layer's answers become the next layer's references: ``transforms`` run in order
    (names registered in ``moakit.references``; none by default), then ``formatter`` writes the
    block appended to the system prompt. ``fenced`` (the default): each reference framed as data,
    look-alikes of the block's own structure neutralised (``moakit.defenses.fence``), so a
    member's answer cannot end the list or speak as the system. ``paper``: the reference
    implementation's byte-exact block, which the paper presets keep for reproduction."""

    transforms: list[str] = Field(default_factory=list)
    formatter: str = "fenced"
    cluster: ClusterFilterConfig = Field(default_factory=ClusterFilterConfig)
    trust: TrustConfig = Field(default_factory=TrustConfig)


class VoteConfig(StrictModel):
    """The ``vote`` strategy (dropout-and-vote, ``moakit.defenses.vote``): the final aggregator
    runs on ``samples`` seeded random subsets of the last layer's references, each answer is
    extracted (``extractor``: ``gsm8k`` = the final number) and the majority answer wins."""

    samples: int = Field(default=5, ge=1, le=32)
    # References per subset; unset: all but one (leave-one-out style dropout).
    subset_size: int | None = Field(default=None, ge=1)
    seed: int = 0
    extractor: str = "gsm8k"


class StaircaseConfig(StrictModel):
    """Options of ``strategy = "staircase"`` (``moakit.engine.staircase``): the layer above
    (and the final aggregator) writes its answer ``chunk_tokens`` tokens (streamed deltas) at a
    time, continuing its own partial answer as more of the references arrive.

    Every step sees the whole chunks that have arrived from each answering member below (all
    of a finished answer). ``schedule``: ``lockstep`` (step k starts once every answering
    member has produced k chunks, or finished; so the first step waits for everyone's first
    chunk); ``greedy`` (the first step likewise, then each step as soon as the previous one
    ended and a new chunk arrived anywhere)."""

    chunk_tokens: int = Field(default=32, ge=1, le=4096)
    schedule: Literal["lockstep", "greedy"] = "lockstep"


class AdviceEvery(StrictModel):
    """Fresh advice every ``every`` tool iterations of a user turn (1 = every iteration)."""

    every: int = Field(ge=1, le=1000)


class AdviceConfig(StrictModel):
    """How proposers advise an aggregator that calls the caller's tools (``engine.advice``).

    ``refresh``: "user_turn" (default): the proposers answer when the last message is the
    user's, and their answers are reused for the tool-result iterations of that turn;
    "every_iteration": they answer every request; ``{every = N}``: every N iterations.
    ``result_chars``: a tool result longer than this is cut (head and tail kept) in the
    proposers' text-only view of the conversation."""

    refresh: Literal["user_turn", "every_iteration"] | AdviceEvery = "user_turn"
    result_chars: int = Field(default=2000, ge=100, le=1_000_000)


class AgreementConfig(StrictModel):
    """Early exit on agreement (``engine.adaptive``): once at least ``min_answers`` members
    answered (after a layer, or after a cascade's first members) and every answer agrees, the
    run stops and answers with one of them. ``rule``: ``answer`` (the same extracted final
    answer, by the registered answer ``extractor``: ``gsm8k`` = the final number, ``choice`` =
    a choice letter, ``code`` = the program, normalized, ``final`` = the final answer a reply
    states, of any kind: the one a general-purpose stack uses) or ``similarity`` (every pair of
    answers at least ``threshold`` alike, RapidFuzz's token-set ratio on 0..1)."""

    rule: Literal["answer", "similarity"] = "answer"
    extractor: str = "gsm8k"
    threshold: float = Field(default=0.85, gt=0, le=1)
    min_answers: int = Field(default=2, ge=2, le=64)


class CascadeConfig(StrictModel):
    """Sequential fan-out: layer 1 starts with its ``first`` members (cheapest first by
    ``price_out_per_mtok`` when ``order = "price"``, members without a price last; else in
    config order); only when their answers disagree does it escalate to the rest of the layer,
    and then to the layers above and the aggregator."""

    first: int = Field(default=2, ge=1, le=64)
    order: Literal["position", "price"] = "price"


class AdaptiveConfig(StrictModel):
    """Compute spent only where it helps: ``early_exit`` stops on agreement; ``cascade``
    (which needs ``early_exit`` to decide when to escalate) starts layer 1 small."""

    early_exit: AgreementConfig | None = None
    cascade: CascadeConfig | None = None

    @model_validator(mode="after")
    def _cascade_needs_agreement(self) -> AdaptiveConfig:
        if self.cascade is not None and self.early_exit is None:
            raise ValueError("cascade escalates on disagreement: set early_exit too")
        return self


class BudgetConfig(StrictModel):
    """Hard limits on what one query may spend (``engine.budget``). The engine never starts a
    call that could break one: it calls fewer members, runs fewer layers, or goes straight to
    the aggregator (whose share is reserved from the start), and records each cut as a
    ``budget`` decision. Token and cost limits bound each call by its ``max_tokens`` (a member
    without one is given ``default_max_tokens``); prompts are counted at 3 characters a token,
    an over-estimate for English and code. ``max_latency_s`` starts no proposer layer that the
    previous one's duration says would end past 70% of it."""

    max_calls: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    max_latency_s: float | None = Field(default=None, gt=0)
    default_max_tokens: int = Field(default=512, ge=1)

    def tighter(self, other: BudgetConfig | None) -> BudgetConfig:
        """Each limit the smaller of this one's and ``other``'s (a request within the stack's)."""
        if other is None:
            return self
        merged = {}
        for name in ("max_calls", "max_tokens", "max_cost_usd", "max_latency_s"):
            values = [v for v in (getattr(self, name), getattr(other, name)) if v is not None]
            merged[name] = min(values) if values else None
        return BudgetConfig(**merged, default_max_tokens=self.default_max_tokens)

    @property
    def limited(self) -> bool:
        return any(
            v is not None
            for v in (self.max_calls, self.max_tokens, self.max_cost_usd, self.max_latency_s)
        )


class RouterConfig(StrictModel):
    """A router (``moakit.routing``): which members a query is worth, chosen before any is
    called. ``name`` is a registered router; ``options`` are its own (the built-in ``knn``
    takes ``file``, ``k``, ``margin``, ``min_members``)."""

    name: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)
