"""Progress reporting for long work: a callback ``(fraction in [0, 1], message) -> None``."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Eta", "Progress", "no_progress"]

Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """The default callback: report nothing."""


class Eta:
    """Seconds left of work reported as growing fractions done.

    The rate is measured from the first report on: the set-up before it (an export, sessions, the
    first masks) is not extrapolated over the whole run, as elapsed / fraction would (at 224 px the
    first point of a scan came after 19 s at 0.02 %: "~96621 s left").
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._first: tuple[float, float] | None = None

    def __call__(self, fraction: float) -> float | None:
        """Seconds left at ``fraction`` done; None until two reports have measured a rate."""
        now = self._clock()
        if self._first is None:
            self._first = (now, fraction)
            return None
        t0, f0 = self._first
        if fraction <= f0:
            return None
        return (now - t0) / (fraction - f0) * max(1.0 - fraction, 0.0)

    def note(self, fraction: float) -> str:
        """`` (~N s left)``, or `` (measuring the time left)`` until a rate is known."""
        left = self(fraction)
        return " (measuring the time left)" if left is None else f" (~{left:.0f} s left)"
