"""Datasets: digits (bundled with scikit-learn), Fashion-MNIST, CIFAR-10, ImageFolder, random.

Every dataset yields (images, labels) as NCHW float tensors, normalised. A reward validation
split is carved out of the training set with a fixed seed; the test split is kept for final
reports and never feeds the reward. Fashion-MNIST and CIFAR-10 are held as uint8 at their stored
size and converted per batch; an ImageFolder is listed once and decoded by loader workers
(:mod:`ajpq.task.images`). Training batches are augmented where the dataset has a usual recipe
(CIFAR-10, ImageFolder); validation and test batches never are.
"""

from __future__ import annotations

import dataclasses
import enum
import gzip
import logging
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ajpq.core.configtypes import (
    RESUMABLE,
    Count,
    Flag,
    NonNegativeInt,
    OpenFraction,
    Text,
    config_type,
)
from ajpq.task.images import ByteImages, FolderImages, FolderListing, SelfBatching, list_folder

__all__ = [
    "on_device",
    "DatasetName",
    "DataConfig",
    "DataSplits",
    "load_dataset",
    "read_idx",
    "FASHION_MNIST_DIRS",
    "batches",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)


class DatasetName(str, enum.Enum):
    DIGITS = "digits"
    FASHION_MNIST = "fashion_mnist"
    CIFAR10 = "cifar10"
    IMAGEFOLDER = "imagefolder"
    RANDOM = "random"


@config_type
class DataConfig:
    """Which data, where it lives, and how the reward validation split is carved (``data:``)."""

    name: DatasetName = DatasetName.DIGITS
    path: Text | None = None
    image_size: Annotated[int, Field(strict=True, ge=8)] | None = None  # None: the dataset's own
    val_fraction: OpenFraction = 0.1
    seed: NonNegativeInt = 0  # the train/val split (not the agent's seed)
    download: Flag = False
    random_samples: Count = 512
    random_classes: Annotated[int, Field(strict=True, ge=2)] = 10
    random_shape: tuple[Count, Count, Count] = (3, 32, 32)
    augment: Flag = True  # training batches of CIFAR-10 / ImageFolder (their usual recipe)
    num_workers: Annotated[NonNegativeInt | None, RESUMABLE] = None  # loader workers; None: CPUs

    def __post_init__(self) -> None:
        if self.name in (DatasetName.CIFAR10, DatasetName.IMAGEFOLDER) and not self.path:
            raise ValueError(f"path: dataset {self.name.value} needs a local path")


@dataclass
class DataSplits:
    """Train (for finetuning), val (for the reward), test (for final reports only)."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str = ""
    info: dict[str, object] = field(default_factory=dict)


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _tensor_subset(dataset: TensorDataset, idx: np.ndarray) -> TensorDataset:
    return TensorDataset(*(t[torch.from_numpy(idx)] for t in dataset.tensors))


def _tensor_splits(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: DataConfig,
    num_classes: int,
) -> DataSplits:
    # normalise with training statistics only
    stats_mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    stats_std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    train_x = (train_x - stats_mean) / stats_std
    test_x = (test_x - stats_mean) / stats_std
    full = TensorDataset(train_x.contiguous(), train_y.long())
    order = np.random.default_rng(config.seed).permutation(len(full))
    n_val = max(1, int(round(len(full) * config.val_fraction)))
    return DataSplits(
        train=_tensor_subset(full, order[n_val:]),
        val=_tensor_subset(full, order[:n_val]),
        test=TensorDataset(test_x.contiguous(), test_y.long()),
        num_classes=num_classes,
        input_shape=tuple(train_x.shape[1:]),
        name=config.name.value,
    )


def _byte_splits(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: DataConfig,
    augment: bool,
) -> DataSplits:
    """uint8 NCHW images kept as bytes at their stored size (a quarter of float32, and far less
    than float at a larger ``image_size``); normalised with training statistics per batch."""
    scaled = train_x.float().div_(255.0)
    mean, std = scaled.mean(dim=(0, 2, 3)), scaled.std(dim=(0, 2, 3)).clamp_min(1e-6)
    del scaled
    full = ByteImages(train_x, train_y.long(), mean, std, config.image_size, augment)
    order = np.random.default_rng(config.seed).permutation(len(full))
    n_val = max(1, int(round(len(full) * config.val_fraction)))
    test = ByteImages(test_x, test_y.long(), mean, std, config.image_size, False)
    return DataSplits(
        train=full.subset(order[n_val:]),
        val=full.subset(order[:n_val], augment=False),
        test=test,
        num_classes=10,
        input_shape=full.shape,
        name=config.name.value,
    )


def _digits(config: DataConfig) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    images = _resize(images, config.image_size or 16)
    # fixed, stratified-by-shuffle test split (20%), independent of the search seed
    order = np.random.default_rng(1234).permutation(len(labels))
    n_test = len(labels) // 5
    test_idx, train_idx = order[:n_test], order[n_test:]
    return _tensor_splits(
        images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], config, 10
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST family's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (
        directory / stem,
        directory / f"{stem}.gz",
        directory / "FashionMNIST" / "raw" / stem,
        directory / "FashionMNIST" / "raw" / f"{stem}.gz",
    ):
        if candidate.exists():
            return candidate
    return None


def _fashion_mnist(config: DataConfig) -> DataSplits:
    directories = [Path(config.path)] if config.path else list(FASHION_MNIST_DIRS)
    stems = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    for directory in directories:
        files = [_find_idx(directory, stem) for stem in stems]
        if all(files):
            arrays = [read_idx(f) for f in files]  # type: ignore[arg-type]
            break
    else:
        if config.download and config.path:
            from torchvision.datasets import FashionMNIST

            train = FashionMNIST(config.path, train=True, download=True)
            test = FashionMNIST(config.path, train=False, download=True)
            arrays = [
                train.data.numpy(),
                train.targets.numpy(),
                test.data.numpy(),
                test.targets.numpy(),
            ]
        else:
            looked = ", ".join(str(d) for d in directories)
            raise FileNotFoundError(
                f"Fashion-MNIST IDX files not found in {looked}; install the Debian package "
                "dataset-fashion-mnist, or set data.path to a folder holding "
                "train-images-idx3-ubyte[.gz] and friends (data.download=true fetches them there)"
            )
    train_x, train_y, test_x, test_y = arrays

    def to_images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.uint8)).unsqueeze(1)  # a writable copy

    return _byte_splits(
        to_images(train_x),
        torch.from_numpy(train_y.astype(np.int64)),
        to_images(test_x),
        torch.from_numpy(test_y.astype(np.int64)),
        config,
        augment=False,  # Fashion-MNIST's usual recipe trains on the images as they are
    )


def _cifar10(config: DataConfig) -> DataSplits:
    if not config.path:
        raise ValueError("cifar10 needs data.path: the folder holding cifar-10-batches-py")
    root = Path(config.path)
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").exists() else root
    if not (folder / "test_batch").exists():
        if config.download:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(root), train=True, download=True)
            folder = root / "cifar-10-batches-py"
        else:
            raise FileNotFoundError(
                f"no CIFAR-10 python batches (data_batch_1..5, test_batch) in {folder}; "
                "set data.path to the extracted cifar-10-batches-py folder or data.download=true"
            )

    def load(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for name in names:
            with open(folder / name, "rb") as handle:
                batch = pickle.load(handle, encoding="latin1")
            xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch["labels"], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    train_names = sorted(p.name for p in folder.glob("data_batch_*"))
    train_x, train_y = load(train_names)
    test_x, test_y = load(["test_batch"])
    return _byte_splits(train_x, train_y, test_x, test_y, config, augment=config.augment)


def _list_part(root: Path, part: str) -> FolderListing:
    try:
        listing = list_folder(root / part)
    except (FileNotFoundError, OSError) as error:
        raise FileNotFoundError(
            f"data.path {root / part}: {' '.join(str(error).split())[:200]}"
        ) from None
    if len(listing) == 0:
        raise FileNotFoundError(f"data.path {root / part}: no image files in its class folders")
    return listing


def _imagefolder(
    config: DataConfig, listings: dict[str, FolderListing] | None = None
) -> DataSplits:
    """``train/`` and ``val/`` of class folders; the file lists come from ``listings`` when
    given (an evaluator gets the driver's), so the tree is walked once per search."""
    if not config.path:
        raise ValueError("imagefolder needs data.path: a folder with train/ and val/ class folders")
    root = Path(config.path)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise FileNotFoundError(
            f"{root} must hold train/ and val/ folders of class subfolders (ImageNet layout)"
        )
    if listings is None:
        listings = {part: _list_part(root, part) for part in ("train", "val")}
    size = config.image_size or 224
    train_full = FolderImages(listings["train"], size, config.augment, workers=config.num_workers)
    test = FolderImages(listings["val"], size, False, workers=config.num_workers)
    for part in (train_full, test):
        try:  # one image now: an unreadable file fails here, not deep inside training
            part.subset([0], augment=False)[0]
        except Exception as error:  # noqa: BLE001 - PIL raises several kinds
            raise ValueError(
                f"data.path {part.path(0)}: cannot read it as an image "
                f"({type(error).__name__}: {' '.join(str(error).split())[:160]})"
            ) from None
    classes = train_full.listing.classes
    if len(classes) < 2:
        raise ValueError(
            f"data.path {root / 'train'}: {len(classes)} class; a classifier needs 2 or more"
        )
    if classes != test.listing.classes:
        raise ValueError(
            f"data.path {root}: train/ and val/ hold other classes "
            f"({len(classes)} vs {len(test.listing.classes)}); give both the same class folders"
        )
    order = np.random.default_rng(config.seed).permutation(len(train_full))
    n_val = max(1, int(round(len(train_full) * config.val_fraction)))
    return DataSplits(
        train_full.subset(order[n_val:]),
        train_full.subset(order[:n_val], augment=False),
        test,
        len(classes),
        (3, size, size),
        config.name.value,
        info={"listings": listings},
    )


def _random(config: DataConfig) -> DataSplits:
    generator = torch.Generator().manual_seed(config.seed)
    count = config.random_samples
    x = torch.randn((count, *config.random_shape), generator=generator)
    y = torch.randint(0, config.random_classes, (count,), generator=generator)
    tx = torch.randn((count // 4, *config.random_shape), generator=generator)
    ty = torch.randint(0, config.random_classes, (count // 4,), generator=generator)
    return _tensor_splits(x, y, tx, ty, config, config.random_classes)


_LOADERS = {
    DatasetName.DIGITS: _digits,
    DatasetName.FASHION_MNIST: _fashion_mnist,
    DatasetName.CIFAR10: _cifar10,
    DatasetName.IMAGEFOLDER: _imagefolder,
    DatasetName.RANDOM: _random,
}


def load_dataset(
    config: DataConfig, listings: dict[str, FolderListing] | None = None
) -> DataSplits:
    """Load ``config.name`` and return its train / val / test splits (an ImageFolder from
    ``listings`` when given: the file lists of an earlier load, ``splits.info["listings"]``)."""
    if config.name is DatasetName.IMAGEFOLDER:
        splits = _imagefolder(config, listings)
    else:
        splits = _LOADERS[config.name](config)
    logger.info(
        "dataset %s: %d train, %d val, %d test, input %s",
        config.name.value,
        len(splits.train),
        len(splits.val),
        len(splits.test),
        splits.input_shape,
    )
    return splits


def batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over ``dataset`` in batches; fast path for in-memory tensor datasets (batched
    where the tensors live: on the device once :func:`on_device` moved them there)."""
    if isinstance(dataset, SelfBatching):
        yield from dataset.batches(batch_size, shuffle, seed, drop_last, pin_memory)
        return
    generator = torch.Generator().manual_seed(seed)
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors
        count = len(x)
        order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
        order = order.to(x.device)
        stop = count - count % batch_size if drop_last and count >= batch_size else count
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
        return
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )
    yield from loader


def on_device(splits: DataSplits, device: torch.device | str) -> DataSplits:
    """The splits with every in-memory dataset moved to ``device`` once (an evaluator then
    batches, converts and augments on its GPU instead of copying every batch from the host)."""
    device = torch.device(device)
    if device.type == "cpu":
        return splits

    def move(part: Dataset) -> Dataset:
        if isinstance(part, TensorDataset):
            return TensorDataset(*(t.to(device) for t in part.tensors))
        if isinstance(part, ByteImages):
            return part.to(device)
        return part

    return dataclasses.replace(
        splits, train=move(splits.train), val=move(splits.val), test=move(splits.test)
    )
