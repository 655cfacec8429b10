"""Per-layer / per-group sensitivity: accuracy and loss when only one unit is pruned, fast and
cached.

A unit is one layer for unstructured and N:M methods, and one dependency group for structured
methods (named by its first member): pruning one member alone would also remove the coupled
channels of the others, and a layer whose pruning alone changes nothing must not look robust.

Three tiers, from instant to exact:

- :func:`proxy` (:mod:`.proxy`): data-free; the fraction of a unit's weight magnitude that each
  ratio removes (Sparsify's idea), computed with the very masks pruning would apply.
- :func:`estimate` (:mod:`.scanning`): the time a scan will take (one evaluation timed,
  multiplied by the work left), and how many points the cache already holds (:func:`pending`).
- :func:`scan` (:mod:`.scanning`): the measured curves, each point a full evaluation on the
  evaluation data, by one of the engines of :mod:`.engines`. Weight-only methods (unstructured, N:M)
  run in ONNX Runtime on the part of the graph downstream of the pruned layer, fed with the inner
  tensors one dense pass captured and the pruned weight as a graph input; no copy of the model per
  point. ONNX Runtime rounds differently from PyTorch: a point may differ from the PyTorch loop by
  one sample, rarely. Structured methods reuse one DepGraph (copied with the model) and evaluate the
  really shrunk model in PyTorch. Points are cached on disk per (model, data, method)
  (:mod:`.cache`).

:func:`block_scan` (:mod:`.blocks`) measures whole blocks the same way: one point per block, the
model with that block removed (the identity), exported and scored in ONNX Runtime.

:func:`reference_scan` is Distiller's loop (for each unit and ratio: a fresh copy, prune, evaluate
everything): the oracle the fast scan is tested against. :func:`release` drops the engines built for
a subject (sessions per unit, captured activations: hundreds of MB on a CNN) once a scan is done.
Latency against width lives beside per-layer timing, in :mod:`explorer.latency`.
"""

from explorer.sensitivity.blocks import BLOCK_COLUMNS, block_scan, removable
from explorer.sensitivity.cache import CACHE_ENV, cache_dir, clear_cache, model_hash
from explorer.sensitivity.engines import forget_engines as release
from explorer.sensitivity.proxy import PROXY_COLUMNS, proxy
from explorer.sensitivity.scanning import (
    COLUMNS,
    Estimate,
    estimate,
    pending,
    reference_scan,
    scan,
    scan_cache,
)
from explorer.sensitivity.units import DEFAULT_RATIOS, units

__all__ = [
    "BLOCK_COLUMNS",
    "CACHE_ENV",
    "COLUMNS",
    "DEFAULT_RATIOS",
    "PROXY_COLUMNS",
    "Estimate",
    "block_scan",
    "cache_dir",
    "clear_cache",
    "estimate",
    "model_hash",
    "pending",
    "proxy",
    "reference_scan",
    "removable",
    "release",
    "scan",
    "scan_cache",
    "units",
]
