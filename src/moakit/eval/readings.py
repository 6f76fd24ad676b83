"""How a paired comparison is read, in one place: ``moa eval``'s report and the committed pages
(``scripts/render_*.py``) both call these, so they never read the same numbers differently.

The rule: a direction ("ahead", "behind") is claimed only when the 95% CI of the paired
difference excludes 0 *and* the test's p-value is below 0.05 (the exact McNemar test on
right/wrong scores, the paired bootstrap on judged ones). Near the edge the two can disagree
(GSM8K's MoA gap in docs/eval-local.md was [-20, -1] pp with McNemar p 0.08); claiming a
direction on one of them alone would be the stronger reading picked after the fact, so that
case is reported as a lean, not a finding.
"""

from __future__ import annotations

from typing import Literal

from moakit.eval.stats import Comparison

Way = Literal["ahead", "behind"]
SIGNIFICANCE = 0.05
TEST_NAMES = {"mcnemar-exact": "McNemar", "paired-bootstrap": "bootstrap"}


def direction(c: Comparison) -> tuple[Way | None, bool]:
    """Which way the CI points (``None``: it includes 0), and whether the test agrees."""
    way: Way | None = "ahead" if c.low > 0 else "behind" if c.high < 0 else None
    return way, way is not None and c.p_value < SIGNIFICANCE


def side(c: Comparison) -> str:
    """``ahead``, ``behind``, a lean, or ``no measurable difference``."""
    way, agreed = direction(c)
    if way is None:
        return "no measurable difference"
    if agreed:
        return way
    test = TEST_NAMES.get(c.test, c.test)
    return f"leaning {way} (the 95% CI excludes 0 but {test} p ≥ 0.05: not significant)"


def difference(c: Comparison) -> str:
    """The gap in percentage points with its CI, the test, and ``side``: for right/wrong
    scores (a 0/1 difference is a share)."""
    test = TEST_NAMES.get(c.test, c.test)
    return (
        f"{100 * c.diff:+.0f} pp [{100 * c.low:+.0f}, {100 * c.high:+.0f}] on {c.n} paired "
        f"items ({test} p {c.p_value:.2f}): {side(c)}"
    )
