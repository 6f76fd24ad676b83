"""The built-in benchmarks and scorers of ``moa eval``, registered through the plugin hooks
(``register_datasets``, ``register_scorers``) like a third party's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from moakit.errors import ConfigError
from moakit.eval import datasets as ds
from moakit.eval.bfcl import CATEGORIES as BFCL_CATEGORIES
from moakit.eval.scorers.base import Scorer
from moakit.hookspecs import Register, hookimpl
from moakit.models.base import Model


@dataclass(frozen=True)
class DatasetSource:
    """A named benchmark: ``load(data_dir)`` gives its items; ``scorer`` is its default."""

    load: Callable[[Path], list[ds.Item]]
    scorer: str


@dataclass(frozen=True)
class ScorerSource:
    """A named scorer: ``build(judge, baseline)``. ``judged``: it needs a judge model (and its
    identity then names the judge, so another judge means a new score)."""

    build: Callable[[Model | None, Mapping[str, str] | None], Scorer]
    judged: bool = False

    def __call__(
        self, name: str, judge: Model | None, baseline: Mapping[str, str] | None
    ) -> Scorer:
        if self.judged and judge is None:
            raise ConfigError(f"scorer {name!r} needs a judge model (--judge)", field="judge")
        return self.build(judge, baseline)


def _file(name: str, loader: Callable[[Path], list[ds.Item]]) -> Callable[[Path], list[ds.Item]]:
    return lambda root: loader(ds.data_file(root, name))


def _mt_bench(root: Path) -> list[ds.Item]:
    return ds.load_mt_bench(
        ds.data_file(root, "mt_bench_questions.jsonl"),
        ds.data_file(root, "mt_bench_reference_gpt4.jsonl"),
    )


@hookimpl
def register_datasets(register: Register) -> None:
    register("gsm8k", DatasetSource(_file("gsm8k_train.jsonl", ds.load_gsm8k), "gsm8k"))
    register("humaneval", DatasetSource(lambda _root: ds.load_humaneval(), "humaneval"))
    register("mt-bench", DatasetSource(_mt_bench, "mt-bench"))
    alpaca = _file("alpaca_eval_instructions.jsonl", ds.load_alpaca_eval)
    register("alpaca-eval", DatasetSource(alpaca, "alpaca-eval"))
    register("flask-hard", DatasetSource(_file("flask_hard.jsonl", ds.load_flask_hard), "flask"))
    # BFCL: one dataset per category, as BFCL reports them (each its own accuracy and
    # paired tests); data and checker from the bfcl-eval package.
    for name, category in BFCL_CATEGORIES.items():
        register(name, DatasetSource(_bfcl(category), "bfcl"))


def _bfcl(category: str) -> Callable[[Path], list[ds.Item]]:
    return lambda _root: ds.load_bfcl(category)


def _judged(build: Callable[[Model, Mapping[str, str] | None], Scorer]) -> ScorerSource:
    def checked(judge: Model | None, baseline: Mapping[str, str] | None) -> Scorer:
        assert judge is not None  # ScorerSource checked it
        return build(judge, baseline)

    return ScorerSource(checked, judged=True)


def _pairwise(judge: Model, baseline: Mapping[str, str] | None) -> Scorer:
    from moakit.eval.scorers.judges import PairwiseScorer

    if baseline is None:
        raise ConfigError(
            "scorer 'alpaca-eval' needs baseline outputs (--baseline)", field="baseline"
        )
    return PairwiseScorer(judge, baseline)


def _judge(kind: str) -> Callable[[Model, Mapping[str, str] | None], Scorer]:
    def build(judge: Model, _baseline: Mapping[str, str] | None) -> Scorer:
        from moakit.eval.scorers import judges

        scorer: Scorer = getattr(judges, kind)(judge)
        return scorer

    return build


@hookimpl
def register_scorers(register: Register) -> None:
    from moakit.eval.scorers import ContainsScorer, ExactScorer, NumberScorer
    from moakit.eval.scorers.gsm8k import GSM8KScorer

    def humaneval(_judge: Model | None, _baseline: Mapping[str, str] | None) -> Scorer:
        from moakit.eval.scorers.humaneval import HumanEvalScorer

        return HumanEvalScorer()

    def bfcl(_judge: Model | None, _baseline: Mapping[str, str] | None) -> Scorer:
        from moakit.eval.scorers.bfcl import BFCLScorer

        return BFCLScorer()

    register("gsm8k", ScorerSource(lambda _j, _b: GSM8KScorer()))
    register("number", ScorerSource(lambda _j, _b: NumberScorer()))
    register("humaneval", ScorerSource(humaneval))
    register("exact", ScorerSource(lambda _j, _b: ExactScorer()))
    register("contains", ScorerSource(lambda _j, _b: ContainsScorer()))
    register("mt-bench", _judged(_judge("MTBenchScorer")))
    register("alpaca-eval", _judged(_pairwise))
    register("flask", _judged(_judge("FlaskScorer")))
    register("judge", _judged(_judge("RatingJudgeScorer")))
    register("bfcl", ScorerSource(bfcl))
