"""Is there an edge? Significance of a policy's out-of-sample returns, and the verdict in words.

A policy "has an edge" only when its **active returns** (its per-bar returns minus those of
buy-and-hold, and minus those of the best other baseline) have a deflated Sharpe ratio of at
least :data:`EVIDENCE_DSR` each: riding the market's drift, or doing what a 3-bar rule
does, is not called an edge. The deflated Sharpe ratio accounts for the number of
configurations tried whose results were looked at (``trials``: the run config's
``selection.trials``, which a sweep adds to), not the seeds averaged over. Conventions:
:data:`pyppo.stats.SIGNIFICANCE_CONVENTIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from pyppo import stats

EVIDENCE_DSR = 0.95
HOLD = "buy_and_hold"


@dataclass(frozen=True)
class Significance:
    """The significance of one policy's returns: PSR and DSR of the returns themselves and of
    its active returns, with the minimum track record length (bars)."""

    policy: str
    sharpe: float  # annualized, stats.sharpe_ratio
    psr: float  # P(true Sharpe > 0)
    dsr: float  # deflated for `trials`
    min_track_record: float  # bars for PSR 0.95 against 0
    best_baseline: str | None  # the other baseline with the highest Sharpe
    dsr_vs_hold: float  # DSR of (policy - buy_and_hold)
    dsr_vs_best: float  # DSR of (policy - best_baseline)
    trials: int

    @property
    def evidence(self) -> bool:
        """Both active DSRs at least :data:`EVIDENCE_DSR` (NaN is never evidence)."""
        return bool(self.dsr_vs_hold >= EVIDENCE_DSR and self.dsr_vs_best >= EVIDENCE_DSR)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "evidence": self.evidence}


def significance(
    returns: Mapping[str, np.ndarray],
    policy: str,
    baselines: tuple[str, ...],
    bars_per_year: float,
    trials: int = 1,
) -> Significance:
    """The significance of ``returns[policy]`` on its own and against buy-and-hold and the
    best of the other ``baselines`` (by Sharpe), all on the same bars.

    :param returns: per-bar simple net returns by policy, all of one length.
    :param policy: the policy judged (the agent, or a baseline).
    :param baselines: the baselines' names (buy-and-hold among them).
    :param bars_per_year: to annualize the Sharpe ratio shown.
    :param trials: configurations tried whose results were looked at (N of the DSR).
    """
    mine = np.asarray(returns[policy], dtype=np.float64)
    moments = stats.sharpe_moments(mine)
    others = [b for b in baselines if b not in (policy, HOLD)]
    best = max(
        others,
        key=lambda b: stats.sharpe_for_ranking(stats.sharpe_ratio(returns[b], bars_per_year)),
        default=None,
    )

    def active_dsr(against: str | None) -> float:
        if against is None or against == policy:
            return math.nan
        active = mine - np.asarray(returns[against], dtype=np.float64)
        return stats.deflated_sharpe_ratio(stats.sharpe_moments(active), trials)

    return Significance(
        policy=policy,
        sharpe=stats.sharpe_ratio(mine, bars_per_year),
        psr=stats.probabilistic_sharpe_ratio(moments),
        dsr=stats.deflated_sharpe_ratio(moments, trials),
        min_track_record=stats.min_track_record_length(moments),
        best_baseline=best,
        dsr_vs_hold=active_dsr(HOLD),
        dsr_vs_best=active_dsr(best),
        trials=trials,
    )


def verdict_line(
    judged: Significance,
    *,
    interval: tuple[float, float] | None = None,
    beats_hold: tuple[int, int] | None = None,
) -> str:
    """One line, starting ``Verdict:``, that says whether ``judged`` shows an edge and why.

    :param judged: :func:`significance` of the policy.
    :param interval: a 95 % confidence interval of its Sharpe over runs (seeds, windows).
    :param beats_hold: (runs that beat buy-and-hold, runs).
    """
    facts = [
        f"DSR vs buy-and-hold {_num(judged.dsr_vs_hold)}",
        f"vs {judged.best_baseline} {_num(judged.dsr_vs_best)}"
        if judged.best_baseline
        else "no other baseline",
        f"over {judged.trials} trial{'s' if judged.trials != 1 else ''}",
        f"{judged.policy} Sharpe {_num(judged.sharpe)}",
    ]
    if interval is not None:
        facts[-1] += f", 95 % CI {_num(interval[0])} to {_num(interval[1])}"
    if beats_hold is not None:
        facts.append(f"beats buy-and-hold in {beats_hold[0]} of {beats_hold[1]} runs")
    if judged.evidence:
        claim = f"evidence of an edge beyond buy-and-hold and the baselines for {judged.policy}"
    else:
        claim = f"no evidence of an edge beyond buy-and-hold and the baselines for {judged.policy}"
    return f"Verdict: {claim} ({'; '.join(facts)})"


def _num(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.2f}"
