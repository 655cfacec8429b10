"""The multiple-choice knapsack: one ratio per unit, least summed damage, enough summed saving."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["BUCKETS", "solve"]

BUCKETS = 2000  # resolution of the savings, over the savings asked for


def solve(
    damage: Mapping[str, np.ndarray], saving: Mapping[str, np.ndarray], need: float
) -> dict[str, int] | None:
    """Choice index per unit minimising summed ``damage`` with summed ``saving`` >= ``need``; None
    if
    impossible. Savings are rounded down to 1/BUCKETS of ``need``, so the sum is never overstated.
    Ties keep the earlier (smaller) choice."""
    names = list(damage)
    if need <= 0:
        return {n: 0 for n in names}
    big = BUCKETS
    dp = np.full(big + 1, np.inf)
    dp[0] = 0.0
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for name in names:
        best = np.full(big + 1, np.inf)
        best_c = np.zeros(big + 1, dtype=np.int64)
        best_prev = np.zeros(big + 1, dtype=np.int64)
        steps = np.minimum(np.floor(saving[name] / need * big + 1e-9), big).astype(np.int64)
        for c, (s, dmg) in enumerate(zip(steps, damage[name], strict=False)):
            cand = np.full(big + 1, np.inf)
            prev = np.zeros(big + 1, dtype=np.int64)
            if s < big:
                cand[s:big] = dp[: big - s] + dmg
                prev[s:big] = np.arange(big - s)
            lo = max(big - s, 0)
            k = int(np.argmin(dp[lo:]))
            cand[big] = dp[lo + k] + dmg
            prev[big] = lo + k
            better = cand < best - 1e-12
            best = np.where(better, cand, best)
            best_c = np.where(better, c, best_c)
            best_prev = np.where(better, prev, best_prev)
        dp = best
        back.append((best_c, best_prev))
    if not np.isfinite(dp[big]):
        return None
    picks: dict[str, int] = {}
    state = big
    for name, (cs, prevs) in zip(reversed(names), reversed(back), strict=False):
        picks[name] = int(cs[state])
        state = int(prevs[state])
    return picks
