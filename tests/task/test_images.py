"""The image pipeline: an ImageFolder decoded by persistent loader workers with seeded
augmentation on training batches only, listed once; uint8 images converted per batch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ajpq.search.config import SearchConfig
from ajpq.search.context import NodeLocalData, data_source_for
from ajpq.task.data import DataConfig, batches, load_dataset
from ajpq.task.images import ByteImages, FolderImages


def _jpeg_folder(root, classes=4, per_class=(40, 10), side=40):
    rng = np.random.default_rng(0)
    for part, count in zip(("train", "val"), per_class):
        for label in range(classes):
            folder = root / part / f"c{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (side, side + 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _jpeg_folder(tmp_path_factory.mktemp("jpegs"))


def _two_passes(dataset, shuffle, seeds):
    return [
        torch.cat([x for x, _ in batches(dataset, 16, shuffle=shuffle, seed=seed)])
        for seed in seeds
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_are_augmented_and_validation_batches_are_not(folder, workers):
    config = DataConfig("imagefolder", path=str(folder), image_size=32, num_workers=workers)
    splits = load_dataset(config)
    assert isinstance(splits.train, FolderImages) and splits.train.augment
    assert not splits.val.augment and not splits.test.augment
    # two epochs of training: the same images in the same order, another augmentation
    train = splits.train.subset(np.arange(32))
    first, second = (
        torch.cat([x for x, _ in batches(train, 16, shuffle=False, seed=seed)]) for seed in (0, 1)
    )
    assert first.shape == (32, 3, 32, 32) and not torch.allclose(first, second)
    # the same epoch seed again: the same augmentation, whatever the workers served before
    again = torch.cat([x for x, _ in batches(train, 16, shuffle=False, seed=0)])
    assert torch.equal(first, again)
    one, two = _two_passes(splits.val, False, (0, 1))
    assert torch.equal(one, two)
    if workers:
        loader, _ = splits.val._loader(16, False, False, False)
        assert loader.num_workers == 2 and loader.persistent_workers


def test_the_file_tree_is_listed_once_and_shipped(folder, tmp_path):
    config = SearchConfig.from_dict(
        {
            "model": "resnet18",
            "data": {"name": "imagefolder", "path": str(folder), "image_size": 32},
        }
    )
    splits = load_dataset(config.data)
    source = data_source_for(config, splits)
    assert isinstance(source, NodeLocalData) and source.listings is not None
    shipped = pickle.loads(pickle.dumps(source))  # as the object store carries it
    extra = folder / "train" / "c0" / "added-later.jpg"
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(extra)
    try:
        again = shipped.load()  # an evaluator: the driver's listing, no new walk of the tree
        assert len(again.train) + len(again.val) == len(splits.train) + len(splits.val)
        assert len(load_dataset(config.data).train) == len(splits.train) + 1  # a fresh listing
    finally:
        extra.unlink()


def _bytes(count=64, augment=True, size=None):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return ByteImages(images, labels, torch.full((3,), 0.5), torch.full((3,), 0.25), size, augment)


def test_byte_images_convert_per_batch_and_augment_only_training():
    train = _bytes(size=24)
    first = torch.cat([x for x, _ in batches(train, 16, shuffle=False, seed=0)])
    second = torch.cat([x for x, _ in batches(train, 16, shuffle=False, seed=1)])
    assert first.shape == (64, 3, 24, 24) and first.dtype == torch.float32
    assert not torch.equal(first, second)
    assert torch.equal(first, torch.cat([x for x, _ in batches(train, 16, False, seed=0)]))
    plain = train.subset(np.arange(64), augment=False)
    x0, _ = next(iter(batches(plain, 16, shuffle=False, seed=0)))
    x1, _ = next(iter(batches(plain, 16, shuffle=False, seed=5)))
    assert torch.equal(x0, x1)
    assert torch.allclose(x0[3], plain[3][0])  # one item and a batch agree
    assert train.images.element_size() == 1  # a quarter of float32 through the object store


def test_pad_crop_flip_keeps_the_pixels_of_a_shifted_image():
    data = _bytes(count=8, size=None)
    crops = torch.cat([x for x, _ in batches(data, 8, shuffle=False, seed=3)])
    plain = data.subset(np.arange(8), augment=False)
    originals = torch.cat([x for x, _ in batches(plain, 8, shuffle=False)])
    zero = (0 - 0.5) / 0.25  # the value of a padded pixel after normalisation
    for crop, original in zip(crops, originals):
        found = False
        for flipped in (original, original.flip(-1)):
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    shifted = torch.full_like(flipped, zero)
                    src = flipped[:, max(0, dy) : 16 + min(0, dy), max(0, dx) : 16 + min(0, dx)]
                    shifted[:, max(0, -dy) : 16 + min(0, -dy), max(0, -dx) : 16 + min(0, -dx)] = src
                    found = found or torch.allclose(shifted, crop)
        assert found
