import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from ajpq.task.data import FASHION_MNIST_DIRS, DataConfig, batches, load_dataset, read_idx


def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    opener = gzip.open if gz else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_digits_splits_are_disjoint_and_normalised(digits):
    assert digits.input_shape == (1, 16, 16) and digits.num_classes == 10
    train_x = digits.train.tensors[0]
    val_x = digits.val.tensors[0]
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    # no validation image is also a training image
    flat_train = {tuple(row.tolist()) for row in train_x.reshape(len(train_x), -1)[:, ::7]}
    overlap = sum(
        tuple(row.tolist()) in flat_train for row in val_x.reshape(len(val_x), -1)[:, ::7]
    )
    assert overlap <= 2  # digits has a few exact duplicates
    assert abs(float(train_x.mean())) < 0.05


def test_idx_reader_and_fashion_mnist_from_a_folder(tmp_path):
    rng = np.random.default_rng(0)
    for stem, shape, gz in [
        ("train-images-idx3-ubyte", (50, 28, 28), True),
        ("train-labels-idx1-ubyte", (50,), True),
        ("t10k-images-idx3-ubyte", (20, 28, 28), False),
        ("t10k-labels-idx1-ubyte", (20,), False),
    ]:
        high = 10 if "labels" in stem else 256
        name = f"{stem}.gz" if gz else stem
        _write_idx(tmp_path / name, rng.integers(0, high, shape), gz)
    assert read_idx(tmp_path / "t10k-labels-idx1-ubyte").shape == (20,)
    splits = load_dataset(DataConfig("fashion_mnist", path=str(tmp_path), val_fraction=0.2))
    assert len(splits.train) == 40 and len(splits.val) == 10 and len(splits.test) == 20
    assert splits.input_shape == (1, 28, 28)


def test_fashion_mnist_missing_gives_actionable_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_dataset(DataConfig("fashion_mnist", path=str(tmp_path)))


@pytest.mark.skipif(
    not any((d / "t10k-labels-idx1-ubyte.gz").exists() for d in FASHION_MNIST_DIRS),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_real_files():
    splits = load_dataset(DataConfig("fashion_mnist"))
    assert len(splits.train) + len(splits.val) == 60000 and len(splits.test) == 10000
    labels = splits.test.labels
    assert torch.bincount(labels).tolist() == [1000] * 10


def test_cifar10_from_local_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, count in [("data_batch_1", 30), ("data_batch_2", 30), ("test_batch", 10)]:
        batch = {
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, count).tolist(),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    splits = load_dataset(DataConfig("cifar10", path=str(tmp_path), val_fraction=0.1))
    assert len(splits.train) == 54 and len(splits.val) == 6 and len(splits.test) == 10
    assert splits.input_shape == (3, 32, 32)


def test_imagefolder_from_local_pngs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in [("train", 6), ("val", 2)]:
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                    folder / f"{i}.png"
                )
    splits = load_dataset(
        DataConfig("imagefolder", path=str(tmp_path), image_size=32, val_fraction=0.25)
    )
    assert splits.num_classes == 2 and splits.input_shape == (3, 32, 32)
    assert len(splits.train) == 9 and len(splits.val) == 3 and len(splits.test) == 4
    x, y = next(batches(splits.train, 4, shuffle=True))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)


def test_random_data_and_batches_cover_everything():
    splits = load_dataset(DataConfig("random", random_samples=100, random_shape=(3, 8, 8)))
    seen = sum(len(y) for _, y in batches(splits.train, 32, shuffle=True, seed=1))
    assert seen == len(splits.train)
