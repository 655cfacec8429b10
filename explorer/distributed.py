"""Where a scan's points are evaluated: in this process, or as tasks on Ray.

Ray is an optional extra (``pip install 'pruning-explorer[ray]'``): :func:`executor` with
``workers=N`` starts a local Ray with N CPUs on this machine, with ``address`` it joins an existing
cluster (every node needs this package installed, as the driver has it). Without either, the work
runs here, exactly as before.

The work is cut the same way on both: a task is one piece of the local loop (a chunk of the
evaluation data for weight-only scans, one point for structured ones), run by the same function,
so Ray gives the very points the local run gives. What crosses the wire is bytes and arrays, never
a pickled model or the user's code:

- weight-only scans: the ONNX export of the model with the prunable weights as graph inputs, the
  dense weights, the pruned weights of every point, and the evaluation inputs (with the labels, or
  the dense model's logits for unlabelled data); each worker cuts the graph itself;
- structured scans: per point, the ONNX file of the shrunk model, and the evaluation data.

Results come back per task (per-sample correctness and loss terms) as they finish, for the
progress bar.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from explorer.errors import ExplorerError

__all__ = [
    "INSTALL_HINT",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "RayUnavailable",
    "executor",
    "ray_installed",
]

INSTALL_HINT = "pip install 'pruning-explorer[ray]'"


class RayUnavailable(ExplorerError):
    """Ray was asked for but is not installed, or the cluster cannot be reached."""


class Executor(Protocol):
    name: str
    workers: int  # tasks that run at once

    def put(self, value: Any) -> Any: ...

    def map(
        self,
        fn: Callable[..., Any],
        shared: tuple[Any, ...],
        items: Iterable[Any],
        on_result: Callable[[int, Any], None],
    ) -> None: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Runs every task here, in order (the default)."""

    name = "local"
    workers = 1

    def put(self, value: Any) -> Any:
        return value

    def map(
        self,
        fn: Callable[..., Any],
        shared: tuple[Any, ...],
        items: Iterable[Any],
        on_result: Callable[[int, Any], None],
    ) -> None:
        """``on_result(i, fn(*shared, item_i))`` for every item, in order."""
        for i, item in enumerate(items):
            on_result(i, fn(*shared, item))

    def close(self) -> None:
        pass


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """The Ray task: ``fn`` is a function of this package, pickled by reference."""
    return fn(*args)


class RayExecutor:
    """Tasks on Ray: a local Ray with ``workers`` CPUs, or the cluster at ``address``.

    A Ray this executor started is shut down by :meth:`close`; one already running (``ray.init``
    called by the caller) is used and left running.
    """

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise RayUnavailable(f"Ray is not installed: {INSTALL_HINT}") from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(
                        num_cpus=workers or os.cpu_count() or 1,
                        include_dashboard=False,
                        log_to_driver=False,
                    )
            except Exception as e:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise RayUnavailable(
                    f"cannot start {where}: {type(e).__name__}: {str(e).splitlines()[0]}"
                ) from None
            self._started = True
        self.workers = max(1, int(workers or ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1, max_retries=1)(_call)

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def map(
        self,
        fn: Callable[..., Any],
        shared: tuple[Any, ...],
        items: Iterable[Any],
        on_result: Callable[[int, Any], None],
    ) -> None:
        """Submit a task per item (at most twice as many in flight as workers, so large items are
        made as they are needed) and call ``on_result(i, result)`` as each finishes."""
        ray = self._ray
        pending: dict[Any, int] = {}
        source = enumerate(items)

        def submit() -> bool:
            for i, item in source:
                pending[self._remote.remote(fn, *shared, item)] = i
                return True
            return False

        while len(pending) < 2 * self.workers and submit():
            pass
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            on_result(i, ray.get(ready[0]))
            submit()

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def executor(workers: int | None = None, address: str | None = None) -> Executor:
    """Run here (neither given), on a local Ray with ``workers`` CPUs, or on the cluster at
    ``address``.

    Raises:
        RayUnavailable: Ray is asked for but not installed (with how to install it), or fails to
        start.
    """
    if workers is None and not address:
        return LocalExecutor()
    if workers is not None and workers < 1:
        raise ExplorerError(f"--workers must be at least 1, got {workers}")
    return RayExecutor(workers, address)
