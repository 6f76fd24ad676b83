"""A call's trace records the references it was shown (after the stack's defenses), not the
unfiltered answers of the layer below: the UI promises "the exact references it received"."""

from __future__ import annotations

from pathlib import Path

from moakit import Stack, parse_config
from moakit.testing.models import echo_model
from moakit.trace import TraceRecorder, TraceStore, traced_run


def defended_config(strategy: str = "layered") -> object:
    return parse_config(
        {
            "name": "defended",
            "strategy": strategy,
            "references": {"transforms": ["trust"], "trust": {"mode": "drop", "quorum": 2}},
            "layers": [
                [{"model": "a"}, {"model": "b"}, {"model": "c", "trust": "untrusted"}],
                [{"model": "d"}],
            ],
            "aggregator": {"model": "agg"},
        }
    )


async def test_a_dropped_reference_is_not_recorded_as_received(tmp_path: Path) -> None:
    models = {n: echo_model(n) for n in ("a", "b", "c", "d", "agg")}
    with TraceStore(tmp_path / "t.db") as store:
        async with Stack(defended_config(), models=models) as stack:  # type: ignore[arg-type]
            result = await traced_run(
                stack, [{"role": "user", "content": "q"}], TraceRecorder(store, stack=stack)
            )
        assert store.flush()
        record = store.get(result.run_id)
    assert record is not None
    assert [d.dropped for d in result.defenses if d.defense == "trust"] == [["c"]]
    calls = {(c.layer, c.index): c for c in record.calls}
    # Layer 2's member was shown a and b (trust dropped c), and so the trace says.
    assert [r.label for r in calls[(2, 0)].references] == ["a", "b"]
    assert "c: q" not in calls[(2, 0)].input[0]["content"]  # type: ignore[index]
    # The aggregator was shown layer 2's answer only.
    assert [r.label for r in calls[(3, 0)].references] == ["d"]
    # Layer 1 was shown nothing.
    assert all(calls[(1, i)].references == [] for i in range(3))
