"""The interleaved speedup's bookkeeping, with fake sessions on a fake clock (no wall-clock values):
rounds, the alternating order, the ratio as the median of the per-round ratios, the noise rule."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from explorer.runtime import (
    MIN_ROUNDS,
    RoundRatios,
    measure_speedup,
    per_round_ratios,
    round_order,
    rounds_for,
    speedup_of,
    time_interleaved,
)


class FakeClock:
    """Nanoseconds that only move when a fake session runs."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class FakeModel:
    """A session whose every run takes ``durations_ms[round]`` on the fake clock and is logged.

    The round is found from the log: a run belongs to the round of the alternation being timed."""

    def __init__(
        self, name: str, clock: FakeClock, log: list[str], per_run_ms: list[float] | float
    ) -> None:
        self.name, self.clock, self.log = name, clock, log
        self.input_name, self.threads = "input", 1
        self.per_run_ms = per_run_ms
        self.session = self
        self.calls = 0

    def fit(self, x: np.ndarray) -> np.ndarray:
        return x

    def run(self, output_names: None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        assert set(feed) == {"input"}
        ms = (
            self.per_run_ms[len(self.log)] if isinstance(self.per_run_ms, list) else self.per_run_ms
        )
        self.log.append(self.name)
        self.calls += 1
        self.clock.now += int(ms * 1e6)
        return [feed["input"]]


def _pair(
    dense_ms: float | list[float], pruned_ms: float | list[float]
) -> tuple[FakeModel, FakeModel, list[str], FakeClock]:
    clock, log = FakeClock(), []
    return FakeModel("d", clock, log, dense_ms), FakeModel("p", clock, log, pruned_ms), log, clock


def test_rounds_alternate_and_each_round_times_both_back_to_back() -> None:
    dense, pruned, log, clock = _pair(2.0, 1.0)
    times = time_interleaved(
        [dense, pruned],
        np.zeros((1, 3), np.float32),
        rounds=5,
        runs_per_round=4,
        warmup=2,
        clock=clock,
    )
    assert log[:4] == ["d", "d", "p", "p"]  # warm-up of each, untimed
    timed = log[4:]
    blocks = [timed[i : i + 4] for i in range(0, len(timed), 4)]
    assert [b[0] for b in blocks] == [
        "d",
        "p",
        "p",
        "d",
        "d",
        "p",
        "p",
        "d",
        "d",
        "p",
    ]  # d p | p d | d p ...
    assert all(len(set(b)) == 1 for b in blocks)  # a session's runs of a round are back to back
    assert [len(r) for r in times[0]] == [4] * 5 and [len(r) for r in times[1]] == [4] * 5
    assert (
        times[0][0] == [2.0] * 4 and times[1][0] == [1.0] * 4
    )  # milliseconds from the clock's nanoseconds


def test_round_order_rotates_every_model_through_every_position() -> None:
    assert [round_order(2, r) for r in range(4)] == [[0, 1], [1, 0], [0, 1], [1, 0]]
    orders = [round_order(3, r) for r in range(3)]
    for position in range(3):
        assert sorted(o[position] for o in orders) == [0, 1, 2]


def test_speedup_is_the_median_of_the_per_round_ratios() -> None:
    # Per round, dense medians 10, 10, 12, 10, 30 ms; pruned 5, 20, 6, 4, 10 ms:
    # ratios 2, .5, 2, 2.5, 3.
    dense = [[10, 10, 11], [9, 10, 10], [12, 12, 50], [10, 10, 10], [30, 30, 30]]
    pruned = [[5, 5, 5], [20, 20, 20], [6, 6, 6], [4, 4, 4], [10, 10, 10]]
    sp = speedup_of([dense, pruned], 0, 1, threads=1)
    assert sp.median.per_round == (2.0, 0.5, 2.0, 2.5, 3.0)
    assert sp.ratio == 2.0 and sp.median.low == 0.5 and sp.median.high == 3.0
    assert sp.within_noise and not sp.faster and not sp.slower  # one round saw the opposite
    assert sp.ratio != pytest.approx(
        statistics.median(sum(dense, [])) / statistics.median(sum(pruned, []))
    )
    assert sp.dense.runs == sp.pruned.runs == 15 and sp.rounds == 5 and sp.runs_per_round == 3
    p90 = [
        float(np.percentile(d, 90)) / float(np.percentile(p, 90))
        for d, p in zip(dense, pruned, strict=True)
    ]
    assert sp.p90.per_round == tuple(p90)
    assert sp.latency_share.per_round == tuple(1 / r for r in sp.median.per_round)


@pytest.mark.parametrize(
    ("ratios", "noise", "faster", "slower"),
    [
        ((1.3, 1.2, 1.4, 1.25, 1.35), False, True, False),
        ((0.7, 0.8, 0.75, 0.9, 0.85), False, False, True),
        ((1.1, 0.95, 1.05, 1.2, 1.0), True, False, False),
        ((1.0, 1.0, 1.0, 1.0, 1.0), True, False, False),  # exactly 1.0 is covered
    ],
)
def test_within_noise_when_the_rounds_range_covers_one(
    ratios: tuple[float, ...], noise: bool, faster: bool, slower: bool
) -> None:
    r = RoundRatios(ratios)
    assert r.within_noise is noise
    dense = [[10.0] * 3 for _ in ratios]
    pruned = [[10.0 / x] * 3 for x in ratios]
    sp = speedup_of([dense, pruned], 0, 1, threads=1)
    assert sp.within_noise is noise and sp.faster is faster and sp.slower is slower
    assert sp.ratio == pytest.approx(statistics.median(ratios))


def test_measure_speedup_on_fake_sessions() -> None:
    # The machine gets 3x slower half-way: timed at different moments that would fake a speedup;
    # timed alternately, each round sees the same load on both and the ratio stays 1.0.
    clock, log = FakeClock(), []
    load = [1.0 if i < 80 else 3.0 for i in range(10_000)]
    dense, pruned = FakeModel("d", clock, log, load), FakeModel("p", clock, log, load)
    sp = measure_speedup(
        dense, pruned, np.zeros((1, 2), np.float32), runs=50, rounds=5, warmup=0, clock=clock
    )
    assert sp.rounds == 5 and sp.runs_per_round == 10
    assert dense.calls == pruned.calls == 50
    assert sp.median.per_round == (1.0,) * 5 and sp.ratio == 1.0 and sp.within_noise
    assert sp.dense.median_ms == sp.pruned.median_ms == 1.0 and sp.dense.p90_ms == 3.0
    # A constant 2x speedup is seen in every round whatever the load.
    clock, log = FakeClock(), []
    dense, pruned = FakeModel("d", clock, log, 2.0), FakeModel("p", clock, log, 1.0)
    sp = measure_speedup(dense, pruned, np.zeros((1, 2), np.float32), runs=30, clock=clock)
    assert sp.median.per_round == (2.0,) * sp.rounds and sp.faster and not sp.within_noise


def test_rounds_for_keeps_the_house_minimums() -> None:
    assert rounds_for(50) == (7, 10)
    assert rounds_for(1, rounds=2) == (MIN_ROUNDS, 10)  # at least 5 rounds and 30 runs in all
    rounds, per_round = rounds_for(200, rounds=5)
    assert rounds == 5 and rounds * per_round >= 200


def test_per_round_ratios_of_any_statistic() -> None:
    r = per_round_ratios([[1, 2, 3], [4, 4, 4]], [[1, 1, 1], [2, 2, 2]], max)
    assert r.per_round == (3.0, 2.0) and r.value == 2.5
