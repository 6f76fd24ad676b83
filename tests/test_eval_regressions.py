"""Regression tests for ``moa eval`` bugs found by review and by trying it as a new user
(issues 22 and 27). Each runs the public surface (the CLI, ``build_systems``) on fake
providers, so it states the bug the way a user met it."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from moakit.cli.main import cli
from moakit.config import MemberSpec
from moakit.errors import ConfigError, ModelCallError
from moakit.eval.kinds import build_systems
from moakit.models.base import ChatRequest, Chunk, Model, Usage
from moakit.models.provider import ResourcePool
from moakit.testing.models import FunctionModel
from moakit.testing.plugins import register_provider

CALLS: Counter[str] = Counter()


def _by_host(spec: MemberSpec, pool: ResourcePool) -> Model:
    """Answers with the endpoint it was built for, so a record shows which host answered."""
    host = spec.base_url or "default"

    def answer(request: ChatRequest) -> str:
        CALLS[host] += 1
        return f"The answer is 1 from {host}"

    return FunctionModel(answer, name=spec.model)


def _flaky(spec: MemberSpec, pool: ResourcePool) -> Model:
    """Fails the first call for each question with a retryable 503, then answers."""

    def answer(request: ChatRequest) -> str | Exception:
        question = str(request.messages[-1].text)
        CALLS[question] += 1
        if CALLS[question] == 1:
            return ModelCallError("upstream 503", kind="http", status=503)
        return "The answer is 1"

    return FunctionModel(answer, name=spec.model)


class _CutShort(Model):
    """Stops at its token budget: the provider says ``finish_reason = "length"``."""

    name = "cut"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        yield Chunk(text="The answer is 1 and furthermore")
        yield Chunk(finish_reason="length", usage=Usage(prompt_tokens=3, completion_tokens=8))


register_provider("byhost", _by_host)
register_provider("flakyfake", _flaky)
register_provider("cutfake", lambda spec, pool: _CutShort())


def _dataset(tmp_path: Path, answers: list[str] | None = None, name: str = "qs.jsonl") -> Path:
    path = tmp_path / name
    answers = answers or ["1", "1", "1"]
    path.write_text(
        "".join(
            json.dumps({"prompt": f"q{i}", "answer": a, "id": f"q{i}"}) + "\n"
            for i, a in enumerate(answers)
        )
    )
    return path


def _stack(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _eval(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["eval", "run", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _records(out: Path, stem: str) -> list[dict[str, object]]:
    path = next((out / "records").glob(f"{stem}.*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- issue 22 item 6: bugs confirmed by review ----------------------------------------------

TWO_HOSTS = """
name = "twohosts"
[defaults]
provider = "byhost"
[[layers]]
members = [
  { model = "m", base_url = "http://a.example/v1" },
  { model = "m", base_url = "http://b.example/v1" },
]
[aggregator]
model = "m"
base_url = "http://c.example/v1"
"""


def test_members_with_one_model_name_on_two_endpoints_are_answered_by_their_own(
    tmp_path: Path,
) -> None:
    CALLS.clear()
    stack = _stack(tmp_path, TWO_HOSTS)
    out = tmp_path / "out"
    code, output = _eval(
        "--dataset", str(_dataset(tmp_path)), "--out", str(out), "--system", f"moa:{stack}"
    )
    assert code == 0, output
    records = _records(out, "moa_twohosts")
    assert len(records) == 3
    for record in records:
        layer = record["layers"][0]  # type: ignore[index]
        assert [m["output"] for m in layer] == [
            "The answer is 1 from http://a.example/v1",
            "The answer is 1 from http://b.example/v1",
        ]
        assert record["final"] == "The answer is 1 from http://c.example/v1"
    # Each endpoint answered its own calls; the cache kept them apart (a rerun calls nothing).
    assert (
        Counter({"http://a.example/v1": 3, "http://b.example/v1": 3, "http://c.example/v1": 3})
        == CALLS
    )
    CALLS.clear()
    rerun = out.parent / "again"
    code, output = _eval(
        "--dataset",
        str(_dataset(tmp_path)),
        "--out",
        str(rerun),
        "--system",
        f"moa:{stack}",
        "--cache",
        str(out / "cache.sqlite"),
    )
    assert code == 0, output
    assert sum(CALLS.values()) == 0
    assert _records(rerun, "moa_twohosts")[0]["layers"] == records[0]["layers"]


NO_RETRIES = """
name = "noretry"
[defaults]
provider = "flakyfake"
retries = 0
[[layers]]
members = [{ model = "m" }]
[aggregator]
model = "m"
"""


def test_retries_zero_means_no_retry_for_a_single_model(tmp_path: Path) -> None:
    CALLS.clear()
    stack = _stack(tmp_path, NO_RETRIES)
    out = tmp_path / "out"
    code, output = _eval(
        "--dataset", str(_dataset(tmp_path)), "--out", str(out), "--system", f"single:{stack}"
    )
    assert code == 0, output
    assert Counter({"q0": 1, "q1": 1, "q2": 1}) == CALLS  # one call each, never a second
    records = _records(out, "single_noretry")
    assert len(records) == 3 and all("503" in str(r["error"]) for r in records)


def test_a_records_file_cut_mid_line_is_resumed_with_a_warning(tmp_path: Path) -> None:
    stack = _stack(tmp_path, TWO_HOSTS)
    data = _dataset(tmp_path)
    out = tmp_path / "out"
    args = ["--dataset", str(data), "--out", str(out), "--system", f"single:{stack}"]
    assert _eval(*args)[0] == 0
    path = next((out / "records").glob("single_twohosts.*.jsonl"))
    text = path.read_text()
    cut = text.rstrip("\n").rfind("\n") + 40  # a killed run: the last record half written
    path.write_text(text[:cut])
    code, output = _eval(*args)
    assert code == 0, output
    assert "warning" in output and path.name in output and "line 3" in output
    records = _records(out, "single_twohosts")
    assert sorted(str(r["item_id"]) for r in records) == ["q0", "q1", "q2"]
    assert path.read_text().endswith("\n")


SMALL = """
name = "small"
[defaults]
provider = "byhost"
[[layers]]
members = [{ model = "m", n = 3, seed = 1 }]
[aggregator]
model = "m"
"""


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("moa:{s},adversary=deceptive@0:1", "adversary"),
        ("moa:{s},adversary=deceptive@1:9", "adversary"),
        ("moa:{s},adversary=deceptive@4:0", "adversary"),
        ("moa:{s},adversary=liar", "adversary"),
        ("moa:{s},adversary=", "adversary"),
        ("moa:{s},untrusted=0:0,defense=trust", "untrusted"),
        ("moa:{s},untrusted=x,defense=trust", "untrusted"),
        ("moa:{s},untrusted=1:0", "defense=trust"),
        ("moa:{s},defense=shield", "defense"),
        ("moa:{s},defense=", "defense"),
        ("moa:{s},chunk=4", "chunk"),
        ("moa:{s},name=", "name"),
        ("moa:{s},items=-1", "items"),
        ("moa:{s},cache=maybe", "cache"),
        ("moa:{s},bogus=1", "bogus"),
        ("moa:{s},adversary", "key=value"),
        ("self-moa:{s},n=0", "n must be"),
        ("single:{s},member=nobody", "member"),
        ("majority:{s},source=nope", "nope"),
        ("moa:", "stack"),
        ("nope:{s}", "KIND"),
    ],
)
def test_every_bad_system_option_is_a_config_error_naming_it(
    tmp_path: Path, option: str, words: str
) -> None:
    stack = _stack(tmp_path, SMALL)
    spec = option.format(s=stack)
    with pytest.raises(ConfigError) as info:
        build_systems([spec])
    assert words in str(info.value)


def test_a_bad_adversary_is_one_line_from_moa_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from moakit.cli.main import main

    stack = _stack(tmp_path, SMALL)
    argv = ["moa", "eval", "run", "--dataset", str(_dataset(tmp_path)), "--out"]
    argv += [str(tmp_path / "o"), "--system", f"moa:{stack},adversary=deceptive@0:1"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and "adversary" in err and len(err.splitlines()) == 1


# -- issue 27 item 8: moa eval on your own data is right or loud ----------------------------


def _answering(text: str) -> str:
    return """
name = "say"
[defaults]
provider = "sayfake"
[[layers]]
members = [{ model = "m" }]
[aggregator]
model = "m"
""".replace("sayfake", text)


register_provider(
    "saysix",
    lambda spec, pool: FunctionModel(lambda r: "Let me think. 4 + 2 = 6.\nThe answer is 6."),
)
register_provider("sayparis", lambda spec, pool: FunctionModel(lambda r: "It is Paris."))


def test_numeric_answers_are_scored_on_the_reply_s_final_number_by_default(
    tmp_path: Path,
) -> None:
    stack = _stack(tmp_path, _answering("saysix"))
    data = _dataset(tmp_path, ["6", "#### 6", "Four plus two is six.\n#### 6"])
    out = tmp_path / "out"
    code, output = _eval("--dataset", str(data), "--out", str(out), "--system", f"single:{stack}")
    assert code == 0, output
    assert "scorer: number" in output  # the run says which scorer, and why
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scorer"] == "number"
    assert summary["systems"][0]["score"]["mean"] == 1.0


def test_a_scorer_that_fails_nearly_every_reply_is_loud(tmp_path: Path) -> None:
    stack = _stack(tmp_path, _answering("sayparis"))
    data = _dataset(tmp_path, ["Paris of France"] * 5)
    out = tmp_path / "out"
    code, output = _eval("--dataset", str(data), "--out", str(out), "--system", f"single:{stack}")
    assert code == 0, output
    assert re.search(r"warning: .*5 of 5", output), output


def test_changing_the_scorer_rescores_the_stored_answers(tmp_path: Path) -> None:
    CALLS.clear()
    stack = _stack(tmp_path, TWO_HOSTS)
    data = _dataset(tmp_path)
    out = tmp_path / "out"
    base = ["--dataset", str(data), "--out", str(out), "--system", f"single:{stack}"]
    assert _eval(*base, "--scorer", "exact")[0] == 0
    exact = json.loads((out / "summary.json").read_text())["systems"][0]["score"]["mean"]
    calls = sum(CALLS.values())
    code, output = _eval(*base, "--scorer", "number")
    assert code == 0, output
    summary = json.loads((out / "summary.json").read_text())
    assert (exact, summary["systems"][0]["score"]["mean"]) == (0.0, 1.0)
    assert summary["scorer"] == "number"
    assert sum(CALLS.values()) == calls  # rescored from the stored answers: no new call


def test_report_only_rebuilds_the_report_of_the_systems_the_directory_holds(
    tmp_path: Path,
) -> None:
    stack = _stack(tmp_path, TWO_HOSTS)
    data = _dataset(tmp_path)
    out = tmp_path / "out"
    ran = ["--dataset", str(data), "--out", str(out)]
    assert _eval(*ran, "--system", f"single:{stack}", "--system", f"moa:{stack}")[0] == 0
    before = (out / "report.md").read_text()
    code, output = _eval("--dataset", str(data), "--out", str(out), "--report-only")
    assert code == 0, output
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["systems"]] == ["single:twohosts", "moa:twohosts"]
    after = (out / "report.md").read_text()
    assert "| single:twohosts |" in before and "| moa:twohosts |" in before
    assert "| single:twohosts |" in after and "| moa:twohosts |" in after
    assert ":local" not in after  # not the default systems, which never ran here


# -- issue 27 item 9: the benchmarks work on a fresh clone ---------------------------------


def test_gsm8k_loads_with_no_data_dir_and_no_shared_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moakit.eval.datasets import load_dataset

    monkeypatch.delenv("MOAKIT_EVAL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing beside the working directory
    dataset = load_dataset("gsm8k", limit=3)
    assert [i.id for i in dataset.items] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    assert dataset.items[0].answer == "72"  # Natalia's clips: the train split's first item


# -- issue 27 item 12: a truncated final answer says so -------------------------------------


def test_a_final_answer_cut_at_its_token_budget_is_marked_truncated(tmp_path: Path) -> None:
    stack = _stack(tmp_path, _answering("cutfake"))
    out = tmp_path / "out"
    code, output = _eval(
        "--dataset",
        str(_dataset(tmp_path)),
        "--out",
        str(out),
        "--system",
        f"single:{stack}",
        "--system",
        f"moa:{stack}",
    )
    assert code == 0, output
    for stem in ("single_say", "moa_say"):
        records = _records(out, stem)
        assert len(records) == 3
        assert all(r["truncated"] is True for r in records), stem
    assert "truncated" in (out / "report.md").read_text()


# -- issue 27 item 10: progress people can see ------------------------------------------------

register_provider(
    "slowfake",
    lambda spec, pool: FunctionModel(
        lambda r: "The answer is 1 " + " ".join(["w"] * 20), name=spec.model, per_token_s=0.02
    ),
)


def test_progress_lines_with_an_eta_and_inside_a_slow_item_when_not_a_terminal(
    tmp_path: Path,
) -> None:
    stack = _stack(tmp_path, _answering("slowfake"))
    out = tmp_path / "out"
    code, output = _eval(
        "--dataset",
        str(_dataset(tmp_path)),
        "--out",
        str(out),
        "--system",
        f"moa:{stack}",
        "--progress-every",
        "0.1",
        "--parallel",
        "1",
    )
    assert code == 0, output
    lines = [line for line in output.splitlines() if line.startswith("moa:say")]
    assert len(lines) >= 5, output  # a line every 0.1 s over ~1.5 s of work, not one at the end
    assert any("ETA" in line and "1/3" in line for line in lines), lines
    assert not any("ETA" in line for line in lines if " 0/3 " in line)  # no guess before one item
    # Inside an item: which layer, how many members answered, the aggregator writing.
    assert any(re.search(r"layer 1: [0-2]/1", line) for line in lines) or any(
        "aggregat" in line for line in lines
    ), lines


STATED: list[str] = []


def _stated(request: ChatRequest) -> str:
    STATED.append("call")
    return "The capital of France, on the Seine.\nAnswer: Paris."


register_provider("saystated", lambda spec, pool: FunctionModel(_stated))


def test_records_scored_by_an_older_exact_rule_are_scored_again(tmp_path: Path) -> None:
    """``exact`` now reads a stated answer first: a directory scored by the old rule (records
    with no scorer label, a summary naming ``exact``) is rescored, calling nothing."""
    CALLS.clear()
    stack = _stack(tmp_path, _answering("saystated"))
    data = _dataset(tmp_path, ["Paris"] * 3)
    out = tmp_path / "out"
    base = ["--dataset", str(data), "--out", str(out), "--system", f"single:{stack}"]
    assert _eval(*base, "--scorer", "exact")[0] == 0
    calls = len(STATED)
    # Make it look like an older version wrote it: no labels, no manifest, an "exact" summary.
    path = next((out / "records").glob("*.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        del row["scorer"]
        row["score"] |= {"value": 0.0, "correct": False}  # what the whole-reply rule said
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (out / "run.json").unlink()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scorer"] == "exact"
    assert _eval(*base, "--scorer", "exact")[0] == 0
    assert len(STATED) == calls  # rescored from the stored answers
    rescored = json.loads((out / "summary.json").read_text())["systems"][0]
    assert rescored["score"]["mean"] == 1.0  # the replies state "Answer: Paris."
