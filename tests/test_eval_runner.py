"""``moa eval``'s cache, concurrency limit, systems, resumable runner and CLI, on a fake provider
(deterministic answers, counted calls). The embedded model runs in test_eval_embedded.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from moakit.cli.main import cli
from moakit.config import MemberSpec
from moakit.errors import ConfigError, ModelCallError
from moakit.eval.cache import (
    CachedModel,
    ResponseCache,
    model_identity,
)
from moakit.eval.calls import ModelFactory, RetriedModel, solo_member
from moakit.eval.kinds import build_systems
from moakit.eval.records import RecordsFile
from moakit.eval.results import ResultsDir
from moakit.eval.session import EvalSession, EvalSettings
from moakit.eval.systems import System, parse_ranker_choice
from moakit.models.base import ChatRequest, Chunk, Model, collect
from moakit.models.profile import ModelProfile
from moakit.models.provider import ResourcePool
from moakit.models.wrappers import ConcurrencyLimitedModel
from moakit.plugins import register as register_plugin
from moakit.testing.models import FunctionModel
from moakit.testing.plugins import plugin

CALLS: Counter[str] = Counter()


def _fake_answer(request: ChatRequest) -> str:
    """Proposers: right unless (seed + question number) % 3 == 0. Aggregators (references in
    the system message): the most common number among the references. Ranker: picks 2."""
    system = next((m.text for m in request.messages if m.role == "system"), "")
    question = str(request.messages[-1].text)
    CALLS[f"{question}|{request.seed}|{bool(system)}"] += 1
    if "Reply with only the number" in system:
        return "2"
    if "impartial judge" in system + question:
        return "Rating: [[7]]" if "[[rating]]" in system + question else "[[A]]"
    if system:
        numbers = re.findall(r"^\d+\. The answer is (\d+)", system, re.MULTILINE)
        if not numbers:
            return f"A synthesis of the answers to: {question}"
        return f"The answer is {Counter(numbers).most_common(1)[0][0]}"
    if not question.startswith("q"):
        return f"An answer to: {question} (after {len(request.messages)} messages)"
    q = int(question.removeprefix("q"))
    seed = request.seed or 0
    return f"The answer is {q if (seed + q) % 3 else 999}"


def _build(spec: MemberSpec, pool: ResourcePool) -> Model:
    return FunctionModel(_fake_answer, name=spec.model)


register_plugin(plugin(register_providers={"evalfake": _build}), name="test-evalfake")


STACK = """
name = "fake3"
[defaults]
provider = "evalfake"
max_tokens = 16
# The paper's block: the fake aggregator reads numbered references (fencing is the default).
[references]
formatter = "paper"
[[layers]]
members = [{ model = "m", n = 3, seed = 1 }]
[aggregator]
model = "m"
seed = 100
"""


@pytest.fixture
def stack_file(tmp_path: Path) -> Path:
    path = tmp_path / "fake3.toml"
    path.write_text(STACK)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "qs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "answer": str(i), "id": f"q{i}"}) + "\n"
            for i in range(1, 7)
        )
    )
    return path


class Ran:
    """What a run left in ``out``, read back as plain JSON rows."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.results = ResultsDir(out, warn=lambda message: None)

    def load_records(self, system: System) -> dict[str, dict[str, Any]]:
        records = self.results.records(system.info())
        return {k: r.model_dump(mode="json") for k, r in records.items()}

    def records_path(self, system: System) -> Path:
        return RecordsFile(self.out / "records", system.name, system.hash).path

    def stale_files(self, system: System) -> list[Path]:
        return RecordsFile(self.out / "records", system.name, system.hash).stale()


def _run(out: Path, specs: list[str], dataset: Path, **settings: Any) -> Ran:
    options = EvalSettings(
        out_dir=out, dataset=str(dataset), systems=specs, scorer="number", **settings
    )
    asyncio.run(EvalSession(options).run())
    return Ran(out)


# -- cache and limiter ---------------------------------------------------------------------

SPEC = MemberSpec(provider="evalfake", model="m")


def test_cache_serves_identical_requests_and_keys_on_every_field() -> None:
    inner = FunctionModel(lambda r: "hello")
    cache = ResponseCache()
    model = CachedModel(inner, cache, model_identity(SPEC))
    msgs = [{"role": "user", "content": "hi"}]

    async def go() -> list[str]:
        a = await collect(model.stream(ChatRequest(messages=msgs, seed=1)))
        b = await collect(model.stream(ChatRequest(messages=msgs, seed=1)))
        c = await collect(model.stream(ChatRequest(messages=msgs, seed=2)))
        d = await collect(model.stream(ChatRequest(messages=msgs, seed=1, top_p=0.5)))
        return [a.text, b.text, c.text, d.text]

    assert asyncio.run(go()) == ["hello"] * 4
    assert len(inner.requests) == 3 and (cache.hits, cache.misses) == (1, 3)
    other = CachedModel(inner, cache, model_identity(SPEC.model_copy(update={"model": "n"})))
    asyncio.run(collect(other.stream(ChatRequest(messages=msgs, seed=1))))
    assert len(inner.requests) == 4  # another model identity never shares an entry


class _DiesMidStream(Model):
    """Streams some text, then fails: a partial answer must not be cached as if complete."""

    name = "dies"

    def __init__(self) -> None:
        self.calls = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        yield Chunk(text="partial answer")
        if self.calls == 1:
            raise ModelCallError("connection reset", kind="connection")
        yield Chunk(text=" and the rest", finish_reason="stop")


def test_failed_call_is_not_cached() -> None:
    """Guard checked on a broken build (storing in ``finally``): the partial text got cached."""
    inner = _DiesMidStream()
    cache = ResponseCache()
    model = CachedModel(inner, cache, model_identity(SPEC))
    request = ChatRequest(messages=[{"role": "user", "content": "x"}])
    with pytest.raises(ModelCallError):
        asyncio.run(collect(model.stream(request)))
    assert len(cache) == 0 and cache.failures == 1
    assert asyncio.run(collect(model.stream(request))).text == "partial answer and the rest"
    assert inner.calls == 2 and len(cache) == 1
    assert asyncio.run(collect(model.stream(request))).text == "partial answer and the rest"
    assert inner.calls == 2  # now served from the cache


def test_concurrent_identical_requests_call_once() -> None:
    inner = FunctionModel(lambda r: "same", delay_s=0.05)
    model = CachedModel(inner, ResponseCache(), model_identity(SPEC))
    request = ChatRequest(messages=[{"role": "user", "content": "x"}])

    async def go() -> list[str]:
        done = await asyncio.gather(*(collect(model.stream(request)) for _ in range(5)))
        return [c.text for c in done]

    assert asyncio.run(go()) == ["same"] * 5 and len(inner.requests) == 1


def test_endpoint_limit_caps_calls_in_flight() -> None:
    in_flight = peak = 0

    async def slow(request: ChatRequest) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return "x"

    async def go() -> None:
        model = ConcurrencyLimitedModel(FunctionModel(slow), asyncio.Semaphore(2))
        requests = [ChatRequest(messages=[{"role": "user", "content": str(i)}]) for i in range(8)]
        await asyncio.gather(*(collect(model.stream(r)) for r in requests))

    asyncio.run(go())
    assert peak == 2


# -- systems and the runner ----------------------------------------------------------------


def test_systems_hash_changes_with_config(stack_file: Path, tmp_path: Path) -> None:
    a = build_systems([f"moa:{stack_file}"])[0]
    changed = tmp_path / "fake3b.toml"
    changed.write_text(STACK.replace("max_tokens = 16", "max_tokens = 17"))
    b = build_systems([f"moa:{changed},name=moa:fake3"])[0]
    assert a.name == b.name and a.hash != b.hash
    assert parse_ranker_choice("Response 2 is best", 3) == 1
    assert parse_ranker_choice("7", 3) is None


def test_runner_scores_systems_and_reuses_calls(
    stack_file: Path, dataset: Path, tmp_path: Path
) -> None:
    CALLS.clear()
    out = tmp_path / "res"
    specs = [f"{k}:{stack_file}" for k in ("single", "moa", "ranker", "majority", "collab")]
    runner = _run(out, specs, dataset)
    systems = {s.name: s for s in build_systems(specs)}
    recs = {name: runner.load_records(s) for name, s in systems.items()}
    assert all(len(r) == 6 for r in recs.values())
    moa = recs["moa:fake3"]
    # q3: seeds 1,2,3 -> (1+3)%3, (2+3)%3 right, (3+3)%3 wrong: a right majority, kept.
    layer = moa["q3"]["layers"][0]
    assert [m["correct"] for m in layer] == [True, True, False]
    assert moa["q3"]["score"]["correct"] is True
    assert recs["majority:fake3"]["q3"]["extra"]["winner"] == "3"
    assert recs["ranker:fake3"]["q3"]["final"] == layer[1]["output"]  # it picked "2"
    # Every proposer request was made once, whatever number of systems reused it.
    proposer_calls = {k: v for k, v in CALLS.items() if not k.endswith("True")}
    assert proposer_calls and set(proposer_calls.values()) == {1}
    collab = recs["collab:fake3:m#3"]["q3"]
    assert collab["extra"]["alone_correct"] is False and collab["score"]["correct"] is True


def test_resume_skips_finished_items_and_keeps_changed_systems_apart(
    stack_file: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "res"
    _run(out, [f"moa:{stack_file}"], dataset)
    files = sorted((out / "records").iterdir())
    lines = files[0].read_text().splitlines()
    CALLS.clear()
    _run(out, [f"moa:{stack_file}"], dataset)
    assert sorted((out / "records").iterdir()) == files
    assert files[0].read_text().splitlines() == lines  # nothing re-run, nothing appended
    assert sum(CALLS.values()) == 0
    stack_file.write_text(STACK.replace("seed = 100", "seed = 101"))
    _run(out, [f"moa:{stack_file}"], dataset)
    new_files = sorted((out / "records").iterdir())
    assert len(new_files) == 2 and files[0] in new_files
    runner = _run(out, [f"moa:{stack_file}"], dataset)
    assert runner.stale_files(build_systems([f"moa:{stack_file}"])[0]) == [files[0]]
    assert files[0].read_text().splitlines() == lines  # the old results are left alone


def test_resume_retries_failed_items(stack_file: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    runner = _run(out, [f"single:{stack_file}"], dataset)
    system = build_systems([f"single:{stack_file}"])[0]
    path = runner.records_path(system)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[0]["error"] = "upstream 500"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runner = _run(out, [f"single:{stack_file}"], dataset)
    assert len(path.read_text().splitlines()) == 7  # exactly the failed item ran again
    assert runner.load_records(system)[rows[0]["item_id"]]["error"] is None


def test_cli_writes_summary_report_and_plots(
    stack_file: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    args = ["eval", "run", "--dataset", str(dataset), "--out", str(out), "--scorer", "number"]
    for kind in ("single", "moa", "ranker", "self-moa", "majority"):
        args += ["--system", f"{kind}:{stack_file}"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    names = [r["name"] for r in summary["systems"]]
    assert names == [
        "single:fake3",
        "moa:fake3",
        "ranker:fake3",
        "self-moa:fake3",
        "majority:fake3",
    ]
    assert summary["reference"] == "single:fake3"
    assert {c["test"] for c in summary["comparisons"]} == {"mcnemar-exact"}
    moa = summary["analyses"]["moa:fake3"]
    assert moa["layer_curve"][-1]["layer"] == "final"
    assert len(moa["error_correlation"]["matrix"]) == 3
    assert "## MoA analyses: `moa:fake3`" in (out / "report.md").read_text()
    for png in ("layer_curve", "cost_quality", "error_correlation", "length_score"):
        assert (out / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_report_only_claims_no_wall_time_and_dashes_systems_with_nothing_scored(
    stack_file: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    base = ["eval", "run", "--dataset", str(dataset), "--out", str(out), "--scorer", "number"]
    args = [*base, "--system", f"single:{stack_file}", "--system", f"moa:{stack_file}"]
    ran = CliRunner().invoke(cli, args)
    assert ran.exit_code == 0, ran.output
    assert "Wall time of this invocation" in (out / "report.md").read_text()
    # A report-only pass over a system with no record yet (its run was stopped before its
    # first item finished): no seconds, and no "nan" score.
    next((out / "records").glob("moa_fake3.*")).unlink()
    rendered = CliRunner().invoke(cli, [*args, "--report-only"])
    assert rendered.exit_code == 0, rendered.output
    text = (out / "report.md").read_text()
    assert "Wall time of this invocation" not in text
    assert "nan" not in text
    assert "| moa:fake3 | 0/" in text


def test_calls_outside_a_stack_retry_transient_failures_only() -> None:
    # The judge (and the single model) go through the engine's retry loop, as members do.
    replies: list[str | Exception] = [ModelCallError("503", kind="http", status=503), "fine"]
    flaky = FunctionModel(lambda r: replies.pop(0))
    model = RetriedModel(flaky, solo_member(MemberSpec(model="x", retries=2, timeout_s=5)))
    request = ChatRequest(messages=[{"role": "user", "content": "x"}])
    assert asyncio.run(collect(model.stream(request))).text == "fine"
    fatal_model = FunctionModel(lambda r: ModelCallError("bad key", kind="auth"))
    fatal = RetriedModel(fatal_model, solo_member(MemberSpec(model="x")))
    with pytest.raises(ModelCallError, match="bad key"):
        asyncio.run(collect(fatal.stream(request)))
    assert len(fatal_model.requests) == 1  # an auth error is not worth a second try


register_plugin(
    plugin(
        register_providers={
            "judgedown": lambda spec, pool: FunctionModel(
                lambda r: ModelCallError("judge down", kind="auth")
            )
        }
    ),
    name="test-judgedown",
)


def test_a_failing_judge_fails_the_item_not_the_run(
    dataset: Path, tmp_path: Path, stack_file: Path
) -> None:
    system = build_systems([f"single:{stack_file}"])[0]
    judge = MemberSpec(provider="judgedown", model="j")
    options = EvalSettings(
        out_dir=tmp_path / "k",
        dataset=str(dataset),
        systems=[f"single:{stack_file}"],
        scorer="judge",
        judge=judge,
    )
    asyncio.run(EvalSession(options).run())
    records = Ran(tmp_path / "k").load_records(system)
    assert len(records) == 6
    assert all("judge down" in (r["error"] or "") for r in records.values())


def test_cli_pairwise_run_reports_win_rates(stack_file: Path, tmp_path: Path) -> None:
    data = Path(__file__).parent / "data"
    out = tmp_path / "pairwise"
    args = [
        "eval",
        "run",
        "--dataset",
        "alpaca-eval",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--system",
        f"single:{stack_file}",
        "--judge",
        "evalfake:judge",
        "--judge-price",
        "10,30",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    row = json.loads((out / "summary.json").read_text())["systems"][0]
    # The fake judge always answers [[A]]: one win and one loss per item, in the two orders.
    assert row["score"]["mean"] == 0.5 and row["win_rate"] == 50.0
    assert 0 <= row["length_controlled_winrate"] <= 100
    assert row["judge_tokens_in"] > 0 and row["judge_cost_usd"] > 0
    exported = json.loads((out / "model_outputs" / "single_fake3.json").read_text())
    assert len(exported) == 3 and {"instruction", "output", "generator"} <= set(exported[0])


def test_mt_bench_second_turn_is_a_real_turn(stack_file: Path, tmp_path: Path) -> None:
    data = Path(__file__).parent / "data"
    out = tmp_path / "mt"
    args = [
        "eval",
        "run",
        "--dataset",
        "mt-bench",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--system",
        f"moa:{stack_file}",
        "--judge",
        "evalfake:judge",
    ]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    system = build_systems([f"moa:{stack_file}"])[0]
    path = out / "records" / f"moa_fake3.{system.hash}.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(len(r["finals"]) == 2 for r in records)
    assert all(r["score"]["detail"]["ratings"] == [7.0, 7.0] for r in records)
    assert all(r["score"]["value"] == 7.0 for r in records)
    # Turn 2's proposers saw the conversation with the system's own first answer in it.
    for r in records:
        assert r["finals"][0].startswith("A synthesis of the answers to:")
        assert all(m["output"].endswith("(after 3 messages)") for m in r["layers"][0])


def test_budget_overrides_reach_every_call(stack_file: Path) -> None:
    moa, single, ranker = build_systems(
        [f"moa:{stack_file}", f"single:{stack_file}", f"ranker:{stack_file}"],
        max_tokens=200,
        timeout_s=600,
    )
    assert moa.config is not None and ranker.config is not None and single.member is not None
    specs = [*moa.config.layer_members(0), *moa.config.aggregators()]
    assert {(s.max_tokens, s.timeout_s) for s in specs} == {(200, 600.0)}
    assert (single.member.max_tokens, single.member.timeout_s) == (200, 600.0)
    assert ranker.config.aggregators()[0].max_tokens == 8  # the ranker only writes a number
    assert moa.hash != build_systems([f"moa:{stack_file}"])[0].hash


async def test_eval_wrappers_keep_the_wrapped_models_capabilities_and_their_own_path() -> None:
    # A staircase aggregator needs prefill: behind the eval's cache and retry wrappers the engine
    # must still see it (they reported the base class's False before), and complete() must
    # still go through the cache rather than straight to the wrapped model.
    class Prefilling(Model):
        name = "p"
        profile = ModelProfile(prefill=True)
        calls = 0

        async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
            Prefilling.calls += 1
            yield Chunk(text="ok", finish_reason="stop")

    cache = ResponseCache()
    cached = CachedModel(Prefilling(), cache, {"model": "p"})
    retrying = RetriedModel(cached, solo_member(MemberSpec(model="p")))
    assert cached.profile.prefill and retrying.profile.prefill
    request = ChatRequest([{"role": "user", "content": "hi"}])
    assert (await retrying.complete(request)).text == "ok"
    assert (await retrying.complete(request)).text == "ok"
    assert Prefilling.calls == 1  # the second answer came from the cache


def test_items_option_runs_a_system_on_a_subset_and_keeps_its_hash(
    stack_file: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "res"
    specs = [f"moa:{stack_file}", f"collab:{stack_file},items=2"]
    runner = _run(out, specs, dataset)
    systems = {s.name: s for s in build_systems(specs)}
    assert len(runner.load_records(systems["moa:fake3"])) == 6
    collab = runner.load_records(systems["collab:fake3:m#1"])
    assert sorted(collab) == ["q1", "q2"]
    # A subset decides which items run, not any answer: the same records serve a full run.
    full = build_systems([f"collab:{stack_file}"])[0]
    assert full.hash == systems["collab:fake3:m#1"].hash and full.max_items is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("moa:{stack},adversay=deceptive@1:0", "unknown option 'adversay' for moa"),
        ("single:{stack},n=3", "unknown option 'n' for single"),
        ("collab:{stack},items=0", "items must be a positive integer"),
        ("self-moa:{stack},n=three", "n must be a positive integer"),
    ],
)
def test_system_options_are_checked(stack_file: Path, spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_systems([spec.format(stack=stack_file)])


AGG_SYSTEMS: list[str] = []


def _streamed_answer(request: ChatRequest) -> str:
    system = next((m.text for m in request.messages if m.role == "system"), "")
    if system:
        AGG_SYSTEMS.append(system)
        return "The answer is 1"
    return f"The answer is {request.seed} " + " ".join(f"w{i}" for i in range(20))


register_plugin(
    plugin(
        register_providers={
            "evalstream": lambda spec, pool: FunctionModel(
                _streamed_answer, name=spec.model, per_token_s=0.003, prefill=True
            )
        }
    ),
    name="test-evalstream",
)


def test_staircase_systems_stream_live_and_never_from_the_cache(
    dataset: Path, tmp_path: Path
) -> None:
    """A cache hit is a whole answer at once: a staircase served from it would see complete
    references at its first step, i.e. be plain MoA under another name."""
    layered = tmp_path / "s.toml"
    layered.write_text(STACK.replace('"evalfake"', '"evalstream"').replace("fake3", "s"))
    stair = tmp_path / "stair.toml"
    stair.write_text(
        'strategy = "staircase"\nstaircase = { chunk_tokens = 2 }\n'
        + layered.read_text().replace('name = "s"', 'name = "stair"')
    )
    AGG_SYSTEMS.clear()
    out = tmp_path / "res"
    runner = _run(out, [f"moa:{layered}", f"moa:{stair}"], dataset)
    moa, staircase = (
        runner.load_records(s) for s in build_systems([f"moa:{layered}", f"moa:{stair}"])
    )
    assert len(moa) == len(staircase) == 6
    # The staircase system asked for exactly the moa system's proposals, and got them live.
    assert all(r["cache_hits"] == 0 and r["calls"] >= 4 for r in staircase.values())
    first_steps = AGG_SYSTEMS[6:]  # after the six layered aggregations
    partial = [s for s in first_steps if "w19" not in s]
    assert partial, "no staircase step saw partial references"


def test_embedded_calls_are_left_to_the_batch_scheduler() -> None:
    factory = ModelFactory(ResponseCache(), {}, 4)
    spec = MemberSpec(provider="local", model="smollm2-135m")
    model = factory.model_for(spec)
    assert isinstance(model, CachedModel)
    assert not isinstance(model.wrapped, ConcurrencyLimitedModel)  # the scheduler batches
    limited = ModelFactory(ResponseCache(), {"local": 2}, 4).model_for(spec)
    assert isinstance(limited, CachedModel)
    assert isinstance(limited.wrapped, ConcurrencyLimitedModel)  # an explicit limit holds


def test_records_keep_what_each_defense_did(
    stack_file: Path, dataset: Path, tmp_path: Path
) -> None:
    specs = [f"moa:{stack_file},adversary=injector@1:2,defense=fence+trust", f"moa:{stack_file}"]
    runner = _run(tmp_path / "res", specs, dataset)
    defended, clean = (runner.load_records(s) for s in build_systems(specs))
    assert len(defended) == len(clean) == 6
    for record in defended.values():
        names = [d["defense"] for d in record["defenses"]]
        assert names == ["trust", "fence"], names
        trust = record["defenses"][0]
        assert trust["dropped"] == ["m#3"] and trust["layer"] == 2
    assert all(r["defenses"] == [] for r in clean.values())


def test_trust_needs_someone_to_distrust(stack_file: Path, dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no member is untrusted"):
        build_systems([f"moa:{stack_file},defense=trust"])
    with pytest.raises(ConfigError, match="add defense=trust"):
        build_systems([f"moa:{stack_file},untrusted=1:0"])
    # The cost of distrusting an honest member on a clean stack: its reference is dropped.
    spec = f"moa:{stack_file},untrusted=1:0,defense=trust"
    (system,) = build_systems([spec])
    assert system.name == "moa:fake3,untrusted=1:0,defense=trust"
    runner = _run(tmp_path / "res", [spec], dataset)
    records = runner.load_records(system)
    assert len(records) == 6
    for record in records.values():
        assert record["defenses"][0]["dropped"] == ["m#1"]


def test_cache_off_answers_live_under_the_same_hash(
    stack_file: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "res"
    _run(out, [f"moa:{stack_file}"], dataset)
    (live,) = build_systems([f"moa:{stack_file},cache=off"])
    assert live.live and live.hash == build_systems([f"moa:{stack_file}"])[0].hash
    records = out / "records" / next(p.name for p in (out / "records").iterdir())
    records.write_text("\n".join(records.read_text().splitlines()[:2]) + "\n")  # drop 4 items
    CALLS.clear()
    runner = _run(out, [f"moa:{stack_file},cache=off"], dataset)
    redone = [r for r in runner.load_records(live).values() if r["item_id"] not in ("q1", "q2")]
    assert len(redone) == 4 and all(r["cache_hits"] == 0 for r in redone)
    assert sum(CALLS.values()) == 4 * 4  # every call of the four items made again
    with pytest.raises(ConfigError, match="cache must be on or off"):
        build_systems([f"moa:{stack_file},cache=no"])


def test_chunk_option_sweeps_a_staircase_stack(stack_file: Path, tmp_path: Path) -> None:
    stair = tmp_path / "stair.toml"
    stair.write_text(
        'strategy = "staircase"\nstaircase = { chunk_tokens = 2 }\n'
        + STACK.replace('"evalfake"', '"evalstream"').replace("fake3", "stair")
    )
    base, swept = build_systems([f"moa:{stair}", f"moa:{stair},chunk=8"])
    assert swept.name == "moa:stair,chunk=8" and swept.hash != base.hash
    assert swept.config is not None and swept.config.staircase.chunk_tokens == 8
    with pytest.raises(ConfigError, match="chunk= is for staircase stacks"):
        build_systems([f"moa:{stack_file},chunk=8"])


def test_a_compromised_member_appends_the_payload_to_its_real_answer(
    stack_file: Path, dataset: Path, tmp_path: Path
) -> None:
    """``adversary=compromised@L:S``: the member is asked nothing unusual (its honest answer is
    the clean stack's, from the cache) and the payload is appended on the wire, to it alone."""
    from moakit.eval.redteam import injection_payload

    specs = [f"moa:{stack_file}", f"moa:{stack_file},adversary=compromised@1:2"]
    clean_system, attacked_system = build_systems(specs)
    assert attacked_system.name == "moa:fake3,adversary=compromised@1:2"
    assert attacked_system.hash != clean_system.hash
    assert attacked_system.config is not None
    assert all(m.system is None for m in attacked_system.config.layer_members(0))
    runner = _run(tmp_path / "res", specs, dataset)
    clean, attacked = (runner.load_records(s) for s in (clean_system, attacked_system))
    assert len(attacked) == len(clean) == 6  # (an empty run would pass the loop below)
    payload = injection_payload("0").strip()
    for item, record in attacked.items():
        ours = {m["label"]: m["output"] for m in record["layers"][0]}
        theirs = {m["label"]: m["output"] for m in clean[item]["layers"][0]}
        assert ours["m#1"] == theirs["m#1"] and ours["m#2"] == theirs["m#2"]
        assert ours["m#3"].endswith(payload), ours["m#3"]
        assert ours["m#3"].removesuffix(payload).strip() == theirs["m#3"]
        assert record["cache_hits"] >= 3  # the three honest answers, not new calls


def test_a_compromised_member_is_distrusted_by_the_trust_defense(
    stack_file: Path, dataset: Path, tmp_path: Path
) -> None:
    spec = f"moa:{stack_file},adversary=compromised@1:2,defense=trust"
    runner = _run(tmp_path / "res", [spec], dataset)
    (system,) = build_systems([spec])
    records = runner.load_records(system)
    assert len(records) == 6  # (an empty run would pass the loop below)
    for record in records.values():
        assert record["defenses"][0]["dropped"] == ["m#3"]


def test_the_frontier_counts_what_adaptive_systems_spend_and_tests_them_against_full_moa(
    stack_file: Path, dataset: Path, tmp_path: Path
) -> None:
    # The cascade asks two proposers (seeds 1 and 2) first: both are right, and so agree,
    # exactly when q % 3 == 0 (q3, q6); otherwise it escalates to the whole stack.
    adaptive = tmp_path / "fake3-adaptive.toml"
    adaptive.write_text(
        stack_file.read_text().replace('name = "fake3"', 'name = "fake3-adaptive"')
        + '\n[adaptive]\nearly_exit = { rule = "answer" }\n'
        + 'cascade = { first = 2, order = "position" }\n'
    )
    out = tmp_path / "frontier"
    args = ["eval", "run", "--dataset", str(dataset), "--out", str(out), "--scorer", "number"]
    for spec in (f"single:{stack_file}", f"moa:{stack_file}", f"moa:{adaptive}"):
        args += ["--system", spec]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    per_item = summary["frontier"]["per_item"]
    full, cheap = per_item["moa:fake3"], per_item["moa:fake3-adaptive"]
    assert full["calls_mean"] == 4 and full["early_exits"] == 0
    assert cheap["early_exits"] == 2 and cheap["escalations"] == 4
    # Exits cost 2 calls (saving the third proposer and the aggregator), the rest 4.
    assert cheap["calls_mean"] == (2 * 2 + 4 * 4) / 6 and cheap["calls_saved"] == 4
    (test,) = summary["frontier"]["adaptive_vs_full"]
    assert (test["system"], test["reference"]) == ("moa:fake3-adaptive", "moa:fake3")
    assert "## Spend per item (the frontier)" in (out / "report.md").read_text()
    assert (out / "plots" / "frontier.png").read_bytes()[:4] == b"\x89PNG"


def test_moa_eval_route_trains_on_one_split_and_judges_on_another(
    stack_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "many.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "answer": str(i), "id": f"q{i}"}) + "\n"
            for i in range(1, 13)
        )
    )
    out = tmp_path / "route"
    ran = CliRunner().invoke(
        cli,
        [
            "eval",
            "run",
            "--dataset",
            str(data),
            "--out",
            str(out),
            "--scorer",
            "number",
            "--system",
            f"moa:{stack_file}",
        ],
        catch_exceptions=False,
    )
    assert ran.exit_code == 0, ran.output
    saved = tmp_path / "router.json"
    args = [
        "eval",
        "route",
        "--out",
        str(out),
        "--system",
        "moa:fake3",
        "--train",
        "0:6",
        "--test",
        "6:12",
        "--save",
        str(saved),
        "--k",
        "1",
    ]
    routed = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert routed.exit_code == 0, routed.output
    judged = json.loads(routed.stdout)
    assert judged["items"] == 6 and judged["members_all"] == 3
    # Every item had two right members of three, so calling all is always right; k=1 routes
    # to the members right on the single nearest training item.
    assert judged["any_right_all"] == 1.0 and 1 <= judged["members_mean"] <= 3
    assert json.loads(saved.read_text())["format"] == "moakit-knn-router/1"
    overlap = CliRunner().invoke(cli, [*args[:8], "--test", "3:9"])
    assert overlap.exit_code != 0 and "overlap" in overlap.output
