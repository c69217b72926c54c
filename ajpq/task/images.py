"""Image datasets that batch themselves, so that the cost of feeding a finetune step does not
grow with the dataset: files on disk read by persistent ``DataLoader`` workers (an ImageFolder),
and uint8 tensors at their stored size, converted, augmented and resized batch by batch where
they live (CIFAR-10 and Fashion-MNIST: on the evaluator's GPU once ``to(device)`` moved them).

Augmentation is seeded per sample (the epoch's seed and the sample's index), so a policy's score
does not depend on how many batches the workers served before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = [
    "SelfBatching",
    "FolderListing",
    "list_folder",
    "FolderImages",
    "ByteImages",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SEED_STRIDE = 1_000_003  # per-sample augmentation seed: epoch seed * stride + index


@runtime_checkable
class SelfBatching(Protocol):
    """A dataset that knows how to batch itself (``ajpq.task.data.batches`` asks it)."""

    def batches(
        self, batch_size: int, shuffle: bool, seed: int, drop_last: bool, pin_memory: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass(frozen=True)
class FolderListing:
    """The files of one ImageFolder part (``train/`` or ``val/``), listed once and shipped to
    every evaluator, so no node walks the tree again."""

    root: str
    classes: tuple[str, ...]
    paths: np.ndarray  # relative to root, str
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.paths)


def list_folder(root: Path) -> FolderListing:
    """List ``root/<class>/<image>`` the way torchvision's ImageFolder does (sorted classes)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    classes, index = find_classes(str(root))
    samples = make_dataset(str(root), index, extensions=IMG_EXTENSIONS)
    prefix = len(str(root).rstrip("/")) + 1
    paths = np.array([path[prefix:] for path, _ in samples], dtype=object)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    logger.info("listed %d images in %d classes under %s", len(paths), len(classes), root)
    return FolderListing(str(root), tuple(classes), paths, labels)


class _SeededOrder(Sampler):
    """Yields (index, augmentation seed); ``seed`` is set before each pass (read in the main
    process, so persistent workers need not restart)."""

    def __init__(self, count: int, shuffle: bool) -> None:
        self.count, self.shuffle, self.seed = count, shuffle, 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.count, generator=torch.Generator().manual_seed(self.seed))
        else:
            order = torch.arange(self.count)
        base = self.seed * _SEED_STRIDE
        for i in order.tolist():
            yield i, (base + i) % (2**63)


class FolderImages(Dataset):
    """Images of a :class:`FolderListing` (a subset of it), decoded by ``DataLoader`` workers:
    training augmentation (random resized crop + flip) or the evaluation transform (resize +
    center crop), ImageNet normalisation. ``workers`` None: the process's torch threads (an
    evaluator's CPUs)."""

    def __init__(
        self,
        listing: FolderListing,
        size: int,
        augment: bool,
        index: np.ndarray | None = None,
        workers: int | None = None,
    ) -> None:
        self.listing, self.size, self.augment, self.workers = listing, size, augment, workers
        self.index = np.arange(len(listing)) if index is None else np.asarray(index)
        self._transform: Any = None
        self._loaders: dict[tuple, tuple[DataLoader, _SeededOrder]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_transform"], state["_loaders"] = None, {}
        return state

    def __len__(self) -> int:
        return len(self.index)

    def subset(self, index: np.ndarray, augment: bool | None = None) -> FolderImages:
        """The images at ``index`` of this one (same listing), optionally another transform."""
        return FolderImages(
            self.listing,
            self.size,
            self.augment if augment is None else augment,
            self.index[np.asarray(index)],
            self.workers,
        )

    def path(self, item: int) -> Path:
        return Path(self.listing.root) / str(self.listing.paths[self.index[item]])

    def transform(self) -> Any:
        if self._transform is None:
            from torchvision import transforms

            resize = (
                [transforms.RandomResizedCrop(self.size), transforms.RandomHorizontalFlip()]
                if self.augment
                else [
                    transforms.Resize(int(self.size * 256 / 224)),
                    transforms.CenterCrop(self.size),
                ]
            )
            self._transform = transforms.Compose(
                [*resize, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
            )
        return self._transform

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        from PIL import Image

        index, seed = item if isinstance(item, tuple) else (item, 0)
        with Image.open(self.path(index)) as handle:
            image = handle.convert("RGB")
        label = int(self.listing.labels[self.index[index]])
        if not self.augment:
            return self.transform()(image), label
        with torch.random.fork_rng(devices=[]):  # the caller's generator stays untouched
            torch.manual_seed(seed)
            return self.transform()(image), label

    def _loader(
        self, batch_size: int, shuffle: bool, drop_last: bool, pin_memory: bool
    ) -> tuple[DataLoader, _SeededOrder]:
        key = (batch_size, shuffle, drop_last, pin_memory)
        if key not in self._loaders:
            workers = self.workers if self.workers is not None else torch.get_num_threads()
            order = _SeededOrder(len(self), shuffle)
            loader = DataLoader(
                self,
                batch_size=batch_size,
                sampler=order,
                drop_last=drop_last,
                num_workers=workers,
                pin_memory=pin_memory,
                persistent_workers=workers > 0,
            )
            self._loaders[key] = (loader, order)
        return self._loaders[key]

    def batches(
        self,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        pin_memory: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader, order = self._loader(batch_size, shuffle, drop_last, pin_memory)
        order.seed = seed
        yield from loader


class ByteImages(Dataset):
    """uint8 images at their stored size (what travels through the object store), converted
    batch by batch: scaled, augmented (CIFAR's recipe: 4-pixel padded random crop + flip),
    resized to ``size`` and normalised by ``mean``/``std`` on the device that holds them."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        size: int | None,
        augment: bool,
    ) -> None:
        if images.dtype != torch.uint8:
            raise ValueError(f"ByteImages holds uint8 images, got {images.dtype}")
        self.images, self.labels = images, labels
        self.mean, self.std = mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)
        self.size, self.augment = size, augment

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        channels, height, width = self.images.shape[1:]
        return (channels, self.size or height, self.size or width)

    def subset(self, index: np.ndarray, augment: bool | None = None) -> ByteImages:
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return ByteImages(
            self.images[idx],
            self.labels[idx],
            self.mean,
            self.std,
            self.size,
            self.augment if augment is None else augment,
        )

    def to(self, device: torch.device | str) -> ByteImages:
        return ByteImages(
            self.images.to(device),
            self.labels.to(device),
            self.mean.to(device),
            self.std.to(device),
            self.size,
            self.augment,
        )

    def convert(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 batch -> normalised float batch at ``size`` (augmented when a generator is given
        and this split augments)."""
        x = raw.float() / 255.0
        if self.augment and generator is not None:
            x = _pad_crop_flip(x, generator)
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        return self.convert(self.images[item : item + 1])[0], int(self.labels[item])

    def batches(
        self,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        pin_memory: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        count = len(self)
        order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
        order = order.to(self.images.device)
        stop = count - count % batch_size if drop_last and count >= batch_size else count
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield self.convert(self.images[idx], generator), self.labels[idx]


def _pad_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch back to its size, and a random flip: one
    gather on the batch's device (offsets drawn from the CPU ``generator``, reproducible)."""
    count, channels, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (count,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (count,), generator=generator).to(x.device)
    flip = (torch.rand(count, generator=generator) < 0.5).to(x.device)
    rows = dy[:, None] + torch.arange(height, device=x.device)[None, :]
    cols = torch.arange(width, device=x.device)[None, :].expand(count, width)
    cols = torch.where(flip[:, None], width - 1 - cols, cols) + dx[:, None]
    n = torch.arange(count, device=x.device)[:, None, None, None]
    c = torch.arange(channels, device=x.device)[None, :, None, None]
    return padded[n, c, rows[:, None, :, None], cols[:, None, None, :]]
