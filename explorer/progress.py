"""Progress reporting for long work: a callback ``(fraction in [0, 1], message) -> None``."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "no_progress"]

Progress = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """The default callback: report nothing."""
