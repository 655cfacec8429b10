"""Live evaluation at real size: the numbers of the really pruned model, refined while they come.

``Subject.evaluate`` prunes a copy, exports it, builds sessions, scores the whole evaluation set and
times it, then answers. On a 224-px ResNet that is many seconds per slider move. A
:class:`LiveEvaluator` gives the same numbers sooner and in stages, each a :class:`Refinement`:

1. ``prediction``: where the sensitivity curves of the plan's method are cached, the accuracy they
   predict (dense minus the summed drops of the pruned units), labelled as a prediction.
2. ``scoring``: the pruned model's file is written from the dense model's export
   (:class:`explorer.onnx_template.OnnxTemplate`: byte for byte what ``export_onnx`` writes,
   without running the exporter; a model it cannot vouch for is exported for real), its size,
   parameters and MACs are counted, and the evaluation images are scored in chunks, in a fixed
   shuffled order so that every prefix is a uniform sample: after each chunk, the accuracy on the
   images scored so far with its 95 % Wilson interval for the accuracy on all of them (finite
   population: it shrinks to the point as the last images are scored).
3. ``final``: the gzip size and the latency (timed alternately with the dense model, as
   ``Subject.evaluate`` times it), and the :class:`~explorer.evaluate.Evaluation`, equal to
   ``Subject.evaluate(plan)``'s but for the timings (tests check it).

The file is compressed for its gzip size in a thread of the lowest priority, started with the
scoring: it takes no time from the scoring, and runs on the core the latency timing leaves idle
(the timing uses fewer threads than there are cores; otherwise the compression ends first).

:meth:`LiveEvaluator.start` runs the stages in a worker thread and returns a :class:`LiveRun` to
poll; :meth:`LiveRun.cancel` stops a superseded run between chunks. ``lock`` (optional) is held
for each chunk and for the timing, so that two runs never time latency while another scores.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import tempfile
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from explorer.errors import ExplorerError
from explorer.evaluate import (
    Evaluation,
    Metrics,
    check_labels,
    sample_scores,
    samples_per_call,
    with_latency,
)
from explorer.inputs import run_model
from explorer.inspect import count_macs
from explorer.onnx_template import OnnxTemplate, template_for, why_untemplated, write_onnx
from explorer.plan import PruningPlan
from explorer.runtime import OrtModel, Speedup, export_onnx
from explorer.subject import Subject

__all__ = [
    "LiveEvaluator",
    "LiveRun",
    "Refinement",
    "evaluation_of",
    "gzip_length",
    "predicted_accuracy",
    "wilson",
]

log = logging.getLogger(__name__)

Z95 = 1.959963984540054
FIRST_SECONDS = 0.25  # aim for the first chunk: numbers on screen quickly
CHUNK_SECONDS = 0.6  # later chunks: few enough refinements, each a visible step
SHUFFLE_SEED = 0


def wilson(
    correct: int, n: int, population: int | None = None, z: float = Z95
) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n``. With ``population`` (n drawn
    without
    replacement from that many), the interval is for the proportion in the whole population: the
    variance shrinks by the finite-population factor, to nothing when ``n == population``."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    if population is not None and population > 1:
        z *= math.sqrt(max(0.0, (population - n) / (population - 1)))
    if z == 0.0:
        return p, p
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


@dataclass(frozen=True)
class Refinement:
    """What is known of a plan's evaluation at one moment. ``result`` (the ``evaluate`` object) is
    set on the final one only; before it, ``accuracy`` and ``loss`` are over the first ``scored``
    of ``total`` images (``interval``: 95 % for the accuracy on all of them)."""

    plan_key: str
    stage: str  # "prediction", "scoring", "final"
    total: int
    labels: bool
    scored: int = 0
    accuracy: float | None = None
    loss: float | None = None
    interval: tuple[float, float] | None = None
    predicted_accuracy: float | None = None  # from the sensitivity curves, where they are cached
    static: dict[str, int] = field(
        default_factory=dict
    )  # params_total, params_nonzero, macs, onnx_bytes
    written_by: str = ""  # "template" (the dense export, edited) or "exporter"
    elapsed: float = 0.0  # seconds since the run started
    stages: dict[str, float] = field(
        default_factory=dict
    )  # final: seconds per stage (prune, write, ...)
    result: Evaluation | None = None

    @property
    def final(self) -> bool:
        return self.result is not None

    @property
    def measured(self) -> bool:
        """Some images have been scored on the really pruned model."""
        return self.scored > 0


class _Cancelled(Exception):
    pass


def gzip_length(
    data: bytes, cancelled: Callable[[], bool] = lambda: False, block: int = 1 << 22
) -> int:
    """``len(gzip.compress(data, 6))`` (``explorer.runtime.gzip_size``), streamed in blocks so that
    a cancelled run stops compressing: zlib's output does not depend on how its input is fed."""
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    n = 10 + 8  # gzip header and trailer around the raw deflate stream
    for start in range(0, len(data), block):
        if cancelled():
            return -1
        n += len(z.compress(data[start : start + block]))
    return n + len(z.flush())


def _idle_priority() -> None:
    """Let the calling thread run only on cores nothing else wants: its own nice value, 19 (Linux
    sets it per thread; elsewhere this does nothing). It cannot be raised again without privileges,
    so call it in a thread of its own."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError as e:  # e.g. a sandbox that forbids it: the thread runs at normal priority
            log.debug("could not lower the priority of a thread: %s", e)


def _compress_in_idle_time(data: bytes, cancelled: Callable[[], bool], out: list[int]) -> None:
    _idle_priority()
    out.append(gzip_length(data, cancelled))


def _unit_of(subject: Subject, method: str, layer: str) -> str | None:
    from explorer.sensitivity import units

    for unit, members in units(subject, method).items():
        if layer in members:
            return unit
    return None


def predicted_accuracy(subject: Subject, plan: PruningPlan) -> float | None:
    """The accuracy the cached sensitivity curves predict for ``plan``: dense minus the accuracy
    drop of each pruned unit alone, interpolated between scanned ratios, and of each removed block
    alone (no scan is run). None when a pruned unit has no cached curve covering its ratio, a
    removed block no cached point, or for global scope (per-layer ratios are only known after
    ranking)."""
    from explorer.methods import get_method
    from explorer.sensitivity.scanning import scan_cache

    if plan.scope == "global" or plan.is_empty:
        return None
    drop, dense = 0.0, None
    if plan.blocks:  # each removed block's measured drop, where the block scan is cached
        from explorer.sensitivity.blocks import REMOVED, block_cache

        known, dense = block_cache(subject).load(), subject.dense()[0].accuracy
        for block in plan.blocks:
            if (block, REMOVED) not in known:
                return None
            drop += max(0.0, dense - known[(block, REMOVED)]["accuracy"])
    per_unit: dict[tuple[str, str], float] = {}
    for name, rule in plan.layers.items():
        if not rule.ratio:
            continue
        method = plan.method_of(name)
        unit = name if not get_method(method).structured else _unit_of(subject, method, name)
        if unit is None:
            return None
        per_unit[(method, unit)] = max(
            per_unit.get((method, unit), 0.0), rule.ratio
        )  # a group: its largest
    curves: dict[str, dict[tuple[str, float], dict]] = {}
    for (method, unit), ratio in per_unit.items():
        if method not in curves:
            curves[method] = scan_cache(subject, method, None).load()
        points = sorted((r, row["accuracy"]) for (u, r), row in curves[method].items() if u == unit)
        if not points or points[0][0] != 0.0 or ratio > points[-1][0] + 1e-9:
            return None
        rs, acc = zip(*points, strict=False)
        dense = acc[0] if dense is None else dense
        drop += max(0.0, acc[0] - float(np.interp(ratio, rs, acc)))
    return None if dense is None else max(0.0, dense - drop)


def evaluation_of(
    subject: Subject, plan: PruningPlan, metrics: Metrics, speedup: Speedup | None
) -> Evaluation:
    """The :class:`Evaluation` of ``metrics`` (as ``Subject.evaluate`` builds it): the dense side's
    latency is that of the interleaved window ``speedup``."""
    dense, _ = subject.dense()
    if speedup is not None:
        dense = with_latency(dense, speedup.dense)
    return Evaluation(
        metrics,
        dense,
        subject.model_spec,
        subject.data_spec,
        plan,
        speedup,
        inputs=subject.data.inputs,
        output=subject.output_note,
    )


class LiveEvaluator:
    """Evaluates plans of one subject in stages (:class:`Refinement`), fast at real size.

    Built once per subject (it exports the dense model once, for the template). Thread-safe: runs
    of several users may go at once.
    """

    def __init__(self, subject: Subject, lock: threading.Lock | None = None) -> None:
        self.subject = subject
        self.lock = lock or threading.Lock()
        self.dense_metrics, self.reference = subject.dense()
        split = subject.data.test
        self.total = len(split)
        self.labels = split.y is not None
        self.x = split.x.numpy()  # an array, or named arrays for a model of several inputs
        self.y = split.y.numpy() if split.y is not None else None
        self.order = np.random.default_rng(SHUFFLE_SEED).permutation(self.total)
        self.most = samples_per_call(self.x)  # images per call, bounded in memory
        self.template: OnnxTemplate | None = template_for(subject)
        self.template_miss = why_untemplated(subject)
        self._per_image = 0.0  # seconds to score one image, learnt from the chunks scored
        self._state_lock = threading.Lock()

    # --- what a run costs ---------------------------------------------------------------------

    @property
    def per_image_seconds(self) -> float:
        """Seconds to score one image (0 until a chunk has been scored)."""
        return self._per_image

    def predicted_seconds(self) -> float:
        """About how long a full evaluation takes (0 until one chunk was scored): scoring plus
        timing
        (dense and pruned timed alternately: twice the dense model's runs)."""
        d = self.dense_metrics
        timing = 2 * (d.latency_runs + 10) * d.latency_ms_median / 1000
        return self._per_image * self.total + timing

    def _learn(self, seconds: float, images: int) -> None:
        per = seconds / max(images, 1)
        with self._state_lock:
            self._per_image = per if self._per_image == 0 else 0.5 * (self._per_image + per)

    def _chunks(self) -> Iterator[np.ndarray]:
        """Indices of the images to score next, in shuffled order: a small first chunk, then
        larger."""
        start, first = 0, True
        while start < self.total:
            per = self._per_image or 0.05
            n = int(
                np.clip(
                    round((FIRST_SECONDS if first else CHUNK_SECONDS) / per),
                    4 if first else 16,
                    max(16, self.most),
                )
            )
            yield self.order[start : start + n]
            start += n
            first = False

    # --- the stages ---------------------------------------------------------------------------

    def start(
        self, plan: PruningPlan, on_final: Callable[[Refinement], None] | None = None
    ) -> LiveRun:
        """Evaluate ``plan`` in a worker thread; poll the returned run. ``on_final`` is called (in
        that thread) with the final refinement, even if nobody polls any more."""
        return LiveRun(self, plan, on_final)

    def evaluate(self, plan: PruningPlan) -> Evaluation:
        """The ``evaluate`` object of ``plan``, waiting for it (``Subject.evaluate``, faster)."""
        *_, last = self.refinements(plan)  # run every stage; the last one is final
        assert last.result is not None
        return last.result

    def refinements(
        self, plan: PruningPlan, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[Refinement]:
        """Yield what is known of ``plan``'s evaluation, stage by stage; the last one is final.

        Raises:
            ExplorerError: the plan does not fit the model, or the pruned model cannot be run.
        """
        t0 = time.perf_counter()
        key = plan.key()
        base = Refinement(plan_key=key, stage="prediction", total=self.total, labels=self.labels)

        def check() -> None:
            if cancelled():
                raise _Cancelled

        if plan.is_empty:
            d = self.dense_metrics
            yield replace(
                base,
                stage="final",
                scored=self.total,
                accuracy=d.accuracy,
                loss=d.loss,
                interval=(d.accuracy, d.accuracy),
                elapsed=time.perf_counter() - t0,
                result=evaluation_of(self.subject, plan, d, None),
            )
            return
        predicted = predicted_accuracy(self.subject, plan)
        base = replace(base, predicted_accuracy=predicted)
        if predicted is not None:
            yield replace(base, elapsed=time.perf_counter() - t0)
        check()
        stages: dict[str, float] = {}
        mark = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            stages[name] = stages.get(name, 0.0) + now - mark
            mark = now

        model = self.subject.prune(plan)
        lap("prune")
        check()
        with tempfile.TemporaryDirectory(prefix="explorer-live-") as tmp:
            path = Path(tmp) / "model.onnx"
            written_by = self._write(model, path)
            lap("write")
            params = list(model.parameters())
            static = {
                "params_total": sum(p.numel() for p in params),
                "params_nonzero": sum(int(torch.count_nonzero(p)) for p in params),
                "macs": sum(count_macs(model, self.subject.example_input).values()),
                "onnx_bytes": path.stat().st_size,
            }
            lap("count")
            session = self._session(path, model, written_by)
            lap("session")
            del model, params
            # Compressed meanwhile in idle time (zlib lets go of the GIL); stops when the run does.
            gzip_bytes: list[int] = []
            data = path.read_bytes()
            zipper = threading.Thread(
                target=_compress_in_idle_time, args=(data, cancelled, gzip_bytes), daemon=True
            )
            zipper.start()
            base = replace(base, stage="scoring", static=static, written_by=written_by)
            correct = np.zeros(self.total, dtype=bool)
            losses = np.zeros(self.total, dtype=np.float64)
            done = np.zeros(self.total, dtype=bool)
            scored = 0
            for idx in self._chunks():
                check()
                idx = np.sort(idx)
                with self.lock:
                    c0 = time.perf_counter()
                    x = (
                        {k: v[idx] for k, v in self.x.items()}
                        if isinstance(self.x, dict)
                        else self.x[idx]
                    )
                    logits = session(x)
                    self._learn(time.perf_counter() - c0, len(idx))
                if scored == 0:
                    check_labels(self.subject.data.test, logits.shape[1], self.subject.data.spec)
                y = self.y[idx] if self.y is not None else None
                c, lo = sample_scores(logits, y, self.reference[idx] if y is None else None)
                correct[idx], losses[idx], done[idx] = c, lo, True
                scored += len(idx)
                k = int(correct[done].sum())
                lap("scoring")
                yield replace(
                    base,
                    scored=scored,
                    accuracy=k / scored,
                    loss=self._loss(losses[done]),
                    interval=wilson(k, scored, self.total),
                    elapsed=time.perf_counter() - t0,
                )
            del session
            lap("scoring")
            if self.subject.threads >= (os.cpu_count() or 1):
                zipper.join()  # the timing leaves no core idle: compress first
                lap("gzip")
            check()
            with self.lock:
                timed = OrtModel(path, threads=self.subject.threads)
                speedup = self.subject.speedup(timed)  # dense and pruned alternately, one window
                latency = speedup.pruned
            del timed
            lap("latency")
            zipper.join()
            lap("gzip")
            del data
            check()
        accuracy, loss = float(correct.mean()), self._loss(losses)
        metrics = Metrics(
            accuracy=accuracy,
            loss=loss,
            onnx_bytes=static["onnx_bytes"],
            onnx_gzip_bytes=gzip_bytes[0],
            latency_ms_median=latency.median_ms,
            latency_ms_p90=latency.p90_ms,
            latency_ms_spread=latency.spread_ms,
            latency_threads=latency.threads,
            latency_runs=latency.runs,
            labels=self.labels,
            params_total=static["params_total"],
            params_nonzero=static["params_nonzero"],
            macs=static["macs"],
        )
        yield replace(
            base,
            stage="final",
            scored=self.total,
            accuracy=accuracy,
            loss=loss,
            interval=(accuracy, accuracy),
            elapsed=time.perf_counter() - t0,
            stages=stages,
            result=evaluation_of(self.subject, plan, metrics, speedup),
        )

    def _loss(self, terms: np.ndarray) -> float:
        """Mean loss of per-sample terms, as ``explorer.evaluate.scores`` reduces them."""
        loss = float(terms.mean())
        return loss if self.labels else max(loss, 0.0)

    def _write(self, model: torch.nn.Module, path: Path) -> str:
        """Write ``model``'s ONNX file to ``path``: from the template when it can, else exported."""
        return write_onnx(self.subject, model, path)

    def _session(self, path: Path, model: torch.nn.Module, written_by: str) -> OrtModel:
        """The scoring session (every core, as ``measure_onnx`` scores). A file written from the
        template is checked against the torch model on one sample; on disagreement it is exported
        for real."""
        try:
            session = OrtModel(path, threads=os.cpu_count() or 1)
        except ExplorerError:
            if written_by != "template":
                raise
            session = None
        if written_by == "template":
            x = self.subject.example_input
            with torch.no_grad():
                want = run_model(model, x).numpy()
            got = session(x.numpy()) if session is not None else None
            if (
                got is None
                or got.shape != want.shape
                or np.abs(got - want).max() > 1e-3 * max(1.0, float(np.abs(want).max()))
            ):
                log.warning(
                    "the template's file disagrees with the torch model: exporting for real"
                )
                export_onnx(model, x, path)
                session = OrtModel(path, threads=os.cpu_count() or 1)
        assert session is not None
        return session


_RUNS: weakref.WeakSet[LiveRun] = weakref.WeakSet()


@atexit.register
def _stop_runs() -> None:
    """Cancel the runs still going when the interpreter exits, and let them stop: a thread inside
    ONNX Runtime at exit aborts the process."""
    runs = list(_RUNS)
    for run in runs:
        run.cancel()
    for run in runs:
        run.join(timeout=60)


class LiveRun:
    """One plan's evaluation in a worker thread: poll :meth:`latest`, or :meth:`wait` for more.

    An error the user caused (:class:`ExplorerError`) is kept in ``error``; any other exception
    too, so that the caller can raise it where it is seen.
    """

    def __init__(
        self,
        evaluator: LiveEvaluator,
        plan: PruningPlan,
        on_final: Callable[[Refinement], None] | None = None,
    ) -> None:
        self.plan = plan
        self._on_final = on_final
        self.plan_key = plan.key()
        self.error: BaseException | None = None
        self._latest: Refinement | None = None
        self._cancel = threading.Event()
        self._changed = threading.Condition()
        self._done = False
        self._thread = threading.Thread(
            target=self._work, args=(evaluator,), daemon=True, name=f"live-{self.plan_key[:8]}"
        )
        _RUNS.add(self)
        self._thread.start()

    def _work(self, evaluator: LiveEvaluator) -> None:
        try:
            for refinement in evaluator.refinements(self.plan, self._cancel.is_set):
                if refinement.final and self._on_final is not None:
                    self._on_final(refinement)
                with self._changed:
                    self._latest = refinement
                    self._changed.notify_all()
        except _Cancelled:
            pass
        except BaseException as e:  # kept for the caller: a thread's exception is otherwise lost
            self.error = e
        finally:
            with self._changed:
                self._done = True
                self._changed.notify_all()

    @property
    def done(self) -> bool:
        """Finished, failed or cancelled."""
        return self._done

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop at the next chunk (a superseded plan)."""
        self._cancel.set()

    def latest(self) -> Refinement | None:
        with self._changed:
            return self._latest

    def wait(self, timeout: float, *, measured: bool = False) -> Refinement | None:
        """The latest refinement once the run is done (or, with ``measured``, once some images are
        scored), or when ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._done and not (
                measured and self._latest is not None and self._latest.measured
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return self._latest

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
