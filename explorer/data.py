"""Evaluation and calibration data: the zoo's digits, and the user's .npz or python entrypoint.

Data never comes from the network: the zoo uses scikit-learn's bundled 8x8 digits. Nothing a user
gives is unpickled (``np.load(..., allow_pickle=False)``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from explorer.errors import DataError

__all__ = ["Dataset", "Split", "load_data", "zoo_datasets"]

SPLIT_SEED = 0  # fixed train/val/test split of the zoo data; changing it invalidates shipped weights


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (float32, N x input shape) and optional labels ``y`` (int64, N)."""

    x: torch.Tensor
    y: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A named data set. ``test`` is what evaluation and sensitivity use; ``train``/``val`` may be
    missing for user data (then only post-training steps that need no training data are offered)."""

    spec: str
    test: Split
    train: Split | None = None
    val: Split | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test.x.shape[1:])

    @property
    def has_labels(self) -> bool:
        return self.test.y is not None

    def example_input(self) -> torch.Tensor:
        """One sample with a batch dimension of 1: what export and latency use."""
        return self.test.x[:1].clone()

    def fingerprint(self) -> str:
        """A short hash of the evaluation data, for caches keyed by data."""
        h = hashlib.sha256(self.test.x.numpy().tobytes())
        if self.test.y is not None:
            h.update(self.test.y.numpy().tobytes())
        return h.hexdigest()[:16]


# --- the zoo's data ------------------------------------------------------------------------------


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)  # (1797, 8, 8) in [0, 1]


def _split_indices(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60/20/20 split with a fixed seed."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_train, n_val = int(0.6 * n), int(0.2 * n)
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def _digits(kind: str) -> Dataset:
    images, labels = _digits_arrays()
    if kind == "digits-flat":
        x = torch.from_numpy(images.reshape(len(images), 64))
    else:  # "digits-32": 1x32x32, bilinearly upsampled so convolutions have room to work
        x = torch.nn.functional.interpolate(
            torch.from_numpy(images)[:, None], size=(32, 32), mode="bilinear", align_corners=False
        ).contiguous()
    y = torch.from_numpy(labels)
    tr, va, te = _split_indices(len(y))
    return Dataset(
        spec=f"zoo:{kind}",
        train=Split(x[tr], y[tr]),
        val=Split(x[va], y[va]),
        test=Split(x[te], y[te]),
    )


_ZOO_DATA = {
    "digits-flat": "scikit-learn digits, 8x8 flattened to 64 features in [0, 1]",
    "digits-32": "scikit-learn digits, upsampled to 1x32x32 in [0, 1]",
}


def zoo_datasets() -> dict[str, str]:
    """Names of the built-in data sets with a one-line description."""
    return dict(_ZOO_DATA)


# --- user data -----------------------------------------------------------------------------------


def _check_split(x: np.ndarray, y: np.ndarray | None, where: str) -> Split:
    if x.dtype.kind not in "fiu" or x.ndim < 2:
        raise DataError(f"{where}: 'x' must be a numeric array of shape (N, ...), got {x.dtype} {x.shape}")
    if len(x) == 0:
        raise DataError(f"{where}: 'x' is empty")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: 'x' contains NaN or Inf ({int((~np.isfinite(x)).sum())} values)")
    if y is None:
        return Split(torch.from_numpy(np.ascontiguousarray(x)), None)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{where}: 'y' must be a 1-D array of integer class labels, got {y.dtype} {y.shape}")
    if len(y) != len(x):
        raise DataError(f"{where}: 'x' has {len(x)} samples but 'y' has {len(y)}")
    if y.min() < 0:
        raise DataError(f"{where}: 'y' has a negative class label ({int(y.min())})")
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))


def _load_npz(path: Path, spec: str) -> Dataset:
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":  # an .npz is a zip archive; anything else may be a pickle
            raise DataError(f"{spec}: not an .npz archive (save it with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickle: refused
        raise DataError(f"{spec}: cannot read without unpickling ({e}); save plain numeric arrays") from None
    except Exception as e:  # zipfile.BadZipFile, OSError, EOFError...
        raise DataError(f"{spec}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if "x" not in arrays:
        raise DataError(f"{spec}: no array named 'x' (found {sorted(arrays) or 'none'})")
    test = _check_split(arrays["x"], arrays.get("y"), spec)
    train = None
    if "x_train" in arrays:
        train = _check_split(arrays["x_train"], arrays.get("y_train"), f"{spec} (x_train)")
    return Dataset(spec=spec, test=test, train=train)


def _load_entrypoint(spec: str) -> Dataset:
    from explorer.models.loaders import call_entrypoint

    out = call_entrypoint(spec, DataError)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise DataError(f"{spec}: must return a tuple (x, y), got {type(out).__name__}")
    x, y = (np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t) if t is not None else None for t in out)
    return Dataset(spec=spec, test=_check_split(x, y, spec))


def load_data(spec: str) -> Dataset:
    """Load a data spec: ``zoo:NAME``, ``PATH.npz`` or ``PATH.py:FUNC`` / ``package.module:FUNC``.

    ``zoo:NAME`` accepts a data set name (``zoo_datasets()``) or a zoo model name (its own data).

    Raises:
        DataError: naming the spec and what is wrong with it.
    """
    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in _ZOO_DATA:
            from explorer.models.zoo import ZOO

            if name not in ZOO:
                raise DataError(f"unknown zoo data {name!r}; choose from {sorted(_ZOO_DATA) + sorted(ZOO)}")
            name = ZOO[name].data
        return _digits(name)
    path = Path(spec)
    if spec.endswith(".npz"):
        if not path.is_file():
            raise DataError(f"{spec}: no such file")
        return _load_npz(path, spec)
    if ":" in spec:
        return _load_entrypoint(spec)
    raise DataError(f"{spec}: unknown data spec; use zoo:NAME, PATH.npz or PATH.py:FUNC")
