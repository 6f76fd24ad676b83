"""``moa eval``'s progress views on a fake clock: a line every few seconds when stderr is not a
terminal, no ETA before this invocation finished an item, then one that counts down; names and
activity printed as text."""

from __future__ import annotations

import io

from moakit.cli.eval_progress import LineProgress, LiveProgress
from moakit.eval.progress import Eta, clock_text


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_every_few_seconds_with_an_eta_from_the_first_item_on() -> None:
    clock, out = Clock(), io.StringIO()
    view = LineProgress(out, every_s=5.0, clock=clock)
    view.start("moa:local", 10, 14)  # resumed: 10 items done by an earlier run
    for second in range(1, 30):
        clock.now = float(second)
        if second == 3:
            view.activity("moa:local", "gsm8k-10", "layer 1: 2/3 answered")
        if second == 20:
            view.advance("moa:local", 11, 14)
        view.tick()
    lines = out.getvalue().splitlines()
    # At 0 s (start), then at most every 5 s: 5, 10, 15, 20, 25.
    assert len(lines) == 6, lines
    assert lines[0] == "moa:local 10/14 items, 0:00 elapsed"
    assert "ETA" not in "".join(lines[:4])  # no guess before this run finished an item
    assert lines[1].endswith("· now: gsm8k-10: layer 1: 2/3 answered")
    assert lines[4] == "moa:local 11/14 items, 0:20 elapsed, ETA 1:00"  # 20 s an item, 3 left
    assert lines[5] == "moa:local 11/14 items, 0:25 elapsed, ETA 0:55"  # counting down
    view.finish("moa:local")
    assert out.getvalue().splitlines()[-1] == "moa:local 11/14 items, done in 0:29"


def test_names_and_activity_are_printed_as_text() -> None:
    out = io.StringIO()
    view = LineProgress(out, every_s=0.0, clock=Clock())
    view.start("moa:\x1b]0;pwned\x07x", 0, 1)
    view.activity("moa:\x1b]0;pwned\x07x", "item\nfake line", "layer 1")
    view.tick()
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert len(out.getvalue().splitlines()) == 2


def test_an_item_slower_than_the_pace_still_leaves_the_others() -> None:
    clock = Clock()
    eta = Eta(0, 5, clock)
    clock.now = 10.0
    eta.advance(1)
    clock.now = 60.0  # the second item runs far longer than the first took
    assert eta.seconds_left() == 30.0  # the three after it, at the pace so far
    assert clock_text(3725) == "1:02:05" and clock_text(None) == "-"


def test_the_live_view_runs_its_whole_course() -> None:
    out = io.StringIO()
    with LiveProgress(out) as view:
        view.note("scorer: gsm8k ([bold]x[/bold])")
        view.start("moa:[red]local[/red]", 0, 2)
        view.activity("moa:[red]local[/red]", "q0", "aggregator writing: 10 chars")
        view.tick()
        view.advance("moa:[red]local[/red]", 1, 2)
        view.finish("moa:[red]local[/red]")
    assert "[bold]x[/bold]" in out.getvalue()  # markup shown as text, not obeyed
