"""PSR, DSR and the verdict: the published worked example, an independent computation, and a
positive and a negative control on the embedded market."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pyppo import stats, synthetic_market
from pyppo.cli.common import split_data
from pyppo.evaluation import backtest
from pyppo.evaluation.baselines import BaselineSettings
from pyppo.evaluation.verdict import EVIDENCE_DSR, Significance, significance, verdict_line


def test_the_deflated_sharpe_ratio_of_the_worked_example():
    # Bailey and Lopez de Prado (2014), "The Deflated Sharpe Ratio", the numerical example:
    # annualized SR 2.5 over 1,250 daily bars, skew -3, kurtosis 10, N = 100 trials whose
    # annualized Sharpes have variance 1/2: SR0 = 0.1132 per day and DSR = 0.9004.
    moments = stats.SharpeMoments(2.5 / math.sqrt(250), -3.0, 10.0, 1250)
    sr0 = stats.expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=1e-4)
    assert stats.probabilistic_sharpe_ratio(moments, sr0) == pytest.approx(0.9004, abs=5e-4)
    assert stats.expected_max_sharpe(1, 0.5) == 0.0
    with pytest.raises(ValueError, match="trials=0"):
        stats.expected_max_sharpe(0, 0.5)


def test_psr_and_the_track_record_equal_a_direct_computation():
    r = np.random.default_rng(4).standard_t(5, 3_000) * 0.01 + 0.0008
    moments = stats.sharpe_moments(r)
    sr = r.mean() / r.std(ddof=1)
    skew = scipy_stats.skew(r)  # biased sample skewness, m3 / m2^1.5
    kurt = scipy_stats.kurtosis(r, fisher=False)  # raw, biased
    spread = 1 - skew * sr + (kurt - 1) / 4 * sr**2
    psr = scipy_stats.norm.cdf(sr * math.sqrt(len(r) - 1) / math.sqrt(spread))
    assert moments.sharpe == pytest.approx(sr)
    assert (moments.skew, moments.kurtosis) == pytest.approx((skew, kurt))
    assert stats.probabilistic_sharpe_ratio(moments) == pytest.approx(psr, rel=1e-9)
    mintrl = 1 + spread * (scipy_stats.norm.ppf(0.95) / sr) ** 2
    assert stats.min_track_record_length(moments) == pytest.approx(mintrl, rel=1e-9)
    # Looking at more configurations deflates; one trial is the PSR against 0.
    assert stats.deflated_sharpe_ratio(moments, 1) == pytest.approx(psr)
    assert stats.deflated_sharpe_ratio(moments, 50) < stats.deflated_sharpe_ratio(moments, 5)
    flat = stats.sharpe_moments(np.zeros(10))
    assert math.isnan(stats.probabilistic_sharpe_ratio(flat))
    assert math.isinf(stats.min_track_record_length(stats.sharpe_moments(-np.abs(r))))


@pytest.fixture(scope="module")
def held_out_baselines():
    test = split_data(synthetic_market())[2]
    names = BaselineSettings().names
    return test, {name: backtest(test, name, window=60) for name in names}


def test_a_planted_edge_is_evidence_and_the_same_positions_shuffled_are_not(held_out_baselines):
    test, results = held_out_baselines
    returns = {name: r.returns for name, r in results.items()}
    names = tuple(returns)
    # A rule fixed before looking at these bars: one configuration tried.
    judged = significance(returns, "momentum_3", names, test.bars_per_year, trials=1)
    assert judged.evidence and judged.dsr_vs_hold >= EVIDENCE_DSR
    assert verdict_line(judged).startswith("Verdict: evidence of an edge")
    # Shuffling the returns themselves keeps every moment (and so the DSR): the control
    # shuffles the rule's positions across bars, which keeps its exposure and turnover and
    # takes away its timing.
    momentum = results["momentum_3"]
    shuffled = np.random.default_rng(0).permutation(momentum.positions)
    returns["momentum_3"] = np.expm1(shuffled * momentum.market_returns - momentum.cost * 2 / 3)
    control = significance(returns, "momentum_3", names, test.bars_per_year, trials=1)
    assert not control.evidence
    assert verdict_line(control).startswith("Verdict: no evidence of an edge")
    # Buy-and-hold's own verdict: never an edge over itself.
    assert not significance(returns, "buy_and_hold", names, test.bars_per_year).evidence


@pytest.mark.parametrize(
    ("vs_hold", "vs_best"),
    [(0.999, 0.94), (0.94, 0.999), (math.nan, 0.999), (0.999, math.nan), (0.5, 0.5)],
)
def test_the_verdict_never_claims_an_edge_when_a_dsr_is_below_the_bar(vs_hold, vs_best):
    judged = Significance("agent", 3.0, 0.99, 0.99, 100.0, "momentum_3", vs_hold, vs_best, 4)
    line = verdict_line(judged, interval=(1.2, 2.5), beats_hold=(44, 48))
    assert line.startswith("Verdict: no evidence") and "44 of 48 runs" in line
    assert "1.20 to 2.50" in line and "over 4 trials" in line


def test_the_stratified_bootstrap_is_reproducible():
    scores = np.random.default_rng(1).normal(size=(4, 5))  # 4 windows x 5 seeds
    first = stats.bootstrap_ci(scores, seed=3)
    assert first == stats.bootstrap_ci(scores, seed=3)
    assert first != stats.bootstrap_ci(scores, seed=4)
    assert first[0] < stats.iqm(scores.ravel()) < first[1]
