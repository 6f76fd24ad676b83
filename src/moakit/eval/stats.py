"""Confidence intervals and system comparisons.

- ``bootstrap_ci``: 95% percentile bootstrap of the mean (``scipy.stats.bootstrap``, seeded).
- ``paired_bootstrap``: the mean per-item difference of two systems with a bootstrap CI and a
  two-sided bootstrap p-value, for judged (continuous) scores.
- ``mcnemar``: the exact McNemar test on discordant pairs (``scipy.stats.binomtest``) for
  closed-form (right/wrong) scores.
- ``win_rates``: AlpacaEval's raw and length-controlled win rates, computed with the
  ``alpaca_eval`` package's own code (see ``lc_win_rate`` for the one deviation and why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_SEED = 20240607  # the MoA paper's arXiv date; any fixed seed makes CIs reproducible
N_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_ci(
    values: Sequence[float],
    *,
    confidence: float = 0.95,
    seed: int = DEFAULT_SEED,
    n_resamples: int = N_RESAMPLES,
) -> Interval:
    """Percentile bootstrap CI of the mean. Degenerate samples (n < 2 or all equal) get the
    point itself as interval: there is no spread to resample."""
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(data.mean())
    if data.size < 2 or np.all(data == data[0]):
        return Interval(mean, mean, mean, int(data.size))
    res = bootstrap(
        (data,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return Interval(mean, float(ci.low), float(ci.high), int(data.size))


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b`` on the items both systems scored."""

    test: str
    diff: float
    low: float
    high: float
    p_value: float
    n: int
    a_only: int = 0  # McNemar: items only ``a`` got right
    b_only: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    seed: int = DEFAULT_SEED,
    n_resamples: int = N_RESAMPLES,
) -> Comparison:
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = int(diff.size)
    if n == 0:
        return Comparison("paired-bootstrap", float("nan"), float("nan"), float("nan"), 1.0, 0)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    observed = float(diff.mean())
    low, high = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    # Two-sided: how often the resampled mean falls on the other side of zero.
    if np.all(diff == 0):
        p = 1.0
    else:
        p = float(min(1.0, 2 * min((means <= 0).mean(), (means >= 0).mean())))
    return Comparison("paired-bootstrap", observed, low, high, p, n)


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> Comparison:
    """Exact McNemar: under H0 the discordant pairs split 50/50."""
    from scipy.stats import binomtest

    if len(a_correct) != len(b_correct):
        raise ValueError("paired samples must have the same length")
    a_only = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if x and not y)
    b_only = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if y and not x)
    n = len(a_correct)
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(binomtest(a_only, discordant, 0.5).pvalue)
    diff = (a_only - b_only) / n if n else float("nan")
    paired = paired_bootstrap([float(x) for x in a_correct], [float(y) for y in b_correct])
    return Comparison("mcnemar-exact", diff, paired.low, paired.high, p, n, a_only, b_only)


def win_rates(
    preferences: Sequence[float],
    output_lengths: Sequence[int],
    baseline_lengths: Sequence[int],
) -> dict[str, float]:
    """Raw and length-controlled win rate (percent) of a system against the baseline.

    ``preferences`` are the system's win shares in [0, 1] (1 = system wins, 0.5 = tie), mapped
    to AlpacaEval's encoding (1 = baseline wins, 2 = system wins). The raw rate is
    ``alpaca_eval.metrics.get_winrate``; the LC rate is ``lc_win_rate``.
    """
    import pandas as pd
    from alpaca_eval.metrics import get_winrate

    df = pd.DataFrame(
        {
            "preference": [1.0 + float(p) for p in preferences],
            "output_1": ["x" * int(n) for n in baseline_lengths],
            "output_2": ["x" * int(n) for n in output_lengths],
        }
    )
    raw = get_winrate(df)
    out = {"win_rate": float(raw["win_rate"]), "n": float(len(df))}
    out["length_controlled_winrate"] = lc_win_rate(df)
    return out


def lc_win_rate(annotations: Any) -> float:
    """AlpacaEval 2.0's length-controlled win rate, using ``alpaca_eval``'s own GLM code.

    Deviation, and why: ``alpaca_eval.metrics.get_length_controlled_winrate`` always starts by
    downloading ``df_gamed.csv`` (per-instruction difficulty and the "gamed" baselines used for
    regularization) from the Hugging Face hub; this harness never reaches the hub (no network
    here, and results must not depend on a remote file). So this uses the package's own
    ``length_controlled_minimal`` GLM (``np.tanh(std_delta_len) + not_gamed_baseline``, no
    instruction-difficulty term, no regularization to the gamed baselines), fitted with its own
    ``make_dmatrix_for_model`` and ``fit_LogisticRegressionCV``, featurized exactly as its
    ``_get_featurized_data`` does; the LC win rate is the mean predicted preference at zero
    length difference. To get the leaderboard's exact number, export the outputs
    (``model_outputs.json``) and run the ``alpaca_eval`` CLI where the hub is reachable.
    """
    import warnings

    import pandas as pd
    from alpaca_eval.metrics.glm_winrate import (
        GLM_INFO,
        fit_LogisticRegressionCV,
        make_dmatrix_for_model,
    )

    info = GLM_INFO["length_controlled_minimal"]
    df = annotations.reset_index(drop=True)
    delta = df["output_1"].str.len() - df["output_2"].str.len()
    feats = pd.DataFrame(
        {
            "preference": df["preference"].astype(float).replace({0.0: 1.5}) - 1,
            "std_delta_len": delta / delta.std() if delta.std() > 0 else delta * 0.0,
            "not_gamed_baseline": True,
        }
    )
    test = feats[["not_gamed_baseline"]].copy()
    test["std_delta_len"] = 0.0
    n_splits = min(int(info["kwargs"]["n_splits"]), len(feats))
    train, x_test = make_dmatrix_for_model(feats, test, formula=str(info["formula"]))
    with warnings.catch_warnings():
        # alpaca_eval passes sklearn arguments that newer sklearn deprecates; same fit.
        warnings.simplefilter("ignore", FutureWarning)
        model = fit_LogisticRegressionCV(
            train, "preference", is_ytrue_proba=True, n_splits=n_splits
        )
    return float(model.predict_proba(x_test)[:, 1].mean() * 100)
